"""SMPConv TCN on irregularly sampled time series: the sequence TCN with its kernels evaluated at the actual
timestamp differences (Kim & Park, CVPR 2023, Sec. 4.1; the parametric continuous convolution of Wang et al.,
CVPR 2018, Eq. 2).

Inputs: ``values`` ``[B, C, L]``, ``timestamps`` ``[B, L]`` (in grid steps: one unit of time is one step of the
grid TCN, so the causal kernel spans ``seq_len - 1`` time units) and an observed-``mask`` ``[B, L]`` (bool; ``False``
marks padding or a missing observation, whose values are ignored and may be NaN). Every causal convolution of the
grid TCN (:class:`~smpconv_models.models.smpconv_tcn.SMPConvTCN`) becomes

    h_i = sum_{j observed, 0 <= t_i - t_j <= K - 1} k(t_i - t_j) f_j,

a plain sum over the past observations as in the grid convolution (no ``1 / |N(x_i)|``: on a full grid the model
*is* the grid TCN, and a missing observation contributes zero as in a zero-filled series). Choices, per branch of
the grid block ``BN(smp(x)) + BN(small(x))``:

* SMP branch: the SMP function of each filter (Eq. 1, with its ``1 / |N(x)|`` point average) at kernel coordinate
  ``1 - 2 (t_i - t_j) / (K - 1)`` (tap ``K - 1`` = lag 0, tap 0 = lag ``K - 1``, as on the grid);
* 5-tap branch: a function of the time lag, the piecewise-linear interpolant of its taps (tap ``S - 1 - m`` at
  lag ``m``, falling linearly to zero at lag ``S``): at integer lags it is the grid conv, between them it
  interpolates; it is evaluated with the same hat core (:func:`smp_basis`, unit-radius hats at lags ``0..S-1``);
* BatchNorm: training statistics over observed steps only (running statistics updated the same way), eval
  unchanged; features at unobserved steps are zero after every layer.

Two exact paths compute it. When the observed timestamps are integers (the dropped-observations protocol), the
*grid path* runs the grid TCN's modules on the zero-filled series (length = the longest span in the batch) with
every hidden feature masked to observed steps: a zero feature contributes nothing to a sum, so this equals the
pairwise definition (tested in float64). Otherwise the *pairwise path* evaluates the kernels at the timestamp
differences: the hats are narrow (radius 0.002-0.03 of the kernel's ``[-1, 1]``), so each point is evaluated only at
the sources whose differences fall inside its radius (found by binary search in the sorted timestamps), ``B G P L W``
values for ``W`` sources per window instead of ``B G P L^2``; the MLP kernel and the 5-tap branch use all ``[B, L, L]``
differences within the kernel's span. Query steps go in chunks of at most ``pairwise_chunk`` elements, each
recomputed in backward (activation checkpointing), so memory stays bounded for long series.

The logits come from the last observed step of each series (``global_pool='last'``, the grid TCN's last step),
or from a mean / max over observed steps (``'avg'`` / ``'max'``). With ``kernel='mlp'`` each SMP branch becomes the
MLP kernel of :class:`~smpconv_models.layers.point_conv.MLPKernel` on the same lags (for the side-by-side
comparison). On a regular grid with no gaps (``timestamps=None, mask=None``) the model equals the grid TCN with the
same parameters (its state dict loads unchanged). One host read per forward checks the inputs and picks the path
(the pairwise path reads one gather width per SMP layer); none while exporting, where the pairwise path serves every
input (:meth:`SMPConvIrregularTCN.forward_features`). The masked BatchNorm statistics are per process (no
SyncBatchNorm across processes).
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..layers import SMPParallelCausalConv1d, causal_conv1d, check_conv_input, kernel_coords, smp_basis
from ..layers.conv import check_float_3d
from ..layers.export_conv import is_exporting
from ..layers.smp_kernel import COUNT_EPS, smp_basis_local
from ._checkpoint import adapt_input_layers, validate_for_model
from ._common import SMPModelMixin
from ._encoder import check_dense_kwargs
from .smpconv_tcn import _POOLS, TCNBlock, TCNClassifierMixin
from .smpconv_tcn import INPUT_LAYERS as _GRID_INPUT_LAYERS

__all__ = ['SMPConvIrregularTCN', 'MLPCausalConv1d', 'masked_batch_norm', 'check_irregular_inputs']

_KERNELS = ('smp', 'mlp')
# elements of the [B, G, P, q, L] hat basis the pairwise path holds at once (float32: 64 MiB)
PAIRWISE_CHUNK = 1 << 24
# 'auto' takes the grid path for integer timestamps whose span is at most this many times the number of steps
# (dropping 70% of a series' observations leaves a span of about 3.3 x the kept steps)
GRID_SPAN_FACTOR = 8


def check_irregular_inputs(values: Tensor, timestamps: Tensor | None, mask: Tensor | None, in_chans: int
                           ) -> tuple[Tensor, Tensor]:
    """Validate ``values [B, C, L]``, ``timestamps [B, L]`` and ``mask [B, L]`` (bool); returns the timestamps and
    mask (a regular grid ``0..L-1`` and all-observed when ``None``). Shapes, dtypes and devices are checked here;
    the data checks (finite, strictly increasing observed timestamps, at least one observation per series) run in
    :meth:`SMPConvIrregularTCN.forward_features` with one host read."""
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


def masked_batch_norm(x: Tensor, mask: Tensor, bn: nn.modules.batchnorm._BatchNorm) -> Tensor:
    """``bn(x)`` for ``x [B, C, L]`` with training statistics over the steps where ``mask [B, L]`` is True.

    In training (or without running statistics) the batch mean and biased variance are taken over observed steps
    and the running statistics are updated as :class:`torch.nn.BatchNorm1d` does (unbiased variance, ``momentum``
    or a cumulative average); with every step observed this is ``bn(x)``. In eval the running statistics apply
    pointwise, so the mask does not matter.
    """
    if not bn.training and bn.running_mean is not None:
        return bn(x)
    w = mask.unsqueeze(1).to(x.dtype)
    n = w.sum()
    mean = (x * w).sum((0, 2)) / n
    centred = x - mean[:, None]
    var = (centred.square() * w).sum((0, 2)) / n
    if bn.training and bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            factor = (1.0 / bn.num_batches_tracked.to(x.dtype)) if bn.momentum is None else bn.momentum
            unbiased = var * n / (n - 1).clamp_min(1)
            bn.running_mean.mul_(1 - factor).add_(factor * mean.to(bn.running_mean.dtype))
            bn.running_var.mul_(1 - factor).add_(factor * unbiased.to(bn.running_var.dtype))
    y = centred * torch.rsqrt(var + bn.eps)[:, None]
    if bn.affine:
        y = y * bn.weight[:, None] + bn.bias[:, None]
    return y


def _lag_coords(lag: Tensor, kernel_size: int) -> Tensor:
    """Kernel coordinate of a time lag: ``1 - 2 lag / (K - 1)`` (tap ``K - 1`` = now, tap 0 = lag ``K - 1``)."""
    if kernel_size == 1:
        return torch.full_like(lag, -1.0)
    return 1.0 - lag * (2.0 / (kernel_size - 1))


def _small_chunk(weight: Tensor, x: Tensor, lag: Tensor, valid: Tensor) -> Tensor:
    """Small branch for one chunk: the piecewise-linear interpolant of the taps in time (unit hats at lags
    ``0..S-1``); ``weight [C_out, C_in, S]``, ``x [B, C_in, L]``; returns ``[B, C_out, q]``."""
    batch, q, length = lag.shape
    taps = weight.shape[-1]
    knots = torch.arange(taps, device=lag.device, dtype=lag.dtype).reshape(1, taps, 1)
    ones = torch.ones(1, taps, device=lag.device, dtype=lag.dtype)
    hat = smp_basis(lag.reshape(batch, q * length, 1), knots, ones)[:, 0]  # [B, S, q*L]: relu(1 - |lag - m|)
    hat = hat.unflatten(-1, (q, length)) * valid[:, None]
    z = torch.einsum('bmqj,bcj->bcmq', hat, x)
    return torch.einsum('ocm,bcmq->boq', weight.flip(-1), z)  # weight[..., S-1-m] is the tap at lag m


def _smp_pairwise(conv: nn.Module, x: Tensor, timestamps: Tensor, mask: Tensor, chunk_budget: int) -> Tensor:
    """``sum_j k(t_i - t_j) x_j`` over observed ``j`` with ``0 <= t_i - t_j <= K - 1`` for a causal SMP conv.

    Local evaluation: each point's hat covers lags ``((1 - p - r), (1 - p + r)) * (K - 1) / 2``, so per point and
    query only the few sources whose timestamps fall in that window are gathered (a binary search in the sorted
    timestamps) and evaluated (:func:`smp_basis_local`); ``|N(x)|`` counts the hats covering each coordinate by a
    binary search in the sorted hat edges. Memory and work scale with ``B G P L W`` (``W``: the most sources any
    hat window holds) instead of ``B G P L^2``; query steps go in chunks of ``chunk_budget`` elements, each
    recomputed in backward when autograd records."""
    batch, chans, length = x.shape
    groups, n_points = conv.weight_coord.shape[:2]
    k = conv.kernel_size[0]
    scale = (k - 1) / 2.0  # lag units per kernel-coordinate unit
    # compact order: observed steps first (time order), unobserved ones after them with time +inf (never a source)
    order = _observed_first(mask)
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
        if is_exporting():  # a graph cannot read the gather width from the data: every source (the hats are exactly
            # zero outside their windows, so the sums are the same)
            start = torch.zeros_like(window_lo, dtype=torch.long).reshape(batch, groups, n_points, length)
            end, width = start + length, length
        else:
            start = torch.searchsorted(t_source, window_lo).reshape(batch, groups, n_points, length)
            end = torch.searchsorted(t_source, window_hi, right=True).reshape(batch, groups, n_points, length)
            width = int((end - start).amax())  # one host read: the gather width
        edges = ((pos - rad).sort(1).values, (pos + rad).sort(1).values)  # hat supports, per filter
    out = x.new_zeros(batch, groups, length)
    if width > 0:
        q = max(1, min(length, chunk_budget // max(1, _chunk_batch(batch) * groups * n_points * width)))
        outs = []
        for s in range(0, length, q):
            args = (start[..., s:s + q], end[..., s:s + q], t_query[:, s:s + q], x_mixed)
            fn = functools.partial(_smp_local_chunk, conv, t_source, width, edges)
            outs.append(checkpoint(fn, *args, use_reentrant=False) if _records() else fn(*args))
        out_compact = torch.cat(outs, -1)
        out = out.scatter(2, order[:, None].expand(-1, groups, -1), out_compact)  # back to the input's order
    return out + _bias(conv, x)


def _smp_local_chunk(conv: nn.Module, t_source: Tensor, width: int, edges: tuple[Tensor, Tensor], start: Tensor,
                     end: Tensor, t_query: Tensor, x_mixed: Tensor) -> Tensor:
    """One chunk of :func:`_smp_pairwise`: ``start`` / ``end`` ``[B, G, P, q]`` source windows, ``t_query
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
    coords = _lag_coords(lag, k).to(conv.weight_coord.dtype)
    h = smp_basis_local(coords.reshape(batch, groups, n_points, q * width, 1), conv.weight_coord, conv.radius)
    h = h.reshape(index.shape)
    if conv.normalize:  # |N(x)| = #{p: p - r < x < p + r} (Eq. 1), from the sorted hat edges of each filter
        if is_exporting():  # no search operator in ONNX; every point sees the same sources (all) here: compare once
            flat = coords[:, :, :1].transpose(0, 1).reshape(groups, -1, 1)
            count = (edges[0][:, None] < flat).sum(-1) - (edges[1][:, None] <= flat).sum(-1)  # searchsorted's counts
            count = count.reshape(groups, batch, 1, q, width)
        else:
            flat = coords.transpose(0, 1).reshape(groups, -1)
            count = torch.searchsorted(edges[0], flat) - torch.searchsorted(edges[1], flat, right=True)
            count = count.reshape(groups, batch, n_points, q, width)
        h = h / (count.transpose(0, 1).to(h.dtype) + COUNT_EPS)
    source = x_mixed.gather(3, index.reshape(batch, groups, n_points, q * width)).reshape(index.shape)
    return (h * valid * source).sum((2, 4))


