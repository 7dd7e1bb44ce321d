"""Exact 1-d convolutions for sequence SMP kernels as long as the sequence, direct or through the FFT: causal
(:func:`causal_conv1d`, tap ``K - 1`` = the current step) or centred (:func:`centred_conv1d`, tap ``(K - 1) / 2`` =
the current step, 'same' length)."""
import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from .conv import _export_same_conv, fft_same_conv, mix_channels_fft
from .export_conv import export_causal_conv1d
from .mode import execution_mode, is_jit_tracing, python_only

__all__ = ['causal_conv1d', 'centred_conv1d', 'sequence_conv1d', 'next_fast_len', 'use_fft_for']

# Below about this many taps the direct convolution is faster than the FFT on CPU (30 channels, batch 32).
FFT_MIN_TAPS = 48


@functools.lru_cache(maxsize=1024)
def next_fast_len(n: int) -> int:
    """Smallest ``m >= n`` whose prime factors are 2, 3, 5 or 7 (fast sizes for pocketfft and cuFFT)."""
    n = int(n)  # plain ints even under torch.jit.trace, where sizes are 0-d tensors
    if n < 1:
        raise ValueError(f'FFT length must be positive, got {n}')
    return _next_fast_len(n)


def _is_7_smooth(m: int) -> bool:
    for p in [2, 3, 5, 7]:
        while m % p == 0:
            m = m // p
    return m == 1


def _next_fast_len(n: int) -> int:
    """:func:`next_fast_len` without the cache and the checks (TorchScript compiles this one)."""
    m = n
    while not _is_7_smooth(m):  # 7-smooth numbers are dense: a handful of steps even for long sequences
        m += 1
    return m


def use_fft_for(length: int, kernel_size: int, min_taps: int = FFT_MIN_TAPS) -> bool:
    """Whether :func:`causal_conv1d` picks the FFT path (kernel taps that can reach the output, not the input).

    (The threshold is a default argument because TorchScript cannot read module-level globals.)"""
    return min(length, kernel_size) >= min_taps


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, fft: bool | None = None) -> Tensor:
    """Causal convolution ``y[b, o, t] = bias[o] + sum_{i, k} weight[o, i, k] * x[b, i, t - (K - 1) + k]``.

    Tap ``K - 1`` of the kernel multiplies the current step, tap 0 the step ``K - 1`` in the past, and the past
    before the sequence start is zero (the official convention; its one-zero padding of even kernels changes
    nothing and is not needed here).

    Args:
        x: ``[B, C_in, L]`` floating point.
        weight: ``[C_out, C_in, K]``; ``K`` may exceed ``L`` (taps that reach before the start are unused).
        bias: optional ``[C_out]``.
        fft: ``True`` for the FFT path, ``False`` for the direct one, ``None`` to choose by size. The FFT path is
            exact (up to rounding) for every ``L`` and ``K``: it transforms at a fast length ``>= L + min(K, L) - 1``
            (no circular wrap into the kept outputs) and mixes channels in the frequency domain with one batched
            matmul. Half-precision inputs are transformed in float32.

    Returns:
        ``[B, C_out, L]``.
    """
    _check_inputs(x, weight, bias)
    mode = execution_mode()
    length, taps = x.shape[-1], weight.shape[-1]
    if is_jit_tracing():  # sizes are traced tensors there: the crop and the padding need constants
        length, taps = int(length), int(taps)
    if taps > length:  # taps older than the first input step never meet data
        weight = weight[..., taps - length:]
        taps = length
    use_fft = use_fft_for(length, taps) if fft is None else fft
    if not use_fft:
        return F.conv1d(F.pad(x, (taps - 1, 0)), weight, bias)
    if mode == 'export':  # ONNX / torch.export: real arithmetic (export_conv.py)
        return _export_causal_conv1d(x, weight, bias)
    # the lru_cache in eager only (Dynamo would trace through it and warn; TorchScript cannot compile it)
    n = _cached_fast_len(length + taps - 1) if mode == 'eager' else _next_fast_len(length + taps - 1)
    return _fft_causal_conv1d(x, weight, bias, n)


