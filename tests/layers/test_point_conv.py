"""Point convolution: equality with dense grid convolutions, invariances, gradients, neighbours, bad input."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from smpconv_models.layers import (
    MLPKernel,
    PointConv,
    SMPConv,
    SMPPointKernel,
    clamp_radii_,
    farthest_point_sample,
    find_neighbors,
    kernel_coords,
    point_conv,
    random_point_sample,
    smp_param_groups,
)


def _grid_points(shape: tuple[int, ...]) -> torch.Tensor:
    """Positions of every grid cell, row-major: 2-d pixel (row i, col j) -> (j, -i); other d: the index."""
    idx = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in shape], indexing='ij'), -1)
    if len(shape) == 2:
        idx = torch.stack([idx[..., 1], -idx[..., 0]], -1)
    return idx.reshape(-1, len(shape))


def _interior(shape: tuple[int, ...], half: int) -> torch.Tensor:
    inside = torch.ones(shape, dtype=torch.bool)
    for axis, s in enumerate(shape):
        keep = torch.zeros(s, dtype=torch.bool)
        keep[half:s - half] = True
        inside &= keep.view(*(s if a == axis else 1 for a in range(len(shape))))
    return inside.reshape(-1)


def _ball_count(half: int, ndim: int, radius: float) -> int:
    r = torch.arange(-2 * half, 2 * half + 1, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(*[r] * ndim, indexing='ij'), -1)
    return int((grid.norm(dim=-1) <= radius).sum())


@pytest.mark.parametrize('ndim,kernel_size', [(1, 7), (2, 5), (2, 7), (3, 3)])
@pytest.mark.parametrize('search', ['knn', 'radius'])
def test_smp_point_conv_on_grid_equals_dense_smpconv(ndim, kernel_size, search):
    torch.manual_seed(0)
    spatial = {1: (20,), 2: (11, 12), 3: (6, 7, 6)}[ndim]
    dense = SMPConv(3, 4, kernel_size, n_points=5, radius=0.4, coord_std=0.5, ndim=ndim, dtype=torch.float64)
    half = (kernel_size - 1) // 2
    # the neighbourhood covers the kernel's box: every point within half * sqrt(d) (the box's corners)
    reach = half * ndim ** 0.5 + 1e-9
    k = _ball_count(half, ndim, reach)
    layer = PointConv(3, 4, 'smp', dim=ndim, k=k, radius=reach if search == 'radius' else None,
                      kernel_extent=half, n_points=5, shared_points=False).double()
    for name in ('weight_coord', 'weights', 'bias'):
        getattr(layer.kernel if name != 'bias' else layer, name).data.copy_(getattr(dense, name).data)
    layer.kernel.radius.data.copy_(dense.radius.data.reshape(layer.kernel.radius.shape))
    x = torch.randn(2, 3, *spatial, dtype=torch.float64)
    expected = dense(x).flatten(2).transpose(1, 2)  # [B, L, F_out]
    features = x.flatten(2).transpose(1, 2)
    positions = _grid_points(spatial).expand(2, -1, -1)
    out = layer(features, positions)
    inside = _interior(spatial, half)
    torch.testing.assert_close(out[:, inside], expected[:, inside], rtol=1e-10, atol=1e-10)


def test_mlp_point_conv_on_grid_equals_conv_with_sampled_mlp():
    torch.manual_seed(1)
    K, half, spatial = 5, 2, (10, 9)
    layer = PointConv(2, 3, 'mlp', dim=2, k=25, kernel_extent=half, hidden=8, depth=2, activation='gelu',
                      bias=False).double()
    taps = layer.kernel(kernel_coords(K, ndim=2, dtype=torch.float64))  # [K*K, F_out, F_in], SMPConv orientation
    weight = taps.permute(1, 2, 0).reshape(3, 2, K, K)
    x = torch.randn(2, 2, *spatial, dtype=torch.float64)
    expected = F.conv2d(x, weight, padding=half).flatten(2).transpose(1, 2)
    out = layer(x.flatten(2).transpose(1, 2), _grid_points(spatial).expand(2, -1, -1))
    inside = _interior(spatial, half)
    torch.testing.assert_close(out[:, inside], expected[:, inside], rtol=1e-10, atol=1e-10)


def _reference(features, positions, kernel, query, k, extent, normalize):
    """Plain loops: k nearest by sorting, the kernel materialised per neighbour (test reference only)."""
    out = torch.zeros(features.shape[0], query.shape[1], kernel.out_channels, dtype=features.dtype)
    for b in range(features.shape[0]):
        for i in range(query.shape[1]):
            d = (positions[b] - query[b, i]).norm(dim=-1)
            nbr = d.argsort()[:k]
            u = (positions[b, nbr] - query[b, i]) / extent
            inside = u.abs().amax(-1) <= 1
            g = kernel(u)  # [k, F_out, F_in]
            contrib = torch.einsum('koi,ki->ko', g, features[b, nbr]) * inside[:, None]
            out[b, i] = contrib.sum(0) / (inside.sum() if normalize else 1)
    return out


@pytest.mark.parametrize('kernel', ['smp', 'smp_per_filter', 'mlp'])
@pytest.mark.parametrize('normalize', [False, True])
def test_point_conv_matches_plain_reference(kernel, normalize):
    torch.manual_seed(2)
    kw = dict(shared_points=kernel == 'smp') if kernel.startswith('smp') else {}
    layer = PointConv(3, 5, kernel[:3], dim=2, k=6, kernel_extent=0.4, normalize=normalize, bias=False,
                      **kw).double()
    feats, pos, query = torch.randn(2, 30, 3).double(), torch.rand(2, 30, 2).double(), torch.rand(2, 7, 2).double()
    expected = _reference(feats, pos, layer.kernel, query, 6, 0.4, normalize)
    torch.testing.assert_close(layer(feats, pos, query), expected, rtol=1e-10, atol=1e-10)
    functional = point_conv(feats, pos, layer.kernel, query, k=6, kernel_extent=0.4, normalize=normalize)
    torch.testing.assert_close(functional, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('kernel', ['smp', 'mlp'])
def test_permutation_and_padding_do_not_change_output(kernel):
    torch.manual_seed(3)
    layer = PointConv(4, 6, kernel, dim=3, k=5).double()
    feats, pos = torch.randn(2, 20, 4).double(), torch.randn(2, 20, 3).double()
    out = layer(feats, pos)
    perm = torch.randperm(20)
    torch.testing.assert_close(layer(feats[:, perm], pos[:, perm]), out[:, perm], rtol=1e-10, atol=1e-10)
    # padding: 7 extra points anywhere (NaN positions included) with the mask False change nothing
    pad_feats = torch.cat([feats, torch.randn(2, 7, 4).double()], 1)
    pad_pos = torch.cat([pos, torch.full((2, 7, 3), float('nan')).double()], 1)
    mask = torch.ones(2, 27, dtype=torch.bool)
    mask[:, 20:] = False
    order = torch.randperm(27)
    out_pad = layer(pad_feats[:, order], pad_pos[:, order], query=pos, mask=mask[:, order])
    torch.testing.assert_close(out_pad, out, rtol=1e-10, atol=1e-10)


def test_radius_search_keeps_nearest_within_ball():
    torch.manual_seed(4)
    pos = torch.rand(2, 50, 2)
    mask = torch.rand(2, 50) > 0.2
    idx, valid = find_neighbors(pos, pos[:, :9], k=8, radius=0.3, support_mask=mask, backend='torch',
                                chunk_size=4)
    for b in range(2):
        for i in range(9):
            d = (pos[b] - pos[b, i]).norm(dim=-1)
            d[~mask[b]] = float('inf')
            inside = (d <= 0.3).nonzero().flatten()
            expected = inside[d[inside].argsort()][:8]
            got = idx[b, i][valid[b, i]]
            assert sorted(got.tolist()) == sorted(expected.tolist())


def test_torch_cluster_backend_matches_plain_search():
    """The optional torch_cluster path returns the plain path's k nearest (run only where torch_cluster installs)."""
    from smpconv_models.layers.neighbors import _has_torch_cluster

    pos = torch.rand(2, 40, 3, generator=torch.Generator().manual_seed(8))
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[0, 30:] = False
    if not _has_torch_cluster():
        with pytest.raises(ImportError, match='torch_cluster'):
            find_neighbors(pos, pos, 5, backend='torch_cluster')
        pytest.skip('torch_cluster is not installed (optional)')
    idx_c, valid_c = find_neighbors(pos, pos, 5, support_mask=mask, backend='torch_cluster')
    idx_t, valid_t = find_neighbors(pos, pos, 5, support_mask=mask, backend='torch')
    assert torch.equal(valid_c, valid_t)
    assert torch.equal(idx_c.sort(-1).values, idx_t.sort(-1).values)


