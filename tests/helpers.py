"""Helpers shared by test modules."""
from __future__ import annotations

import torch
import torch.nn as nn

from smpconv_models.layers import SMPConvBase


def randomize_bn_(module: nn.Module) -> None:
    """Give every BatchNorm non-trivial running statistics and affine parameters (so folding them is tested)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest magnitude of the reference ``b``."""
    return ((a - b).abs().max() / b.abs().max()).item()


def smp_layers(model: nn.Module) -> list[SMPConvBase]:
    """Every SMP convolution in ``model`` (in module order)."""
    return [m for m in model.modules() if isinstance(m, SMPConvBase)]
