"""Export forms of the FFT convolutions: real arithmetic only, chosen while a graph is captured for export.

ONNX has no complex tensors, the TorchScript-based ONNX exporter has no form for ``torch.fft`` and the dynamo
exporter none for a complex batched matmul. While exporting (:func:`~smpconv_models.layers.mode.execution_mode` is
``'export'``: ``torch.onnx.export`` with either exporter, ``torch.export.export``),
:func:`~smpconv_models.layers.conv.same_conv` and :func:`~smpconv_models.layers.causal_conv.causal_conv1d` take one
of these forms instead (same values up to rounding; the eager, training and ``torch.compile`` paths are untouched):

* ``'dft'``: the transforms as ONNX's ``DFT`` operator (``torch.fft`` under the dynamo exporter, a symbolic under
  the TorchScript one) at a power-of-two length (onnxruntime runs a radix-2 FFT there and a quadratic, less exact
  DFT at other lengths), spectra as ``[..., 2]`` real tensors, the channel mixing one real batched matmul;
* ``'matmul'``: the transforms as real matmuls with cosine / sine bases (only the taps and outputs that are used),
  at the exact linear-convolution length;
* ``'direct'``: the direct convolution.

``'auto'`` (the default) picks per convolution from onnxruntime timings of every family
(``python -m smpconv_models.bench --rows onnx_fft_methods``, recorded in ``BENCHMARKS.md``): ``'matmul'`` while its
bases stay small (:data:`MATMUL_MAX_BASIS`), else ``'dft'``. :func:`export_fft_method` overrides it.
"""
from __future__ import annotations

import contextvars
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .mode import is_torchscript_onnx_export

__all__ = [
    'export_fft_method', 'reachable_offsets', 'resolve_export_method', 'EXPORT_FFT_METHODS', 'MATMUL_MAX_BASIS',
    'export_causal_conv1d', 'export_same_conv', 'rfft_real', 'irfft_real', 'fft_real', 'mix_channels_real',
]

EXPORT_FFT_METHODS = ('auto', 'dft', 'matmul', 'direct')

# 'auto' takes the matmul form while its largest basis holds at most this many values (float32: 16 MB), the DFT
# operator above (the 16000-step kernels of smpconv_tcn_speech_raw would need 2 GB of bases).
MATMUL_MAX_BASIS = 2 ** 22

_METHOD: contextvars.ContextVar[str] = contextvars.ContextVar('smpconv_export_fft_method', default='auto')


@contextmanager
def export_fft_method(method: str) -> Iterator[None]:
    """Export the FFT convolutions inside this context as ``method`` (``'auto'``, ``'dft'``, ``'matmul'``,
    ``'direct'``; see the module docstring)."""
    if method not in EXPORT_FFT_METHODS:
        raise ValueError(f'unknown FFT export method {method!r}; use one of {", ".join(EXPORT_FFT_METHODS)}')
    token = _METHOD.set(method)
    try:
        yield
    finally:
        _METHOD.reset(token)


def resolve_export_method(basis_values: int) -> str:
    """The form a convolution exports as: the context's method, ``'auto'`` resolved by the size of the matmul
    form's largest basis (values)."""
    method = _METHOD.get()
    if method == 'auto':
        return 'matmul' if basis_values <= MATMUL_MAX_BASIS else 'dft'
    return method


def reachable_offsets(length: int, taps: int) -> tuple[int, int, int]:
    """Kernel centre and the offsets before / after it that reach an output of a ``length``-long 'same' conv."""
    centre = taps // 2
    return centre, min(centre, length - 1), min(taps - 1 - centre, length - 1)


def _pow2(n: int) -> int:
    return 1 << max(1, math.ceil(math.log2(n)))


# ------------------------------------------------------------------------------- transforms on the last axis

