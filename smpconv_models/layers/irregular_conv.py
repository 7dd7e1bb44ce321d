"""Continuous causal convolution of irregularly sampled series: the sequence SMP kernels evaluated at the actual
timestamp differences (Kim & Park, CVPR 2023, Sec. 4.1; the parametric continuous convolution of Wang et al.,
CVPR 2018, Eq. 2), beside the grid layers they share their parameters with.

Series are ``x`` ``[B, C, L]`` with ``timestamps`` ``[B, L]`` (in grid steps: one unit of time is one tap of the
grid kernel) and an observed-``mask`` ``[B, L]`` (bool). A causal conv of kernel length ``K`` becomes

    h_i = sum_{j observed, 0 <= t_i - t_j <= K - 1} k(t_i - t_j) x_j,

a plain sum over the past observations (no ``1 / |N(x_i)|``: on a full grid this *is* the grid conv). The SMP
kernel (:class:`~smpconv_models.layers.smp_conv.SMPCausalConv1d`, Eq. 1 with its point average) is evaluated at
kernel coordinate ``1 - 2 (t_i - t_j) / (K - 1)`` (tap ``K - 1`` = lag 0), the small branch's taps become the
piecewise-linear interpolant of the lag (:func:`pairwise_small_causal_conv`), and :class:`MLPCausalConv1d` (Wang et
al.'s kernel MLP) evaluates its MLP at the lags.

Every path is windowed: each query step sees only the observations of its :func:`source_window` (the most recent
observed steps within the kernel's span, found by a binary search in the sorted timestamps), so work and memory are
``O(L w)`` for ``w`` sources per window, never ``L x L``. In eager mode ``w`` is read from the data (one host read per
window: exact for any timestamps) and the SMP branch goes further: each point gathers only the sources inside its
own hat (:func:`pairwise_smp_causal_conv`). A compiled or exported graph cannot read ``w``: it gathers the
``floor(max_lag / STATIC_MIN_GAP) + 1`` most recent observations, exact when observed timestamps are at least
:data:`STATIC_MIN_GAP` time units (one grid step) apart, as in any series sampled from the grid (a compiled graph
checks this at run time, without a host read: :func:`~smpconv_models.layers.mode.check_values`). Query steps go in
chunks of at most ``chunk_budget`` elements, each recomputed in backward. :func:`observed_parallel_conv` combines a
grid layer's two branches with BatchNorm statistics over observed steps.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .causal_conv import causal_conv1d
from .conv import check_conv_input, check_float_3d
from .masked import masked_batch_norm
from .mode import check_values, execution_mode
from .point_conv import MLPKernel
from .smp_kernel import divide_by_count, hat_count, kernel_coords, smp_basis, smp_basis_local

__all__ = ['check_irregular_inputs', 'SourceWindow', 'source_window', 'pairwise_smp_causal_conv',
           'pairwise_small_causal_conv', 'MLPCausalConv1d', 'observed_parallel_conv', 'observed_first',
           'PAIRWISE_CHUNK', 'STATIC_MIN_GAP']

# elements of the [B, G, P, q, W] hat basis the pairwise path holds at once (float32: 64 MiB)
PAIRWISE_CHUNK = 1 << 24
# the smallest time between two observations that compiled and exported graphs serve exactly (module docstring)
STATIC_MIN_GAP = 1.0


def check_irregular_inputs(values: Tensor, timestamps: Tensor | None, mask: Tensor | None, in_chans: int
                           ) -> tuple[Tensor, Tensor]:
    """Validate ``values [B, C, L]``, ``timestamps [B, L]`` and ``mask [B, L]`` (bool); returns the timestamps and
    mask (a regular grid ``0..L-1`` and all-observed when ``None``). Shapes, dtypes and devices are checked here;
    the data checks (finite, strictly increasing observed timestamps, at least one observation per series) run in
    :meth:`~smpconv_models.models.smpconv_irregular.SMPConvIrregularTCN.forward_features` with one host read."""
    check_float_3d('values', values, '[B, C, L]')
    batch, chans, length = values.shape
    if chans != in_chans:
        raise ValueError(f'values have {chans} channels, the model expects in_chans={in_chans}')
    if length < 1:
        raise ValueError('values hold no time steps (L = 0)')
    if timestamps is None:
        timestamps = torch.arange(length, device=values.device, dtype=values.dtype).expand(batch, length)
    if not isinstance(timestamps, Tensor) or timestamps.shape != (batch, length):
        shape = tuple(timestamps.shape) if isinstance(timestamps, Tensor) else type(timestamps).__name__
        raise ValueError(f'timestamps must be [B, L] = [{batch}, {length}] to match values, got {shape}')
    if not timestamps.is_floating_point():
        timestamps = timestamps.to(values.dtype)
    if mask is None:
        mask = torch.ones(batch, length, dtype=torch.bool, device=values.device)
    if not isinstance(mask, Tensor) or mask.shape != (batch, length):
        shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f'mask must be [B, L] = [{batch}, {length}] to match values, got {shape}')
    if mask.dtype != torch.bool:
        raise TypeError(f'mask must be a bool tensor (True = observed), got {mask.dtype}')
    if timestamps.device != values.device or mask.device != values.device:
        raise ValueError(f'values ({values.device}), timestamps ({timestamps.device}) and mask ({mask.device}) must '
                         'be on one device')
    return timestamps, mask


def lag_coords(lag: Tensor, kernel_size: int) -> Tensor:
    """Kernel coordinate of a time lag: ``1 - 2 lag / (K - 1)`` (tap ``K - 1`` = now, tap 0 = lag ``K - 1``)."""
    if kernel_size == 1:
        return torch.full_like(lag, -1.0)
    return 1.0 - lag * (2.0 / (kernel_size - 1))


class SourceWindow(NamedTuple):
    """The sources of every query step (a neighbourhood as data): ``index [B, L, w]`` (source steps in input order,
    the query itself last; any step where not ``valid``), ``lag [B, L, w]`` (``t_i - t_j``; 0 where not ``valid``)
    and ``valid [B, L, w]`` (an observed query and source with ``0 <= lag <= max_lag``)."""

    index: Tensor
    lag: Tensor
    valid: Tensor


def source_window(timestamps: Tensor, mask: Tensor, max_lag: float, static: bool | None = None,
                  min_gap: float = STATIC_MIN_GAP) -> SourceWindow:
    """The observed steps each query sees within ``max_lag`` time units back (module docstring): the ``w`` most recent
    observations up to the query. ``static`` (default: while compiling or exporting) takes ``w = floor(max_lag /
    min_gap) + 1`` (at most ``L``): exact when observed timestamps are at least ``min_gap`` apart; otherwise ``w`` is
    the most observations any query's span holds (one host read). A compiled graph asserts that no source of a span
    was left out."""
    batch, length = timestamps.shape
    if static is None:
        static = execution_mode() in ('compile', 'export')
    zero = torch.zeros((), dtype=timestamps.dtype, device=timestamps.device)
    t = torch.where(mask, timestamps, zero)
    order = observed_first(mask)  # compact position -> step: observed steps first, in time order
    t_sorted = torch.where(mask.gather(1, order), t.gather(1, order), torch.full_like(zero, float('inf')))
    rank = (mask.long().cumsum(1) - 1).clamp_min(0)  # each observed step's compact position
    if static:
        width = min(length, math.floor(max_lag / min_gap) + 1)
    else:
        first = torch.searchsorted(t_sorted, t - max_lag)
        width = max(1, int(torch.where(mask, rank - first + 1, 0).amax()))  # one host read
    src = rank[..., None] - (width - 1) + torch.arange(width, device=mask.device)  # [B, L, w] compact positions
    inside = src >= 0
    index = order.gather(1, src.clamp_min(0).reshape(batch, -1)).reshape(batch, length, width)
    lag = t[..., None] - t.gather(1, index.reshape(batch, -1)).reshape(index.shape)
    valid = inside & mask[..., None] & (lag <= max_lag)
    if static and width < length and execution_mode() == 'compile':
        before = rank - width  # the latest observation left out of each query's window
        t_before = t_sorted.gather(1, before.clamp_min(0))
        kept_all = (~mask | (before < 0) | (t - t_before > max_lag)).all()
        check_values([(kept_all, f'a compiled irregular-series graph serves observations at least min_gap={min_gap} '
                                 'time units apart (a kernel span held more observations than its static window; '
                                 'lower min_gap)')])
    return SourceWindow(index, torch.where(valid, lag, zero), valid)


def _gather_sources(x: Tensor, index: Tensor) -> Tensor:
    """``x [B, C, L]`` at the window's source steps ``index [B, q, w]``: ``[B, C, q, w]``."""
    batch, chans = x.shape[:2]
    flat = index.reshape(batch, 1, -1).expand(-1, chans, -1)
    return x.gather(2, flat).reshape(batch, chans, *index.shape[1:])


