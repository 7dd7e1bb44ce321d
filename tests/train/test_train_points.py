"""digits-points data and train.py on smpconv_points."""
from __future__ import annotations

import json

import pytest
import torch

from smpconv_models.train import main
from smpconv_models.train.data import build_data
from smpconv_models.train.data.points import digits_point_sets

TINY_POINTS = {'stem_width': 16, 'widths': [32, 32], 'depths': [1, 1], 'stage_points': [16, 8], 'radii': [0.6, 1.0]}


def test_digits_point_sets_are_thinned_jittered_pixels():
    from sklearn.datasets import load_digits

    features, positions, mask, labels = digits_point_sets()
    pixels = torch.tensor(load_digits().data, dtype=torch.float32) / 16
    assert features.shape == (1797, 38, 1) and positions.shape == (1797, 38, 2) and mask.shape == (1797, 38)
    counts = mask.sum(1)
    assert counts.min() >= round(0.3 * 64) and counts.max() == 38 and counts.float().std() > 3
    # every real point is a pixel centre moved by a little jitter, carrying that pixel's intensity
    col = torch.round(positions[..., 0] * 3.5 + 3.5)
    row = torch.round(3.5 - positions[..., 1] * 3.5)
    centre = torch.stack([(col - 3.5) / 3.5, (3.5 - row) / 3.5], -1)
    jitter = (positions - centre)[mask]
    assert 0.02 < jitter.std() < 0.06 and jitter.abs().max() < 1 / 3.5
    idx = (row * 8 + col).long().clamp(0, 63)
    torch.testing.assert_close(features[..., 0][mask], pixels.gather(1, idx)[mask])
    # no pixel twice in a set; padding is zero; the draw is seeded
    for s in range(0, 1797, 97):
        assert idx[s][mask[s]].unique().numel() == int(counts[s])
    assert not features[~mask].any() and not positions[~mask].any()
    again = digits_point_sets()
    assert all(torch.equal(a, b) for a, b in zip((features, positions, mask, labels), again))


def test_build_data_digits_points():
    data = build_data('digits-points', 'points')
    inputs, label = data.train[0]
    assert label == int(data.train.labels[0])
    assert set(inputs) == {'features', 'positions', 'mask'} and inputs['mask'].dtype == torch.bool
    assert data.kind == 'points' and data.in_chans == 1 and data.model_args == {'dim': 2}
    assert len(data.train) == 4 * (1797 - len(data.test)) and len(data.test) == round(0.2 * 1797)
    one = build_data('digits-points:1', 'points')
    assert len(one.train) == 1797 - len(one.test)
    n = len(one.train)
    assert not torch.equal(data.train.positions[:n], data.train.positions[n:2 * n])
    torch.testing.assert_close(data.train.features[:n], one.train.features)
    with pytest.raises(ValueError, match='number of training draws'):
        build_data('digits-points:x', 'points')
    with pytest.raises(ValueError, match='point-set model'):
        build_data('digits-points', 'image')


def test_train_py_learns_digit_point_sets(tmp_path):
    """Three short epochs (100 batches each) of train.py on digits-points beat chance (10%) by a wide margin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: one thread is as fast, and does not thrash on a busy machine
    try:
        rc = main(['--model', 'smpconv_points', '--data', 'digits-points', '--epochs', '3', '--batch-size', '32',
                   '--limit-train-batches', '100', '--lr', '3e-3', '--output-dir', str(tmp_path), '--plot', 'false',
                   '--model-args', json.dumps(TINY_POINTS)])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    summary = json.loads((tmp_path / 'summary.json').read_text())
    assert summary['model'] == 'smpconv_points'
    assert summary['best_top1'] > 25.0, summary
