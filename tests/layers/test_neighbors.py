"""Neighbour search: the rule (nearest first, ties by index), every backend against a plain sort and scipy's
cKDTree, padded points, neighbourhoods handed to point_conv, chunked aggregation, and the samplers."""
from __future__ import annotations

import math

import pytest
import torch

from smpconv_models.layers import (
    Neighborhood,
    PointConv,
    farthest_point_sample,
    find_neighbors,
    pair_distances,
    point_conv,
)
from smpconv_models.layers import neighbors as nbr
from smpconv_models.layers.neighbors import grid_pool

spatial = pytest.importorskip('scipy.spatial')


def _rule(support, query, k, radius=None, mask=None):
    """The neighbour rule by a full stable sort of every row (test reference): ``(idx, valid)``."""
    d = pair_distances(query[:, :, None], support[:, None])  # [B, M, N]
    if mask is not None:
        d = d.masked_fill(~mask[:, None], math.inf)
    d, order = d.sort(stable=True, dim=-1)
    d, idx = d[..., :k], order[..., :k]
    valid = torch.isfinite(d) if radius is None else d <= radius
    idx = idx.masked_fill(~valid, 0)
    pad = k - idx.shape[-1]
    if pad > 0:
        idx = torch.cat([idx, idx.new_zeros(*idx.shape[:-1], pad)], -1)
        valid = torch.cat([valid, valid.new_zeros(*valid.shape[:-1], pad)], -1)
    return idx, valid


def _lattice(side: int, dim: int = 3, dtype=torch.float32) -> torch.Tensor:
    axes = [torch.arange(side, dtype=dtype)] * dim
    return torch.stack(torch.meshgrid(*axes, indexing='ij'), -1).reshape(1, -1, dim)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('radius', [None, 0.9])
@pytest.mark.parametrize('backend', ['torch', 'kdtree'])
def test_backends_follow_the_rule_on_random_sets(backend, radius, dtype):
    g = torch.Generator().manual_seed(0)
    support = (torch.rand(3, 700, 3, generator=g) * 7).to(dtype)
    query = torch.cat([support[:, :50], (torch.rand(3, 40, 3, generator=g) * 7).to(dtype)], 1)
    mask = torch.rand(3, 700, generator=g) > 0.2
    support[~mask] = float('nan')  # padded points may hold anything
    found = find_neighbors(support, query, 12, radius, mask, backend=backend, chunk_size=17)
    assert isinstance(found, Neighborhood)
    idx, valid = _rule(support, query, 12, radius, mask)
    assert torch.equal(found.valid, valid) and torch.equal(found.idx, idx)
    assert not mask.gather(1, found.idx.flatten(1)).view_as(valid)[valid].logical_not().any()
    if radius is not None:
        assert 0 < valid.float().mean() < 1  # some balls hold fewer than k


@pytest.mark.parametrize('radius', [None, 1.0, 1.5])
@pytest.mark.parametrize('k', [1, 7, 10, 27])
def test_ties_on_a_lattice_are_broken_by_index(k, radius):
    """On a lattice every shell is a tie; both backends keep the lowest indices of the cut shell, in index order
    within a distance (the kd-tree's candidates end inside a shell here, so its ball fallback runs)."""
    pos = _lattice(6)
    pos = torch.cat([pos, pos.flip(1)])  # the same points in the opposite index order
    expected = _rule(pos, pos, k, radius)
    for backend in ('torch', 'kdtree'):
        found = find_neighbors(pos, pos, k, radius, backend=backend)
        assert torch.equal(found.idx, expected[0]) and torch.equal(found.valid, expected[1]), backend
    # e.g. the 6 face neighbours of an inner point at distance 1 come in index order after the point itself
    centre = 2 * 36 + 2 * 6 + 2
    first = find_neighbors(pos[:1], pos[:1, centre:centre + 1], 7, backend='kdtree').idx[0, 0].tolist()
    assert first == [centre, centre - 36, centre - 6, centre - 1, centre + 1, centre + 6, centre + 36]


