"""shapes3d (generated 3-d point clouds) and smpconv_points_3d trained on it through train.py."""
from __future__ import annotations

import json

import pytest
import timm
import torch
import torch.nn.functional as F

from smpconv_models.train import main
from smpconv_models.train.data import build_data
from smpconv_models.train.data.shapes3d import SHAPES, sample_shape, shape_point_sets

TINY_3D = {'stem_width': 8, 'widths': [16, 16], 'depths': [1, 1], 'stage_points': [32, 8], 'radii': [0.5, 1.0],
           'stem_radius': 0.4, 'k': 8}


def _spread(x: torch.Tensor) -> torch.Tensor:
    """Standard deviations of a point cloud ``[n, 3]`` along its principal axes, largest first."""
    return torch.linalg.svdvals(x - x.mean(0)) / x.shape[0] ** 0.5


def test_shapes_are_their_surfaces():
    """Rotation-free geometry of the raw samples: a sphere's points all at radius 1, a cube's on its faces (one
    coordinate at +-half a side), a torus' at tube distance from the ring, disc and plate flat; area-uniform: half
    a sphere's points lie above its equator, a cylinder's caps get their share of the area."""
    g = torch.Generator().manual_seed(0)
    sphere = sample_shape('sphere', 4000, g)
    torch.testing.assert_close(sphere.norm(dim=-1), torch.ones(4000, dtype=torch.float64))
    assert abs((sphere[:, 2] > 0).float().mean() - 0.5) < 0.03
    cube = sample_shape('cube', 4000, g)
    half = cube.abs().amax(0)
    on_face = ((cube.abs() - half).abs() < 1e-9).any(-1)
    assert on_face.all() and half.min() > 0.35 and half.max() < 0.65
    torus = sample_shape('torus', 4000, g)
    tube = ((torus[:, :2].norm(dim=-1) - 1).square() + torus[:, 2].square()).sqrt()
    assert tube.std() < 1e-9 and 0.2 <= tube.mean() <= 0.45
    outer = (torus[:, :2].norm(dim=-1) > 1).float().mean()  # the outer half of a torus has more area
    assert 0.55 < outer < 0.75
    for flat in ('disc', 'plate'):
        assert _spread(sample_shape(flat, 2000, g))[-1] < 1e-9
    cylinder = sample_shape('cylinder', 20000, g)
    height = cylinder[:, 2].amax()
    caps = ((cylinder[:, 2] < 1e-9) | (cylinder[:, 2] > height - 1e-9)).float().mean()
    assert abs(caps - 2 / (2 + 2 * height)) < 0.02  # caps 2 pi r^2 of 2 pi r^2 + 2 pi r h (r = 1)
    with pytest.raises(ValueError, match='unknown shape'):
        sample_shape('teapot', 10, g)


def test_shape_point_sets_are_normalised_rotated_noisy_and_seeded():
    features, positions, mask, labels = shape_point_sets(sets_per_class=3, point_range=(300, 600))
    assert positions.shape == (24, 600, 3) and torch.equal(features, positions)
    counts = mask.sum(1)
    assert counts.min() >= 300 and counts.max() <= 600 and counts.unique().numel() > 10
    assert torch.equal(labels, torch.arange(24) % len(SHAPES))
    assert not positions[~mask].any()
    for i in range(24):
        x = positions[i, :int(counts[i])].double()
        radius = x.norm(dim=-1).amax()
        assert 0.55 < radius < 1.05  # scaled to 0.6-1 (noise 0.01)
        spread = _spread(x)
        if SHAPES[i % 8] in ('disc', 'plate'):
            assert spread[-1] < 0.02  # flat up to the noise, in a random orientation
            assert spread[-1] < 0.1 * spread[0]
        else:
            assert spread[-1] > 0.1
        if SHAPES[i % 8] == 'sphere':
            assert (x.norm(dim=-1) / radius).std() < 0.05
    assert {SHAPES[i % 8] for i in range(24) if _spread(positions[i, :300].double())[-1] < 0.02} == {'disc', 'plate'}
    assert not torch.allclose(positions[0, :2], positions[8, :2])  # two spheres differ (rotation, scale, noise)
    again = shape_point_sets(sets_per_class=3, point_range=(300, 600))
    assert all(torch.equal(a, b) for a, b in zip((features, positions, mask, labels), again))
    with pytest.raises(ValueError, match='point_range'):
        shape_point_sets(point_range=(500, 400))


def test_build_data_shapes3d():
    data = build_data('shapes3d:100-150', 'points')
    assert data.kind == 'points' and data.in_chans == 3 and data.num_classes == 8 and data.model_args == {'dim': 3}
    assert len(data.test) == 8 * round(128 * 0.2) and len(data.train) == 8 * 128 - len(data.test)
    inputs, _ = data.train[0]
    assert set(inputs) == {'features', 'positions', 'mask'} and inputs['positions'].shape == (150, 3)
    assert torch.bincount(data.test.labels).eq(len(data.test) // 8).all()
    fixed = build_data('shapes3d:120', 'points')
    assert fixed.train.mask.sum(1).eq(120).all()
    with pytest.raises(ValueError, match="'N' or a range 'LO-HI'"):
        build_data('shapes3d:many', 'points')
    with pytest.raises(ValueError, match='point-set model'):
        build_data('shapes3d', 'image')


def test_smpconv_points_3d_fits_a_batch():
    """The 3-d factory at its full size on 1k-2k-point sets: a few Adam steps on one batch cut its loss."""
    features, positions, mask, labels = shape_point_sets(sets_per_class=1, point_range=(1000, 2000))
    torch.manual_seed(0)
    model = timm.create_model('smpconv_points_3d', sampling='fps_subset')
    assert model.dim == 3 and model.in_chans == 3 and model.num_classes == 8
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: one thread is as fast, and does not thrash on a busy machine
    try:
        for _ in range(6):
            loss = F.cross_entropy(model(features, positions, mask), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    assert losses[-1] < 0.6 * losses[0], losses


def test_train_py_on_shapes3d_is_deterministic(tmp_path):
    """Two short train.py runs with one seed on a tiny shapes3d give the same losses and weights (FPS and the
    kd-tree search are deterministic), and the loss falls over the run."""
    from safetensors.torch import load_file

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runs = []
    try:
        for name in ('a', 'b'):
            out = tmp_path / name
            rc = main(['--model', 'smpconv_points_3d', '--data', 'shapes3d:64-96', '--epochs', '3',
                       '--batch-size', '32', '--limit-train-batches', '4', '--lr', '3e-3', '--output-dir', str(out),
                       '--plot', 'false', '--model-args', json.dumps(TINY_3D)])
            assert rc == 0
            lines = [json.loads(ln) for ln in (out / 'metrics.jsonl').read_text().splitlines()]
            runs.append((lines, load_file(out / 'last' / 'model.safetensors')))
    finally:
        torch.set_num_threads(threads)
    (metrics_a, weights_a), (metrics_b, weights_b) = runs
    assert [m['train_loss'] for m in metrics_a] == [m['train_loss'] for m in metrics_b]
    assert weights_a.keys() == weights_b.keys() and all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert metrics_a[-1]['train_loss'] < metrics_a[0]['train_loss']