class _OnnxDFT(torch.autograd.Function):
    """``torch.fft`` on the last axis with an ONNX ``DFT`` symbolic (the TorchScript exporter has none)."""

    @staticmethod
    def forward(ctx, x: Tensor, n: int, inverse: bool, onesided: bool) -> Tensor:
        if onesided:
            return torch.view_as_real(torch.fft.rfft(x, n=n))
        z = torch.view_as_complex(x.contiguous())
        return torch.view_as_real(torch.fft.ifft(z, n=n) if inverse else torch.fft.fft(z, n=n))

    @staticmethod
    def symbolic(g, x, n: int, inverse: bool, onesided: bool):
        if onesided:
            x = g.op('Unsqueeze', x, g.op('Constant', value_t=torch.tensor([-1], dtype=torch.int64)))
        length = g.op('Constant', value_t=torch.tensor(n, dtype=torch.int64))
        attrs = dict(inverse_i=int(inverse), onesided_i=int(onesided))
        if g.opset >= 20:
            return g.op('DFT', x, length, g.op('Constant', value_t=torch.tensor(-2, dtype=torch.int64)), **attrs)
        return g.op('DFT', x, length, axis_i=-2, **attrs)


def rfft_real(x: Tensor, n: int) -> Tensor:
    """``view_as_real(rfft(x, n))`` on the last axis: ``[..., L]`` to ``[..., n // 2 + 1, 2]``."""
    if is_torchscript_onnx_export():
        return _OnnxDFT.apply(x, n, False, True)
    return torch.view_as_real(torch.fft.rfft(x, n=n))


def fft_real(z: Tensor, n: int, inverse: bool = False) -> Tensor:
    """Complex DFT (``inverse``: with ``1/n``) on the second-last axis of a ``[..., m, 2]`` real-form tensor,
    zero-padded to ``n``."""
    if is_torchscript_onnx_export():
        return _OnnxDFT.apply(z, n, inverse, False)
    # zero-pad in the real form: the dynamo exporter has no ONNX form for padding a complex tensor
    c = torch.view_as_complex(F.pad(z, (0, 0, 0, n - int(z.shape[-2]))).contiguous())
    return torch.view_as_real(torch.fft.ifft(c) if inverse else torch.fft.fft(c))


def irfft_real(z: Tensor, n: int) -> Tensor:
    """``irfft(view_as_complex(z), n)`` on the second-last axis: ``[..., n // 2 + 1, 2]`` to ``[..., n]``."""
    if is_torchscript_onnx_export():
        # the full Hermitian spectrum, then an inverse complex DFT (ONNX's DFT has no one-sided inverse)
        mirror = z.narrow(-2, 1, n - int(z.shape[-2])).flip(-2) * torch.tensor([1.0, -1.0], dtype=z.dtype)
        return _OnnxDFT.apply(torch.cat([z, mirror], -2), n, True, False).select(-1, 0)
    return torch.fft.irfft(torch.view_as_complex(z.contiguous()), n=n)


def _bases(n: int, n_in: int, n_freq: int, dtype: torch.dtype, device) -> tuple[Tensor, Tensor]:
    """``cos`` and ``sin`` of ``2 pi t f / n`` for ``t < n_in``, ``f < n_freq``, computed in float64 with numpy so
    that exporters record them as constants (traced tensor ops would be recomputed on every inference)."""
    t = np.arange(n_in, dtype=np.int64)[:, None]
    f = np.arange(n_freq, dtype=np.int64)[None, :]
    angle = (t * f % n) * (2 * math.pi / n)  # exact phase for large t * f
    return (torch.from_numpy(np.cos(angle)).to(device=device, dtype=dtype),
            torch.from_numpy(np.sin(angle)).to(device=device, dtype=dtype))


def _rfft_matmul(x: Tensor, n: int) -> Tensor:
    """:func:`rfft_real` as one real matmul with a ``[L, 2F]`` basis."""
    freqs = n // 2 + 1
    cos, sin = _bases(n, int(x.shape[-1]), freqs, x.dtype, x.device)
    out = x @ torch.cat([cos, -sin], 1)  # [..., 2F]
    return out.unflatten(-1, (2, freqs)).transpose(-1, -2)


