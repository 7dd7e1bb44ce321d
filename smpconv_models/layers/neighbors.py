"""Neighbourhoods on point sets: exact k-nearest and radius-ball search, point-set checks and subsampling.

Search result (:class:`Neighborhood`): indices ``idx [B, M, k]`` into the support and their validity
``valid [B, M, k]``, computed once per resolution and handed to every layer there (as PyG passes ``edge_index``).

**The neighbour rule** (every backend returns the same tensors):

* distance: ``sqrt(sum_a (y_a - x_a)^2)`` in the positions' dtype (half precision, autocast included: float32,
  :func:`_full_precision`), the coordinate terms added in axis order (:func:`pair_distances`);
* order: by ``(distance, support index)``: the nearest first, equal distances by the smaller index; a query keeps
  the first ``k`` real points in that order (padded points, ``support_mask`` False, never count);
* ``radius``: of those ``k``, the ones with ``distance <= radius`` are valid (the nearest at most ``k`` in the
  closed ball); they come first;
* unused slots (fewer than ``k`` real points, or fewer than ``k`` in the ball) are ``valid = False``, ``idx = 0``.

Backends: ``'torch'`` (plain torch on any device, under ``torch.compile`` and ``torch.export``; O(N M) time in
query chunks of bounded memory), ``'kdtree'`` (CPU: scipy's ``cKDTree`` proposes candidates, which are re-ranked
with :func:`pair_distances`; O((N + M k) log N); a custom op, so ``torch.compile`` keeps one graph),
``'torch_cluster'`` (optional package; its own tie and ball rules, see :func:`find_neighbors`).
"""
from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .conv import check_float_3d
from .mode import check_values, execution_mode

__all__ = ['Neighborhood', 'find_neighbors', 'pair_distances', 'farthest_point_sample', 'grid_pool',
           'random_point_sample', 'check_point_set', 'check_point_set_shapes']

# Largest pairwise-distance block (elements) the plain-torch search holds at once (16 MiB in float32).
DIST_BLOCK = 1 << 22
# Queries per cKDTree call (bounds the float64 candidate arrays to a few MiB).
KDTREE_QUERY_BLOCK = 1 << 15
# 'auto' uses the kd-tree on CPU from this many support x query pairs per set (below it the plain search is faster).
KDTREE_MIN_PAIRS = 1 << 15
# 'auto' warns that the plain search is quadratic above this many distances per set (when scipy is missing).
QUADRATIC_WARN = 1 << 30
BACKENDS = ('auto', 'torch', 'kdtree', 'torch_cluster')


class Neighborhood(NamedTuple):
    """Neighbour indices ``idx [B, M, k]`` (int64, into the support set) and ``valid [B, M, k]`` (bool), ordered by
    ``(distance, index)`` (module docstring). A tuple: ``idx, valid = find_neighbors(...)`` unpacks it."""

    idx: Tensor
    valid: Tensor


# ------------------------------------------------------------------------------------------------ checks

def _check_positions(name: str, positions: Tensor, batch: int | None = None, dim: int | None = None) -> None:
    check_float_3d(name, positions, '[B, N, d]')
    if batch is not None and positions.shape[0] != batch:
        raise ValueError(f'{name} has batch size {positions.shape[0]}, expected {batch}')
    if dim is not None and positions.shape[-1] != dim:
        raise ValueError(f'{name} must have coordinate dimension d={dim}, got {positions.shape[-1]} '
                         f'(shape {tuple(positions.shape)})')


def _check_mask(mask: Tensor | None, batch: int, n: int, name: str = 'mask') -> None:
    if mask is None:
        return
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(f'{name} must be a bool tensor [B, N] (True = a real point), got '
                        f'{getattr(mask, "dtype", type(mask).__name__)}')
    if tuple(mask.shape) != (batch, n):
        raise ValueError(f'{name} must have shape [B, N] = [{batch}, {n}], got {tuple(mask.shape)}')


