"""Helpers shared by test modules."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

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


# ---------------------------------------------------- SMPConvNet (smpconv_t / smpconv_b) from plain F.conv2d

# (transition stride, transition dilation, block dilation) of stages 1-3, written out per output stride
PLANS = {
    32: [(2, 1, 1), (2, 1, 1), (2, 1, 1)],
    16: [(2, 1, 1), (2, 1, 1), (1, 1, 2)],
    8: [(2, 1, 1), (1, 1, 2), (1, 2, 4)],
}


def _bn(x, bn, train):
    if train:
        return F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def _conv_bn(x, m, train, stride=1, dilation=1, relu=True):
    w = m.conv.weight
    y = _bn(F.conv2d(x, w, None, stride, dilation * (w.shape[-1] // 2), dilation, m.conv.groups), m.bn, train)
    return F.relu(y) if relu else y


def reference_features(model: nn.Module, x: torch.Tensor, output_stride: int, train: bool = False) -> list:
    """Stage outputs of an SMPConvNet (train form) from its parameters, with F.conv2d / F.batch_norm only and the
    strides and dilations of :data:`PLANS`."""
    for i, conv in enumerate(model.stem):
        x = _conv_bn(x, conv, train, stride=2 if i in (0, 3) else 1)
    feats = []
    for i, stage in enumerate(model.stages):
        d = 1
        if i > 0:
            stride, first, d = PLANS[output_stride][i - 1]
            x = _conv_bn(x, stage.downsample[0], train)
            x = _conv_bn(x, stage.downsample[1], train, stride=stride, dilation=first)
        for j in range(0, len(stage.blocks), 2):
            blk, ffn = stage.blocks[j], stage.blocks[j + 1]
            y = _conv_bn(_bn(x, blk.prelkb_bn, train), blk.pw1, train)
            lk = blk.large_kernel
            k, ks = lk.kernel_size[0], lk.small_kernel_size
            smp = F.conv2d(y, lk.smp.conv.generate_kernel(), None, 1, d * (k // 2), d, y.shape[1])
            small = F.conv2d(y, lk.small_conv.conv.weight, None, 1, d * (ks // 2), d, y.shape[1])
            y = F.relu(_bn(smp, lk.smp.bn, train) + _bn(small, lk.small_conv.bn, train))
            x = x + _conv_bn(y, blk.pw2, train, relu=False)
            y = F.gelu(_conv_bn(_bn(x, ffn.preffn_bn, train), ffn.pw1, train, relu=False))
            x = x + _conv_bn(y, ffn.pw2, train, relu=False)
        feats.append(x)
    return feats
