"""Peers: the same network with MLP-generated kernels (FlexConv's MAGNet, :class:`~smpconv_models.layers.MAGNetKernel`)
in place of the SMP kernels, and a PointNet++ set-abstraction layer for the point-layer rows."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ..layers import MAGNetKernel, SMPConv, same_conv
from ..layers.point_conv import GATHER_BLOCK

__all__ = ['MLPKernelConv', 'use_mlp_kernels', 'SetAbstraction']


class MLPKernelConv(nn.Module):
    """An ``SMPConv`` replaced by a MAGNet-generated dense kernel (same grid, same 'same' convolution)."""

    def __init__(self, smp_conv: nn.Module):
        super().__init__()
        self.in_channels, self.out_channels = smp_conv.in_channels, smp_conv.out_channels
        self.kernel_size = smp_conv.kernel_size
        self.register_buffer('coords', smp_conv.kernel_coord.clone(), persistent=False)
        self.kernel_net = MAGNetKernel(len(self.kernel_size), self.out_channels * self.in_channels)
        self.bias = smp_conv.bias

    def generate_kernel(self) -> torch.Tensor:
        return self.kernel_net(self.coords).t().reshape(self.out_channels, self.in_channels, *self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return same_conv(x, self.generate_kernel(), self.bias)


def use_mlp_kernels(model: nn.Module) -> nn.Module:
    """Replace every per-filter ``SMPConv`` of ``model`` by an MLP (MAGNet) kernel conv, in place."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, SMPConv):
                setattr(module, child_name, MLPKernelConv(child))
    return model


class SetAbstraction(nn.Module):
    """The peer point layer (PointNet++ set abstraction, PyG's ``PointNetConv`` with max aggregation) in plain torch:
    ``h_i = max_j MLP([f_j, p_j - p_i])`` over given neighbours ``idx [M, k]`` (batch 1), MLP
    ``F_in + d -> F_out -> F_out``, in the same query chunks (recomputed in backward) as
    :func:`~smpconv_models.layers.point_conv`."""

    def __init__(self, in_chans: int, out_chans: int, dim: int = 3, gather_block: int = GATHER_BLOCK):
        super().__init__()
        self.gather_block = int(gather_block)  # elements gathered per query chunk
        self.mlp = nn.Sequential(nn.Linear(in_chans + dim, out_chans), nn.ReLU(), nn.Linear(out_chans, out_chans))

    def block(self, features: torch.Tensor, positions: torch.Tensor, query: torch.Tensor, idx: torch.Tensor
              ) -> torch.Tensor:
        f = features[0, idx]  # [M, k, F]
        offsets = positions[0, idx] - query[0, :, None]
        return self.mlp(torch.cat([f, offsets], -1)).amax(1)[None]

    def forward(self, features: torch.Tensor, positions: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        m, k = idx.shape
        chunk = max(1, self.gather_block // k)
        if chunk >= m:
            return self.block(features, positions, positions, idx)
        return torch.cat([checkpoint(self.block, features, positions, positions[:, s:s + chunk], idx[s:s + chunk],
                                     use_reentrant=False) for s in range(0, m, chunk)], 1)