def check_point_set_shapes(features: Tensor, positions: Tensor, mask: Tensor | None = None,
                           query: Tensor | None = None, in_channels: int | None = None,
                           dim: int | None = None) -> None:
    """The shape and dtype part of :func:`check_point_set` (no host sync)."""
    check_float_3d('features', features, '[B, N, F_in]')
    batch, n, chans = features.shape
    if in_channels is not None and chans != in_channels:
        raise ValueError(f'features have {chans} channels, expected F_in={in_channels}')
    _check_positions('positions', positions, dim=dim)
    if positions.shape[:2] != features.shape[:2]:
        raise ValueError(f'positions {tuple(positions.shape)} do not match features {tuple(features.shape)}: '
                         f'batch and point counts must agree')
    _check_mask(mask, batch, n)
    if query is not None:
        _check_positions('query', query, batch, positions.shape[-1])


def check_point_set(features: Tensor, positions: Tensor, mask: Tensor | None = None, query: Tensor | None = None,
                    in_channels: int | None = None, dim: int | None = None, k: int | None = None) -> None:
    """Raise a clear error for a malformed point set: shapes, dtypes, batch and point counts, a bad mask, and (one
    host sync) non-finite positions of real points or fewer real points than ``k`` (k-nearest-neighbour search).
    The value checks go through :func:`~smpconv_models.layers.mode.check_values`: run-time asserts in a compiled
    graph (no graph break), skipped in an exported one (only the shape and dtype checks run there)."""
    check_point_set_shapes(features, positions, mask, query, in_channels, dim)
    n = features.shape[1]
    if k is not None and k > n:
        raise ValueError(f'k={k} neighbours requested but the sets hold only N={n} points')
    finite = torch.isfinite(positions).all(-1)
    checks = [((finite if mask is None else finite | ~mask).all(),
               'positions contain NaN or infinite values (at points the mask marks as real)')]
    if query is not None:
        checks.append((torch.isfinite(query).all(), 'query positions contain NaN or infinite values'))
    if k is not None and mask is not None:
        checks.append((mask.sum(1).min() >= k, f'k={k} nearest neighbours requested but a set has fewer valid points '
                                               '(mask); lower k or use radius search'))
    check_values(checks)


def _check_neighborhood(neighbors: Neighborhood, batch: int, m: int, k: int, n: int) -> None:
    """Shapes and dtypes of a neighbourhood handed to a layer (no host sync)."""
    if not isinstance(neighbors, tuple) or len(neighbors) != 2 or not all(isinstance(t, Tensor) for t in neighbors):
        raise TypeError(f'neighbors must be a Neighborhood (idx, valid) from find_neighbors, got '
                        f'{type(neighbors).__name__}')
    idx, valid = neighbors
    if idx.dtype != torch.long or valid.dtype != torch.bool:
        raise TypeError(f'neighbors must hold int64 idx and bool valid, got {idx.dtype} and {valid.dtype}')
    if tuple(idx.shape) != (batch, m, k) or tuple(valid.shape) != (batch, m, k):
        raise ValueError(f'neighbors must be [B, M, k] = [{batch}, {m}, {k}] for these {n} support and {m} query '
                         f'points and k={k}, got idx {tuple(idx.shape)} and valid {tuple(valid.shape)}')


# ------------------------------------------------------------------------------------------------ search

def _full_precision(positions: Tensor) -> Tensor:
    """Positions for distances: half-precision ones (bf16 / fp16 models, autocast) in float32, so that rounding never
    reorders neighbours or farthest points (and the kd-tree, float32 / float64 only, serves them too)."""
    return positions if positions.dtype in (torch.float32, torch.float64) else positions.float()


