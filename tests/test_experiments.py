"""The paper's claims as commands: function fitting (Fig. 3), ablations (Tables 6-9), kernel pictures (Figs. 4-5)."""
from __future__ import annotations

import json
import math
import os

import pytest
import timm
import torch
from safetensors.torch import load_file

import smpconv_models  # noqa: F401
from smpconv_models.experiments import ablate, fit
from smpconv_models.layers import SMPConv
from smpconv_models.viz import layer_kernels, load_model, plot_smp_kernels, select_smp_layers
from smpconv_models.viz import main as viz_main
from tests.helpers import smp_layers

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def is_png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


# ------------------------------------------------------------------------------------------------ fitting (Fig. 3)

def test_targets_follow_their_formulas_on_the_kernel_grid():
    layer = fit.make_smp(fit.FitConfig(), 0, True)
    target = fit.target_grid('two_freq', layer.kernel_coord, 51)
    lin = torch.linspace(-1, 1, 51)
    for i, j in ((0, 0), (3, 40), (50, 7), (25, 25)):  # tap [i, j] sits at (x, y) = (lin[j], lin[50 - i])
        x, y = lin[j], lin[50 - i]
        expected = (0.6 * math.sin(math.pi * x) * math.cos(math.pi * y)
                    + 0.4 * math.sin(4 * math.pi * x) * math.cos(3 * math.pi * y))
        assert target[i, j].item() == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match='unknown target'):
        fit.target_grid('nope', layer.kernel_coord, 51)


def test_moving_and_fixed_start_equal_and_only_moving_points_move():
    cfg = fit.FitConfig(steps=20)
    moving, fixed = fit.make_smp(cfg, 3, True), fit.make_smp(cfg, 3, False)
    start = {k: v.clone() for k, v in moving.state_dict().items()}
    for k, v in fixed.state_dict().items():
        assert torch.equal(v, start[k]), k
    assert fixed.weight_coord.abs().max() <= 1 and fixed.weight_coord.std() > 0.4  # uniform on [-1, 1]
    target = fit.target_grid('sin_cos', moving.kernel_coord, 51)
    for layer in (moving, fixed):
        mse, pred = fit.fit_one(layer, lambda layer=layer: layer.generate_kernel()[0, 0], target, cfg)
        assert mse == pytest.approx(torch.mean((pred - target) ** 2).item())
        assert mse < target.square().mean().item()  # better than the zero function
    assert torch.equal(fixed.weight_coord, start['weight_coord'])
    assert not torch.equal(moving.weight_coord, start['weight_coord'])
    assert not torch.equal(fixed.radius, start['radius'])  # radii train in both


def test_fit_quick_writes_documented_outputs(tmp_path):
    assert fit.main(['--quick', '--out', str(tmp_path), '--steps', '60']) == 0
    summary = json.loads((tmp_path / 'fit.json').read_text())
    assert set(summary['targets']) == set(fit.TARGETS)
    for name, entry in summary['targets'].items():
        for method in fit.METHODS:
            values = entry['per_seed'][method]
            assert len(values) == 1 and entry[f'{method}_mse'] == pytest.approx(values[0])
            assert math.isfinite(entry[f'{method}_mse']) and entry[f'{method}_mse_std'] == 0.0
        assert entry['formula'] == fit.TARGETS[name][0]
    params = summary['params']
    assert params['smp'] == 204 * 4  # positions (2), radius and weight per point
    assert abs(params['mlp'] - params['smp']) <= 0.05 * params['smp']
    table = (tmp_path / 'fit.md').read_text()
    assert table.count('\n| `') == 2 and f'({params["mlp"]} params)' in table
    assert is_png(tmp_path / 'fit.png')


# ------------------------------------------------------------------------------------------ ablations (Tables 6-9)

def test_ablate_quick_writes_documented_outputs(tmp_path):
    assert ablate.main(['--quick', '--out', str(tmp_path)]) == 0
    summary = json.loads((tmp_path / 'ablate.json').read_text())
    rows = {(r['model'], r['setting']): r for r in summary['rows']}
    assert len(rows) == 2 * len(ablate.settings('image'))
    for model in ('image', 'sequence'):
        arch, base, _, _ = ablate.MODELS[model]
        for group, label, overrides in ablate.settings(model):
            r = rows[(model, label)]
            assert r['group'] == group and r['kwargs'] == overrides and r['arch'] == arch
            assert 0 <= r['top1_mean'] <= 100 and math.isfinite(r['top1_std']) and len(r['top1']) == 1
            assert r['seconds'] > 0
            net = timm.create_model(arch, **dict(base, **overrides))
            assert r['params'] == sum(p.numel() for p in net.parameters())
            smp = smp_layers(net)
            frozen = (0 if overrides.get('learn_positions', True) else sum(m.weight_coord.numel() for m in smp)) \
                + (0 if overrides.get('learn_radius', True) else sum(m.radius.numel() for m in smp))
            assert r['trainable_params'] == r['params'] - frozen
        assert rows[(model, 'n_points=32')]['params'] > rows[(model, 'positions + radii (base)')]['params']
    assert (tmp_path / 'ablate.md').read_text().count(' | ') >= 5 * len(rows)
    assert is_png(tmp_path / 'kernels_image.png') and is_png(tmp_path / 'kernels_sequence.png')