def test_kdtree_matches_scipy_cKDTree():
    """float64 sets without ties: the neighbour sets and distances are cKDTree's (kNN and ball, with a mask)."""
    g = torch.Generator().manual_seed(1)
    pos = torch.rand(2, 3000, 3, generator=g, dtype=torch.float64)
    mask = torch.ones(2, 3000, dtype=torch.bool)
    mask[1, 2500:] = False
    idx, valid = find_neighbors(pos, pos, 16, support_mask=mask, backend='kdtree')
    assert valid.all()
    for b in range(2):
        real = mask[b].nonzero().flatten()
        tree = spatial.cKDTree(pos[b, real].numpy())
        dist, ref = tree.query(pos[b].numpy(), 16)
        assert torch.equal(idx[b], real[torch.from_numpy(ref)])
        got = (pos[b, idx[b]] - pos[b, :, None]).norm(dim=-1)
        torch.testing.assert_close(got, torch.from_numpy(dist), rtol=1e-12, atol=1e-12)
    idx, valid = find_neighbors(pos, pos, 16, radius=0.06, support_mask=mask, backend='kdtree')
    tree = spatial.cKDTree(pos[1, :2500].numpy())
    for i, ball in enumerate(tree.query_ball_point(pos[1].numpy(), 0.06)):
        ball = torch.tensor(sorted(ball, key=lambda j: float((pos[1, j] - pos[1, i]).norm())))[:16]
        assert sorted(idx[1, i][valid[1, i]].tolist()) == sorted(ball.tolist())


def test_kdtree_near_ties_in_float32():
    """Points on a sphere around the query (equal distances in exact arithmetic, unequal after float32 rounding):
    the kd-tree's float64 order differs from the float32 rule, and the re-ranking restores the rule."""
    g = torch.Generator().manual_seed(2)
    direction = torch.randn(1, 4000, 3, generator=g, dtype=torch.float64)
    pos = (direction / direction.norm(dim=-1, keepdim=True) * 3.3 + 0.1).float()
    pos = torch.cat([pos, torch.full((1, 1, 3), 0.1)], 1)
    query = torch.cat([pos[:, -1:], pos[:, :20]], 1)
    expected = _rule(pos, query, 40)
    found = find_neighbors(pos, query, 40, backend='kdtree')
    assert torch.equal(found.idx, expected[0]) and torch.equal(found.valid, expected[1])


