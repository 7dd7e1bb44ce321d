"""The irregular-series convolutions' per-pair sums as fused CPU loops compiled by numba (the optional ``fast``
extra), instead of the gathers, scatters and tiny batched matmuls of the plain-torch path
(:mod:`~smpconv_models.layers.irregular_conv`). An eager-only shortcut (:mod:`~smpconv_models.layers.mode`); importing
this module needs numba.

:class:`SMPPairSum`: the SMP kernel (Kim & Park, CVPR 2023, Eq. 1 at the timestamp differences) in one pass over the
(query, source, filter) triples that finds each pair's segment, evaluates the hats covering it and accumulates.

Per filter ``g`` the sum is ``out[b, g, i] = sum_m sum_{p covers c} h_p(c) / |N(c)| * V[b, i + m, g, p]`` with
``c = coords[b, i, m]`` the pair's kernel coordinate, ``h_p(c) = 1 - |c - pos_p| / r_p`` and ``V[b, j, g, p] = sum_c
w[g, c, p] x[b, c, j]`` (the inputs projected on each point's weights: one matmul, outside these loops). The points
covering each segment between a filter's sorted breakpoints (every hat's edges and centre) are listed in
``cover_index`` from ``cover_start`` (CSR rows, one per segment), with the segment's ``1 / (|N| + eps)``.

:class:`LagResample`: the small branch's sources on its taps' lags (each pair's two hats), one pass; the taps then
apply as one matmul. Both run in torch's thread count (``torch.set_num_threads``).
"""
from __future__ import annotations

import numba
import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

__all__ = ['SMPPairSum', 'LagResample']


@njit(parallel=True, cache=True)
def _forward(v, coords, valid, breaks, cover_start, cover_index, inv_count, pos, inv_rad, out):  # pragma: no cover
    batch, groups = v.shape[0], v.shape[2]
    length, width = coords.shape[1], coords.shape[2]
    n_breaks = breaks.shape[1]
    for bg in prange(batch * groups):
        b, g = bg // groups, bg % groups
        for i in range(length):
            acc = 0.0
            s = 0
            for m in range(width):  # sources in time order: the coordinate grows, so the segment only moves up
                if not valid[b, i, m]:
                    continue
                c = coords[b, i, m]
                while s < n_breaks and breaks[g, s] < c:
                    s += 1
                part = 0.0
                for k in range(cover_start[g, s], cover_start[g, s + 1]):
                    p = cover_index[g, k]
                    part += (1.0 - abs(c - pos[g, p]) * inv_rad[g, p]) * v[b, i + m, g, p]
                acc += part * inv_count[g, s]
            out[b, g, i] = acc


@njit(parallel=True, cache=True)
def _backward(v, coords, valid, breaks, cover_start, cover_index, inv_count, pos, inv_rad, grad_out, grad_v,
              grad_pos, grad_inv_rad):  # pragma: no cover
    batch, groups = v.shape[0], v.shape[2]
    length, width = coords.shape[1], coords.shape[2]
    n_breaks = breaks.shape[1]
    for bg in prange(batch * groups):  # each (b, g) owns grad_v[b, g] and its rows of the point gradients
        b, g = bg // groups, bg % groups
        for i in range(length):
            go = grad_out[b, g, i]
            s = 0
            for m in range(width):
                if not valid[b, i, m]:
                    continue
                c = coords[b, i, m]
                while s < n_breaks and breaks[g, s] < c:
                    s += 1
                scale = go * inv_count[g, s]
                j = i + m
                for k in range(cover_start[g, s], cover_start[g, s + 1]):
                    p = cover_index[g, k]
                    d = c - pos[g, p]
                    ad = abs(d)
                    grad_v[b, j, g, p] += scale * (1.0 - ad * inv_rad[g, p])
                    sv = scale * v[b, j, g, p]
                    sign = 1.0 if d > 0 else (-1.0 if d < 0 else 0.0)
                    grad_pos[b, g, p] += sv * inv_rad[g, p] * sign  # d h / d pos = sign(c - pos) / r
                    grad_inv_rad[b, g, p] -= sv * ad


def _arrays(*tensors: Tensor) -> list[np.ndarray]:
    return [t.detach().contiguous().numpy() for t in tensors]


