"""Convolution helpers shared by the SMP layers: input checks and memory-format choice for large kernels."""
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .export_conv import export_same_conv, reachable_offsets
from .mode import computes_in_half_precision, execution_mode, python_only

__all__ = [
    'check_conv_input', 'check_float_3d', 'prefers_channels_last', 'fp16_grouped_conv_in_fp32', 'same_conv',
    'direct_same_conv', 'fft_same_conv',
    'fft_depthwise_weight_grad', 'conv_path', 'use_fft_conv', 'mix_channels_fft', 'dilate_kernel',
]


def check_conv_input(x: Tensor, ndim: int, channels: int, name: str) -> None:
    """Raise a clear error unless ``x`` is a floating-point ``[B, channels, *spatial(ndim)]`` tensor (TorchScript
    compiles it: scripted models check their inputs too)."""
    if not isinstance(x, Tensor):
        raise TypeError(f'{name} expects a torch.Tensor, got {type(x).__name__}')
    if x.dim() != ndim + 2:
        raise ValueError(
            f'{name} expects a {ndim + 2}-d input [B, C, {ndim} spatial dims], got shape {list(x.shape)}')
    if x.shape[1] != channels:
        raise ValueError(f'{name} expects {channels} input channels, got {x.shape[1]} (input shape {list(x.shape)})')
    if not x.is_floating_point():
        raise TypeError(f'{name} expects a floating-point input, got dtype {x.dtype}')


def check_float_3d(name: str, x: Tensor, layout: str) -> None:
    """Raise a clear error unless ``x`` is a 3-d floating-point tensor (``layout`` names its dims: ``[B, N, d]``)."""
    if not isinstance(x, Tensor) or x.dim() != 3:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f'{name} must be {layout}, got {shape}')
    if not x.is_floating_point():
        raise TypeError(f'{name} must be floating point, got {x.dtype}')


def prefers_channels_last(x: Tensor, kernel_size: int) -> bool:
    """Whether a large 2-d convolution of ``x`` should run in channels_last.

    On CPU, PyTorch's NCHW path for large (depthwise) kernels is far slower than oneDNN's channels_last one;
    on tiny maps (7x7) NCHW wins, so small maps and kernels stay as they are. In fp16 / bf16 (own dtype or autocast)
    PyTorch 2.14's channels_last depthwise convolution with a 17x17 or larger kernel on a 32x32 map does not return
    (minutes on one call), while its NCHW path takes milliseconds: half precision stays NCHW.
    """
    return (x.device.type == 'cpu' and kernel_size >= 7 and x.shape[-1] * x.shape[-2] >= 196
            and not computes_in_half_precision(x))


# A dense (groups=1) 'same' convolution switches to the FFT from this many kernel taps on: a 33x33 kernel on 32x32
# maps runs fwd+bwd 5-13x faster through the FFT than through oneDNN here (python -m smpconv_models.bench).
FFT_CONV_MIN_TAPS = 121


# A large depthwise kernel in training runs forward and input gradient directly and only the kernel gradient through
# the FFT (_DepthwiseSameConv) while the direct forward costs at most this many MACs per image and channel
# (H * W * taps); above, everything goes through the FFT. `python -m smpconv_models.bench --profile` times both paths
# on smpconv_t's shapes: the hybrid wins up to 29x29 on 28x28 (659 K), the FFT at 31x31 on 56x56 (3 M).
HYBRID_MAX_DIRECT_MACS = 2 ** 20


