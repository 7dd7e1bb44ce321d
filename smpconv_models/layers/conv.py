"""Convolution helpers shared by the SMP layers: input checks and memory-format choice for large kernels."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ['check_conv_input', 'prefers_channels_last', 'same_conv', 'fft_same_conv', 'use_fft_conv']


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


# A dense (groups=1) 'same' convolution switches to the FFT from this many kernel taps on: a 33x33 kernel on 32x32
# maps runs fwd+bwd 5-13x faster through the FFT than through oneDNN here (python -m smpconv_models.bench).
FFT_CONV_MIN_TAPS = 121


def use_fft_conv(x: Tensor, weight: Tensor, groups: int, min_taps: int = FFT_CONV_MIN_TAPS) -> bool:
    """Whether :func:`same_conv` takes the FFT path: dense convolutions with large kernels, and large depthwise
    kernels while autograd records (the direct depthwise backward dominates a training step: 31x31 on
    [8, 96, 56, 56] fwd+bwd took 2.0 s in channels_last and 0.15 s through the FFT here)."""
    taps = 1
    for k in weight.shape[2:]:
        taps *= k
    if taps < min_taps:
        return False
    if groups == 1:
        return True
    depthwise = groups == x.shape[1] and weight.shape[0] == groups and weight.shape[1] == 1
    return depthwise and torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)


def _fft_size(n: int) -> int:
    """The smallest ``2^a 3^b >= n`` with ``a >= 1``: odd and 5- or 7-factor sizes of batched 2-d real FFTs ran up to
    4x slower here (a 14x14 map padded to 27: 26 ms, to 32: 13 ms; 71: 67 ms, 72: 16 ms)."""
    best = 2
    while best < n:
        best *= 2
    p3 = 1
    while p3 < n:
        m = p3 * 2
        while m < n:
            m *= 2
        best = min(best, m)
        p3 *= 3
    return best


def fft_same_conv(x: Tensor, weight: Tensor, bias: Tensor | None = None, groups: int = 1) -> Tensor:
    """'Same'-padded N-d cross-correlation through the FFT (exact up to rounding, any sizes), dense (``groups=1``)
    or depthwise (``groups = C``).

    Only kernel offsets ``|d| < H`` reach an output of an ``H``-long axis, so the kernel is cropped to them and laid
    out circularly (offset ``d`` at index ``d mod n``); a transform of size ``n >= H + max|d|`` (rounded up by
    :func:`_fft_size`) then has no wrap-around onto the kept outputs: for a 27x27 kernel on 14x14 maps, 32x32 instead
    of the 40x40 of plain zero padding. Dense convolutions mix channels per frequency with one batched complex matmul,
    depthwise ones multiply elementwise. Half-precision inputs are transformed in float32.
    """
    nd = weight.dim() - 2
    sizes: list[int] = []
    dims: list[int] = []
    perm_x: list[int] = []
    perm_w: list[int] = []
    perm_y: list[int] = [nd, nd + 1]
    out_dtype = torch.result_type(x, weight)
    compute = torch.promote_types(out_dtype, torch.float32)
    w = weight.to(compute)
    for d in range(nd):
        dim, length, taps = 2 + d, x.shape[2 + d], weight.shape[2 + d]
        centre = taps // 2  # tap of offset 0 ('same' padding)
        before, after = min(centre, length - 1), min(taps - 1 - centre, length - 1)  # reachable offsets
        n = _fft_size(length + max(before, after))
        w = w.narrow(dim, centre - before, before + after + 1)
        pad = [0, 0] * (nd - 1 - d) + [0, n - (before + after + 1)]  # F.pad lists the last dim first
        w = torch.roll(F.pad(w, pad), -before, dim)  # offset d at index d mod n
        sizes.append(n)
        dims.append(dim)
        perm_x.append(dim)
        perm_w.append(dim)
        perm_y.append(d)
    perm_x += [0, 1]  # [*F, B, Cin]
    perm_w += [1, 0]  # [*F, Cin, Cout]
    xf = torch.fft.rfftn(x.to(compute).contiguous(), s=sizes, dim=dims)
    wf = torch.fft.rfftn(w, dim=dims).conj()  # correlation: y = irfft(X * conj(W))
    if groups == 1:
        yf = torch.matmul(xf.permute(perm_x), wf.permute(perm_w)).permute(perm_y)
    else:
        yf = xf * wf.transpose(0, 1)  # depthwise: [B, C, *F] * [1, C, *F]
    y = torch.fft.irfftn(yf, s=sizes, dim=dims)
    for d in range(nd):
        y = y.narrow(2 + d, 0, x.shape[2 + d])
    if bias is not None:
        y = y + bias.to(compute).reshape([-1] + [1] * nd)
    return y.to(out_dtype)


def same_conv(x: Tensor, weight: Tensor, bias: Tensor | None = None, groups: int = 1) -> Tensor:
    """'Same'-padded N-d cross-correlation (odd kernel sizes, 1-3 spatial dims).

    Large dense kernels, and large depthwise ones in training, go through the FFT (:func:`fft_same_conv`); other
    large 2-d depthwise kernels run in channels_last.
    """
    nd = weight.dim() - 2
    if use_fft_conv(x, weight, groups):
        return fft_same_conv(x, weight, bias, groups)
    padding = [k // 2 for k in weight.shape[2:]]
    if nd == 1:
        return F.conv1d(x, weight, bias, padding=padding, groups=groups)
    if nd == 2:
        if prefers_channels_last(x, weight.shape[-1]):
            x = x.contiguous(memory_format=torch.channels_last)
            weight = weight.contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, weight, bias, padding=padding, groups=groups)
    return F.conv3d(x, weight, bias, padding=padding, groups=groups)
