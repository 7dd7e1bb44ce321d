"""Structural reparameterization of the SMP large-kernel branch (RepLKNet-style, as used by SMPConv-T/B)."""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .conv import check_conv_input, prefers_channels_last
from .smp_conv import SMPDepthwiseConv2d

__all__ = ['fuse_bn', 'SMPLargeKernelConv2d']


def fuse_bn(weight: Tensor, bias: Tensor | None, bn: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """Fold an eval-mode BatchNorm that follows a convolution into the convolution's weight and bias.

    ``bn(conv(x)) = conv'(x)`` with ``w' = w * gamma / std`` (per output channel) and
    ``b' = beta + (b - mean) * gamma / std``, ``std = sqrt(running_var + eps)``.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError('fuse_bn needs a BatchNorm with running statistics (track_running_stats=True)')
    std = (bn.running_var + bn.eps).sqrt()
    gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
    scale = gamma / std
    fused_w = weight * scale.reshape(-1, *(1,) * (weight.dim() - 1))
    b = bias if bias is not None else torch.zeros_like(std)
    return fused_w, beta + (b - bn.running_mean) * scale


def _conv_bn(conv: nn.Module, channels: int, norm_layer: type[nn.Module]) -> nn.Sequential:
    return nn.Sequential(OrderedDict(conv=conv, bn=norm_layer(channels)))


class SMPLargeKernelConv2d(nn.Module):
    """SMP depthwise branch + BN, summed with a small depthwise conv + BN (the official ``SMPCNN``).

    ``reparameterize()`` folds both BatchNorms and the zero-padded small kernel into one dense
    ``nn.Conv2d(C, C, K, groups=C, bias=True)`` (``reparam_conv``), exact in eval mode. It is idempotent and is what
    ``timm.utils.reparameterize_model`` calls. ``deploy=True`` builds that form directly, so reparameterized
    checkpoints load. Submodule names follow the official checkpoints (``smp.conv``, ``smp.bn``, ``small_conv.conv``,
    ``small_conv.bn``).
    """

    def __init__(
            self,
            channels: int,
            kernel_size: int,
            small_kernel_size: int = 5,
            n_points: int | None = None,
            n_points_divide: int = 4,
            deploy: bool = False,
            norm_layer: type[nn.Module] = nn.BatchNorm2d,
            device=None,
            dtype=None,
    ):
        super().__init__()
        if kernel_size % 2 == 0 or small_kernel_size % 2 == 0:
            raise ValueError(
                f"{type(self).__name__} needs odd kernel sizes for 'same' padding, got {kernel_size} and "
                f'{small_kernel_size}')
        if small_kernel_size > kernel_size:
            raise ValueError(f'small_kernel_size {small_kernel_size} exceeds kernel_size {kernel_size}')
        self.channels = int(channels)
        self.kernel_size = int(kernel_size)
        self.small_kernel_size = int(small_kernel_size)
        dd = dict(device=device, dtype=dtype)
        if deploy:
            self.reparam_conv = nn.Conv2d(
                channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=True, **dd)
            self.smp = None
            self.small_conv = None
        else:
            self.reparam_conv = None
            self.smp = _conv_bn(
                SMPDepthwiseConv2d(channels, kernel_size, n_points, n_points_divide, **dd), channels, norm_layer)
            self.small_conv = _conv_bn(
                nn.Conv2d(channels, channels, small_kernel_size, padding=small_kernel_size // 2, groups=channels,
                          bias=False, **dd),
                channels, norm_layer)

    def forward(self, x: Tensor) -> Tensor:
        check_conv_input(x, 2, self.channels, type(self).__name__)
        if prefers_channels_last(x, self.kernel_size):
            x = x.contiguous(memory_format=torch.channels_last)
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        return self.smp(x) + self.small_conv(x)

    @torch.no_grad()
    def fused_kernel_bias(self) -> tuple[Tensor, Tensor]:
        """The equivalent dense depthwise kernel ``[C, 1, K, K]`` and bias ``[C]`` (eval-mode BatchNorm)."""
        if self.reparam_conv is not None:
            return self.reparam_conv.weight, self.reparam_conv.bias
        w, b = fuse_bn(self.smp.conv.generate_kernel(), None, self.smp.bn)
        ws, bs = fuse_bn(self.small_conv.conv.weight, self.small_conv.conv.bias, self.small_conv.bn)
        pad = (self.kernel_size - self.small_kernel_size) // 2
        return w + F.pad(ws, (pad, pad, pad, pad)), b + bs

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Switch to the deploy form in place (no-op when already there)."""
        if self.reparam_conv is not None:
            return
        weight, bias = self.fused_kernel_bias()
        conv = nn.Conv2d(self.channels, self.channels, self.kernel_size, padding=self.kernel_size // 2,
                         groups=self.channels, bias=True, device=weight.device, dtype=weight.dtype)
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
        self.reparam_conv = conv
        self.smp = None
        self.small_conv = None

    def extra_repr(self) -> str:
        return (f'channels={self.channels}, kernel_size={self.kernel_size}, small_kernel_size={self.small_kernel_size}'
                f', deploy={self.reparam_conv is not None}')
