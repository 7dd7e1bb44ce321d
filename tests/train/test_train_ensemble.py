"""train.py --ensemble N: members with their own seeds on one data split, one checkpoint, resumable member by
member and epoch by epoch after a kill."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import timm
import torch

import smpconv_models  # noqa: F401
from tests.train.test_train_cli import REPO_ROOT, TINY, max_rel_diff, train, weights

COMMON = ['--ensemble', '2', '--epochs', '3', '--batch-size', '32', '--limit-train-batches', '6', *TINY, '--seed', '4']


def test_ensemble_run_saves_one_checkpoint_of_its_members(tmp_path):
    out = tmp_path / 'ens'
    proc = train('--output-dir', str(out), *COMMON)
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['model'] == 'smpconv_ensemble' and summary['n_members'] == 2
    assert f"local-dir:{out / 'last'}" in proc.stdout
    model = timm.create_model(f'local-dir:{out / "last"}', pretrained=True).eval()
    assert len(model.members) == 2
    for i, member in enumerate(model.members):  # the members' final weights, trained from seeds 4 and 5
        member_weights = weights(out / 'members' / str(i) / 'last')
        assert max_rel_diff({f'members.{i}.{k}': v for k, v in member_weights.items()},
                            {f'members.{i}.{k}': v for k, v in member.state_dict().items()}) == 0.0
        assert not (out / 'members' / str(i) / 'state').exists()
    w0, w1 = weights(out / 'members' / '0' / 'last'), weights(out / 'members' / '1' / 'last')
    assert max_rel_diff(w0, w1) > 1e-3  # different seeds
    config = json.loads((out / 'last' / 'config.json').read_text())
    assert config['architecture'] == 'smpconv_ensemble' and config['model_args']['n_members'] == 2
    # the reported accuracy is the saved model's on the test split
    eval_proc = train('--eval-only', '--pretrained', str(out / 'last'), '--output-dir', str(tmp_path / 'ev'),
                      '--plot', 'false')
    assert f"top-1 {summary['eval_top1']:.2f}%" in eval_proc.stdout
    params = sum(p.numel() for p in model.parameters())
    assert summary['params'] == params == 2 * sum(p.numel() for p in model.members[0].parameters())


def test_killed_ensemble_resumes_member_by_member(tmp_path):
    train('--output-dir', str(tmp_path / 'full'), *COMMON)
    out = tmp_path / 'killed'
    env = dict(os.environ, OMP_NUM_THREADS='1', TQDM_DISABLE='1')
    proc = subprocess.Popen([sys.executable, str(REPO_ROOT / 'train.py'), '--output-dir', str(out), *COMMON],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = out / 'members' / '1' / 'state' / 'progress.json'
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if progress.is_file() and json.loads(progress.read_text())['epoch'] >= 1:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    epoch_at_kill = json.loads(progress.read_text())['epoch']
    assert 1 <= epoch_at_kill < 3 and not (out / 'summary.json').exists(), 'member 1 must be cut off mid-way'
    member0 = (out / 'members' / '0' / 'summary.json').stat().st_mtime_ns
    train('--output-dir', str(out), *COMMON, '--resume')
    assert (out / 'members' / '0' / 'summary.json').stat().st_mtime_ns == member0  # not retrained
    lines = [json.loads(ln) for ln in (out / 'members' / '1' / 'metrics.jsonl').read_text().splitlines()]
    assert [r['epoch'] for r in lines] == [1, 2, 3]
    assert max_rel_diff(weights(out / 'last'), weights(tmp_path / 'full' / 'last')) == 0.0
    full = json.loads((tmp_path / 'full' / 'summary.json').read_text())
    resumed = json.loads((out / 'summary.json').read_text())
    assert resumed['eval_top1'] == full['eval_top1'] and resumed['member_top1'] == full['member_top1']
    # member 0 of the resumed run is the uninterrupted run's
    assert torch.equal(weights(out / 'members' / '0' / 'last')['head.weight'],
                       weights(tmp_path / 'full' / 'members' / '0' / 'last')['head.weight'])