def test_fewer_real_points_than_k_and_empty_sets():
    pos = torch.rand(3, 30, 2, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(3, 30, dtype=torch.bool)
    mask[0] = True
    mask[1, :4] = True  # set 2: no real point at all
    for backend in ('torch', 'kdtree'):
        idx, valid = find_neighbors(pos, pos, 6, radius=5.0, support_mask=mask, backend=backend)
        assert valid[0].all() and valid[1].sum(-1).eq(4).all() and not valid[2].any()
        assert not idx[~valid].any()  # unused slots hold index 0
        assert torch.equal(idx[1, :, :4].sort(-1).values, torch.arange(4).expand(30, 4))


def test_auto_backend_and_errors(monkeypatch):
    pos = torch.rand(1, 40, 3, generator=torch.Generator().manual_seed(4))
    calls = []
    monkeypatch.setattr(nbr, 'KDTREE_MIN_PAIRS', 1000)
    monkeypatch.setattr(nbr, '_kdtree_search', lambda *a: calls.append(a) or nbr._neighbors_torch(*a, None))
    find_neighbors(pos, pos, 4)
    assert len(calls) == 1  # large enough CPU sets take the kd-tree
    find_neighbors(pos[:, :30], pos[:, :30], 4)
    assert len(calls) == 1  # 900 pairs: the plain search
    with pytest.raises(ValueError, match='backend must be one of'):
        find_neighbors(pos, pos, 4, backend='grid')
    with pytest.raises(ValueError, match='k must be at least 1'):
        find_neighbors(pos, pos, 0)
    with pytest.raises(ValueError, match='coordinate dimension d=3'):
        find_neighbors(pos, pos[..., :2], 4, backend='kdtree')


def test_kdtree_backend_compiles_without_graph_break():
    pos = torch.rand(2, 50, 3, generator=torch.Generator().manual_seed(5))
    mask = torch.rand(2, 50, generator=torch.Generator().manual_seed(6)) > 0.1

    def fn(p, m):
        return find_neighbors(p, p, 5, 0.4, m, backend='kdtree')

    explained = torch._dynamo.explain(fn)(pos, mask)
    assert explained.graph_break_count == 0
    compiled = torch.compile(fn, fullgraph=True)(pos, mask)
    expected = find_neighbors(pos, pos, 5, 0.4, mask, backend='torch')
    assert torch.equal(compiled.idx, expected.idx) and torch.equal(compiled.valid, expected.valid)


@pytest.mark.parametrize('kernel', ['smp', 'mlp'])
def test_point_conv_with_given_neighbors_and_query_chunks(kernel):
    """A neighbourhood searched once and handed in gives the layer's own result, bit for bit (float64); query chunks
    (recomputed in backward) give the same outputs and gradients as one pass."""
    g = torch.Generator().manual_seed(7)
    layer = PointConv(3, 4, kernel, dim=3, k=6, radius=0.5).double()
    feats = torch.randn(2, 60, 3, generator=g, dtype=torch.float64, requires_grad=True)
    pos = torch.rand(2, 60, 3, generator=g, dtype=torch.float64)
    mask = torch.rand(2, 60, generator=g) > 0.2
    query = torch.rand(2, 25, 3, generator=g, dtype=torch.float64)
    out = layer(feats, pos, query, mask)
    nbrs = layer.find_neighbors(pos, query, mask)
    assert torch.equal(layer(feats, pos, query, mask, neighbors=nbrs), out)
    assert torch.equal(nbrs.idx, find_neighbors(pos.masked_fill(~mask[..., None], 0), query, 6, 0.5, mask).idx)
    grads = torch.autograd.grad(out.square().sum(), [feats, *layer.parameters()])
    chunked = point_conv(feats, pos, layer.kernel, query, mask, 6, 0.5, bias=layer.bias, neighbors=nbrs,
                         query_chunk=7)
    torch.testing.assert_close(chunked, out, rtol=1e-14, atol=1e-14)
    chunked_grads = torch.autograd.grad(chunked.square().sum(), [feats, *layer.parameters()])
    for a, b in zip(chunked_grads, grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_chunked_point_conv_holds_only_inputs_for_backward():
    """With query chunks, autograd keeps no gathered [B, M, k, F] tensor: each chunk recomputes its forward."""
    layer = PointConv(8, 8, 'smp', dim=3, k=16, n_points=4)
    feats, pos = torch.randn(1, 400, 8), torch.rand(1, 400, 3)
    nbrs = layer.find_neighbors(pos)
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        point_conv(feats, pos, layer.kernel, k=16, neighbors=nbrs, query_chunk=50).sum()
    assert max(sizes) <= 400 * 16  # the indices / features, never 400 x 16 x 8 gathered features


def test_given_neighbors_are_checked():
    layer = PointConv(2, 3, 'smp', dim=2, k=4)
    feats, pos = torch.randn(2, 10, 2), torch.rand(2, 10, 2)
    idx, valid = layer.find_neighbors(pos)
    with pytest.raises(ValueError, match=r'\[B, M, k\] = \[2, 10, 4\]'):
        layer(feats, pos, neighbors=Neighborhood(idx[..., :3], valid[..., :3]))
    with pytest.raises(TypeError, match='int64 idx and bool valid'):
        layer(feats, pos, neighbors=Neighborhood(idx.int(), valid))
    with pytest.raises(TypeError, match='must be a Neighborhood'):
        layer(feats, pos, neighbors=idx)


def test_farthest_point_sample_on_a_grid_pool():
    g = torch.Generator().manual_seed(8)
    pos = torch.rand(2, 500, 3, generator=g)
    mask = torch.ones(2, 500, dtype=torch.bool)
    mask[1, 300:] = False
    exact = farthest_point_sample(pos, 20, mask)
    assert torch.equal(farthest_point_sample(pos, 20, mask, subset=500), exact)  # subset >= N: the exact sampler
    picks = farthest_point_sample(pos, 20, mask, subset=80)
    for b in range(2):  # FPS among the set's grid pool, from the set's first real point
        real = mask[b].nonzero().flatten()
        pool = real[grid_pool(pos[b, real], 80)].sort().values
        assert 80 <= len(pool) < 160 and pool[0] == real[0]
        assert torch.equal(picks[b], pool[farthest_point_sample(pos[b:b + 1, pool], 20)[0]])
    assert mask.gather(1, picks).all() and all(len(set(p.tolist())) == 20 for p in picks)
    few = torch.zeros(1, 100, dtype=torch.bool)
    few[0, :5] = True  # fewer real points than samples: the rest are padded points, as the exact sampler does
    sparse = farthest_point_sample(pos[:1, :100], 8, few, subset=50)
    assert torch.equal(sparse[0, :5].sort().values, torch.arange(5)) and not few[0, sparse[0, 5:]].any()
    with pytest.raises(ValueError, match='subset must hold at least'):
        farthest_point_sample(pos, 20, mask, subset=10)


def test_grid_pool_spreads_over_space():
    """One point per occupied cell: on a dense cluster plus a sparse far region, the pool keeps the far region's
    points instead of sampling the cluster in proportion to its count; the lowest index of every cell."""
    g = torch.Generator().manual_seed(10)
    cluster = torch.rand(5000, 2, generator=g) * 0.1
    far = torch.rand(50, 2, generator=g) * 0.9 + 1.1
    pos = torch.cat([cluster, far])
    pool = grid_pool(pos, 60)
    assert len(pool) >= 60 and len(set(pool.tolist())) == len(pool)
    assert (pool >= 5000).sum() >= 20  # the far 1% of the points are a third of the pool or more
    assert torch.equal(grid_pool(pos, 10_000), torch.arange(5050))  # asking for more than n: every point


def _covering_radius(points: torch.Tensor, centres: torch.Tensor) -> float:
    """The largest distance from a point of ``points [n, d]`` to its nearest of ``centres [c, d]`` (float64)."""
    return torch.cdist(points.double(), centres.double()).amin(1).max().item()


def test_fps_subset_covering_radius():
    """Farthest-point sampling on the grid pool keeps FPS's guarantees: every pool point lies within the smallest
    distance between two picks (the greedy property), and the covering radius of the whole set is at most
    2 r_exact + 3 r_pool (r_exact: exact FPS's covering radius, itself at most twice the optimal k-centre radius;
    r_pool: the pool's own covering radius of the set). Uniform and clustered 3-d sets."""
    g = torch.Generator().manual_seed(11)
    uniform = torch.rand(2000, 3, generator=g)
    clustered = torch.cat([torch.rand(1800, 3, generator=g) * 0.2, torch.rand(200, 3, generator=g) + 1.0])
    for pos in (uniform, clustered):
        picks = farthest_point_sample(pos[None], 40, subset=160)[0]
        pool = grid_pool(pos, 160)
        assert set(picks.tolist()) <= set(pool.tolist())
        separation = torch.pdist(pos[picks].double()).min().item()
        assert _covering_radius(pos[pool], pos[picks]) <= separation + 1e-12
        r_exact = _covering_radius(pos, pos[farthest_point_sample(pos[None], 40)[0]])
        r_pool = _covering_radius(pos, pos[pool])
        r_subset = _covering_radius(pos, pos[picks])
        assert r_subset <= 2 * r_exact + 3 * r_pool
        assert r_pool < r_exact  # a pool four times the sample is finer than the sample


@pytest.mark.parametrize('backend', ['torch', 'kdtree'])
def test_half_precision_positions_are_searched_in_float32(backend):
    """bf16 / fp16 positions (a half-precision model) and autocast: the neighbours of the same values in float32,
    on the kd-tree path too; farthest-point sampling likewise."""
    g = torch.Generator().manual_seed(12)
    pos = torch.rand(2, 300, 3, generator=g)
    mask = torch.ones(2, 300, dtype=torch.bool)
    mask[1, 250:] = False
    for dtype in (torch.bfloat16, torch.float16):
        low = pos.to(dtype)
        expected = _rule(low.float(), low.float(), 8, 0.2, mask)
        found = find_neighbors(low, low, 8, 0.2, mask, backend=backend)
        assert torch.equal(found.idx, expected[0]) and torch.equal(found.valid, expected[1])
        with torch.autocast('cpu', dtype=dtype):
            found = find_neighbors(low, low, 8, 0.2, mask, backend=backend)
        assert torch.equal(found.idx, expected[0])
        assert torch.equal(farthest_point_sample(low, 20, mask, subset=80),
                           farthest_point_sample(low.float(), 20, mask, subset=80))


def test_missing_scipy_is_a_clear_error(monkeypatch):
    pos = torch.rand(1, 40, 3, generator=torch.Generator().manual_seed(13))
    monkeypatch.setattr(nbr, '_has_scipy', lambda: False)
    with pytest.raises(ImportError, match=r'needs scipy \(pip install "smpconv-models\[points\]"\)'):
        find_neighbors(pos, pos, 4, backend='kdtree')
    monkeypatch.setattr(nbr, 'KDTREE_MIN_PAIRS', 1000)
    expected = _rule(pos, pos, 4)
    assert torch.equal(find_neighbors(pos, pos, 4).idx, expected[0])  # 'auto' falls back to the plain search