def pairwise_small_causal_conv(weight: Tensor, bias: Tensor | None, x: Tensor, timestamps: Tensor, mask: Tensor,
                               chunk_budget: int = PAIRWISE_CHUNK, min_gap: float = STATIC_MIN_GAP) -> Tensor:
    """A small causal conv (``weight [C_out, C_in, S]``, tap ``S - 1 - m`` at lag ``m``) at the timestamp differences:
    the piecewise-linear interpolant of its taps in time (falling linearly to zero at lag ``S``), so at integer lags
    it is the grid conv; ``[B, C_out, L]``. Sources: the :func:`source_window` of ``S`` time units."""
    taps = weight.shape[-1]
    window = source_window(timestamps, mask, float(taps), min_gap=min_gap)
    batch, chans, length = x.shape
    width = window.index.shape[-1]
    q = max(1, min(length, chunk_budget // max(1, _chunk_batch(batch) * chans * width * taps)))
    out = _over_query_chunks(functools.partial(_small_chunk, weight), x, window, q)
    return out if bias is None else out + bias[:, None]


def _small_chunk(weight: Tensor, index: Tensor, lag: Tensor, valid: Tensor, x: Tensor) -> Tensor:
    """Small branch for one chunk of queries (``index`` / ``lag`` / ``valid`` ``[B, q, w]``): unit hats in time at
    lags ``0..S-1`` weight the taps; ``weight [C_out, C_in, S]``, ``x [B, C_in, L]``; returns ``[B, C_out, q]``."""
    taps = weight.shape[-1]
    knots = torch.arange(taps, device=lag.device, dtype=lag.dtype)
    hat = (1 - (lag[..., None] - knots).abs()).clamp_min(0) * valid[..., None]  # [B, q, w, S]: relu(1 - |lag - m|)
    z = torch.einsum('bqwm,bcqw->bcmq', hat.to(x.dtype), _gather_sources(x, index))
    return torch.einsum('ocm,bcmq->boq', weight.flip(-1), z)  # weight[..., S-1-m] is the tap at lag m


def pairwise_smp_causal_conv(conv: nn.Module, x: Tensor, timestamps: Tensor, mask: Tensor,
                             chunk_budget: int = PAIRWISE_CHUNK, min_gap: float = STATIC_MIN_GAP) -> Tensor:
    """``sum_j k(t_i - t_j) x_j`` over observed ``j`` with ``0 <= t_i - t_j <= K - 1`` for a causal SMP conv.

    Eager: local evaluation. Each point's hat covers lags ``((1 - p - r), (1 - p + r)) * (K - 1) / 2``, so per point
    and query only the few sources whose timestamps fall in that window are gathered (a binary search in the sorted
    timestamps) and evaluated (:func:`smp_basis_local`); ``|N(x)|`` counts the hats covering each coordinate by a
    binary search in the sorted hat edges. Memory and work scale with ``B G P L W`` (``W``: the most sources any
    hat window holds). Compiled or exported: every point at every source of the kernel span's static
    :func:`source_window` (``B G P L w``). Query steps go in chunks of ``chunk_budget`` elements, each recomputed in
    backward when autograd records."""
    if execution_mode() in ('compile', 'export'):
        return _windowed_smp_conv(conv, x, timestamps, mask, chunk_budget, min_gap)
    batch, chans, length = x.shape
    groups, n_points = conv.weight_coord.shape[:2]
    k = conv.kernel_size[0]
    scale = (k - 1) / 2.0  # lag units per kernel-coordinate unit
    # compact order: observed steps first (time order), unobserved ones after them with time +inf (never a source)
    order = observed_first(mask)
    observed = mask.gather(1, order)
    t_query = torch.where(observed, timestamps.gather(1, order), torch.zeros((), dtype=timestamps.dtype,
                                                                               device=timestamps.device))
    t_source = torch.where(observed, t_query, torch.full((), float('inf'), dtype=t_query.dtype, device=x.device))
    x_mixed = torch.einsum('gcp,bcj->bgpj', conv.weights, x.gather(2, order[:, None].expand(-1, chans, -1)))
    with torch.no_grad():
        pos, rad = conv.weight_coord[..., 0], conv.radius.reshape(groups, n_points)
        margin = 1e-6 * (1.0 + scale)  # windows a hair wider than the hats: rounding never drops a source
        lag_lo = ((1.0 - pos - rad) * scale - margin).to(t_query.dtype)
        lag_hi = ((1.0 - pos + rad) * scale + margin).to(t_query.dtype)
        window_lo = (t_query[:, None, None, :] - lag_hi[None, :, :, None]).reshape(batch, -1)
        window_hi = (t_query[:, None, None, :] - lag_lo[None, :, :, None]).reshape(batch, -1)
        start = torch.searchsorted(t_source, window_lo).reshape(batch, groups, n_points, length)
        end = torch.searchsorted(t_source, window_hi, right=True).reshape(batch, groups, n_points, length)
        width = int((end - start).amax())  # one host read: the gather width
        edges = ((pos - rad).sort(1).values, (pos + rad).sort(1).values)  # hat supports, per filter
    out = x.new_zeros(batch, groups, length)
    if width > 0:
        q = max(1, min(length, chunk_budget // max(1, batch * groups * n_points * width)))
        outs = []
        for s in range(0, length, q):
            args = (start[..., s:s + q], end[..., s:s + q], t_query[:, s:s + q], x_mixed)
            fn = functools.partial(_smp_local_chunk, conv, t_source, width, edges)
            outs.append(checkpoint(fn, *args, use_reentrant=False) if _records() else fn(*args))
        out_compact = torch.cat(outs, -1) * observed[:, None].to(x.dtype)  # unobserved queries: zero
        out = out.scatter(2, order[:, None].expand(-1, groups, -1), out_compact)  # back to the input's order
    return out + _bias(conv, x)


def _smp_local_chunk(conv: nn.Module, t_source: Tensor, width: int, edges: tuple[Tensor, Tensor], start: Tensor,
                     end: Tensor, t_query: Tensor, x_mixed: Tensor) -> Tensor:
    """One chunk of :func:`pairwise_smp_causal_conv`: ``start`` / ``end`` ``[B, G, P, q]`` source windows, ``t_query
    [B, q]``, ``x_mixed [B, G, P, L]``; returns ``[B, G, q]``."""
    batch, groups, n_points, q = start.shape
    length = t_source.shape[1]
    k = conv.kernel_size[0]
    index = start[..., None] + torch.arange(width, device=start.device)  # [B, G, P, q, W]
    inside = index < end[..., None]
    index = index.clamp_max(length - 1)
    lag = t_query[:, None, None, :, None] - t_source.gather(1, index.reshape(batch, -1)).reshape(index.shape)
    valid = inside & (lag >= 0) & (lag <= k - 1)
    lag = torch.where(valid, lag, torch.zeros((), dtype=lag.dtype, device=lag.device))
    coords = lag_coords(lag, k).to(conv.weight_coord.dtype)
    h = smp_basis_local(coords.reshape(batch, groups, n_points, q * width, 1), conv.weight_coord, conv.radius)
    h = h.reshape(index.shape)
    if conv.normalize:  # |N(x)| = #{p: p - r < x < p + r} (Eq. 1), from the sorted hat edges of each filter
        flat = coords.transpose(0, 1).reshape(groups, -1)
        count = torch.searchsorted(edges[0], flat) - torch.searchsorted(edges[1], flat, right=True)
        h = divide_by_count(h, count.reshape(groups, batch, n_points, q, width).transpose(0, 1).to(h.dtype))
    source = x_mixed.gather(3, index.reshape(batch, groups, n_points, q * width)).reshape(index.shape)
    return (h * valid * source).sum((2, 4))


def _windowed_smp_conv(conv: nn.Module, x: Tensor, timestamps: Tensor, mask: Tensor, chunk_budget: int,
                       min_gap: float) -> Tensor:
    """The compiled / exported form of :func:`pairwise_smp_causal_conv`: every point's hat at every source of the
    static :func:`source_window` of ``K - 1`` time units (no host read, no ``L x L`` tensor)."""
    k = conv.kernel_size[0]
    window = source_window(timestamps, mask, float(k - 1), min_gap=min_gap)
    batch, _, length = x.shape
    groups, n_points = conv.weight_coord.shape[:2]
    width = window.index.shape[-1]
    x_mixed = torch.einsum('gcp,bcj->bgpj', conv.weights, x).flatten(1, 2)  # [B, G*P, L]
    q = max(1, min(length, chunk_budget // max(1, _chunk_batch(batch) * groups * n_points * width)))

    def chunk(index: Tensor, lag: Tensor, valid: Tensor, xm: Tensor) -> Tensor:
        nq = index.shape[1]
        coords = lag_coords(lag, k).to(conv.weight_coord.dtype).reshape(batch, nq * width, 1)
        h = smp_basis(coords, conv.weight_coord, conv.radius)  # [B, G, P, q*w]
        if conv.normalize:
            h = divide_by_count(h, hat_count(h))
        h = h.reshape(batch, groups, n_points, nq, width) * valid[:, None, None]
        source = _gather_sources(xm, index).reshape(batch, groups, n_points, nq, width)
        return (h * source).sum((2, 4))

    return _over_query_chunks(chunk, x_mixed, window, q) + _bias(conv, x)


def observed_first(mask: Tensor) -> Tensor:
    """The stable permutation ``[B, L]`` that puts the observed steps first (in time order), then the unobserved
    ones: a stable sort of ``~mask``, written as cumulative-sum ranks so that exporters trace it."""
    observed = mask.long()
    rank = torch.where(mask, observed.cumsum(1), observed.sum(1, keepdim=True) + (1 - observed).cumsum(1)) - 1
    steps = torch.arange(mask.shape[1], device=mask.device).expand_as(rank)
    return torch.zeros_like(rank).scatter(1, rank, steps)


def _chunk_batch(batch: int) -> int:
    """The batch size the query chunks are sized for: while exporting 1 (the batch dimension may be dynamic, so the
    chunks are per series and the graph's memory grows with the batch as every other activation's)."""
    return 1 if execution_mode() == 'export' else batch


def _records() -> bool:
    """Whether autograd records (then each chunk is recomputed in backward); never while exporting."""
    return torch.is_grad_enabled() and execution_mode() != 'export'


def _bias(conv: nn.Module, x: Tensor) -> Tensor | float:
    bias = getattr(conv, 'bias', None)
    return 0.0 if bias is None else bias.to(x.dtype)[:, None]


def _over_query_chunks(fn, inputs: Tensor, window: SourceWindow, q: int) -> Tensor:
    """``fn(index, lag, valid, inputs)`` over chunks of ``q`` query steps of ``window`` (``[B, q, w]`` each; each
    chunk recomputed in backward when autograd records), concatenated along the last axis."""
    length = window.index.shape[1]
    records = _records()
    outs = []
    for start in range(0, length, q):
        args = (window.index[:, start:start + q], window.lag[:, start:start + q], window.valid[:, start:start + q],
                inputs)
        outs.append(checkpoint(fn, *args, use_reentrant=False) if records else fn(*args))
    return torch.cat(outs, -1)


class MLPCausalConv1d(nn.Module):
    """A causal conv whose kernel is Wang et al.'s MLP (:class:`~smpconv_models.layers.point_conv.MLPKernel`, a
    basis ``[..., H]`` of the kernel coordinate times weights ``[C_out, C_in, H]``), for the SMP branch's place in
    ``kernel='mlp'`` models: dense on the grid (``generate_kernel`` at the :func:`kernel_coords` taps, the same
    coordinate convention as :class:`~smpconv_models.layers.smp_conv.SMPCausalConv1d`), pairwise at timestamp
    differences (:meth:`pairwise`). A continuous kernel: :meth:`set_kernel_size_` re-samples it on any grid."""

    requires_odd_kernel = False

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, hidden: int = 32, depth: int = 2,
                 activation: str = 'relu', bias: bool = False, fft: bool | None = None, device=None, dtype=None):
        super().__init__()
        self.in_channels, self.out_channels, self.fft = int(in_channels), int(out_channels), fft
        self.kernel_size = (int(kernel_size),)
        self.mlp_kernel = MLPKernel(1, in_channels, out_channels, hidden=hidden, depth=depth, activation=activation,
                                    device=device, dtype=dtype)
        self.bias = nn.Parameter(torch.zeros(out_channels, device=device, dtype=dtype)) if bias else None

    def set_kernel_size_(self, kernel_size) -> None:
        """Sample the same continuous kernel on a ``kernel_size`` grid (``rescale_kernels``)."""
        size = kernel_size[0] if isinstance(kernel_size, (tuple, list)) else kernel_size
        self.kernel_size = (int(size),)

    def generate_kernel(self) -> Tensor:
        """The dense ``[C_out, C_in, K]`` kernel at the grid taps."""
        w = self.mlp_kernel.weights
        coords = kernel_coords(self.kernel_size, device=w.device, dtype=w.dtype)  # [K, 1]
        return torch.einsum('kh,oih->oik', self.mlp_kernel.basis(coords), w)

    def forward(self, x: Tensor) -> Tensor:
        check_conv_input(x, 1, self.in_channels, 'MLPCausalConv1d')
        return causal_conv1d(x, self.generate_kernel(), self.bias, fft=self.fft)

    def pairwise(self, x: Tensor, timestamps: Tensor, mask: Tensor, chunk_budget: int = PAIRWISE_CHUNK,
                 min_gap: float = STATIC_MIN_GAP) -> Tensor:
        """``sum_j g(t_i - t_j) x_j`` over observed ``j`` with ``0 <= t_i - t_j <= K - 1`` (the :func:`source_window`
        of ``K - 1`` time units): ``[B, C_out, L]``."""
        window = source_window(timestamps, mask, float(self.kernel_size[0] - 1), min_gap=min_gap)
        batch, chans, length = x.shape
        hidden, width = self.mlp_kernel.basis_size, window.index.shape[-1]
        q = max(1, min(length, chunk_budget // max(1, _chunk_batch(batch) * width * max(hidden, chans))))

        def chunk(index: Tensor, lag: Tensor, valid: Tensor, xx: Tensor) -> Tensor:
            basis = self.mlp_kernel.basis(lag_coords(lag, self.kernel_size[0])[..., None])  # [B, q, w, H]
            z = torch.einsum('bqwh,bcqw->bchq', basis * valid[..., None], _gather_sources(xx, index))
            return torch.einsum('och,bchq->boq', self.mlp_kernel.weights, z)

        return _over_query_chunks(chunk, x, window, q) + _bias(self, x)

    def extra_repr(self) -> str:
        return f'{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}'


def observed_parallel_conv(pair: nn.Module, x: Tensor, mask: Tensor, timestamps: Tensor | None = None,
                           chunk_budget: int = PAIRWISE_CHUNK, min_gap: float = STATIC_MIN_GAP) -> Tensor:
    """``BN(long(x)) + BN(small(x))`` of a parallel causal layer
    (:class:`~smpconv_models.layers.reparam.SMPParallelCausalConv1d`) on series with observed steps ``mask``:
    training BatchNorm statistics over the observed steps only (:func:`masked_batch_norm`; eval BatchNorm is
    pointwise, so the folded, cached kernel serves). ``timestamps=None``: ``x`` lies on the integer grid (the
    zero-filled series); otherwise both branches are evaluated at the timestamp differences (the long kernel's
    ``pairwise``, :func:`pairwise_small_causal_conv`), which needs the continuous kernels (no reparameterization)."""
    if timestamps is None:
        if pair.reparam_conv is not None or not pair.smp.bn.training:
            return pair(x)
        return (masked_batch_norm(pair.smp.conv(x), mask, pair.smp.bn)
                + masked_batch_norm(pair.small_conv.conv(x), mask, pair.small_conv.bn))
    if pair.reparam_conv is not None:
        raise ValueError(f'a reparameterized {type(pair).__name__} holds a dense integer-lag kernel: it serves integer '
                         'timestamps only (got non-integer ones)')
    small = pair.small_conv.conv
    long_out = pair.smp.conv.pairwise(x, timestamps, mask, chunk_budget, min_gap)
    small_out = pairwise_small_causal_conv(small.weight, small.bias, x, timestamps, mask, chunk_budget, min_gap)
    return masked_batch_norm(long_out, mask, pair.smp.bn) + masked_batch_norm(small_out, mask, pair.small_conv.bn)
