"""The SMP kernel core against the official conventions and a plain autograd implementation of Eq. 1."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from smpconv_models.layers import SMPConv, SMPDepthwiseConv2d, kernel_coords, smp_basis, smp_kernel


def plain_smp(coords, weight_coord, radius, weights, normalize):
    """Eq. 1 written out with autograd, holding every intermediate (the official formulation)."""
    g, p, _ = weight_coord.shape
    diff = weight_coord[:, :, None, :] - coords[..., None, None, :, :]  # [*batch, G, P, Q, d]
    h = torch.relu(1 - diff.abs().sum(-1) / radius.reshape(g, p, 1))
    if normalize:
        h = h / ((h != 0).sum(-2, keepdim=True) + 1e-6)
    return weights @ h


def official_grid_kernel(k, weight_coord, radius, weights, normalize):
    """Official 2-d recipe: 'ij' meshgrid, evaluate, then transpose and flip the first spatial axis."""
    lin = torch.linspace(-1, 1, k, dtype=weight_coord.dtype)
    grid = torch.stack(torch.meshgrid(lin, lin, indexing='ij'), -1).reshape(-1, 2)
    out = plain_smp(grid, weight_coord, radius, weights, normalize)
    out = out.reshape(*out.shape[:-1], k, k)
    return torch.flip(out.transpose(-2, -1), dims=(-2,))


def random_points(groups, channels, n_points, ndim, dtype=torch.float64, radius=(0.15, 0.6)):
    pos = (torch.rand(groups, n_points, ndim, dtype=dtype) * 2 - 1).requires_grad_()
    rad = (torch.rand(groups, n_points, *(1,) * ndim, dtype=dtype) * (radius[1] - radius[0]) + radius[0])
    w = torch.randn(groups, channels, n_points, dtype=dtype)
    return pos, rad.requires_grad_(), w.requires_grad_()


def test_official_probe_kernel(official_dir):
    probe = load_file(official_dir / 'official_smp_kernel_probe.safetensors')
    layer = SMPDepthwiseConv2d(8, 31)
    assert layer.n_points == 240
    layer.load_state_dict({k: probe[k] for k in ('weight_coord', 'radius', 'weights')})
    kernel = layer.generate_kernel()
    assert kernel.shape == (8, 1, 31, 31)
    torch.testing.assert_close(kernel[:, 0], probe['kernel'], rtol=0, atol=1e-6)


def test_official_cifar_kernel_normalized(official_dir):
    state = load_file(official_dir / 'official_cifar10_resnet_state.safetensors')
    pos, rad, w = (state[f'cconv1.Kernel.{n}'] for n in ('weight_coord', 'radius', 'weights'))
    cout, cin, npts = w.shape
    layer = SMPConv(cin, cout, 33, npts, radius=0.12, coord_std=0.05, bias=False)
    layer.load_state_dict({'weight_coord': pos, 'radius': rad, 'weights': w})
    expected = official_grid_kernel(33, pos.double(), rad.double(), w.double(), normalize=True)
    torch.testing.assert_close(layer.generate_kernel().double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('ndim', [1, 2, 3])
@pytest.mark.parametrize('normalize', [False, True])
def test_matches_plain_values_and_grads(ndim, normalize):
    groups = 3 if normalize else 1
    pos, rad, w = random_points(groups, 4, 6, ndim)
    coords = kernel_coords(5, ndim, dtype=torch.float64)
    out = smp_kernel(coords, pos, rad, w, normalize)
    ref = plain_smp(coords, pos, rad, w, normalize)
    torch.testing.assert_close(out, ref)
    assert out.abs().sum() > 0
    gy = torch.randn_like(out)
    grads = torch.autograd.grad((out * gy).sum(), (pos, rad, w))
    ref_grads = torch.autograd.grad((ref * gy).sum(), (pos, rad, w))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)
        assert g.abs().sum() > 0


@pytest.mark.parametrize('ndim', [1, 2, 3])
@pytest.mark.parametrize('normalize', [False, True])
def test_gradcheck_float64(ndim, normalize):
    pos, rad, w = random_points(2, 3, 5, ndim)
    coords = (kernel_coords(4, ndim, dtype=torch.float64) * 0.93 + 0.011).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda c, p, r, ww: smp_kernel(c, p, r, ww, normalize), (coords, pos, rad, w), eps=1e-6, atol=1e-6)


def test_batched_irregular_coords():
    pos, rad, w = random_points(1, 5, 7, 2)
    offsets = (torch.rand(3, 11, 2, dtype=torch.float64) * 2 - 1).requires_grad_()
    out = smp_kernel(offsets, pos, rad, w, normalize=True)
    assert out.shape == (3, 1, 5, 11)
    for b in range(3):
        torch.testing.assert_close(out[b], plain_smp(offsets[b], pos, rad, w, True))
    assert torch.autograd.gradcheck(lambda c, p: smp_kernel(c, p, rad, w, True), (offsets, pos), atol=1e-6)


def test_rotated_grid_orientation():
    grid = kernel_coords(3, 2).reshape(3, 3, 2)
    # tap [i, j] sits at (lin[j], lin[K-1-i]): top-left is (-1, +1), bottom-right is (+1, -1)
    assert grid[0, 0].tolist() == [-1.0, 1.0]
    assert grid[2, 2].tolist() == [1.0, -1.0]
    assert grid[0, 2].tolist() == [1.0, 1.0]
    plain = kernel_coords(3, 2, rotate_2d=False).reshape(3, 3, 2)
    assert plain[0, 2].tolist() == [-1.0, 1.0]


def test_backward_holds_no_coordinate_differences():
    """Only [G, P, Q]-sized tensors (and smaller) are saved for backward, never [G, P, Q, d]."""
    g, p, q, d = 4, 9, 121, 2
    pos, rad, w = random_points(g, 3, p, d, dtype=torch.float32)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        smp_kernel(kernel_coords(11, 2), pos, rad, w, normalize=True).sum()
    assert saved and max(saved) <= g * p * q
    assert sum(n == g * p * q for n in saved) <= 2  # the basis, shared between the basis fn and the matmul


def test_basis_is_hat_function():
    pos = torch.tensor([[[0.0, 0.0]]])
    rad = torch.tensor([[0.5]])
    coords = torch.tensor([[0.0, 0.0], [0.25, 0.0], [0.25, 0.25], [0.5, 0.1]])
    h = smp_basis(coords, pos, rad)
    torch.testing.assert_close(h[0, 0], torch.tensor([1.0, 0.5, 0.0, 0.0]))


@pytest.mark.parametrize('bad', [
    lambda: smp_kernel(torch.zeros(5, 3), torch.zeros(1, 4, 2), torch.ones(1, 4), torch.zeros(1, 2, 4)),
    lambda: smp_kernel(torch.zeros(5, 2), torch.zeros(4, 2), torch.ones(1, 4), torch.zeros(1, 2, 4)),
    lambda: smp_kernel(torch.zeros(5, 2), torch.zeros(1, 4, 2), torch.ones(1, 3), torch.zeros(1, 2, 4)),
    lambda: smp_kernel(torch.zeros(5, 2), torch.zeros(1, 4, 2), torch.ones(1, 4), torch.zeros(1, 2, 3)),
    lambda: kernel_coords(0, 2),
])
def test_bad_shapes_raise_value_error(bad):
    with pytest.raises(ValueError):
        bad()


def test_integer_coords_raise_type_error():
    with pytest.raises(TypeError, match='floating point'):
        smp_kernel(torch.zeros(5, 2, dtype=torch.long), torch.zeros(1, 4, 2), torch.ones(1, 4), torch.zeros(1, 2, 4))