def _observed_first(mask: Tensor) -> Tensor:
    """The stable permutation ``[B, L]`` that puts the observed steps first (in time order), then the unobserved
    ones: a stable sort of ``~mask``, written as cumulative-sum ranks so that exporters trace it."""
    observed = mask.long()
    rank = torch.where(mask, observed.cumsum(1), observed.sum(1, keepdim=True) + (1 - observed).cumsum(1)) - 1
    steps = torch.arange(mask.shape[1], device=mask.device).expand_as(rank)
    return torch.zeros_like(rank).scatter(1, rank, steps)


def _chunk_batch(batch: int) -> int:
    """The batch size the query chunks are sized for: while exporting 1 (the batch dimension may be dynamic, so the
    chunks are per series and the graph's memory grows with the batch as every other activation's)."""
    return 1 if is_exporting() else batch


def _records() -> bool:
    """Whether autograd records (then each chunk is recomputed in backward); never while exporting."""
    return torch.is_grad_enabled() and not is_exporting()


def _bias(conv: nn.Module, x: Tensor) -> Tensor | float:
    bias = getattr(conv, 'bias', None)
    return 0.0 if bias is None else bias.to(x.dtype)[:, None]


def _chunked(fn, inputs: Tensor, timestamps: Tensor, mask: Tensor, max_lag: float, q: int) -> Tensor:
    """``fn(lag, valid, inputs)`` over query chunks of ``q`` steps, concatenated along the last axis."""
    length = timestamps.shape[1]
    outs = []
    records = _records()  # the kernels' parameters take part: recompute each chunk in backward
    for start in range(0, length, q):
        lag = timestamps[:, start:start + q, None] - timestamps[:, None, :]  # [B, q, L]
        valid = (lag >= 0) & (lag <= max_lag) & mask[:, None, :]
        lag = torch.where(valid, lag, torch.zeros((), dtype=lag.dtype, device=lag.device))
        if records:
            outs.append(checkpoint(fn, lag, valid, inputs, use_reentrant=False))
        else:
            outs.append(fn(lag, valid, inputs))
    return torch.cat(outs, -1)


