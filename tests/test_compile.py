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

import smpconv_models  # noqa: F401

from .helpers import irregular_series, point_sets, randomize_bn_

REPO_ROOT = Path(__file__).resolve().parents[1]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _compare_compiled(model: torch.nn.Module, inputs: list, tol: float = 1e-9) -> None:
    """Train-mode forward + backward of ``torch.compile(model)`` against eager on each input (a tensor, or a tuple of
    the model's positional inputs), then eval on the last (float64; norm-based relative errors; parameters whose
    gradient is zero in eager only carry rounding noise, so every gradient is compared against the norm of all
    gradients)."""
    torch._dynamo.reset()
    compiled = torch.compile(model)
    inputs = [x if isinstance(x, tuple) else (x,) for x in inputs]
    for x in inputs:
        model.train()
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = 0.0  # the same statistics for the eager and the compiled pass
        outs, grads = [], []
        for fn in (model, compiled):
            model.zero_grad(set_to_none=True)
            out = fn(*x)
            out.square().sum().backward()
            outs.append(out.detach())
            grads.append(_grads(model))
        assert _rel(outs[1], outs[0]) < tol, x[0].shape
        assert grads[0].keys() == grads[1].keys()
        scale = torch.cat([g.flatten() for g in grads[0].values()]).norm()
        worst = max(float((grads[1][k] - grads[0][k]).norm() / scale) for k in grads[0])
        assert worst < tol, (x[0].shape, worst)
        point_grads = [k for k in grads[0] if k.endswith(('weight_coord', 'radius', '.weights'))]
        assert point_grads and all(grads[0][k].abs().sum() > 0 for k in point_grads if k.endswith('.weights'))
    model.eval()  # eval (one more compile, on the last batch size): cached kernels and folded BatchNorms
    with torch.no_grad():
        assert _rel(compiled(*inputs[-1]), model(*inputs[-1])) < tol


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
    """smpconv_points (farthest-point sampling, radius search; the input check's host read is a graph break)."""
    torch.manual_seed(0)
    model = timm.create_model('smpconv_points', kernel=kernel, **POINTS).double()
    randomize_bn_(model)  # the blocks' last BatchNorm starts at zero: open the residual branches
    _compare_compiled(model, [point_sets(2, n=12, seed=1), point_sets(3, n=12, seed=2)])


def test_compile_irregular_tcn_matches_eager():
    """smpconv_irregular_tcn on real timestamps with a mask (the pairwise path; host reads for the data checks and
    gather widths), then at another batch size without a mask."""
    torch.manual_seed(0)
    model = timm.create_model('smpconv_irregular_tcn', **IRREGULAR).double()
    randomize_bn_(model)
    values, timestamps, _ = irregular_series(3, seed=2)
    _compare_compiled(model, [irregular_series(2, seed=1), (values.nan_to_num(), timestamps, None)])