def _fft_matmul(z: Tensor, n: int, n_out: int, inverse: bool) -> Tensor:
    """:func:`fft_real` (first ``n_out`` outputs) as one real matmul: ``[..., m, 2]`` to ``[..., n_out, 2]``."""
    cos, sin = _bases(n, int(z.shape[-2]), n_out, z.dtype, z.device)
    if inverse:
        cos, sin = cos / n, -sin / n
    # (a + ib)(c - is) = (ac + bs) + i(bc - as)
    basis = torch.cat([torch.cat([cos, -sin], 1), torch.cat([sin, cos], 1)], 0)  # [2m, 2 n_out]
    flat = z.transpose(-1, -2).flatten(-2)  # [..., (re | im) x m]
    return (flat @ basis).unflatten(-1, (2, n_out)).transpose(-1, -2)


def _irfft_matmul(z: Tensor, n: int, n_out: int) -> Tensor:
    """:func:`irfft_real` (first ``n_out`` outputs) as one real matmul with a ``[2F, n_out]`` basis."""
    freqs = int(z.shape[-2])
    cos, sin = _bases(n, freqs, n_out, z.dtype, z.device)
    scale = np.full((freqs, 1), 2.0 / n)
    scale[0] = 1.0 / n
    if n % 2 == 0:
        scale[-1] = 1.0 / n
    weight = torch.from_numpy(scale).to(device=z.device, dtype=z.dtype)
    basis = torch.cat([cos * weight, -sin * weight], 0)  # y = sum_f w_f (re cos - im sin)
    return z.transpose(-1, -2).flatten(-2) @ basis


# -------------------------------------------------------------------------------------------- convolutions

def mix_channels_real(xr: Tensor, wr: Tensor) -> Tensor:
    """Real form of :func:`~smpconv_models.layers.conv.mix_channels_fft`: ``[B, Cin, *F, 2]`` spectra and
    ``[Cout, Cin, *F, 2]`` to ``[B, Cout, *F, 2]``, as one real batched matmul over frequencies (the complex product
    ``(a + ib)(c + id)`` as ``[a, b] @ [[c, d], [-d, c]]``)."""
    cout = wr.shape[0]
    fshape = list(xr.shape[2:-1])
    xm = xr.flatten(2, -2).permute(2, 0, 3, 1).flatten(2)  # [F, B, (re | im) x Cin]
    w = wr.flatten(2, -2)
    wre, wim = w[..., 0].permute(2, 1, 0), w[..., 1].permute(2, 1, 0)  # [F, Cin, Cout]
    wm = torch.cat([torch.cat([wre, wim], 2), torch.cat([-wim, wre], 2)], 1)  # [F, 2 Cin, 2 Cout]
    ym = torch.bmm(xm, wm)  # [F, B, (re | im) x Cout]
    return ym.unflatten(2, (2, cout)).permute(1, 3, 0, 2).reshape([-1, cout] + fshape + [2])  # noqa: RUF005


def export_causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """:func:`~smpconv_models.layers.causal_conv.causal_conv1d` (kernel already cropped to ``K <= L``) in its
    export form (module docstring)."""
    length, taps = int(x.shape[-1]), int(weight.shape[-1])  # plain ints under torch.jit.trace too
    freqs = (length + taps) // 2
    method = resolve_export_method(2 * max(length, taps) * freqs)
    if method == 'direct':
        return F.conv1d(F.pad(x, (taps - 1, 0)), weight, bias)
    out_dtype = torch.promote_types(x.dtype, weight.dtype)
    compute = torch.promote_types(out_dtype, torch.float32)
    x, w = x.to(compute), weight.to(compute).flip(-1)
    if method == 'matmul':
        n = length + taps - 1  # linear convolution, no wrap-around onto the kept outputs
        y = _irfft_matmul(mix_channels_real(_rfft_matmul(x, n), _rfft_matmul(w, n)), n, length)
    else:
        n = _pow2(length + taps - 1)
        y = irfft_real(mix_channels_real(rfft_real(x, n), rfft_real(w, n)), n).narrow(-1, 0, length)
    if bias is not None:
        y = y + bias.to(compute)[:, None]
    return y.to(out_dtype)