# ------------------------------------------------------------------------------------- kernel pictures (Figs. 4-5)

def test_layer_kernels_values():
    layer = SMPConv(3, 5, 9, 6, 0.3, 0.3)
    positions, radii, first, total = layer_kernels(layer, filter_index=2, n_kernels=2)
    kernel = layer.generate_kernel().detach()
    assert torch.equal(positions, layer.weight_coord[2].detach()) and torch.equal(radii, layer.radius[2].reshape(-1))
    for c in range(2):
        torch.testing.assert_close(first[c], kernel[2, c].abs() / kernel[2, c].abs().max())
    summed = kernel.abs().sum((0, 1))
    torch.testing.assert_close(total, summed / summed.max())
    with pytest.raises(ValueError, match='filter_index'):
        layer_kernels(layer, filter_index=5)


def test_select_layers():
    model = timm.create_model('smpconv_tcn_mnist', seq_len=16, depth=3, width=4)
    names = [n for n, _ in select_smp_layers(model, max_layers=3)]
    assert names == ['blocks.0.conv1.smp.conv', 'blocks.1.conv1.smp.conv', 'blocks.2.conv2.smp.conv']
    assert [n for n, _ in select_smp_layers(model, ['blocks.1.'])] == ['blocks.1.conv1.smp.conv',
                                                                      'blocks.1.conv2.smp.conv']
    with pytest.raises(ValueError, match='no SMP layer name contains'):
        select_smp_layers(model, ['nope'])
    with pytest.raises(ValueError, match='only 1-d and 2-d'):
        plot_smp_kernels(SMPConv(1, 1, 3, 2, 0.5, 0.3, ndim=3), 'unused.png')


@pytest.mark.parametrize('name,kwargs', [
    ('smpconv_t', dict(depths=(1, 1), dims=(8, 16), kernel_sizes=(9, 7))),
    ('smpconv_cifar', dict(stem_width=4, widths=(4,), kernel_size=9)),
    ('smpconv_tcn_mnist', dict(seq_len=24, depth=1, width=4)),
])
def test_plot_every_family(tmp_path, name, kwargs):
    model = timm.create_model(name, **kwargs)
    out = plot_smp_kernels(model, tmp_path / 'k.png', n_kernels=2)
    assert is_png(out) and not list(tmp_path.glob('.*'))  # atomic: no temporary left


def test_viz_cli_official_checkpoint_and_run_folder(tmp_path, official_dir, capsys):
    state = official_dir / 'official_cifar10_resnet_state.safetensors'
    out = tmp_path / 'cifar.png'
    assert viz_main([str(state), str(out), '--model', 'smpconv_cifar', '--layer', 'blocks.0.conv1']) == 0
    assert is_png(out) and str(out) in capsys.readouterr().out
    model = load_model(str(state), 'smpconv_cifar')  # through the converter: official values at our names
    official = load_file(str(state))
    torch.testing.assert_close(model.blocks[0].conv1.smp.conv.weight_coord,
                               official['blocks.0.cconv1.Kernel.weight_coord'], rtol=0, atol=0)
    with pytest.raises(SystemExit):
        viz_main([str(state), str(tmp_path / 'x.png')])
    assert 'name its architecture with --model' in capsys.readouterr().err
    # a train.py run folder: its best/ (Hub layout) is drawn
    from smpconv_models.hub import save_pretrained

    tcn = timm.create_model('smpconv_tcn_mnist', seq_len=20, depth=1, width=4, learn_positions=False)
    save_pretrained(tcn, tmp_path / 'run' / 'best', model_args=dict(seq_len=20, depth=1, width=4,
                                                                    learn_positions=False))
    assert load_model(f'local-dir:{tmp_path / "run" / "best"}').seq_len == 20
    loaded = load_model(str(tmp_path / 'run'))
    assert loaded.seq_len == 20 and not loaded.blocks[0].conv1.smp.conv.weight_coord.requires_grad
    torch.testing.assert_close(loaded.blocks[0].conv1.smp.conv.weight_coord, tcn.blocks[0].conv1.smp.conv.weight_coord)
    assert viz_main([str(tmp_path / 'run'), str(tmp_path / 'run.png')]) == 0 and is_png(tmp_path / 'run.png')
    with pytest.raises(SystemExit):
        viz_main(['smpconv_nope', str(tmp_path / 'y.png')])
    assert 'neither a file, a folder nor a registered model' in capsys.readouterr().err