def conv_path(x: Tensor, weight: Tensor, groups: int, min_taps: int = FFT_CONV_MIN_TAPS,
              max_direct_macs: int = HYBRID_MAX_DIRECT_MACS) -> str:
    """How :func:`same_conv` computes a convolution: ``'direct'``, ``'fft'`` (:func:`fft_same_conv`) or
    ``'hybrid'`` (depthwise, direct with an FFT kernel gradient).

    Dense convolutions with large kernels take the FFT; large depthwise kernels take the FFT or the hybrid while
    autograd records (oneDNN's direct depthwise backward is slow for large kernels: see
    ``python -m smpconv_models.bench --profile``) and run directly otherwise.
    """
    taps = 1
    for k in weight.shape[2:]:
        taps *= k
    if taps < min_taps:
        return 'direct'
    if groups == 1:
        return 'fft'
    depthwise = groups == x.shape[1] and weight.shape[0] == groups and weight.shape[1] == 1
    if not (depthwise and torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        return 'direct'
    spatial = 1
    for n in x.shape[2:]:
        spatial *= n
    return 'hybrid' if spatial * taps <= max_direct_macs else 'fft'


def use_fft_conv(x: Tensor, weight: Tensor, groups: int, min_taps: int = FFT_CONV_MIN_TAPS) -> bool:
    """Whether :func:`same_conv` takes the all-FFT path (:func:`conv_path` is ``'fft'``)."""
    return conv_path(x, weight, groups, min_taps) == 'fft'


def _fft_size(n: int) -> int:
    """The smallest ``2^a 3^b >= n`` with ``a >= 1``: odd sizes and 5- or 7-factor sizes of batched 2-d real FFTs
    were markedly slower in MKL on our test machine."""
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


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward hands on a contiguous gradient (for :func:`mix_channels_fft`'s matmul backward)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad.contiguous()


@python_only  # eager and torch.compile (Dynamo traces the Function); TorchScript cannot compile it
def _contiguous_grad(x: Tensor) -> Tensor:
    return _ContiguousGrad.apply(x)


def mix_channels_fft(xf: Tensor, wf: Tensor) -> Tensor:
    """Per-frequency channel mixing ``y[b, o, f] = sum_i xf[b, i, f] * wf[o, i, f]`` (``[B, Cin, *F]`` and
    ``[Cout, Cin, *F]`` to ``[B, Cout, *F]``) as one batched matmul over frequencies.

    The operands are copied to contiguous ``[F, B, Cin]`` / ``[F, Cin, Cout]`` first, and so is the output's gradient
    in backward: a batch of matrices laid out with unit stride along the frequency (batch) axis makes PyTorch's CPU
    complex matmul copy every matrix separately (``python -m smpconv_models.bench --profile`` times both ways).
    """
    fshape = list(xf.shape[2:])
    xm = xf.flatten(2).permute(2, 0, 1).contiguous()
    wm = wf.flatten(2).permute(2, 1, 0).contiguous()
    ym = torch.bmm(xm, wm)  # [F, B, Cout]
    if ym.requires_grad and execution_mode() in ('eager', 'compile'):
        ym = _contiguous_grad(ym)
    return ym.permute(1, 2, 0).reshape([xf.shape[0], wf.shape[0]] + fshape)  # noqa: RUF005 (TorchScript)


def fft_same_conv(x: Tensor, weight: Tensor, bias: Tensor | None = None, groups: int = 1) -> Tensor:
    """'Same'-padded N-d cross-correlation through the FFT (exact up to rounding, any sizes), dense (``groups=1``)
    or depthwise (``groups = C``).

    Only kernel offsets ``|d| < H`` reach an output of an ``H``-long axis, so the kernel is cropped to them and laid
    out circularly (offset ``d`` at index ``d mod n``); a transform of size ``n >= H + max|d|`` (rounded up by
    :func:`_fft_size`) then has no wrap-around onto the kept outputs: for a 27x27 kernel on 14x14 maps, 32x32 instead
    of the 40x40 of plain zero padding. Dense convolutions mix channels per frequency (:func:`mix_channels_fft`),
    depthwise ones multiply elementwise. Half-precision inputs are transformed in float32; a channels_last input
    gives a channels_last output.
    """
    nd = weight.dim() - 2
    sizes: list[int] = []
    dims: list[int] = []
    out_dtype = torch.promote_types(x.dtype, weight.dtype)
    compute = torch.promote_types(out_dtype, torch.float32)
    w = weight.to(compute)
    for d in range(nd):
        dim, length = 2 + d, x.shape[2 + d]
        centre, before, after = reachable_offsets(length, weight.shape[2 + d])
        n = _fft_size(length + max(before, after))
        w = w.narrow(dim, centre - before, before + after + 1)
        pad = [0, 0] * (nd - 1 - d) + [0, n - (before + after + 1)]  # F.pad lists the last dim first
        w = torch.roll(F.pad(w, pad), -before, dim)  # offset d at index d mod n
        sizes.append(n)
        dims.append(dim)
    xf = torch.fft.rfftn(x.to(compute).contiguous(), s=sizes, dim=dims)
    wf = torch.fft.rfftn(w, dim=dims).conj()  # correlation: y = irfft(X * conj(W))
    if groups == 1:
        yf = mix_channels_fft(xf, wf)
    else:
        yf = xf * wf.transpose(0, 1)  # depthwise: [B, C, *F] * [1, C, *F]
    y = torch.fft.irfftn(yf, s=sizes, dim=dims)
    for d in range(nd):
        y = y.narrow(2 + d, 0, x.shape[2 + d])
    if bias is not None:
        y = y + bias.to(compute).reshape([-1] + [1] * nd)
    if nd == 2 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return y.to(dtype=out_dtype, memory_format=torch.channels_last)  # the input's layout
    return y.to(out_dtype)


def fft_depthwise_weight_grad(x: Tensor, grad_y: Tensor, kernel_size: Sequence[int]) -> Tensor:
    """Gradient of a depthwise 'same' cross-correlation w.r.t. its ``[C, 1, *kernel_size]`` kernel, through the FFT:
    ``g[c, d] = sum_{b, o} grad_y[b, c, o] x[b, c, o + d]`` for the reachable offsets ``d`` (others are zero), the
    batch summed in the frequency domain so only a ``[C, *n]`` transform is inverted."""
    nd = len(kernel_size)
    dims = list(range(2, 2 + nd))
    reach = [reachable_offsets(x.shape[2 + d], kernel_size[d]) for d in range(nd)]
    sizes = [_fft_size(x.shape[2 + d] + max(before, after)) for d, (_, before, after) in enumerate(reach)]
    compute = torch.promote_types(grad_y.dtype, torch.float32)
    xf = torch.fft.rfftn(x.to(compute).contiguous(), s=sizes, dim=dims)
    gf = torch.fft.rfftn(grad_y.to(compute).contiguous(), s=sizes, dim=dims)
    r = torch.fft.irfftn((xf * gf.conj()).sum(0, keepdim=True), s=sizes, dim=dims)  # r[d mod n]
    for d, (centre, before, after) in enumerate(reach):
        r = torch.roll(r, before, 2 + d).narrow(2 + d, 0, before + after + 1)  # offsets -before..after
        pad = [0, 0] * (nd - 1 - d) + [centre - before, kernel_size[d] - 1 - centre - after]
        r = F.pad(r, pad)
    return r.transpose(0, 1).to(grad_y.dtype)


def dilate_kernel(weight: Tensor, dilation: int) -> Tensor:
    """The dense kernel of a ``dilation``-dilated one: ``dilation - 1`` zeros between neighbouring taps on every
    spatial axis (``K`` taps span ``dilation * (K - 1) + 1``); ``weight`` itself when ``dilation == 1``. A 'same'
    convolution with it equals the dilated convolution exactly (the FFT and export forms take this route)."""
    if dilation == 1:
        return weight
    w = weight
    for axis in range(2, weight.dim()):  # interleave zeros along the axis (out-of-place: traced and exported too)
        k = w.shape[axis]
        zeros = w.new_zeros(list(w.shape[:axis + 1]) + [dilation - 1] + list(w.shape[axis + 1:]))  # noqa: RUF005
        w = torch.cat([w.unsqueeze(axis + 1), zeros], axis + 1).flatten(axis, axis + 1)
        w = w.narrow(axis, 0, dilation * (k - 1) + 1)
    return w


class _DepthwiseSameConv(torch.autograd.Function):
    """Depthwise 'same' conv: forward and input gradient direct (oneDNN is fast there), kernel gradient through the
    FFT (oneDNN's large-kernel depthwise weight gradient is not; ``python -m smpconv_models.bench --profile`` times
    the three ways). A dilated kernel's gradient is the zero-inserted dense kernel's (:func:`dilate_kernel`) at its
    taps."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, dilation: int = 1) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.dilation = dilation
        return _direct_depthwise(x, weight, dilation)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: Tensor):
        x, weight = ctx.saved_tensors
        d = ctx.dilation
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:  # the transposed conv
            grad_x = _direct_depthwise(grad_y, weight.flip(list(range(2, weight.dim()))), d)
        if ctx.needs_input_grad[1]:
            if d == 1:
                grad_w = fft_depthwise_weight_grad(x, grad_y, weight.shape[2:])
            else:
                dense = fft_depthwise_weight_grad(x, grad_y, [d * (k - 1) + 1 for k in weight.shape[2:]])
                grad_w = dense[(slice(None), slice(None)) + (slice(None, None, d),) * (weight.dim() - 2)]
        return grad_x, grad_w, None


@python_only
def _export_same_conv(x: Tensor, weight: Tensor, bias: Tensor | None, groups: int, dilation: int) -> Tensor:
    return export_same_conv(x, dilate_kernel(weight, dilation), bias, groups, direct_same_conv)


@python_only  # eager and torch.compile; TorchScript cannot compile autograd Functions (it runs the direct conv)
def _hybrid_depthwise(x: Tensor, weight: Tensor, bias: Tensor | None, dilation: int) -> Tensor:
    y = _DepthwiseSameConv.apply(x, weight, dilation)
    return y if bias is None else y + bias.reshape([-1] + [1] * (weight.dim() - 2))


def _direct_depthwise(x: Tensor, weight: Tensor, dilation: int = 1) -> Tensor:
    return direct_same_conv(x, weight, None, x.shape[1], dilation)


def direct_same_conv(x: Tensor, weight: Tensor, bias: Tensor | None, groups: int, dilation: int = 1) -> Tensor:
    """PyTorch's own 'same' convolution (``dilation``-dilated, padding ``dilation * (K // 2)``), large 2-d kernels in
    channels_last (:func:`prefers_channels_last`), large grouped fp16 kernels on CPU in fp32
    (:func:`fp16_grouped_conv_in_fp32`); both rules read the ``K`` taps, so they hold for dilated kernels too."""
    if groups > 1 and fp16_grouped_conv_in_fp32(x, weight):
        return _fp32_same_conv(x, weight, bias, groups, dilation)
    return _torch_same_conv(x, weight, bias, groups, dilation)


def _torch_same_conv(x: Tensor, weight: Tensor, bias: Tensor | None, groups: int, dilation: int = 1) -> Tensor:
    nd = weight.dim() - 2
    padding = [dilation * (k // 2) for k in weight.shape[2:]]
    if nd == 1:
        return F.conv1d(x, weight, bias, padding=padding, dilation=dilation, groups=groups)
    if nd == 2:
        if prefers_channels_last(x, weight.shape[-1]):
            x = x.contiguous(memory_format=torch.channels_last)
            weight = weight.contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, weight, bias, padding=padding, dilation=dilation, groups=groups)
    return F.conv3d(x, weight, bias, padding=padding, dilation=dilation, groups=groups)


def fp16_grouped_conv_in_fp32(x: Tensor, weight: Tensor) -> bool:
    """Whether a grouped CPU convolution of ``x`` computes in fp32 instead of fp16 (own dtype or fp16 autocast):
    PyTorch 2.14's fp16 depthwise convolution on CPU does not return (minutes on one call) for kernels of 17 or more
    taps along a dim (1-d on 256 steps, 2-d on 32x32 maps; bf16 and fp32 take milliseconds). The rule reads the taps,
    not the span, and holds at any dilation (dilated fp16 kernels returned where tried, but one rule is kept)."""
    if x.device.type != 'cpu' or max(weight.shape[2:]) < 17:
        return False
    return x.dtype == torch.float16 or (computes_in_half_precision(x) and _autocast_dtype() == torch.float16)


@python_only
def _autocast_dtype():
    return torch.get_autocast_dtype('cpu')


def _fp32_same_conv(x: Tensor, weight: Tensor, bias: Tensor | None, groups: int, dilation: int = 1) -> Tensor:
    """:func:`direct_same_conv` in fp32 (autocast off), the result in fp16 (as fp16 autocast would give)."""
    if bias is not None:
        bias = bias.float()
    if execution_mode() == 'script':  # no autocast under TorchScript
        return _torch_same_conv(x.float(), weight.float(), bias, groups, dilation).half()
    return _fp32_same_conv_autocast_off(x, weight, bias, groups, dilation)


@python_only  # TorchScript cannot compile the autocast block (an internal assert in PyTorch 2.14's script compiler)
def _fp32_same_conv_autocast_off(x: Tensor, weight: Tensor, bias: Tensor | None, groups: int, dilation: int) -> Tensor:
    with torch.autocast('cpu', enabled=False):
        return _torch_same_conv(x.float(), weight.float(), bias, groups, dilation).half()


def same_conv(x: Tensor, weight: Tensor, bias: Tensor | None = None, groups: int = 1, dilation: int = 1) -> Tensor:
    """'Same'-padded N-d cross-correlation (odd kernel sizes, 1-3 spatial dims), optionally ``dilation``-dilated
    (padding ``dilation * (K // 2)``).

    Large dense kernels, and large depthwise ones in training, go through the FFT (:func:`fft_same_conv`, or for
    depthwise kernels on small maps only their kernel gradient: :func:`conv_path`); other large 2-d depthwise kernels
    run in channels_last. The path is chosen on the ``K`` taps that are multiplied (a direct dilated conv costs what
    an undilated one does); the FFT and export forms convolve with the zero-inserted kernel (:func:`dilate_kernel`).
    """
    path = conv_path(x, weight, groups)
    if path == 'direct':
        return direct_same_conv(x, weight, bias, groups, dilation)
    mode = execution_mode()
    if mode == 'export':  # ONNX / torch.export: real arithmetic (export_conv.py)
        return _export_same_conv(x, weight, bias, groups, dilation)
    if path == 'hybrid' and mode in ('eager', 'compile'):
        return _hybrid_depthwise(x, weight, bias, dilation)
    if path == 'fft':
        return fft_same_conv(x, dilate_kernel(weight, dilation), bias, groups)
    return direct_same_conv(x, weight, bias, groups, dilation)