class MLPCausalConv1d(nn.Module):
    """A causal conv whose kernel is Wang et al.'s MLP (:class:`~smpconv_models.layers.point_conv.MLPKernel`, a
    basis ``[..., H]`` of the kernel coordinate times weights ``[C_out, C_in, H]``), for the SMP branch's place in
    ``kernel='mlp'`` models: dense on the grid (``generate_kernel`` at the :func:`kernel_coords` taps, the same
    coordinate convention as :class:`SMPCausalConv1d`), pairwise at timestamp differences (:meth:`pairwise`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, hidden: int = 32, depth: int = 2,
                 activation: str = 'relu', bias: bool = False, fft: bool | None = None, device=None, dtype=None):
        super().__init__()
        from ..layers.point_conv import MLPKernel

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
        check_conv_input(x, 1, self.in_channels, type(self).__name__)
        return causal_conv1d(x, self.generate_kernel(), self.bias, fft=self.fft)

    def pairwise(self, x: Tensor, timestamps: Tensor, mask: Tensor, chunk_budget: int) -> Tensor:
        """``sum_j g(t_i - t_j) x_j`` over observed ``j`` with ``0 <= t_i - t_j <= K - 1``: ``[B, C_out, L]``."""
        batch, chans, length = x.shape
        hidden = self.mlp_kernel.basis_size
        q = max(1, min(length, chunk_budget // max(1, _chunk_batch(batch) * length * max(hidden, chans))))

        def chunk(lag: Tensor, valid: Tensor, xx: Tensor) -> Tensor:
            basis = self.mlp_kernel.basis(_lag_coords(lag, self.kernel_size[0])[..., None])  # [B, q, L, H]
            z = torch.einsum('bqjh,bcj->bchq', basis * valid[..., None], xx)
            return torch.einsum('och,bchq->boq', self.mlp_kernel.weights, z)

        return _chunked(chunk, x, timestamps, mask, self.kernel_size[0] - 1, q) + _bias(self, x)

    def extra_repr(self) -> str:
        return f'{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}'


class SMPConvIrregularTCN(TCNClassifierMixin, SMPModelMixin, nn.Module):
    """The SMPConv TCN on irregular series ``values [B, C, L]``, ``timestamps [B, L]``, ``mask [B, L]`` (see the
    module docstring). Its modules are the grid TCN's (:class:`TCNBlock` with :class:`SMPParallelCausalConv1d`), so a
    :class:`~smpconv_models.models.smpconv_tcn.SMPConvTCN` state dict of the same configuration loads unchanged.
    ``seq_len`` is the kernel length in time units (grid steps)."""

    def __init__(
            self,
            in_chans: int = 1,
            num_classes: int = 10,
            global_pool: str = 'last',
            seq_len: int = 64,
            depth: int = 6,
            width: int = 30,
            n_points: int = 30,
            radius: float = 0.03,
            coord_std: float = 0.1,
            small_kernel_size: int = 5,
            conv_bias: bool = False,
            drop_rate: float = 0.0,
            kernel: str = 'smp',
            mlp_hidden: int = 32,
            mlp_depth: int = 2,
            pairwise_chunk: int = PAIRWISE_CHUNK,
            use_fft: bool | None = None,
            kernel_scale: float = 1.0,
            deploy: bool = False,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if global_pool not in _POOLS:
            raise ValueError(f'global_pool must be one of {_POOLS}, got {global_pool!r}')
        if kernel not in _KERNELS:
            raise ValueError(f"kernel must be 'smp' or 'mlp', got {kernel!r}")
        if seq_len < 1:
            raise ValueError(f'seq_len must be positive, got {seq_len}')
        if pairwise_chunk < 1:
            raise ValueError(f'pairwise_chunk must be positive, got {pairwise_chunk}')
        self.num_classes, self.in_chans, self.seq_len = num_classes, in_chans, int(seq_len)
        self.global_pool, self.drop_rate, self.kernel = global_pool, drop_rate, kernel
        self.pairwise_chunk = int(pairwise_chunk)
        self.grad_checkpointing = False

        def make_block(prev: int) -> TCNBlock:
            block = TCNBlock(prev, width, seq_len, n_points, radius, coord_std, small_kernel_size, conv_bias, use_fft,
                             drop_rate, deploy, **dd)
            if kernel == 'mlp' and not deploy:
                for conv in (block.conv1, block.conv2):
                    conv.smp.conv = MLPCausalConv1d(conv.in_channels, conv.out_channels, seq_len, hidden=mlp_hidden,
                                                    depth=mlp_depth, bias=conv_bias, fft=use_fft, **dd)
            return block

        self._build_trunk(make_block, in_chans, depth, width, num_classes, **dd)
        if kernel_scale != 1.0:
            self.rescale_kernels(kernel_scale)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold every block's two branches and BatchNorms into one dense causal kernel on the integer-lag grid
        (:meth:`SMPParallelCausalConv1d.reparameterize`). The folded model serves integer timestamps (the grid
        path) only; non-integer timestamps then raise, since the continuous kernels are gone."""
        for m in self.modules():
            if isinstance(m, SMPParallelCausalConv1d):
                m.reparameterize()

    # --- the forward paths ---------------------------------------------------------------------------------------

    def _plan(self, values: Tensor, timestamps: Tensor, mask: Tensor) -> tuple[bool, int]:
        """Data checks and the path: ``(grid, span)``; one host read."""
        finite_t = torch.where(mask, timestamps, 0).isfinite().all()
        finite_v = torch.where(mask[:, None], values, 0).isfinite().all()
        any_obs = mask.any(1).all()
        big = torch.finfo(timestamps.dtype).max
        # observed timestamps strictly increase in index order: compare each with the previous observed one
        prev = torch.cummax(torch.where(mask, timestamps, -big), 1).values
        prev = F.pad(prev, (1, 0), value=-big)[:, :-1]
        increasing = ((timestamps > prev) | ~mask).all()
        integer = (torch.where(mask, timestamps - timestamps.round(), 0) == 0).all()
        first = torch.where(mask, timestamps, big).amin(1)
        last = torch.where(mask, timestamps, -big).amax(1)
        span = torch.where(mask.any(1), last - first, 0).amax()
        flags = torch.stack([finite_t, finite_v, any_obs, increasing, integer]).to(torch.float64)
        finite_t, finite_v, any_obs, increasing, integer, span = torch.cat([flags, span.double()[None]]).tolist()
        if not finite_t:
            raise ValueError('timestamps hold NaN or infinite values at observed steps')
        if not finite_v:
            raise ValueError('values hold NaN or infinite entries at observed steps (mark missing ones in mask)')
        if not any_obs:
            raise ValueError('every series needs at least one observed step (a mask row is all False)')
        if not increasing:
            raise ValueError('observed timestamps must strictly increase along each series')
        if not integer:
            return False, 0
        return True, int(span) + 1

    def _grid_forward(self, x: Tensor, timestamps: Tensor, mask: Tensor, span: int) -> Tensor:
        """The grid path: the grid TCN's modules on the zero-filled series, hidden features masked."""
        batch, chans = x.shape[:2]
        first = torch.where(mask, timestamps, torch.finfo(timestamps.dtype).max).amin(1, keepdim=True)
        index = torch.where(mask, (timestamps - first).round().long(), span)  # unobserved -> a spare slot
        grid = x.new_zeros(batch, chans, span + 1).scatter(2, index[:, None].expand(-1, chans, -1), x)[..., :span]
        gmask = x.new_zeros(batch, span + 1, dtype=torch.bool).scatter(1, index, mask)[:, :span]
        for block in self.blocks:
            grid = self._run_block(self._grid_block, block, grid, gmask)
        out = grid.gather(2, index.clamp_max(span - 1)[:, None].expand(-1, grid.shape[1], -1))
        return out * mask[:, None].to(out.dtype)

    @staticmethod
    def _grid_pair(conv: SMPParallelCausalConv1d, x: Tensor, gmask: Tensor) -> Tensor:
        if conv.reparam_conv is not None or not conv.smp.bn.training:
            return conv(x)  # eval BatchNorm is pointwise: the folded (cached) kernel serves
        return (masked_batch_norm(conv.smp.conv(x), gmask, conv.smp.bn)
                + masked_batch_norm(conv.small_conv.conv(x), gmask, conv.small_conv.bn))

    def _run_block(self, fn, block: TCNBlock, *args: Tensor) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, block, *args, use_reentrant=False)
        return fn(block, *args)

    def _grid_block(self, block: TCNBlock, x: Tensor, gmask: Tensor) -> Tensor:
        """One :class:`TCNBlock` on the zero-filled grid, hidden features zero at unobserved steps."""
        fmask = gmask[:, None].to(x.dtype)
        out = block.drop(block.act(self._grid_pair(block.conv1, x, gmask) * fmask))
        out = block.drop(block.act(self._grid_pair(block.conv2, out, gmask) * fmask))
        return block.act(out + block.shortcut(x)) * fmask

    def _pairwise_block(self, block: TCNBlock, x: Tensor, timestamps: Tensor, mask: Tensor) -> Tensor:
        """One :class:`TCNBlock` with kernels at the timestamp differences, features on the observed steps."""
        fmask = mask[:, None].to(x.dtype)
        out = block.drop(block.act(self._pairwise_pair(block.conv1, x, timestamps, mask) * fmask))
        out = block.drop(block.act(self._pairwise_pair(block.conv2, out, timestamps, mask) * fmask))
        return block.act(out + block.shortcut(x)) * fmask

    def _pairwise_forward(self, x: Tensor, timestamps: Tensor, mask: Tensor) -> Tensor:
        """The pairwise path: kernels at the ``t_i - t_j``, features on the observed steps."""
        for block in self.blocks:
            x = self._run_block(self._pairwise_block, block, x, timestamps, mask)
        return x

    def _pairwise_pair(self, conv: SMPParallelCausalConv1d, x: Tensor, timestamps: Tensor, mask: Tensor) -> Tensor:
        if conv.reparam_conv is not None:
            raise ValueError('a reparameterized SMPConvIrregularTCN holds dense integer-lag kernels: it serves integer '
                             'timestamps only (got non-integer ones)')
        smp_conv, small = conv.smp.conv, conv.small_conv.conv
        if hasattr(smp_conv, 'pairwise'):
            smp_out = smp_conv.pairwise(x, timestamps, mask, self.pairwise_chunk)
        else:
            smp_out = _smp_pairwise(smp_conv, x, timestamps, mask, self.pairwise_chunk)
        q = max(1, min(x.shape[-1], self.pairwise_chunk // max(1, _chunk_batch(x.shape[0]) * x.shape[1] *
                                                                  x.shape[-1] * small.weight.shape[-1])))
        small_out = _chunked(lambda lag, valid, xx: _small_chunk(small.weight, xx, lag, valid), x,
                             timestamps, mask, small.weight.shape[-1], q)
        if small.bias is not None:
            small_out = small_out + small.bias[:, None]
        return masked_batch_norm(smp_out, mask, conv.smp.bn) + masked_batch_norm(small_out, mask, conv.small_conv.bn)

    def forward_features(self, values: Tensor, timestamps: Tensor | None = None, mask: Tensor | None = None,
                         path: str = 'auto') -> Tensor:
        """Features ``[B, C, L]`` on the input's steps (zero at unobserved ones). ``path``: ``'auto'`` (the grid
        path when the observed timestamps are integers spanning at most ``GRID_SPAN_FACTOR`` x ``L`` steps),
        ``'grid'`` or ``'pairwise'`` (both exact).

        While a graph is captured for export (``torch.export.export``, ``torch.onnx.export``: see
        :func:`~smpconv_models.layers.export_conv.is_exporting`) the path is chosen from static information only:
        ``'auto'`` is the pairwise path, which serves any timestamps (real or integer; the grid path's length is the
        data's span, a host read), ``'grid'`` is an error, the data checks that read values are skipped (shapes and
        dtypes are still checked) and the pairwise path gathers every source instead of reading the gather width.
        The exported graph therefore needs the continuous kernels (no :meth:`reparameterize`)."""
        if path not in ('auto', 'grid', 'pairwise'):
            raise ValueError(f"path must be 'auto', 'grid' or 'pairwise', got {path!r}")
        timestamps, mask = check_irregular_inputs(values, timestamps, mask, self.in_chans)
        x = torch.where(mask[:, None], values, torch.zeros((), dtype=values.dtype, device=values.device))
        if is_exporting():
            if path == 'grid':
                raise ValueError("path='grid' cannot be exported (its length is the data's span, a host read); "
                                 "export path='auto' or 'pairwise', which serve any timestamps")
            if any(m.reparam_conv is not None for m in self.modules() if isinstance(m, SMPParallelCausalConv1d)):
                raise ValueError('a reparameterized SMPConvIrregularTCN cannot be exported: the exported graph '
                                 'evaluates the continuous kernels at timestamp differences (export the model without '
                                 'reparameterize / --no-reparam)')
            return self._pairwise_forward(x, timestamps, mask)
        integer, span = self._plan(values, timestamps, mask)
        if path == 'grid' and not integer:
            raise ValueError("path='grid' needs integer observed timestamps")
        # the zero-filled grid is as long as the longest span: taken when that is at most GRID_SPAN_FACTOR x L
        if integer and (path == 'grid' or (path == 'auto' and span <= GRID_SPAN_FACTOR * max(values.shape[-1], 8))):
            return self._grid_forward(x, timestamps, mask, span)
        return self._pairwise_forward(x, timestamps, mask)

    def forward_head(self, x: Tensor, pre_logits: bool = False, mask: Tensor | None = None) -> Tensor:
        """Pool over observed steps (``global_pool``: the last observed step, mean or max) and classify; ``mask``
        ``[B, L]`` (``None``: every step observed). Without pooling (``''``) per-step logits ``[B, classes, L]``."""
        if mask is None:
            mask = torch.ones(x.shape[0], x.shape[-1], dtype=torch.bool, device=x.device)
        if self.global_pool == 'last':
            steps = torch.arange(x.shape[-1], device=x.device)
            last = torch.where(mask, steps, -1).amax(1)
            x = x.gather(2, last.clamp_min(0)[:, None, None].expand(-1, x.shape[1], 1)).squeeze(2)
        elif self.global_pool == 'avg':
            w = mask[:, None].to(x.dtype)
            x = (x * w).sum(-1) / w.sum(-1).clamp_min(1)
        elif self.global_pool == 'max':
            x = x.masked_fill(~mask[:, None], float('-inf')).amax(-1)
        elif not pre_logits:
            return self.head(x.movedim(1, -1)).movedim(-1, 1)
        return x if pre_logits else self.head(x)

    def forward(self, values: Tensor, timestamps: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """Logits ``[B, num_classes]`` for ``values [B, C, L]``, ``timestamps [B, L]`` and ``mask [B, L]`` (bool);
        ``None`` timestamps / mask mean the regular grid ``0..L-1`` / every step observed."""
        features = self.forward_features(values, timestamps, mask)
        if mask is None:
            mask = torch.ones(values.shape[0], values.shape[-1], dtype=torch.bool, device=values.device)
        return self.forward_head(features, mask=mask)


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: nn.Module, validate: bool = True
                         ) -> dict[str, Tensor]:
    """Our checkpoints and the grid TCN's (same module names) load as they are; official ``SeqData_TCN`` keys are
    converted as for the grid TCN. The input layers (:data:`INPUT_LAYERS`) are adapted to the model's ``in_chans``
    as timm adapts a first conv."""
    from .smpconv_tcn import checkpoint_filter_fn as grid_filter

    if any(k.startswith(('backbone.', 'finallyr.')) for k in state_dict):
        state_dict = grid_filter(state_dict, model, validate=False)
    state_dict = adapt_input_layers(dict(state_dict), model, INPUT_LAYERS)
    return validate_for_model(state_dict, model) if validate else state_dict


