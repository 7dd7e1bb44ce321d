"""Clear answers from the families that cannot serve as dense-prediction encoders.

Segmentation and detection libraries build timm backbones with ``features_only=True`` and read the feature pyramid's
reductions (segmentation_models_pytorch's ``tu-`` encoders want 4, 8, 16, 32; DeepLab passes ``output_stride``).
Only ``smpconv_t`` / ``smpconv_b`` downsample. The other families keep the input's resolution in every block
(``feature_info`` reductions all 1) or take several inputs (point sets, irregular series); their factories call
:func:`check_dense_kwargs` so that such a request fails, or warns, naming the reason instead of failing later
inside the library.
"""
from __future__ import annotations

import warnings
from typing import Any

__all__ = ['check_dense_kwargs', 'DENSE_BACKBONES']

DENSE_BACKBONES = 'smpconv_t / smpconv_b (output_stride 8, 16 or 32)'

# what each non-downsampling family takes as input (the model kinds of this package)
_INPUTS = {
    'image': 'images and keeps their resolution in every block',
    'sequence': '[B, C, L] sequences (as [B, C, 1, L] maps) and keeps their length in every block',
    'points': 'point sets (features, positions, mask), not image tensors',
    'irregular': 'irregularly sampled series (values, timestamps, mask), not image tensors',
}


def check_dense_kwargs(variant: str, kwargs: dict[str, Any], input_kind: str) -> None:
    """Refuse ``output_stride`` (``ValueError``) for a family without strided stages; refuse ``features_only``
    for the multi-input families (``ValueError``: timm's feature wrappers call the model on one tensor), and warn on
    it for the single-tensor ones, whose full-resolution features are no encoder pyramid."""
    what = _INPUTS[input_kind]
    if 'output_stride' in kwargs:
        raise ValueError(
            f'{variant} has no strided stages ({"it takes " + what}; every feature_info reduction is 1), so '
            f'output_stride={kwargs["output_stride"]!r} does not apply. Dense-prediction backbones: {DENSE_BACKBONES}.')
    if not kwargs.get('features_only'):
        return
    if input_kind in ('points', 'irregular'):
        raise ValueError(
            f'{variant} takes {what}: features_only (a feature-pyramid wrapper called with one image tensor) does '
            f'not apply, and it cannot serve as a segmentation / detection encoder. Dense-prediction backbones: '
            f'{DENSE_BACKBONES}.')
    warnings.warn(
        f'{variant} takes {what}: its features_only model gives full-resolution maps (feature_info reductions all '
        f'1), not the 1/4 to 1/32 pyramid a segmentation / detection encoder needs (segmentation_models_pytorch '
        f'"tu-" encoders refuse it as an "Unsupported model downsampling pattern"). Dense-prediction backbones: '
        f'{DENSE_BACKBONES}.', UserWarning, stacklevel=3)