@pytest.mark.parametrize('kernel,kw', [
    ('smp', dict(shared_points=True, n_points=3)),
    ('smp', dict(shared_points=False, n_points=3)),
    ('mlp', dict(hidden=3, depth=2, activation='tanh')),
])
def test_gradcheck_features_positions_and_parameters(kernel, kw):
    """float64 gradcheck w.r.t. features, point coordinates and every kernel parameter (positions, radii,
    weights, MLP layers), through a functional call so the parameters are inputs."""
    torch.manual_seed(5)
    layer = PointConv(2, 2, kernel, dim=2, k=4, kernel_extent=0.7, **kw).double()
    feats, pos = torch.randn(1, 7, 2).double(), torch.rand(1, 7, 2).double()
    names = [n for n, _ in layer.named_parameters()]
    inputs = [feats, pos] + [p.detach().clone() for p in layer.parameters()]
    inputs = tuple(t.requires_grad_() for t in inputs)

    def fn(f, p, *params):
        return torch.func.functional_call(layer, dict(zip(names, params)), (f, p))

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)
    layer(feats, pos).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_learn_flags_and_param_groups_and_radius_clamp():
    layer = PointConv(2, 3, 'smp', learn_positions=False, learn_radius=False)
    assert not layer.kernel.weight_coord.requires_grad and not layer.kernel.radius.requires_grad
    assert 'kernel.weight_coord' in layer.state_dict() and 'kernel.radius' in layer.state_dict()
    layer = PointConv(2, 3, 'smp')
    groups = {g['name']: g for g in smp_param_groups(layer)}
    assert groups['radius']['params'] == [layer.kernel.radius]
    assert any(p is layer.kernel.weight_coord for p in groups['no_decay']['params'])
    layer.kernel.radius.data.fill_(5.0)
    clamp_radii_(layer)
    assert float(layer.kernel.radius.detach().max()) == 1.0


