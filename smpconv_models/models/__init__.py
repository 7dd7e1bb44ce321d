"""timm model families; importing this package registers every ``smpconv_*`` model in timm's registry.

:data:`FAMILIES` describes each family for the tools (:func:`family_of` finds a model's); :mod:`.loading` builds
any model with weights (registered name or tag, Hub-layout or ``train.py`` run folder, ``hf-hub:``, checkpoint file).
"""
from ._family import COMMON_KWARGS, ModelFamily, TrainingDefaults, architecture_of
from .ensemble import SMPEnsemble, smpconv_ensemble
from .families import FAMILIES, family_of
from .loading import build_model, load_model, resolve_pretrained
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
    'ModelFamily', 'TrainingDefaults', 'COMMON_KWARGS', 'FAMILIES', 'family_of', 'architecture_of', 'build_model',
    'load_model', 'resolve_pretrained',
]
