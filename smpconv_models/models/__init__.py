"""timm model families; importing this package registers every ``smpconv_*`` model in timm's registry."""
from .ensemble import SMPEnsemble, smpconv_ensemble
from .smpconv import SMPConvNet, smpconv_b, smpconv_t
from .smpconv_cifar import SMPConvCifar, smpconv_cifar
from .smpconv_irregular import SMPConvIrregularTCN, smpconv_irregular_tcn, smpconv_irregular_tcn_chartraj
from .smpconv_points import SMPPointNet, smpconv_points
from .smpconv_tcn import (
    SMPConvTCN,
    smpconv_tcn_chartraj,
    smpconv_tcn_mnist,
    smpconv_tcn_scifar10,
    smpconv_tcn_speech,
    smpconv_tcn_speech_raw,
)

__all__ = [
    'SMPConvNet', 'SMPConvCifar', 'SMPConvTCN', 'smpconv_t', 'smpconv_b', 'smpconv_cifar', 'smpconv_tcn_mnist',
    'smpconv_tcn_scifar10', 'smpconv_tcn_chartraj', 'smpconv_tcn_speech', 'smpconv_tcn_speech_raw',
    'SMPConvIrregularTCN', 'smpconv_irregular_tcn', 'smpconv_irregular_tcn_chartraj',
    'SMPPointNet', 'smpconv_points', 'SMPEnsemble', 'smpconv_ensemble',
]