@pytest.mark.parametrize(('module', 'rate_key'), [('point_kernels', None), ('irregular_kernels', 'missing_rate')])
def test_kernel_comparisons_quick_write_consistent_rows(tmp_path, module, rate_key):
    """SMP vs MLP kernel experiments (BENCHMARKS.md): one row per kernel, each seed's final top-1 in [0, 100], and the
    summary mean / std are those of the per-seed values."""
    import importlib
    import statistics

    mod = importlib.import_module(f'smpconv_models.experiments.{module}')
    out = tmp_path / 'rows.json'
    assert mod.main(['--quick', '--json', str(out), '--out', str(tmp_path / 'runs')]) == 0
    rows = json.loads(out.read_text())['rows']
    assert sorted(r['kernel'] for r in rows) == ['mlp', 'smp']
    for r in rows:
        assert len(r['top1']) == len(r['seeds']) >= 2 and all(0 <= t <= 100 for t in r['top1'])
        assert math.isclose(r['top1_mean'], statistics.fmean(r['top1']), rel_tol=1e-12)
        assert math.isclose(r['top1_std'], statistics.stdev(r['top1']), rel_tol=1e-9, abs_tol=1e-12)
        assert r['params'] > 0 and all(b >= t - 1e-9 for b, t in zip(r['best_top1'], r['top1']))
        if rate_key is not None:
            assert r[rate_key] == 0.5


def test_small_data_quiet_block_restores_the_process_state(monkeypatch):
    """The small-data runner silences progress bars and loggers only while it trains (it may run in-process)."""
    import logging

    from smpconv_models.experiments import small_data

    monkeypatch.delenv('TQDM_DISABLE', raising=False)
    logger = logging.getLogger('timm')
    monkeypatch.setattr(logger, 'level', logging.INFO)
    with small_data._quiet():
        assert os.environ['TQDM_DISABLE'] == '1' and logger.level == logging.ERROR
    assert 'TQDM_DISABLE' not in os.environ and logger.level == logging.INFO
    monkeypatch.setenv('TQDM_DISABLE', '0')
    with small_data._quiet():
        pass
    assert os.environ['TQDM_DISABLE'] == '0'


def test_minirocket_kernels_features_and_accuracy():
    import numpy as np
    import torch

    from smpconv_models.experiments.small_data import (
        _minirocket_dilations,
        _minirocket_kernels,
        minirocket_accuracy,
        minirocket_features,
    )

    weights = _minirocket_kernels()
    assert weights.shape == (84, 1, 9) and torch.all(weights.sum(-1) == 0)
    assert torch.all((weights == 2).sum(-1) == 3) and len({tuple(w.flatten().tolist()) for w in weights}) == 84
    plan = _minirocket_dilations(300, 10_000)
    assert plan[0][0] == 1 and plan[-1][0] <= (300 - 1) / 8 and sum(c for _, c in plan) == 10_000 // 84
    rng = np.random.default_rng(1)
    y = np.arange(80) % 2
    t = np.arange(60)
    x = np.sin(2 * np.pi * (2 + 5 * y[:, None]) * t / 60 + rng.uniform(0, 6.3, (80, 1)))[:, None]
    x = torch.tensor(x + 0.3 * rng.normal(size=x.shape), dtype=torch.float32)
    feats, state = minirocket_features(x[:40], x[:40], n_features=840)
    assert feats.shape == (40, 840) and feats.min() >= 0 and feats.max() <= 1  # proportions of positive values
    again, _ = minirocket_features(x[:40], state=state)
    assert torch.equal(feats, again)
    assert minirocket_accuracy(x[:40], torch.tensor(y[:40]), x[40:], torch.tensor(y[40:]), 840) >= 95.0


def test_write_benchmarks_replaces_only_its_section(tmp_path):
    from smpconv_models.experiments.small_data import BENCHMARKS_BEGIN, BENCHMARKS_END, write_benchmarks

    rows = [dict(set='a', channels=1, length=10, classes=2, n_train=8, rocket=50.0, minirocket=60.0, recipe=70.0,
                 recipe_s=3.0, recipe_members=3, recipe_member_top1=65.0)]
    path = tmp_path / 'BENCHMARKS.md'
    path.write_text('# Benchmarks\n\nbefore\n')
    write_benchmarks(path, rows, ['recipe'], 'python -m smpconv_models.experiments.small_data')
    text = path.read_text()
    assert text.startswith('# Benchmarks\n\nbefore\n') and text.count(BENCHMARKS_BEGIN) == 1
    assert '| a | 1 | 10 | 2 | 8 | 50.0 | 60.0 | 70.0 | 65.0 |' in text and 'ensemble of 3' in text
    path.write_text(text + '\n## After\n\nkept\n')
    rows[0]['recipe'] = 80.0
    write_benchmarks(path, rows, ['recipe'], 'cmd')
    text = path.read_text()
    assert text.count(BENCHMARKS_BEGIN) == 1 and text.count(BENCHMARKS_END) == 1
    assert '| 80.0 |' in text and '| 70.0 |' not in text and text.endswith('## After\n\nkept\n')
    assert text.startswith('# Benchmarks\n\nbefore\n')
