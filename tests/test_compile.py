"""torch.compile with its default settings: eval and training, across a batch-size change (the automatic dynamic-shape
recompile), outputs and gradients equal to eager in float64; and train.py --compile."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import smpconv_models
from smpconv_models.experiments.compile_check import compare_compiled, deterministic_

from .helpers import irregular_series, point_sets, randomize_bn_

REPO_ROOT = Path(__file__).resolve().parents[1]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _compare_compiled(model: torch.nn.Module, inputs: list, tol: float = 1e-9) -> None:
    """Train-mode forward + backward of ``torch.compile(model)`` against eager on each input (a tensor, or a tuple of
    the model's positional inputs), then eval on the last (float64; norm-based relative errors:
    :func:`compare_compiled`); the point parameters receive gradients."""
    inputs = [x if isinstance(x, tuple) else (x,) for x in inputs]
    rows = compare_compiled(deterministic_(model), inputs)
    assert [(r['mode'], r['batch']) for r in rows] == [('train', x[0].shape[0]) for x in inputs] + [
        ('eval', inputs[-1][0].shape[0])]
    for row in rows:
        assert row['output_rel'] < tol, row
        assert row['grad_rel'] is None or row['grad_rel'] < tol, row
    point_grads = [p.grad for n, p in model.named_parameters() if n.endswith('.weights')]
    assert point_grads and all(g is not None and g.abs().sum() > 0 for g in point_grads)


@pytest.mark.parametrize(('name', 'kwargs', 'shape'), [
    ('smpconv_t', dict(depths=(1, 1), dims=(8, 16), kernel_sizes=(13, 7), num_classes=5, drop_path_rate=0.0),
     (3, 32, 32)),
    ('smpconv_cifar', dict(stem_width=6, widths=(8,), kernel_size=17, drop_rate=0.0), (3, 16, 16)),
    ('smpconv_tcn_scifar10', dict(depth=1, width=8, seq_len=64), (3, 64)),
])
def test_compile_default_matches_eager_across_batch_sizes(name, kwargs, shape):
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).double()
    _compare_compiled(model, [torch.randn(2, *shape, dtype=torch.float64),
                              torch.randn(3, *shape, dtype=torch.float64)])


def test_compile_fft_depthwise_path_across_stages(monkeypatch):
    """Full-size smpconv_t at 224x224 runs its stage-1 depthwise kernels (31x31 on 56x56) through the all-FFT path in
    training, which small configurations never reach. A graph break there once made Dynamo compile each stage as its
    own frame, recompile it with dynamic shapes for the next stage, and crash in Inductor; here the small model takes
    that path in every stage."""
    from smpconv_models.layers import conv as conv_module

    plain = conv_module.conv_path

    def fft_for_depthwise(x, weight, groups):
        path = plain(x, weight, groups)
        return 'fft' if path == 'hybrid' else path

    monkeypatch.setattr(conv_module, 'conv_path', fft_for_depthwise)
    torch.manual_seed(0)
    model = timm.create_model('smpconv_t', depths=(1, 1), dims=(8, 16), kernel_sizes=(13, 11), num_classes=5,
                              drop_path_rate=0.0).double()
    x = torch.randn(2, 8, 8, 8, dtype=torch.float64, requires_grad=True)  # stage 1's large-kernel input
    with torch.enable_grad():
        assert plain(x, torch.zeros(8, 1, 13, 13), 8) == 'hybrid'
        assert fft_for_depthwise(x, torch.zeros(8, 1, 13, 13), 8) == 'fft'
    _compare_compiled(model, [torch.randn(2, 3, 32, 32, dtype=torch.float64),
                              torch.randn(3, 3, 32, 32, dtype=torch.float64)])


# One model per structure at its registered (full) size and input: smpconv_b is smpconv_t's class, the TCNs differ in
# widths and lengths (speech_raw has the longest FFT). Dynamo traces the whole forward as one graph in training and in
# eval; a graph break splits it into frames that Dynamo recompiles per shape, which is where full-size compiles broke.
@pytest.mark.parametrize('name', ['smpconv_t', 'smpconv_cifar', 'smpconv_tcn_speech_raw'])
def test_full_size_model_traces_as_one_graph(name):
    torch.manual_seed(0)
    model = timm.create_model(name)
    size = model.pretrained_cfg['input_size']
    x = torch.randn(1, *(size if len(size) == 3 and size[1] > 1 else (size[0], size[-1])))
    for train in (True, False):
        model.train(train)
        torch._dynamo.reset()
        with torch.set_grad_enabled(train):
            explained = torch._dynamo.explain(model)(x)
        assert explained.graph_break_count == 0, (train, [str(b.reason)[:300] for b in explained.break_reasons])
        assert explained.graph_count == 1


# The point-set and irregular-series families at full size on their registered example inputs: the value checks are
# run-time asserts in the graph, the neighbour search a custom op, and the irregular kernels' source windows static.
@pytest.mark.parametrize('name', ['smpconv_points', 'smpconv_points_3d', 'smpconv_irregular_tcn_chartraj'])
def test_full_size_non_grid_model_traces_as_one_graph(name):
    torch.manual_seed(0)
    model = timm.create_model(name)
    inputs = smpconv_models.models.family_of(name).example_inputs(model, 2)
    for train in (True, False):
        model.train(train)
        torch._dynamo.reset()
        with torch.set_grad_enabled(train):
            explained = torch._dynamo.explain(model)(*inputs)
        assert explained.graph_break_count == 0, (train, [str(b.reason)[:300] for b in explained.break_reasons])
        assert explained.graph_count == 1


def test_compiled_irregular_tcn_asserts_its_window_and_data_checks():
    """A compiled irregular TCN's static source windows serve timestamps at least ``min_gap`` apart: closer ones, and
    NaN timestamps, raise at run time (the eager model serves the first and names the second as a ValueError); a
    lower ``min_gap`` serves them, equal to eager."""
    torch.manual_seed(0)
    model = timm.create_model('smpconv_irregular_tcn', **IRREGULAR).double().eval()
    values, timestamps, mask = irregular_series(2, seed=3)
    dense = timestamps * 0.3  # gaps of 0.3-0.9 time units
    compiled = torch.compile(model)
    with torch.no_grad():
        expected = model(values, dense, mask)
        with pytest.raises(RuntimeError, match='min_gap'):
            compiled(values, dense, mask)
        bad = timestamps.clone()
        bad[0, 0] = float('nan')
        with pytest.raises(ValueError, match='timestamps hold NaN'):
            model(values, bad, mask)
        with pytest.raises(RuntimeError, match='timestamps hold NaN'):
            compiled(values, bad, mask)
        model.min_gap = 0.25
        torch._dynamo.reset()
        assert _rel(torch.compile(model)(values, dense, mask), expected) < 1e-12


def test_train_cli_compile_matches_eager(tmp_path):
    """train.py --compile trains the same weights as the eager run (tiny TCN, two SGD steps: Adam would amplify
    rounding differences of near-zero gradients)."""
    def run(out: Path, *extra: str) -> dict:
        cmd = [sys.executable, str(REPO_ROOT / 'train.py'), '--output-dir', str(out), '--epochs', '1',
               '--limit-train-batches', '2', '--batch-size', '16', '--plot', 'false', '--optimizer', 'sgd',
               '--model-args', json.dumps({'depth': 1, 'width': 4, 'n_points': 4}), *extra]
        env = dict(os.environ, OMP_NUM_THREADS='1', TQDM_DISABLE='1')
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads((out / 'summary.json').read_text())

    from safetensors.torch import load_file

    eager, compiled = run(tmp_path / 'eager'), run(tmp_path / 'compiled', '--compile')
    assert abs(eager['eval_top1'] - compiled['eval_top1']) <= 100 / 360  # at most one test digit flips
    a = load_file(str(tmp_path / 'eager' / 'last' / 'model.safetensors'))
    b = load_file(str(tmp_path / 'compiled' / 'last' / 'model.safetensors'))
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            assert _rel(b[k].double(), a[k].double()) < 1e-3, k


# --------------------------------------------------------------------------- multi-input families (host reads)

# one stage / two blocks: every layer kind once (compiling is what takes the time)
POINTS = dict(stem_width=4, widths=(6,), depths=(1,), stage_points=(6,), radii=(0.8,), k=6)
IRREGULAR = dict(depth=1, width=4, n_points=4, seq_len=12, radius=0.15)


@pytest.mark.parametrize('kernel', ['smp', 'mlp'])
def test_compile_point_set_model_matches_eager(kernel):
    """smpconv_points (farthest-point sampling, radius search; the input checks are run-time asserts)."""
    torch.manual_seed(0)
    model = timm.create_model('smpconv_points', kernel=kernel, **POINTS).double()
    randomize_bn_(model)  # the blocks' last BatchNorm starts at zero: open the residual branches
    _compare_compiled(model, [point_sets(2, n=12, seed=1), point_sets(3, n=12, seed=2)])


def test_compile_irregular_tcn_matches_eager():
    """smpconv_irregular_tcn on real timestamps with a mask (the pairwise path in static source windows; the data
    checks are run-time asserts), then at another batch size without a mask."""
    torch.manual_seed(0)
    model = timm.create_model('smpconv_irregular_tcn', **IRREGULAR).double()
    randomize_bn_(model)
    values, timestamps, _ = irregular_series(3, seed=2)
    _compare_compiled(model, [irregular_series(2, seed=1), (values.nan_to_num(), timestamps, None)])