# Tensors whose dim 1 is the input channels: the grid TCN's (the first block's SMP weights, small branch, deploy conv
# and shortcut) and, with ``kernel='mlp'``, the first MLP kernel's output weights ``[C_out, C_in, H]``.
INPUT_LAYERS = (*_GRID_INPUT_LAYERS, 'blocks.0.conv1.smp.conv.mlp_kernel.weights')


def _cfg(in_chans: int, seq_len: int, num_classes: int = 10, **kwargs) -> dict:
    return {
        'num_classes': num_classes, 'input_size': (in_chans, 1, seq_len), 'crop_pct': 1.0, 'pool_size': None,
        'interpolation': '', 'mean': (0.0,) * in_chans, 'std': (1.0,) * in_chans,
        'first_conv': 'blocks.0.conv1.small_conv.conv', 'classifier': 'head',
        'paper_name': 'SMPConv: Self-moving Point Representations for Continuous Convolution',
        'origin_url': 'https://github.com/sangnekim/SMPConv', 'license': 'mit', **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'smpconv_irregular_tcn.untrained': _cfg(1, 64),
    'smpconv_irregular_tcn_chartraj.untrained': _cfg(3, 182, num_classes=20),
})


def _create(variant: str, pretrained: bool, defaults: dict, **kwargs) -> SMPConvIrregularTCN:
    check_dense_kwargs(variant, kwargs, 'irregular')
    args = dict(defaults, **kwargs)
    overlay = dict(kwargs.get('pretrained_cfg_overlay') or {})
    overlay.setdefault('input_size', (args.get('in_chans', 1), 1, args['seq_len']))
    args['pretrained_cfg_overlay'] = overlay
    return build_model_with_cfg(SMPConvIrregularTCN, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(flatten_sequential=True), **args)


@register_model
def smpconv_irregular_tcn(pretrained: bool = False, **kwargs) -> SMPConvIrregularTCN:
    """Irregular-series TCN for short series (the digits setting): 64-step kernels, radius 0.03, 1 channel."""
    defaults = dict(in_chans=1, num_classes=10, seq_len=64, radius=0.03, conv_bias=False)
    return _create('smpconv_irregular_tcn', pretrained, defaults, **kwargs)


@register_model
def smpconv_irregular_tcn_chartraj(pretrained: bool = False, **kwargs) -> SMPConvIrregularTCN:
    """Irregular Character Trajectories TCN (the grid ``smpconv_tcn_chartraj`` configuration: 182-step kernels,
    3 channels, 20 classes, radius 0.012, conv bias) for the dropped-observations protocol."""
    defaults = dict(in_chans=3, num_classes=20, seq_len=182, radius=0.012, conv_bias=True)
    return _create('smpconv_irregular_tcn_chartraj', pretrained, defaults, **kwargs)
