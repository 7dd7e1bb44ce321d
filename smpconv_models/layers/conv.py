"""Convolution helpers shared by the SMP layers: input checks and memory-format choice for large kernels."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ['check_conv_input', 'prefers_channels_last', 'same_conv']


def check_conv_input(x: Tensor, ndim: int, channels: int, name: str) -> None:
    """Raise a clear error unless ``x`` is a floating-point ``[B, channels, *spatial(ndim)]`` tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(f'{name} expects a torch.Tensor, got {type(x).__name__}')
    if x.dim() != ndim + 2:
        raise ValueError(
            f'{name} expects a {ndim + 2}-d input [B, C, {ndim} spatial dims], got shape {tuple(x.shape)}')
    if x.shape[1] != channels:
        raise ValueError(f'{name} expects {channels} input channels, got {x.shape[1]} (input shape {tuple(x.shape)})')
    if not x.is_floating_point():
        raise TypeError(f'{name} expects a floating-point input, got dtype {x.dtype}')


def prefers_channels_last(x: Tensor, kernel_size: int) -> bool:
    """Whether a large 2-d convolution of ``x`` should run in channels_last.

    On CPU, PyTorch's NCHW path for large (depthwise) kernels is far slower than oneDNN's channels_last one;
    on tiny maps (7x7) NCHW wins, so small maps and kernels stay as they are.
    """
    return x.device.type == 'cpu' and kernel_size >= 7 and x.shape[-1] * x.shape[-2] >= 196


def same_conv(x: Tensor, weight: Tensor, bias: Tensor | None = None, groups: int = 1) -> Tensor:
    """'Same'-padded N-d cross-correlation (odd kernel sizes, 1-3 spatial dims), large 2-d kernels in channels_last."""
    nd = weight.dim() - 2
    padding = [k // 2 for k in weight.shape[2:]]
    if nd == 1:
        return F.conv1d(x, weight, bias, padding=padding, groups=groups)
    if nd == 2:
        if prefers_channels_last(x, weight.shape[-1]):
            x = x.contiguous(memory_format=torch.channels_last)
            weight = weight.contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, weight, bias, padding=padding, groups=groups)
    return F.conv3d(x, weight, bias, padding=padding, groups=groups)
