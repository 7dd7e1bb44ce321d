"""Peers built from our own networks: the same network with MLP-generated kernels (FlexConv's MAGNet,
:class:`~smpconv_models.layers.MAGNetKernel`) in place of the SMP kernels."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..layers import MAGNetKernel, SMPConv, same_conv

__all__ = ['MLPKernelConv', 'use_mlp_kernels']


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
