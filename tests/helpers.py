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


def point_sets(batch: int, n: int = 20, chans: int = 1, dim: int = 2, seed: int = 0, dtype=torch.float64
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(features [B, N, C], positions [B, N, d] uniform in [-1, 1]^d, mask [B, N])`` with set 1 (or the only
    one) padded from point ``3N/4`` on (padded positions NaN: they must be ignored)."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, n, chans, generator=g, dtype=dtype)
    positions = torch.rand(batch, n, dim, generator=g, dtype=dtype) * 2 - 1
    mask = torch.ones(batch, n, dtype=torch.bool)
    mask[min(1, batch - 1), 3 * n // 4:] = False
    positions[~mask] = float('nan')
    return features, positions, mask


def irregular_series(batch: int, length: int = 9, chans: int = 1, integer: bool = False, seed: int = 0,
                     dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(values [B, C, L], timestamps [B, L], mask [B, L])``: strictly increasing timestamps (gaps of 1-3 time
    units; 1 or 2 with ``integer``), series 1 (or the only one) unobserved on its last 3 steps and series 0 at its
    middle step (values NaN there)."""
    g = torch.Generator().manual_seed(seed)
    gaps = torch.rand(batch, length, generator=g, dtype=dtype) * 2 + 1.0
    timestamps = gaps.floor().cumsum(1) if integer else gaps.cumsum(1)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[min(1, batch - 1), -3:] = False
    mask[0, length // 2] = False
    values = torch.randn(batch, chans, length, generator=g, dtype=dtype)
    values[~mask[:, None].expand_as(values)] = float('nan')
    return values, timestamps, mask