def test_smp_point_kernel_forward_is_smp_kernel_sum():
    kernel = SMPPointKernel(2, 3, 4, n_points=6, shared_points=True).double()
    u = torch.rand(5, 2).double() * 2 - 1
    g = kernel(u)  # [5, F_out, F_in]
    h = (1 - (u[:, None] - kernel.weight_coord[0][None]).abs().sum(-1) / kernel.radius[0, :, 0]).clamp_min(0)
    count = (h > 0).sum(-1, keepdim=True) + 1e-6
    expected = torch.einsum('qp,oip->qoi', h / count, kernel.weights)
    torch.testing.assert_close(g, expected)


def test_mlp_kernel_api():
    kernel = MLPKernel(3, 4, 5, hidden=7, depth=3, activation='silu')
    u = torch.randn(2, 6, 3)
    assert kernel.basis(u).shape == (2, 6, 7) and kernel.weights.shape == (5, 4, 7)
    torch.testing.assert_close(kernel(u), torch.einsum('...h,oih->...oi', kernel.basis(u), kernel.weights))
    assert sum(isinstance(m, torch.nn.Linear) for m in kernel.mlp) == 3


def test_farthest_point_sample_matches_plain_loop_and_respects_mask():
    torch.manual_seed(7)
    pos = torch.randn(2, 40, 2)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 30:] = False
    idx = farthest_point_sample(pos, 12, mask)
    for b in range(2):
        real = mask[b].nonzero().flatten()
        picked = [int(real[0])]
        dist = torch.full((40,), float('inf'))
        for _ in range(11):
            dist = torch.minimum(dist, (pos[b] - pos[b, picked[-1]]).square().sum(-1))
            dist[~mask[b]] = -1
            dist[picked] = -1
            picked.append(int(dist.argmax()))
        assert idx[b].tolist() == picked
    few = torch.zeros(1, 10, dtype=torch.bool)
    few[0, :3] = True
    idx = farthest_point_sample(torch.randn(1, 10, 2), 5, few)
    assert sorted(idx[0, :3].tolist()) == [0, 1, 2] and not few[0, idx[0, 3:]].any()
    r = random_point_sample(few, 5, torch.Generator().manual_seed(0))
    assert sorted(r[0, :3].tolist()) == [0, 1, 2] and len(set(r[0].tolist())) == 5


def test_memory_never_materialises_full_kernel():
    """The largest tensor autograd saves is far below B*M*k*F_in*F_out elements."""
    layer = PointConv(32, 32, 'smp', k=16, n_points=8)
    feats, pos = torch.randn(2, 200, 32), torch.randn(2, 200, 2, requires_grad=True)
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(feats, pos).sum()
    assert max(sizes) <= 2 * 200 * 16 * 32  # the gathered neighbour features; full kernel would be 32x larger


@pytest.mark.parametrize('case,error', [
    ('batch', 'batch and point counts'),
    ('count', 'batch and point counts'),
    ('k', 'k=40 neighbours'),
    ('k_mask', 'valid points'),
    ('nan', 'NaN or infinite'),
    ('inf_query', 'query positions contain'),
    ('dim', 'coordinate dimension d=2'),
    ('mask_shape', 'mask must have shape'),
    ('mask_dtype', 'mask must be a bool'),
    ('channels', 'expected F_in=3'),
    ('kernel', "kernel must be 'smp' or 'mlp'"),
])
def test_bad_input_errors(case, error):
    layer = PointConv(3, 4, 'smp', k=5) if case != 'k' else PointConv(3, 4, 'smp', k=40)
    feats, pos = torch.randn(2, 20, 3), torch.randn(2, 20, 2)
    mask, query = None, None
    if case == 'batch':
        pos = torch.randn(3, 20, 2)
    elif case == 'count':
        pos = torch.randn(2, 21, 2)
    elif case == 'k_mask':
        mask = torch.ones(2, 20, dtype=torch.bool)
        mask[1, 4:] = False
    elif case == 'nan':
        pos[0, 3, 1] = float('nan')
    elif case == 'inf_query':
        query = torch.randn(2, 4, 2)
        query[1, 0, 0] = float('inf')
    elif case == 'dim':
        pos = torch.randn(2, 20, 3)
    elif case == 'mask_shape':
        mask = torch.ones(2, 19, dtype=torch.bool)
    elif case == 'mask_dtype':
        mask = torch.ones(2, 20)
    elif case == 'channels':
        feats = torch.randn(2, 20, 4)
    with pytest.raises((ValueError, TypeError), match=error):
        if case == 'kernel':
            PointConv(3, 4, 'gauss')
        layer(feats, pos, query, mask)
