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
observed steps within the kernel's span; in *compact order*, observed steps first, they are one contiguous slice), so
work and memory are ``O(L w)`` for ``w`` sources per window, never ``L x L``. The SMP kernel is piecewise linear in
its coordinate between the hats' edges and centres (:func:`smp_segments`), so it is applied as one projection of the
inputs per segment and one gather per (query, source, filter) pair (:func:`pairwise_smp_causal_conv`). Eager mode
reads ``w`` from the data (one host read per window: exact for any timestamps). A compiled or exported graph cannot:
it gathers the ``floor(max_lag / min_gap) + 1`` most recent observations, exact when observed timestamps are at
least ``min_gap`` time units apart (default :data:`STATIC_MIN_GAP`, one grid step, as in any series sampled from the
grid; a compiled graph checks this at run time without a host read, :func:`~smpconv_models.layers.mode.check_values`).
Query steps go in chunks of at most ``chunk_budget`` elements, each recomputed in backward.
:func:`observed_parallel_conv` combines a grid layer's two branches with BatchNorm statistics over observed steps.

In eager mode on the CPU (float32 / float64, no autocast) with numba installed (the ``fast`` extra), both pairwise
sums run as fused loops instead (:mod:`~smpconv_models.layers.irregular_cpu`: the same values and gradients, tested
in float64; chunks keep only their sources for backward, nothing is recomputed); compiled and exported graphs, other
devices and half precision keep the plain-torch ops.
"""
from __future__ import annotations

import functools
import importlib.util
import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .causal_conv import causal_conv1d
from .conv import check_conv_input, check_float_3d
from .masked import masked_batch_norm
from .mode import check_values, computes_in_half_precision, execution_mode, is_eager
from .point_conv import MLPKernel
from .smp_kernel import divide_by_count, kernel_coords

__all__ = ['check_irregular_inputs', 'SourceWindow', 'source_window', 'pairwise_smp_causal_conv',
           'pairwise_small_causal_conv', 'MLPCausalConv1d', 'observed_parallel_conv', 'observed_first',
           'PAIRWISE_CHUNK', 'STATIC_MIN_GAP', 'smp_segments', 'smp_cover_tables', 'sliding_windows']

# elements a query chunk of the pairwise path holds at once (projections and pair gathers; float32: 64 MiB)
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
    """The sources of every query step (a neighbourhood as data), in *compact order* (observed steps first, in time
    order: ``order [B, L]`` maps compact positions to steps, :func:`observed_first`): the sources of compact query
    ``r`` are the compact positions ``r - w + 1 .. r`` (the query itself last), so a chunk's sources are one
    contiguous slice; ``lag [B, L, w]`` (``t_r - t_s``; 0 where not ``valid``) and ``valid [B, L, w]`` (an observed
    query and source with ``0 <= lag <= max_lag``)."""

    order: Tensor
    lag: Tensor
    valid: Tensor


def source_window(timestamps: Tensor, mask: Tensor, max_lag: float, static: bool | None = None,
                  min_gap: float = STATIC_MIN_GAP) -> SourceWindow:
    """The observed steps each query sees within ``max_lag`` time units back (module docstring): the ``w`` most recent
    observations up to the query. ``static`` (default: while compiling or exporting) takes ``w = floor(max_lag /
    min_gap) + 1`` (at most ``L``): exact when observed timestamps are at least ``min_gap`` apart; otherwise ``w`` is
    the most observations any query's span holds (one host read). A compiled graph asserts that no source of a span
    was left out."""
    length = timestamps.shape[1]
    if static is None:
        static = execution_mode() in ('compile', 'export')
    zero = torch.zeros((), dtype=timestamps.dtype, device=timestamps.device)
    order = observed_first(mask)
    observed = mask.gather(1, order)
    t = torch.where(observed, timestamps.gather(1, order), zero)  # compact order: increasing, then zeros
    if static:
        width = min(length, math.floor(max_lag / min_gap) + 1)
    else:
        t_sorted = torch.where(observed, t, torch.full_like(zero, float('inf')))
        first = torch.searchsorted(t_sorted, t - max_lag)
        rank = torch.arange(length, device=mask.device)
        width = max(1, int(torch.where(observed, rank - first + 1, 0).amax()))  # one host read
    lag = t[..., None] - sliding_windows(F.pad(t, (width - 1, 0)), width)  # [B, L, w]: source r - w + 1 + m
    rank = torch.arange(length, device=mask.device)[:, None]
    inside = rank + torch.arange(width, device=mask.device) >= width - 1
    valid = inside & observed[..., None] & (lag <= max_lag)
    if static and width < length and execution_mode() == 'compile':
        before = F.pad(t, (width, 0))[:, :length]  # the latest observation left out of each query's window
        kept_all = (~observed | (rank[:, 0] < width) | (t - before > max_lag)).all()
        check_values([(kept_all, f'a compiled irregular-series graph serves observations at least min_gap={min_gap} '
                                 'time units apart (a kernel span held more observations than its static window; '
                                 'lower min_gap)')])
    return SourceWindow(order, torch.where(valid, lag, zero), valid)


def sliding_windows(x: Tensor, width: int) -> Tensor:
    """``x [..., n + width - 1]`` -> ``[..., n, width]``: element ``[..., i, m]`` is ``x[..., i + m]`` (``unfold``; in
    an exported graph an index, which every exporter traces)."""
    if execution_mode() != 'export':  # a view (its backward a sum, not an index_put)
        return x.unfold(-1, width, 1)
    n = x.shape[-1] - width + 1
    return x[..., torch.arange(n, device=x.device)[:, None] + torch.arange(width, device=x.device)]


def _windowed(fn, x: Tensor, window: SourceWindow, out_channels: int, chunk_budget: int, per_query: int,
              recompute: bool = True) -> Tensor:
    """``fn(lag, valid, sources)`` over chunks of compact query steps (``lag`` / ``valid`` ``[B, q, w]``, ``sources
    [B, C, q + w - 1]``: the chunk's sources, a contiguous slice of the compact series; with ``recompute``, each chunk
    recomputed in backward when autograd records), returned as ``[B, out_channels, L]`` in the input's step order (zero
    at unobserved steps). ``per_query``: elements a chunk holds per query step (sizes the chunks)."""
    order, lag, valid = window
    batch, chans, length = x.shape
    width = lag.shape[-1]
    q = max(1, min(length, chunk_budget // max(1, _chunk_batch(batch) * per_query)))
    x_compact = F.pad(x.gather(2, order[:, None].expand(-1, chans, -1)), (width - 1, 0))
    records = recompute and _records()
    outs = []
    for start in range(0, length, q):
        stop = min(length, start + q)
        args = (lag[:, start:stop], valid[:, start:stop], x_compact[..., start:stop + width - 1])
        outs.append(checkpoint(fn, *args, use_reentrant=False) if records else fn(*args))
    out = torch.cat(outs, -1)
    return out.new_zeros(batch, out_channels, length).scatter(2, order[:, None].expand(-1, out_channels, -1), out)


def pairwise_small_causal_conv(weight: Tensor, bias: Tensor | None, x: Tensor, timestamps: Tensor, mask: Tensor,
                               chunk_budget: int = PAIRWISE_CHUNK, min_gap: float = STATIC_MIN_GAP) -> Tensor:
    """A small causal conv (``weight [C_out, C_in, S]``, tap ``S - 1 - m`` at lag ``m``) at the timestamp differences:
    the piecewise-linear interpolant of its taps in time (falling linearly to zero at lag ``S``), so at integer lags
    it is the grid conv; ``[B, C_out, L]``. Sources: the :func:`source_window` of ``S`` time units."""
    taps = weight.shape[-1]
    window = source_window(timestamps, mask, float(taps), min_gap=min_gap)
    if _fused_pairs(x, timestamps):
        out = _windowed(functools.partial(_small_fused_chunk, weight), x, window, weight.shape[0], chunk_budget,
                        x.shape[1] * taps + 2 * window.lag.shape[-1], recompute=False)
    else:
        out = _windowed(functools.partial(_small_chunk, weight), x, window, weight.shape[0], chunk_budget,
                        x.shape[1] * taps * window.lag.shape[-1])
    return out if bias is None else out + bias[:, None]


def _small_chunk(weight: Tensor, lag: Tensor, valid: Tensor, sources: Tensor) -> Tensor:
    """Small branch for one chunk: unit hats in time at lags ``0..S-1`` weight the taps; ``weight [C_out, C_in, S]``;
    returns ``[B, C_out, q]``."""
    taps, width = weight.shape[-1], lag.shape[-1]
    knots = torch.arange(taps, device=lag.device, dtype=lag.dtype)
    hat = (1 - (lag[..., None] - knots).abs()).clamp_min(0) * valid[..., None]  # [B, q, w, S]: relu(1 - |lag - m|)
    z = torch.einsum('bqwm,bcqw->bcmq', hat.to(sources.dtype), sliding_windows(sources, width))
    return torch.einsum('ocm,bcmq->boq', weight.flip(-1), z)  # weight[..., S-1-m] is the tap at lag m


def _small_fused_chunk(weight: Tensor, lag: Tensor, valid: Tensor, sources: Tensor) -> Tensor:
    """:func:`_small_chunk` through the fused CPU loops (:class:`~smpconv_models.layers.irregular_cpu.LagResample`)."""
    from .irregular_cpu import LagResample

    z = LagResample.apply(sources, lag, valid, weight.shape[-1])
    return torch.einsum('ocm,bcmq->boq', weight.flip(-1), z)


def pairwise_smp_causal_conv(conv: nn.Module, x: Tensor, timestamps: Tensor, mask: Tensor,
                             chunk_budget: int = PAIRWISE_CHUNK, min_gap: float = STATIC_MIN_GAP) -> Tensor:
    """``sum_j k(t_i - t_j) x_j`` over observed ``j`` with ``0 <= t_i - t_j <= K - 1`` for a causal SMP conv, in the
    :func:`source_window` of ``K - 1`` time units.

    Each filter's kernel (Eq. 1: hats averaged over the points covering a coordinate) is piecewise linear in the
    kernel coordinate between its sorted breakpoints (hat edges and centres, :func:`smp_segments`): on segment ``s``
    it is ``A_s + B_s (c - m_s)`` at kernel coordinate ``c`` (``m_s`` the segment's midpoint; ``A``, ``B`` ``[G, S,
    C_in]``). So the inputs are projected once per segment (``A_s x``, ``B_s x``: one matmul) and each (query,
    source) pair gathers the projections of its segment: ``O(B G L w)`` gathers instead of ``O(B G P L w)`` hat
    evaluations. Exact up to rounding, except
    at a coordinate exactly on a hat's far edge, where Eq. 1 excludes the hat from the count and this takes the
    segment's limit (a set of measure zero). On the CPU in eager mode with numba, fused loops evaluate the hats covering
    each pair's segment instead (:func:`smp_cover_tables`, :class:`~smpconv_models.layers.irregular_cpu.SMPPairSum`)."""
    k = conv.kernel_size[0]
    window = source_window(timestamps, mask, float(k - 1), min_gap=min_gap)
    if _fused_pairs(x, timestamps) and conv.normalize:
        groups, n_points = conv.weight_coord.shape[:2]
        pos, rad = conv.weight_coord[..., 0], conv.radius.reshape(groups, n_points)
        fn = functools.partial(_smp_fused_chunk, k, conv.weights.to(x.dtype), pos.to(x.dtype), (1 / rad).to(x.dtype),
                               smp_cover_tables(pos, rad, x.dtype))
        per_query = groups * (n_points + 1) + 2 * window.lag.shape[-1]  # the projections, the output, the pairs
        # the loops keep only the chunk's sources for backward (not its projections): nothing to recompute
        return _windowed(fn, x, window, groups, chunk_budget, per_query, recompute=False) + _bias(conv, x)
    breaks, mids, coef, slope = smp_segments(conv.weight_coord, conv.radius, conv.weights, conv.normalize)
    groups, n_seg = coef.shape[:2]
    # |{breakpoints of filter g} < x| from the position of x among all filters' breakpoints: a prefix count
    flat, owner = breaks.flatten().sort()
    owner = torch.div(owner, breaks.shape[1], rounding_mode='floor')
    counts = F.pad(F.one_hot(owner, groups).cumsum(0), (0, 0, 1, 0))  # [G * (S - 1) + 1, G]
    fn = functools.partial(_smp_chunk, k, flat, counts, mids, coef.to(x.dtype), slope.to(x.dtype))
    per_query = groups * (2 * n_seg + 6 * window.lag.shape[-1])  # the projections and the pairs' gathers
    return _windowed(fn, x, window, groups, chunk_budget, per_query) + _bias(conv, x)