def export_same_conv(x: Tensor, weight: Tensor, bias: Tensor | None, groups: int,
                     direct: Callable[[Tensor, Tensor, Tensor | None, int], Tensor]) -> Tensor:
    """A 'same' cross-correlation (1-d or 2-d, dense or depthwise) in its export form; ``direct(x, weight, bias,
    groups)`` is the direct one. Only offsets that reach an output are transformed (as in
    :func:`~smpconv_models.layers.conv.fft_same_conv`)."""
    nd = weight.dim() - 2
    lengths = [int(x.shape[2 + d]) for d in range(nd)]  # plain ints under torch.jit.trace too
    reach = [reachable_offsets(lengths[d], int(weight.shape[2 + d])) for d in range(nd)]
    exact = [lengths[d] + max(before, after) for d, (_, before, after) in enumerate(reach)]
    method = resolve_export_method(max(2 * n * (n // 2 + 1) for n in exact))
    if method == 'direct' or nd > 2:
        return direct(x, weight, bias, groups)
    sizes = exact if method == 'matmul' else [_pow2(n) for n in exact]
    out_dtype = torch.promote_types(x.dtype, weight.dtype)
    compute = torch.promote_types(out_dtype, torch.float32)
    w = weight.to(compute)
    for d, (centre, before, after) in enumerate(reach):  # offset d at index d mod n (circular layout)
        dim, n = 2 + d, sizes[d]
        w = w.narrow(dim, centre - before, before + after + 1)
        w = torch.roll(F.pad(w, [0, 0] * (nd - 1 - d) + [0, n - (before + after + 1)]), -before, dim)
    xf = _spectrum(x.to(compute), sizes, method)
    wf = _spectrum(w, sizes, method) * torch.tensor([1.0, -1.0], dtype=compute)  # conj: correlation
    if groups == 1:
        yf = mix_channels_real(xf, wf)
    else:  # depthwise: elementwise complex product with [1, C, *F, 2]
        wf = wf.transpose(0, 1)
        re = xf[..., 0] * wf[..., 0] - xf[..., 1] * wf[..., 1]
        im = xf[..., 0] * wf[..., 1] + xf[..., 1] * wf[..., 0]
        yf = torch.stack([re, im], -1)
    y = _inverse_spectrum(yf, sizes, lengths, method)
    if bias is not None:
        y = y + bias.to(compute).reshape([-1] + [1] * nd)
    return y.to(out_dtype)


def _spectrum(x: Tensor, sizes: list[int], method: str) -> Tensor:
    """Real-form N-d real DFT (1-d or 2-d): ``[..., *spatial]`` to ``[..., F_last, *F_first, 2]`` (the last axis
    one-sided and first; the layout only has to agree between input and kernel)."""
    rfft = _rfft_matmul if method == 'matmul' else rfft_real
    z = rfft(x, sizes[-1])  # [..., H, F2, 2]
    if len(sizes) == 1:
        return z
    z = z.transpose(-3, -2)  # [..., F2, H, 2]
    if method == 'matmul':
        return _fft_matmul(z, sizes[0], sizes[0], False)
    return fft_real(z, sizes[0])


def _inverse_spectrum(z: Tensor, sizes: list[int], lengths: list[int], method: str) -> Tensor:
    """Inverse of :func:`_spectrum`, keeping the first ``lengths`` outputs per axis."""
    if len(sizes) == 2:
        if method == 'matmul':
            z = _fft_matmul(z, sizes[0], lengths[0], True)
        else:
            z = fft_real(z, sizes[0], inverse=True).narrow(-2, 0, lengths[0])
        z = z.transpose(-3, -2)  # [..., H, F2, 2]
    if method == 'matmul':
        return _irfft_matmul(z, sizes[-1], lengths[-1])
    return irfft_real(z, sizes[-1]).narrow(-1, 0, lengths[-1])
