"""smpconv-models: SMPConv (Kim & Park, CVPR 2023) in plain PyTorch for the timm ecosystem."""
from . import layers, models
from .layers import clamp_radii_, smp_param_groups

__version__ = '0.1.0'
__all__ = ['layers', 'models', 'clamp_radii_', 'smp_param_groups', '__version__']
