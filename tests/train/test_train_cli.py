"""train.py end to end on the embedded digits: distributed equivalence, kill + resume, fine-tuning, bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import smpconv_models  # noqa: F401
from smpconv_models.hub import save_pretrained

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY = ['--model-args', json.dumps({'depth': 2, 'width': 8, 'n_points': 6}), '--plot', 'false']


def train(*args: str, check: bool = True, launcher: list[str] | None = None, **popen) -> subprocess.CompletedProcess:
    cmd = [*(launcher or [sys.executable]), str(REPO_ROOT / 'train.py'), *args]
    env = dict(os.environ, OMP_NUM_THREADS='1', TQDM_DISABLE='1')
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, **popen)
    if check and proc.returncode != 0:
        raise AssertionError(f'{cmd} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}')
    return proc


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / 'model.safetensors'))


def max_rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(((a[k].double() - b[k].double()).norm() / b[k].double().norm().clamp_min(1e-12)).item()
               for k in a if a[k].is_floating_point())


def test_one_process_equals_two_processes(tmp_path):
    # gradient accumulation with shared SMP kernels: the point gradients of both micro-batches reach DDP's all-reduce
    common = ['--epochs', '1', '--batch-size', '16', '--grad-accum', '2', *TINY, '--seed', '3']
    one = train('--output-dir', str(tmp_path / 'one'), *common)
    launcher = [sys.executable, '-m', 'accelerate.commands.launch', '--cpu', '--num_processes', '2',
                '--num_machines', '1', '--mixed_precision', 'no', '--dynamo_backend', 'no', '--main_process_port',
                '29517']
    two = train('--output-dir', str(tmp_path / 'two'), *common, launcher=launcher)
    steps = [json.loads((tmp_path / d / 'state' / 'progress.json').read_text())['step'] for d in ('one', 'two')]
    assert steps[0] == steps[1] >= 20
    assert max_rel_diff(weights(tmp_path / 'two' / 'last'), weights(tmp_path / 'one' / 'last')) <= 1e-3
    assert 'done:' in one.stdout and 'done:' in two.stdout


def test_kill_and_resume_matches_uninterrupted(tmp_path):
    common = ['--epochs', '3', '--batch-size', '16', *TINY, '--seed', '5']
    train('--output-dir', str(tmp_path / 'full'), *common)
    out = tmp_path / 'killed'
    env = dict(os.environ, OMP_NUM_THREADS='1', TQDM_DISABLE='1')
    proc = subprocess.Popen([sys.executable, str(REPO_ROOT / 'train.py'), '--output-dir', str(out), *common],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = out / 'state' / 'progress.json'
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if progress.is_file() and json.loads(progress.read_text())['epoch'] >= 1:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    epoch_at_kill = json.loads(progress.read_text())['epoch']
    assert 1 <= epoch_at_kill < 3 and not (out / 'summary.json').exists(), 'the run must be cut off mid-way'
    # the checkpoint left behind is complete and loadable
    assert timm.create_model(f'local-dir:{out / "best"}', pretrained=True) is not None
    train('--output-dir', str(out), *common, '--resume')
    assert max_rel_diff(weights(out / 'last'), weights(tmp_path / 'full' / 'last')) == 0.0
    lines = [json.loads(ln) for ln in (out / 'metrics.jsonl').read_text().splitlines()]
    assert [r['epoch'] for r in lines] == [1, 2, 3]
    full = [json.loads(ln) for ln in (tmp_path / 'full' / 'metrics.jsonl').read_text().splitlines()]
    assert [r['eval_top1'] for r in lines] == [r['eval_top1'] for r in full]


def test_fine_tune_new_classes_and_kernel_scale(tmp_path):
    base = tmp_path / 'base'  # a 12-class head (digits labels fit), replaced by the dataset's 10 classes below
    train('--output-dir', str(base), '--epochs', '1', '--batch-size', '64', *TINY, '--limit-train-batches', '3',
          '--num-classes', '12')
    tuned = tmp_path / 'tuned'
    train('--output-dir', str(tuned), '--epochs', '1', '--batch-size', '64', *TINY, '--limit-train-batches', '2',
          '--pretrained', str(base / 'last'), '--kernel-scale', '2', '--lr', '0')
    src = timm.create_model(f'local-dir:{base / "last"}', pretrained=True).eval()
    dst = timm.create_model(f'local-dir:{tuned / "last"}', pretrained=True).eval()
    assert src.num_classes == 12 and dst.num_classes == 10 and dst.head.out_features == 10
    torch.testing.assert_close(dst.blocks[1].conv2.small_conv.conv.weight, src.blocks[1].conv2.small_conv.conv.weight)
    k_src = src.blocks[0].conv1.smp.conv
    k_dst = dst.blocks[0].conv1.smp.conv
    assert k_src.kernel_size == (64,) and k_dst.kernel_size == (127,)
    # lr 0: the points are unchanged, and the new kernel samples the same function at the shared coordinates
    torch.testing.assert_close(k_dst.weight_coord, k_src.weight_coord)
    with torch.no_grad():
        torch.testing.assert_close(k_dst.generate_kernel()[..., ::2], k_src.generate_kernel())
    summary = json.loads((tuned / 'summary.json').read_text())
    assert summary['model'] == 'smpconv_tcn_mnist' and 0 <= summary['eval_top1'] <= 100


@pytest.mark.parametrize('args,message', [
    (['--model', 'smpconv_nope'], 'unknown model'),
    (['--data', 'cifar10:/nonexistent/cifar'], 'does not exist'),
    (['--data', 'imagenet'], 'unknown dataset'),
    (['--pretrained', '/nonexistent/ckpt.pth'], 'not found'),
    (['--pretrained', 'no_such_thing'], 'neither a file'),
    (['--num-classes', '7'], 'fewer classes'),
])
def test_bad_input_fails_cleanly(tmp_path, args, message):
    out = tmp_path / 'out'
    proc = train('--output-dir', str(out), '--epochs', '1', *TINY, *args, check=False)
    assert proc.returncode != 0 and message in proc.stderr
    assert not (out / 'summary.json').exists() and not (out / 'last').exists()


def test_corrupt_and_mismatched_checkpoints(tmp_path):
    corrupt = tmp_path / 'corrupt.safetensors'
    corrupt.write_bytes(b'not a safetensors file')
    proc = train('--output-dir', str(tmp_path / 'a'), '--epochs', '1', *TINY, '--pretrained', str(corrupt),
                 check=False)
    assert proc.returncode != 0 and 'cannot read' in proc.stderr
    wide = timm.create_model('smpconv_tcn_mnist', seq_len=64, depth=2, width=16, n_points=6)
    save_pretrained(wide, tmp_path / 'wide')  # width 16 weights into the width 8 model asked for by TINY
    proc = train('--output-dir', str(tmp_path / 'b'), '--epochs', '1', *TINY, '--pretrained', str(tmp_path / 'wide'),
                 check=False)
    assert proc.returncode != 0 and 'does not match' in proc.stderr and 'shape mismatches' in proc.stderr
    assert not (tmp_path / 'a' / 'summary.json').exists() and not (tmp_path / 'b' / 'summary.json').exists()


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / 'a_file'
    blocker.write_text('not a folder')
    proc = train('--output-dir', str(blocker / 'run'), '--epochs', '1', *TINY, check=False)
    assert proc.returncode != 0 and 'not writable' in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a_file'] and blocker.read_text() == 'not a folder'


def test_eval_only_prints_top1_top5(tmp_path):
    base = tmp_path / 'base'
    train('--output-dir', str(base), '--epochs', '1', '--batch-size', '64', *TINY, '--limit-train-batches', '2')
    proc = train('--output-dir', str(tmp_path / 'eval'), '--eval-only', '--pretrained', str(base / 'best'), *TINY)
    assert 'top-1' in proc.stdout and 'top-5' in proc.stdout
    summary = json.loads((tmp_path / 'eval' / 'summary.json').read_text())
    best = json.loads((base / 'summary.json').read_text())
    assert summary['eval_top1'] == pytest.approx(best['best_top1'])


def test_help_documents_every_flag():
    proc = train('--help')
    for flag in ('--model', '--config', '--data', '--output-dir', '--epochs', '--batch-size', '--lr', '--seed',
                 '--resume', '--pretrained', '--num-classes', '--in-chans', '--kernel-scale', '--push-to-hub',
                 '--eval-only'):
        assert flag in proc.stdout


def test_yaml_config_and_override(tmp_path):
    from smpconv_models.train import parse_config

    path = tmp_path / 'run.yaml'
    path.write_text('epochs: 7\nlr: 0.01\nmodel_args: {width: 16}\n')
    cfg = parse_config(['--config', str(path), '--lr', '0.02'])
    assert cfg.epochs == 7 and cfg.lr == 0.02 and cfg.model_args == {'width': 16}
    path.write_text('epoch: 7\n')
    with pytest.raises(ValueError, match='unknown option'):
        parse_config(['--config', str(path)])


def test_frozen_points_stay_fixed_through_train_py(tmp_path):
    # learn_positions / learn_radius = False (paper Tables 6-7) through train.py: the optimizer, clamp_radii_ and the
    # EMA leave positions and radii as they were, the flags travel with the saved model_args, the weights train
    frozen = json.dumps({'depth': 2, 'width': 8, 'n_points': 6, 'learn_positions': False, 'learn_radius': False,
                         'radius': 1.5})  # above the clamp bound 1: a frozen radius is not clamped either
    common = ['--epochs', '1', '--batch-size', '32', '--limit-train-batches', '3', '--plot', 'false',
              '--ema', 'true', '--ema-decay', '0.5']
    train('--output-dir', str(tmp_path / 'base'), '--model-args', frozen, *common)
    train('--output-dir', str(tmp_path / 'tuned'), '--pretrained', str(tmp_path / 'base' / 'last'), *common,
          '--plot', 'true')
    assert (tmp_path / 'tuned' / 'kernels.png').read_bytes()[:4] == b'\x89PNG'  # viz.plot_kernels at the end
    base = weights(tmp_path / 'base' / 'last')
    config = json.loads((tmp_path / 'tuned' / 'last' / 'config.json').read_text())
    assert config['model_args']['learn_positions'] is False and config['model_args']['learn_radius'] is False
    for folder in ('last', 'best'):  # best/ holds the EMA weights
        tuned = weights(tmp_path / 'tuned' / folder)
        points = [k for k in base if k.endswith(('.weight_coord', '.radius'))]
        assert len(points) == 8 and all(torch.equal(tuned[k], base[k]) for k in points)
        assert all(torch.all(tuned[k] == 1.5) for k in points if k.endswith('.radius'))
        assert not torch.equal(tuned['blocks.0.conv1.smp.conv.weights'], base['blocks.0.conv1.smp.conv.weights'])
