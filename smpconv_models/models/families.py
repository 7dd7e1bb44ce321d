"""The model families, one :class:`~smpconv_models.models._family.ModelFamily` per model file, and the lookup
that every tool uses instead of name prefixes or class checks."""
from __future__ import annotations

import torch.nn as nn

from . import ensemble, smpconv, smpconv_cifar, smpconv_irregular, smpconv_points, smpconv_tcn
from ._family import ModelFamily, find_family

__all__ = ['FAMILIES', 'family_of']

FAMILIES: tuple[ModelFamily, ...] = (smpconv.FAMILY, smpconv_cifar.FAMILY, smpconv_tcn.FAMILY, smpconv_irregular.FAMILY,
                                     smpconv_points.FAMILY, ensemble.FAMILY)


def family_of(name_or_model: str | nn.Module) -> ModelFamily:
    """The family of a registered model name (a pretrained tag, ``local-dir:PATH`` and ``hf-hub:ORG/ARCH.TAG`` too)
    or of a model (by its ``pretrained_cfg`` architecture, else its class). ``ValueError`` names the registered
    models when there is none."""
    return find_family(name_or_model, FAMILIES)
