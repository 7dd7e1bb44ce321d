"""train.py --ensemble N: members with their own seeds on one data split, one checkpoint, resumable member by
member and epoch by epoch after a crash.

In-process (``smpconv_models.train.cli.main``): a subprocess spends seconds importing before it trains. The crash is
an exception raised right after member 1 saved its first epoch's state (what a kill then leaves behind; the kill
itself, and the atomic state writes, are tested on the single-model loop in test_train_cli.py)."""
from __future__ import annotations

import json

import pytest
import timm
import torch

import smpconv_models  # noqa: F401
import smpconv_models.train.loop as loop
from smpconv_models.train.cli import main
from tests.train.test_train_cli import TINY, max_rel_diff, weights

COMMON = ['--ensemble', '2', '--epochs', '3', '--batch-size', '32', '--limit-train-batches', '3', *TINY, '--seed', '4']


class Crash(Exception):
    pass


def test_ensemble_run_saves_one_checkpoint_of_its_members(tmp_path, capsys):
    out = tmp_path / 'ens'
    assert main(['--output-dir', str(out), *COMMON]) == 0
    assert f"local-dir:{out / 'last'}" in capsys.readouterr().out
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['model'] == 'smpconv_ensemble' and summary['n_members'] == 2
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
    assert main(['--eval-only', '--pretrained', str(out / 'last'), '--output-dir', str(tmp_path / 'ev'),
                 '--plot', 'false']) == 0
    assert f"top-1 {summary['eval_top1']:.2f}%" in capsys.readouterr().out
    params = sum(p.numel() for p in model.parameters())
    assert summary['params'] == params == 2 * sum(p.numel() for p in model.members[0].parameters())


def test_crashed_ensemble_resumes_member_by_member(tmp_path, monkeypatch):
    assert main(['--output-dir', str(tmp_path / 'full'), *COMMON]) == 0
    out = tmp_path / 'crashed'
    save = loop.save_training_state

    def save_then_crash(accelerator, state_dir, progress, ema):
        save(accelerator, state_dir, progress, ema)
        if state_dir.parent.name == '1' and progress['epoch'] == 1:
            raise Crash

    monkeypatch.setattr(loop, 'save_training_state', save_then_crash)
    with pytest.raises(Crash):
        main(['--output-dir', str(out), *COMMON])
    monkeypatch.undo()
    progress = json.loads((out / 'members' / '1' / 'state' / 'progress.json').read_text())
    assert progress['epoch'] == 1 and not (out / 'summary.json').exists()
    member0 = (out / 'members' / '0' / 'summary.json').stat().st_mtime_ns
    assert main(['--output-dir', str(out), *COMMON, '--resume']) == 0
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


def test_ensemble_of_a_model_it_cannot_hold_is_refused_before_training(tmp_path, caplog):
    out = tmp_path / 'irr'
    assert main(['--model', 'smpconv_irregular_tcn', '--data', 'digits-irregular', '--output-dir', str(out),
                 *COMMON]) == 2
    assert 'single-input sequence models' in caplog.text and not (out / 'members').exists()