class SMPPairSum(torch.autograd.Function):
    """``out [B, G, q]`` from the chunk's ``sources [B, C, q + w - 1]``, the points' ``weights [G, C, P]``, ``pos`` /
    ``inv_rad`` ``[G, P]`` (gradients flow to these four) and the pairs' ``coords`` / ``valid`` ``[B, q, w]`` with the
    filters' segment tables (``breaks [G, 3P]``, ``cover_start [G, 3P + 2]``, ``cover_index [G, n]``, ``inv_count
    [G, 3P + 1]``); float32 or float64, CPU. The projections ``V`` (``[B, q + w - 1, G, P]``, ``G P / C`` times the
    sources) are not kept for backward but recomputed there (one matmul)."""

    @staticmethod
    def forward(ctx, sources: Tensor, weights: Tensor, pos: Tensor, inv_rad: Tensor, coords: Tensor, valid: Tensor,
                breaks: Tensor, cover_start: Tensor, cover_index: Tensor, inv_count: Tensor) -> Tensor:
        tables = (coords, valid, breaks, cover_start, cover_index, inv_count, pos, inv_rad)
        v = _project(sources, weights)
        out = v.new_empty(v.shape[0], v.shape[2], coords.shape[1])
        _set_threads()
        _forward(*_arrays(v, *tables), out.numpy())
        ctx.save_for_backward(sources, weights, *tables)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        sources, weights, *tables = ctx.saved_tensors
        pos = tables[-2]
        mat = _points_matrix(weights)
        v = _project(sources, weights)
        grad_v = torch.zeros_like(v)
        grad_pos = v.new_zeros(v.shape[0], *pos.shape)
        grad_inv_rad = torch.zeros_like(grad_pos)
        _set_threads()
        _backward(*_arrays(v, *tables, grad_out), grad_v.numpy(), grad_pos.numpy(), grad_inv_rad.numpy())
        grad_v = grad_v.flatten(2)  # [B, j, G P]
        grad_sources = (grad_v @ mat.T).transpose(1, 2) if ctx.needs_input_grad[0] else None
        grad_weights = None
        if ctx.needs_input_grad[1]:
            grad_mat = (sources @ grad_v).sum(0)  # [C, G P]
            grad_weights = grad_mat.unflatten(1, weights.shape[::2]).permute(1, 0, 2)
        return (grad_sources, grad_weights, grad_pos.sum(0), grad_inv_rad.sum(0), None, None, None, None, None, None)


def _points_matrix(weights: Tensor) -> Tensor:
    """The points' weights ``[G, C, P]`` as one matrix ``[C, G P]``."""
    return weights.permute(1, 0, 2).flatten(1)


def _project(sources: Tensor, weights: Tensor) -> Tensor:
    """``V [B, j, G, P]``: the sources ``[B, C, j]`` on each point's weights ``[G, C, P]`` (one matmul)."""
    return (sources.transpose(1, 2) @ _points_matrix(weights)).unflatten(2, weights.shape[::2]).contiguous()


def _set_threads() -> None:
    """numba's threads for the next call: torch's (``torch.set_num_threads``), at most numba's pool."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


@njit(parallel=True, cache=True)
def _resample(lag, valid, taps, x, z, transpose):  # pragma: no cover
    """``z[b, c, m, i] += hat_m(lag) x[b, c, i + w]`` over the valid pairs, or (``transpose``) the adjoint into x."""
    batch, chans = x.shape[0], x.shape[1]
    length, width = lag.shape[1], lag.shape[2]
    for bc in prange(batch * chans):
        b, c = bc // chans, bc % chans
        for i in range(length):
            for m in range(width):
                if not valid[b, i, m]:
                    continue
                knot = int(lag[b, i, m])  # lag >= 0: its floor; the hats of taps knot and knot + 1 cover it
                frac = lag[b, i, m] - knot
                w0 = 1.0 - frac if knot < taps else 0.0
                w1 = frac if knot + 1 < taps else 0.0
                k0, k1 = min(knot, taps - 1), min(knot + 1, taps - 1)
                if transpose:
                    x[b, c, i + m] += w0 * z[b, c, k0, i] + w1 * z[b, c, k1, i]
                else:
                    z[b, c, k0, i] += w0 * x[b, c, i + m]
                    z[b, c, k1, i] += w1 * x[b, c, i + m]


class LagResample(torch.autograd.Function):
    """The small branch's sources on its taps' lags: ``z [B, C, S, q]`` with ``z[b, c, m, i] = sum_w relu(1 - |lag -
    m|) x[b, c, i + w]`` over the valid pairs of ``lag`` / ``valid`` ``[B, q, w]`` (``x [B, C, q + w - 1]``; gradients
    to ``x``); the conv is then one matmul of ``z`` with the taps."""

    @staticmethod
    def forward(ctx, x: Tensor, lag: Tensor, valid: Tensor, taps: int) -> Tensor:
        out = x.new_zeros(x.shape[0], x.shape[1], taps, lag.shape[1])
        _set_threads()
        _resample(*_arrays(lag.to(x.dtype), valid), taps, x.detach().contiguous().numpy(), out.numpy(), False)
        ctx.save_for_backward(lag, valid)
        ctx.taps, ctx.x_shape = taps, x.shape
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        lag, valid = ctx.saved_tensors
        grad_x = grad_out.new_zeros(ctx.x_shape)
        _set_threads()
        lag_valid = _arrays(lag.to(grad_out.dtype), valid)
        _resample(*lag_valid, ctx.taps, grad_x.numpy(), grad_out.contiguous().numpy(), True)
        return grad_x, None, None, None
