"""timm model families; importing this package registers every ``smpconv_*`` model in timm's registry."""
from .smpconv import SMPConvNet, smpconv_b, smpconv_t

__all__ = ['SMPConvNet', 'smpconv_t', 'smpconv_b']