def smp_segments(weight_coord: Tensor, radius: Tensor, weights: Tensor, normalize: bool
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The 1-d SMP kernels (Eq. 1-2) as piecewise-linear functions of the kernel coordinate ``x``: per filter ``g`` the
    sorted breakpoints ``breaks [G, 3P]`` (every hat's edges and centre) cut the axis into ``3P + 1`` segments with
    midpoints ``mids [G, 3P + 1]`` (the outer two outside every hat), and on segment ``s`` the kernel is ``coef[g, s] +
    slope[g, s] (x - mids[g, s])`` (``coef``, ``slope`` ``[G, 3P + 1, C]``: the hats' values at the midpoint, in
    ``[0, 1]``, and slopes times ``|x - m| <= r``, so half precision keeps its relative accuracy). Gradients reach the
    positions, radii and weights (each segment's hats are linear in ``x``; the midpoints are fixed points: the
    kernel's value at ``x`` does not depend on them)."""
    groups, n_points = weight_coord.shape[:2]
    pos = weight_coord[..., 0]
    rad = radius.reshape(groups, n_points)
    breaks, mids = _breakpoints(pos, rad)
    offset = mids[:, None, :] - pos[..., None]  # [G, P, S]
    inside = offset.detach().abs() < rad.detach()[..., None]
    hat = (1 - offset.abs() / rad[..., None]).clamp_min(0) * inside  # each hat at each midpoint
    rise = torch.where(inside, -torch.sign(offset) / rad[..., None], torch.zeros_like(hat))  # its slope there
    if normalize:
        count = inside.sum(1, keepdim=True, dtype=hat.dtype)
        hat, rise = divide_by_count(hat, count), divide_by_count(rise, count)
    coef = torch.einsum('gcp,gps->gsc', weights, hat)
    slope = torch.einsum('gcp,gps->gsc', weights, rise)
    return breaks, mids, coef, slope


def _breakpoints(pos: Tensor, rad: Tensor) -> tuple[Tensor, Tensor]:
    """Each filter's sorted breakpoints ``[G, 3P]`` (every hat's edges and centre) and the midpoints ``[G, 3P + 1]`` of
    the segments between them (the outer two one unit beyond the outer breakpoints); no gradients."""
    with torch.no_grad():
        breaks = torch.cat([pos - rad, pos, pos + rad], 1).sort(1).values
        mids = torch.cat([breaks[:, :1] - 1, (breaks[:, 1:] + breaks[:, :-1]) / 2, breaks[:, -1:] + 1], 1)
    return breaks, mids


def smp_cover_tables(pos: Tensor, rad: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The segment tables of the fused per-pair sum (:class:`~smpconv_models.layers.irregular_cpu.SMPPairSum`) for
    points ``pos`` / ``rad`` ``[G, P]``: each filter's sorted breakpoints ``breaks [G, 3P]`` (every hat's edges and
    centre), the points covering each of the ``3P + 1`` segments as CSR rows (``cover_start [G, 3P + 2]`` into
    ``cover_index [G, n]``; decided at the segment's midpoint) and the segment's ``1 / (|N| + eps)`` (Eq. 1's average,
    :func:`~smpconv_models.layers.smp_kernel.divide_by_count`). No gradients: within a segment the covering set is
    fixed, and the hats themselves are evaluated in the loops."""
    breaks, mids = _breakpoints(pos, rad)
    with torch.no_grad():
        groups, n_points = pos.shape
        covers = (mids[:, :, None] - pos[:, None]).abs() < rad[:, None]  # [G, S, P]
        count = covers.sum(-1)
        cover_start = F.pad(count.cumsum(1), (1, 0))
        filt, _, point = covers.nonzero().unbind(1)  # in (filter, segment, point) order
        row_start = F.pad(count.sum(1).cumsum(0), (1, 0))[:-1]
        # rows as long as every point covering every segment could make them (no host read of the longest)
        cover_index = torch.zeros(groups, covers.shape[1] * n_points, dtype=torch.long, device=pos.device)
        cover_index[filt, torch.arange(filt.shape[0], device=pos.device) - row_start[filt]] = point
        inv_count = divide_by_count(torch.ones((), dtype=dtype, device=pos.device), count.to(dtype))
        return breaks.to(dtype), cover_start, cover_index, inv_count


def _smp_fused_chunk(k: int, weights: Tensor, pos: Tensor, inv_rad: Tensor, tables: tuple[Tensor, ...], lag: Tensor,
                     valid: Tensor, sources: Tensor) -> Tensor:
    """One chunk of :func:`pairwise_smp_causal_conv` through the fused CPU loops
    (:class:`~smpconv_models.layers.irregular_cpu.SMPPairSum`); ``[B, G, q]``."""
    from .irregular_cpu import SMPPairSum

    breaks, cover_start, cover_index, inv_count = tables
    return SMPPairSum.apply(sources, weights, pos, inv_rad, lag_coords(lag, k).to(sources.dtype), valid, breaks,
                            cover_start, cover_index, inv_count)


def _fused_pairs(x: Tensor, timestamps: Tensor) -> bool:
    """Whether the pairwise convs take the fused CPU loops (:mod:`~smpconv_models.layers.irregular_cpu`, an eager-only
    shortcut): eager mode, CPU, float32 / float64 without autocast, timestamps without gradients, and numba installed
    (the ``fast`` extra)."""
    return (is_eager() and x.device.type == 'cpu' and x.dtype in (torch.float32, torch.float64)
            and not computes_in_half_precision(x) and not timestamps.requires_grad
            and importlib.util.find_spec('numba') is not None)


def _smp_chunk(k: int, flat: Tensor, counts: Tensor, mids: Tensor, coef: Tensor, slope: Tensor, lag: Tensor,
               valid: Tensor, sources: Tensor) -> Tensor:
    """One chunk of :func:`pairwise_smp_causal_conv`: ``lag`` / ``valid`` ``[B, q, w]``, ``sources [B, C, q + w - 1]``;
    returns ``[B, G, q]``."""
    width = lag.shape[-1]
    n_seg = coef.shape[1]
    coords = lag_coords(lag, k).to(flat.dtype)  # [B, q, w]
    if execution_mode() == 'export':  # no search operator in ONNX: count the smaller breakpoints
        rank = (flat < coords[..., None]).sum(-1)
    else:
        rank = torch.searchsorted(flat, coords.reshape(-1)).reshape(coords.shape)
    seg = counts[rank].permute(0, 3, 1, 2)  # [B, G, q, w]: the segment of each pair under each filter
    groups = seg.shape[1]
    at_mid = mids.flatten()[seg + n_seg * torch.arange(groups, device=seg.device)[:, None, None]]
    delta = (coords[:, None] - at_mid).to(sources.dtype)  # from the segment's midpoint: |delta| <= the hat's radius
    proj = torch.einsum('gsc,bcl->bgsl', torch.cat([coef, slope], 1), sources)  # [B, G, 2S, q + w - 1]
    span = proj.shape[-1]
    step = torch.arange(lag.shape[1], device=seg.device)[:, None] + torch.arange(width, device=seg.device)  # [q, w]
    index = torch.stack([seg, seg + n_seg], 2) * span + step  # each pair's source under its segment's two rows
    at = proj.flatten(2).gather(2, index.flatten(2)).reshape(index.shape)  # [B, G, 2, q, w]
    return ((at[:, :, 0] + delta * at[:, :, 1]) * valid[:, None]).sum(-1)


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
        width = window.lag.shape[-1]
        per_query = width * max(self.mlp_kernel.basis_size, x.shape[1])

        def chunk(lag: Tensor, valid: Tensor, sources: Tensor) -> Tensor:
            basis = self.mlp_kernel.basis(lag_coords(lag, self.kernel_size[0])[..., None])  # [B, q, w, H]
            z = torch.einsum('bqwh,bcqw->bchq', basis * valid[..., None], sliding_windows(sources, width))
            return torch.einsum('och,bchq->boq', self.mlp_kernel.weights, z)

        return _windowed(chunk, x, window, self.out_channels, chunk_budget, per_query) + _bias(self, x)

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