def _check_inputs(x: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    if not isinstance(x, Tensor) or not isinstance(weight, Tensor):
        raise TypeError('causal_conv1d expects tensors for x and weight')
    if x.dim() != 3:
        raise ValueError(f'causal_conv1d expects x of shape [B, C_in, L], got {list(x.shape)}')
    if weight.dim() != 3:
        raise ValueError(f'causal_conv1d expects weight of shape [C_out, C_in, K], got {list(weight.shape)}')
    if not x.is_floating_point() or not weight.is_floating_point():
        raise TypeError(f'causal_conv1d expects floating-point tensors, got x {x.dtype} and weight {weight.dtype}')
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f'weight expects {weight.shape[1]} input channels, x has {x.shape[1]}')
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0]):
        raise ValueError(f'bias must be [{weight.shape[0]}], got {list(bias.shape)}')


@python_only
def _cached_fast_len(n: int) -> int:
    return next_fast_len(n)


@python_only
def _export_causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return export_causal_conv1d(x, weight, bias)


def _fft_causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None, n: int) -> Tensor:
    """The FFT path of :func:`causal_conv1d` at transform length ``n >= L + K - 1``."""
    length = x.shape[-1]
    out_dtype = torch.promote_types(x.dtype, weight.dtype)
    compute_dtype = torch.promote_types(out_dtype, torch.float32)
    # Linear convolution with the time-reversed kernel: y[t] = sum_m w[K-1-m] x[t-m].
    xf = torch.fft.rfft(x.to(compute_dtype), n=n)  # [B, Cin, F]
    wf = torch.fft.rfft(weight.to(compute_dtype).flip(-1), n=n)  # [Cout, Cin, F]
    yf = mix_channels_fft(xf, wf)  # one batched matmul over frequencies
    y = torch.fft.irfft(yf, n=n)[..., :length]
    if bias is not None:
        y = y + bias.to(compute_dtype)[:, None]
    return y.to(out_dtype)


def centred_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, fft: bool | None = None) -> Tensor:
    """Centred ('same') convolution ``y[b, o, t] = bias[o] + sum_{i, k} weight[o, i, k] * x[b, i, t + k - (K - 1) / 2]``
    with zeros outside the sequence: tap ``(K - 1) / 2`` multiplies the current step, taps below it the past, taps
    above it the future (``K`` odd; a non-causal sequence kernel).

    Only the taps that can reach an output are used (``K`` may exceed ``2 L - 1``). ``fft``: as in
    :func:`causal_conv1d` (``None`` chooses by the number of reachable taps); the FFT path is
    :func:`~smpconv_models.layers.conv.fft_same_conv` (a transform of ``L + reach`` rounded up, no wrap-around onto
    the kept outputs), and while exporting it takes :func:`~smpconv_models.layers.export_conv.export_same_conv`'s
    real-arithmetic form.

    Returns:
        ``[B, C_out, L]``.
    """
    _check_inputs(x, weight, bias)
    length, taps = x.shape[-1], weight.shape[-1]
    if is_jit_tracing():  # sizes are traced tensors there: the crop and the padding need constants
        length, taps = int(length), int(taps)
    if taps % 2 == 0:
        raise ValueError(f'centred_conv1d needs an odd kernel length (tap (K - 1) / 2 is the current step), got {taps}')
    reach = min((taps - 1) // 2, length - 1)
    if 2 * reach + 1 < taps:  # offsets of L steps or more never meet data
        weight = weight[..., (taps - 1) // 2 - reach:(taps - 1) // 2 + reach + 1]
    use_fft = use_fft_for(length, 2 * reach + 1) if fft is None else fft
    if not use_fft:
        return F.conv1d(x, weight, bias, padding=reach)
    if execution_mode() == 'export':  # ONNX / torch.export: real arithmetic (export_conv.py)
        return _export_same_conv(x, weight, bias, 1)
    return fft_same_conv(x, weight, bias)


def sequence_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, fft: bool | None = None,
                    causal: bool = True) -> Tensor:
    """:func:`causal_conv1d` (``causal=True``) or :func:`centred_conv1d` (``causal=False``)."""
    if causal:
        return causal_conv1d(x, weight, bias, fft)
    return centred_conv1d(x, weight, bias, fft)
