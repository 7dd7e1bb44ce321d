"""train.py on the digits as irregular series (``digits-irregular``, ``--missing-rate``), in process."""
from __future__ import annotations

import json

import pytest
import torch

from smpconv_models.train import main
from smpconv_models.train.data import build_data

TINY = ['--model-args', json.dumps({'depth': 2, 'width': 16, 'n_points': 8}), '--plot', 'false']


@pytest.fixture
def one_thread():
    # small matmuls: one thread is fastest, and on a busy 2-core runner extra threads only contend
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_train_py_learns_irregular_digits(tmp_path, one_thread):
    out = tmp_path / 'run'
    code = main(['--model', 'smpconv_irregular_tcn', '--data', 'digits-irregular', '--missing-rate', '0.5',
                 '--epochs', '3', '--batch-size', '32', '--output-dir', str(out), *TINY])
    assert code == 0
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['data'] == 'digits-irregular' and summary['model'] == 'smpconv_irregular_tcn'
    assert summary['best_top1'] >= 30.0  # chance is 10%; this run gives 40% (seeds 1, 2: 42%, 37%)


def test_irregular_data_specs():
    bundle = build_data('digits-irregular', 'irregular', missing_rate=0.7)
    inputs, _ = bundle.train[0]
    assert bundle.kind == 'irregular' and bundle.length == 64 and bundle.name == 'digits-missing70'
    assert inputs['values'].shape == (1, 64 - int(64 * 0.7)) and inputs['mask'].all()
    full = build_data('digits', 'irregular')  # any sequence spec; nothing dropped without --missing-rate
    assert full.train[0][0]['mask'].shape == (64,) and full.train[0][0]['timestamps'].tolist() == list(range(64))
    with pytest.raises(ValueError, match='smpconv_irregular_tcn'):
        build_data('digits-irregular', 'sequence')
    with pytest.raises(ValueError, match='--missing-rate'):
        build_data('digits', 'sequence', missing_rate=0.3)
    with pytest.raises(ValueError, match=r'missing_rate must be in \[0, 1\)'):
        build_data('digits-irregular', 'irregular', missing_rate=1.0)


def test_missing_rate_applies_to_ts_archives(tmp_path):
    # unequal lengths: the archive reader left-pads with a mask; dropping counts each series' real steps only
    header = '@problemName Toy\n@timeStamps false\n@missing false\n@univariate true\n@equalLength false\n' \
             '@classLabel true a b\n@data\n'
    lengths = [10, 7, 12, 9]
    rows = [','.join(str(0.1 * (i + 1) * k) for k in range(n)) + f':{"ab"[i % 2]}' for i, n in enumerate(lengths)]
    for split in ('TRAIN', 'TEST'):
        (tmp_path / f'Toy_{split}.ts').write_text(header + '\n'.join(rows) + '\n')
    bundle = build_data(f'ts:{tmp_path}/Toy', 'irregular', missing_rate=0.5)
    assert bundle.kind == 'irregular' and bundle.length == 12 and bundle.num_classes == 2
    for i, n in enumerate(lengths):
        inputs, _ = bundle.train[i]
        kept = int(inputs['mask'].sum())
        assert kept == n - int(n * 0.5)
        steps = inputs['timestamps'][:kept]
        assert (steps.diff() > 0).all() and steps.min() >= 12 - n  # left padding: the real steps are the last n