def pair_distances(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean distances between broadcastable ``[..., d]`` coordinates, ``[...]``: the squared coordinate
    differences added in axis order, then the square root. Every search backend ranks with this one formula (plain
    elementwise ops, also in an exported graph), so ties and near-ties resolve identically on every path."""
    in_place = not (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad))
    return _distance_from_differences((a[..., axis] - b[..., axis] for axis in range(a.shape[-1])), in_place)


def _distance_from_differences(diffs, in_place: bool = True) -> Tensor:
    """:func:`pair_distances` from its per-axis coordinate differences (in axis order); ``in_place`` reuses the
    difference tensors (the same arithmetic, without autograd)."""
    total = None
    for diff in diffs:
        if in_place:
            square = diff.mul_(diff)
            total = square if total is None else total.add_(square)
        else:
            total = diff * diff if total is None else total + diff * diff
    return total.sqrt_() if in_place else total.sqrt()


def _nearest_in_rows(dist: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` smallest of every row of ``dist [..., N]`` (inf: not a candidate) in ``(distance, index)`` order:
    ``(distances [..., k], indices [..., k])``, O(N) per row. Eager: a top-k of ``k + 1`` settles every row whose
    k-th and (k+1)-th distances differ; rows tied there take the ties at the k-th distance by index
    (:func:`_take_ties_by_index`); so does every row outside eager mode (export, compile, trace: no data-dependent
    branch or shape)."""
    n = dist.shape[-1]
    if k == n or execution_mode() != 'eager':
        return _rank_by_distance(*_take_ties_by_index(dist, k))
    top, idx = dist.topk(k + 1, dim=-1, largest=False, sorted=True)
    tied = top[..., k - 1] == top[..., k]
    top, idx = top[..., :k], idx[..., :k]
    if tied.any():
        rows = tied.nonzero(as_tuple=True)
        top, idx = top.clone(), idx.clone()
        top[rows], idx[rows] = _take_ties_by_index(dist[rows], k)
    return _rank_by_distance(top, idx)


def _take_ties_by_index(dist: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` smallest of every row of ``dist [..., N]``, ties at the k-th distance taken by the smaller index:
    ``(distances [..., k], indices [..., k])``, indices ascending."""
    n = dist.shape[-1]
    kth = dist.topk(k, dim=-1, largest=False, sorted=False).values.amax(-1, keepdim=True)
    below = dist < kth
    tied = dist == kth
    room = k - below.sum(-1, keepdim=True)
    take = below | (tied & (tied.long().cumsum(-1) <= room))  # exactly k per row
    index = torch.arange(n, device=dist.device)
    idx = torch.where(take, index, n).topk(k, dim=-1, largest=False, sorted=True).values  # ascending indices
    return dist.gather(-1, idx), idx


def _rank_by_distance(dist: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    """``k`` candidates per row reordered by ``(distance, index)``, from pairwise comparisons (``[..., k, k]``;
    exportable, unlike a stable sort)."""
    k = dist.shape[-1]
    closer = dist.unsqueeze(-1) > dist.unsqueeze(-2)  # [i, j]: j is nearer than i
    before = (dist.unsqueeze(-1) == dist.unsqueeze(-2)) & (idx.unsqueeze(-1) > idx.unsqueeze(-2))
    rank = (closer | before).sum(-1)
    slots = torch.arange(k, device=dist.device).expand_as(rank)
    order = torch.zeros_like(rank).scatter(-1, rank, slots)
    return dist.gather(-1, order), idx.gather(-1, order)


def _finish(dist: Tensor, idx: Tensor, radius: float | None, k: int) -> Neighborhood:
    """Validity (finite, within ``radius``), invalid slots to index 0, padded to ``k`` slots."""
    valid = torch.isfinite(dist)
    if radius is not None:
        valid = valid & (dist <= radius)
    idx = idx.masked_fill(~valid, 0)
    if idx.shape[-1] < k:  # radius search with a maximum count above the set size: invalid slots
        pad = k - idx.shape[-1]
        idx = torch.cat([idx, idx.new_zeros(*idx.shape[:-1], pad)], -1)
        valid = torch.cat([valid, valid.new_zeros(*valid.shape[:-1], pad)], -1)
    return Neighborhood(idx, valid)


def _neighbors_torch(support: Tensor, query: Tensor, k: int, radius: float | None, support_mask: Tensor | None,
                     chunk_size: int | None) -> Neighborhood:
    """Brute force in query chunks: one ``[B, chunk, N]`` distance block of at most ``DIST_BLOCK`` elements."""
    batch, n, _ = support.shape
    m = query.shape[1]
    kk = min(k, n)
    # while exporting the batch dimension may be dynamic: chunks sized per set (memory then grows with the batch)
    chunk = chunk_size or max(1, DIST_BLOCK // max(1, (1 if execution_mode() == 'export' else batch) * n))
    dists, idxs = [], []
    for start in range(0, m, chunk):
        d = pair_distances(query[:, start:start + chunk, None], support[:, None])  # [B, chunk, N]
        if support_mask is not None:
            d = d.masked_fill(~support_mask[:, None], math.inf)
        d, i = _nearest_in_rows(d, kk)
        dists.append(d)
        idxs.append(i)
    return _finish(torch.cat(dists, 1), torch.cat(idxs, 1), radius, k)


# The kd-tree path runs on the host in numpy (single-threaded elementwise work: no intra-op thread pool to wait on
# for its many small steps); its float32 / float64 arithmetic is the same IEEE operations as pair_distances'
# (half-precision positions reach it in float32: _full_precision).


def _relative_error(dtype) -> float:
    """A bound (with a wide margin) on the relative error of :func:`pair_distances` in ``dtype``."""
    return 64 * float(np.finfo(dtype).eps)


def _rank_candidates(query, points, cand, found, real):
    """kd-tree candidates ``cand [m, C]`` (rows of ``points [n, d]``, ascending tree distance; ``found`` False:
    none) of ``query [m, d]`` re-ranked by the neighbour rule (numpy): ``(distances [m, C], original indices)``
    (``real``: the original index of every point; ``None``: the identity). Rows already in order stay unsorted."""
    if found is not None:
        cand = np.minimum(cand, points.shape[0] - 1)
    diff = query[:, None] - points[cand]  # [m, C, d]
    total = None
    for axis in range(diff.shape[-1]):  # pair_distances' operations, in its order
        square = diff[..., axis] * diff[..., axis]
        total = square if total is None else total + square
    dist = np.sqrt(total)
    idx = cand if real is None else real[cand]
    if found is not None:
        dist[~found] = np.inf
        idx = np.where(found, idx, np.iinfo(np.int64).max)  # missing candidates sort last
    prev, nxt = dist[:, :-1], dist[:, 1:]
    swapped = (nxt < prev) | ((nxt == prev) & (idx[:, 1:] < idx[:, :-1]))
    rows = np.flatnonzero(swapped.any(-1))
    if rows.size:
        sub_dist, sub_idx = dist[rows], idx[rows]
        order = np.lexsort((sub_idx, sub_dist), axis=-1)  # by distance, then index
        dist[rows] = np.take_along_axis(sub_dist, order, -1)
        idx[rows] = np.take_along_axis(sub_idx, order, -1)
    return dist, idx


def _kdtree_set(points, query, k: int, radius: float | None, real, workers: int):
    """One set (numpy): ``(distances [M, min(k, n)], indices)`` by the neighbour rule for ``query [M, d]`` among
    ``points [n, d]`` (``real``: their indices in the set; ``None``: ``0..n-1``).

    The tree (float64) proposes the ``k + 1`` nearest; they are re-ranked with :func:`pair_distances`' arithmetic
    in the positions' dtype. A query whose last tree distance does not clear its k-th re-ranked distance by the
    rounding bound (ties or near-ties across the candidate edge) is answered from the tree's ball of that radius
    instead, which holds every point that can rank among its first ``k``.
    """
    from scipy.spatial import cKDTree

    n = points.shape[0]
    kk = min(k, n)
    n_cand = min(k + 1, n)
    rel = _relative_error(points.dtype)
    slack = 4 * math.sqrt(points.shape[-1] * float(np.finfo(points.dtype).tiny))  # underflowing squares
    bound = math.inf if radius is None else (radius + slack) * (1 + 4 * rel)
    tree = cKDTree(points.astype(np.float64))
    dists, idxs = [], []
    for start in range(0, query.shape[0], KDTREE_QUERY_BLOCK):
        q = query[start:start + KDTREE_QUERY_BLOCK]
        tree_dist, cand = tree.query(q.astype(np.float64), k=list(range(1, n_cand + 1)), distance_upper_bound=bound,
                                     workers=workers)
        found = None if radius is None else cand < n
        dist, idx = _rank_candidates(q, points, cand, found, real)
        dist, idx = dist[:, :kk], idx[:, :kk]
        if n_cand < n:  # else every point was a candidate
            threshold = dist[:, -1] if radius is None else np.minimum(dist[:, -1], radius)
            clear = tree_dist[:, -1] * (1 - rel) - slack > threshold
            if found is not None:
                clear |= ~found[:, -1]  # fewer than n_cand within the bound: every point in the ball is a candidate
            redo = np.flatnonzero(~clear)
            if redo.size:
                dist[redo], idx[redo] = _kdtree_balls(tree, q[redo], threshold[redo], points, real, kk, rel, slack,
                                                      workers)
        dists.append(dist)
        idxs.append(idx)
    return np.concatenate(dists), np.concatenate(idxs)


def _kdtree_balls(tree, q, threshold, points, real, k: int, rel: float, slack: float, workers: int):
    """The first ``k`` by the neighbour rule among every point the tree finds within ``threshold`` (widened by the
    rounding bound) of each query ``q [r, d]``: ``(distances [r, k], indices [r, k])`` (inf past the ball)."""
    reach = (threshold.astype(np.float64) + slack) / (1 - rel) * (1 + 4 * rel)
    # (usually a handful of queries: threads only pay off for many)
    balls = tree.query_ball_point(q.astype(np.float64), reach, workers=workers if len(q) >= 4096 else 1)
    n = points.shape[0]
    cand = np.full((len(balls), max(k, *(len(b) for b in balls))), n, dtype=np.int64)
    for row, ball in enumerate(balls):
        cand[row, :len(ball)] = ball
    dist, idx = _rank_candidates(q, points, cand, cand < n, real)
    return dist[:, :k], idx[:, :k]


def _kdtree_search(support: Tensor, query: Tensor, k: int, radius: float | None, support_mask: Tensor | None
                   ) -> tuple[Tensor, Tensor]:
    batch, m = query.shape[:2]
    idx = np.zeros((batch, m, k), dtype=np.int64)
    valid = np.zeros((batch, m, k), dtype=bool)
    workers = max(1, torch.get_num_threads())
    support_np, query_np = support.detach().numpy(), query.detach().numpy()
    mask_np = None if support_mask is None else support_mask.numpy()
    for b in range(batch):
        real = None if mask_np is None else np.flatnonzero(mask_np[b])  # the set's real points
        points = support_np[b] if real is None else support_np[b, real]
        if points.shape[0] == 0:
            continue
        dist, index = _kdtree_set(points, query_np[b], k, radius, real, workers)
        kk = dist.shape[-1]
        inside = np.ones(dist.shape, dtype=bool) if radius is None else dist <= radius
        idx[b, :, :kk] = np.where(inside, index, 0)
        valid[b, :, :kk] = inside
    return torch.from_numpy(idx), torch.from_numpy(valid)


@torch.library.custom_op('smpconv_models::kdtree_neighbors', mutates_args=())
def _kdtree_op(support: Tensor, query: Tensor, k: int, radius: float | None, support_mask: Tensor | None
               ) -> tuple[Tensor, Tensor]:
    """The kd-tree search as an opaque op (``torch.compile`` calls it without a graph break)."""
    return _kdtree_search(support.contiguous(), query.contiguous(), k, radius, support_mask)


@_kdtree_op.register_fake
def _kdtree_op_fake(support, query, k, radius, support_mask):
    shape = (query.shape[0], query.shape[1], k)
    return query.new_empty(shape, dtype=torch.long), query.new_empty(shape, dtype=torch.bool)


def _neighbors_torch_cluster(support: Tensor, query: Tensor, k: int, radius: float | None,
                             support_mask: Tensor | None) -> Neighborhood:
    import torch_cluster

    batch, n, d = support.shape
    m = query.shape[1]
    x = support
    if support_mask is not None:  # padded points far outside every neighbourhood; marked invalid below anyway
        far = support.abs().amax() * 4 + 1e6
        x = torch.where(support_mask[..., None], support, far)
    dev = support.device
    batch_x = torch.arange(batch, device=dev).repeat_interleave(n)
    batch_y = torch.arange(batch, device=dev).repeat_interleave(m)
    if radius is None:
        row, col = torch_cluster.knn(x.reshape(-1, d), query.reshape(-1, d), k, batch_x, batch_y)
    else:
        row, col = torch_cluster.radius(x.reshape(-1, d), query.reshape(-1, d), radius, batch_x, batch_y,
                                        max_num_neighbors=k)
    order = torch.argsort(row, stable=True)
    row, col = row[order], col[order]
    slot = torch.arange(row.numel(), device=dev) - torch.searchsorted(row, row)
    keep = slot < k
    row, col, slot = row[keep], col[keep], slot[keep]
    idx = torch.zeros(batch * m, k, dtype=torch.long, device=dev)
    valid = torch.zeros(batch * m, k, dtype=torch.bool, device=dev)
    idx[row, slot] = col - (row // m) * n
    valid[row, slot] = True
    idx, valid = idx.view(batch, m, k), valid.view(batch, m, k)
    if support_mask is not None:
        valid &= support_mask.gather(1, idx.flatten(1)).view_as(valid)
    if radius is not None:  # torch_cluster compares squared distances; keep the plain path's closed ball
        pos = support.gather(1, idx.flatten(1)[..., None].expand(-1, -1, d)).view(batch, m, k, d)
        valid &= (pos - query[:, :, None]).norm(dim=-1) <= radius
    return Neighborhood(idx, valid)


@torch.compiler.assume_constant_result  # torch.compile evaluates it once while tracing (no graph break)
def _has_torch_cluster() -> bool:
    try:
        import torch_cluster  # noqa: F401
    except ImportError:
        return False
    return True


@torch.compiler.assume_constant_result
def _has_scipy() -> bool:
    try:
        import scipy.spatial  # noqa: F401
    except ImportError:
        return False
    return True


def _pick_backend(backend: str, support: Tensor, query: Tensor) -> str:
    if backend != 'auto':
        return backend
    n, m = support.shape[1], query.shape[1]
    if execution_mode() == 'export' or support.device.type != 'cpu' or n * m < KDTREE_MIN_PAIRS:
        return 'torch'
    if _has_scipy():
        return 'kdtree'
    if n * m > QUADRATIC_WARN:
        warnings.warn(f'neighbour search over {n} x {m} points without scipy runs the quadratic plain-torch '
                      'search; install scipy (pip install "smpconv-models[points]") for the kd-tree', stacklevel=3)
    return 'torch'


@torch.no_grad()
def find_neighbors(
        support: Tensor,
        query: Tensor,
        k: int,
        radius: float | None = None,
        support_mask: Tensor | None = None,
        chunk_size: int | None = None,
        backend: str = 'auto',
) -> Neighborhood:
    """Neighbour indices ``[B, M, k]`` into the support and their validity ``[B, M, k]`` (bool), as a
    :class:`Neighborhood` (a tuple ``(idx, valid)``).

    ``radius=None``: the ``k`` nearest real points. Otherwise the nearest at most ``k`` real points within
    ``radius`` (closed ball). Ordered by ``(distance, index)`` and padded as the module docstring says; padded points
    (``support_mask`` False) never count. Backends (all return identical tensors, except ``torch_cluster``):

    * ``'torch'``: plain torch on any device (exportable), queries in chunks so one ``[B, chunk, N]`` distance
      block holds at most ``DIST_BLOCK`` elements (``chunk_size`` overrides the chunk); O(N M) time;
    * ``'kdtree'``: CPU, scipy's ``cKDTree`` (optional: ``pip install "smpconv-models[points]"``);
      O((N + M k) log N) time, O(N + M k) memory;
    * ``'torch_cluster'``: the optional ``torch_cluster`` package; *not* the rule above: ties are its own and
      ``radius`` keeps some ``k`` points of the ball, not the nearest;
    * ``'auto'``: ``'kdtree'`` for CPU sets of at least ``KDTREE_MIN_PAIRS`` support x query points when scipy is
      installed, else ``'torch'`` (always ``'torch'`` while exporting:
      :func:`~smpconv_models.layers.mode.execution_mode`).

    Half-precision positions (bf16 / fp16, autocast or not) are compared in float32 on every backend.
    """
    if backend not in BACKENDS:
        raise ValueError(f'backend must be one of {", ".join(map(repr, BACKENDS))}, got {backend!r}')
    if int(k) < 1:
        raise ValueError(f'k must be at least 1, got {k}')
    if radius is not None and not radius > 0:
        raise ValueError(f'radius must be positive, got {radius}')
    _check_positions('support positions', support)
    _check_positions('query', query, support.shape[0], support.shape[-1])
    _check_mask(support_mask, support.shape[0], support.shape[1], 'support_mask')
    k = int(k)
    radius = None if radius is None else float(radius)
    support, query = _full_precision(support), _full_precision(query)
    chosen = _pick_backend(backend, support, query)
    if chosen == 'kdtree':
        if support.device.type != 'cpu' or query.device.type != 'cpu':
            raise ValueError(f"backend='kdtree' runs on CPU tensors, got {support.device}; use backend='torch'")
        if execution_mode() == 'export':
            raise ValueError("backend='kdtree' cannot be exported (a host-side search); use backend='torch'")
        if not _has_scipy():
            raise ImportError("backend='kdtree' needs scipy (pip install \"smpconv-models[points]\"); "
                              "backend='torch' needs nothing")
        return Neighborhood(*_kdtree_op(support, query, k, radius, support_mask))
    if chosen == 'torch_cluster':
        if not _has_torch_cluster():
            raise ImportError("backend='torch_cluster' needs the optional torch_cluster package (pip install "
                              "torch-cluster, built for your torch version); backend='torch' needs nothing")
        return _neighbors_torch_cluster(support, query, k, radius, support_mask)
    return _neighbors_torch(support, query, k, radius, support_mask, chunk_size)


# ------------------------------------------------------------------------------------------------ subsampling

@torch.no_grad()
def farthest_point_sample(positions: Tensor, n_samples: int, mask: Tensor | None = None,
                          subset: int | None = None) -> Tensor:
    """Indices ``[B, n_samples]`` chosen by farthest-point sampling among real points, starting at the first real
    point. When a set has fewer real points than ``n_samples``, the remaining picks are padded points (so the
    gathered mask marks them); a real point is never picked twice. ``n_samples`` sequential steps of ``O(B N)``.

    ``subset``: run it on a pool of about ``subset`` real points spread over each set instead of all ``N``
    (:func:`grid_pool`: one point per occupied cell of a grid sized so that at least ``subset`` cells are occupied),
    ``n_samples`` steps of ``O(B subset)``, for sets where the exact sampler's steps dominate (``None``: exact).
    """
    _check_positions('positions', positions)
    batch, n, dim = positions.shape
    _check_mask(mask, batch, n)
    if not 1 <= n_samples <= n:
        raise ValueError(f'n_samples must be in [1, N={n}], got {n_samples}')
    if subset is not None and not n_samples <= subset:
        raise ValueError(f'subset must hold at least n_samples={n_samples} points, got {subset}')
    positions = _full_precision(positions)
    if subset is not None and subset < n:
        pools = []
        for b in range(batch):
            real = torch.arange(n, device=positions.device) if mask is None else mask[b].nonzero().flatten()
            if real.numel() > subset:  # ascending: the pool starts at the set's first real point, as FPS does
                real = real[grid_pool(positions[b, real], subset)].sort().values
            pools.append(real)
        sizes = torch.tensor([len(p) for p in pools], device=positions.device)
        width = max(n_samples, int(sizes.max()))
        pool = torch.stack([_pad_pool(p, n, width) for p in pools])  # then other points: padded ones if any
        pool_mask = torch.arange(width, device=positions.device) < sizes[:, None]
        pool_pos = positions.gather(1, pool[..., None].expand(-1, -1, dim))
        return pool.gather(1, farthest_point_sample(pool_pos, n_samples, pool_mask))
    real = torch.ones(batch, n, dtype=torch.bool, device=positions.device) if mask is None else mask
    # score: distance to the picked set for unpicked real points (>= 0), -0.25 unpicked padded, -0.5 picked
    score = torch.where(real, math.inf, -0.25).to(positions.dtype)
    picks = [score.argmax(-1)]
    for _ in range(n_samples - 1):  # out-of-place steps: exporters trace the unrolled loop
        current = picks[-1]
        score = score.scatter(1, current[:, None], -0.5)
        centre = positions.gather(1, current[:, None, None].expand(-1, 1, positions.shape[-1]))
        dist = (positions - centre).square().sum(-1)
        score = torch.where(score >= 0, torch.minimum(score, dist), score)
        picks.append(score.argmax(-1))
    return torch.stack(picks, 1)


def _pad_pool(pool: Tensor, n: int, width: int) -> Tensor:
    """``pool`` followed by the lowest indices of ``0..n-1`` outside it, ``width`` in all."""
    free = torch.ones(n, dtype=torch.bool, device=pool.device)
    free[pool] = False
    return torch.cat([pool, free.nonzero().flatten()[:width - len(pool)]])


@torch.no_grad()
def grid_pool(positions: Tensor, size: int, refine: int = 8) -> Tensor:
    """Indices of about ``size`` (at least ``min(size, n)``) of the points ``positions [n, d]`` spread over space:
    the lowest-index point of every occupied cell of a regular grid whose cell edge is the largest (found by halving,
    then ``refine`` bisection steps) that leaves at least ``size`` cells occupied. O(n log n) per step."""
    n = positions.shape[0]
    if n <= size:
        return torch.arange(n, device=positions.device)
    lo = positions.amin(0)
    extent = float((positions.amax(0) - lo).amax())
    if extent == 0:
        return torch.arange(size, device=positions.device)
    index = torch.arange(n, device=positions.device)

    def cells(edge: float) -> tuple[int, Tensor]:
        cell = ((positions - lo) / edge).floor().long()
        key = torch.zeros(n, dtype=torch.long, device=positions.device)
        for axis in range(cell.shape[1]):
            key = key * (int(cell[:, axis].max()) + 1) + cell[:, axis]
        keys, inverse = torch.unique(key, return_inverse=True)
        return len(keys), inverse

    high = extent  # one cell holds everything
    low = extent / 2
    while cells(low)[0] < size:
        high, low = low, low / 2
    for _ in range(refine):  # the largest edge still leaving >= size cells: low works, high does not
        middle = (low + high) / 2
        if cells(middle)[0] >= size:
            low = middle
        else:
            high = middle
    count, inverse = cells(low)
    first = torch.full((count,), n, dtype=torch.long, device=positions.device)
    return first.scatter_reduce(0, inverse, index, 'amin')


@torch.no_grad()
def random_point_sample(mask: Tensor, n_samples: int, generator: torch.Generator | None = None) -> Tensor:
    """Indices ``[B, n_samples]`` of random distinct real points (padded ones only once a set runs out)."""
    if mask.dim() != 2 or mask.dtype != torch.bool:
        raise ValueError(f'mask must be a bool [B, N] tensor, got {mask.dtype} {tuple(mask.shape)}')
    if not 1 <= n_samples <= mask.shape[1]:
        raise ValueError(f'n_samples must be in [1, N={mask.shape[1]}], got {n_samples}')
    score = torch.rand(mask.shape, generator=generator, device=mask.device) - (~mask).float()
    return score.topk(n_samples, dim=-1).indices
