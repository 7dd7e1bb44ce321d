"""``train.py --ensemble N``: N members of one model trained from different seeds in one run folder, saved as one
probability-averaging ensemble (:class:`~smpconv_models.models.ensemble.SMPEnsemble`).

Member ``i`` is an ordinary run (:func:`~smpconv_models.train.loop.run`) in ``OUTPUT_DIR/members/<i>/`` with
``--seed`` + ``i`` for its initialisation, batch order and augmentation, and the run's ``--seed`` for the data
(``data_seed``: every member sees the same training / test split). The members train one after the other; with
``--resume`` a killed run skips the members that finished and resumes the interrupted one from its last saved
epoch (its ``state/``). Then the members' final weights (``members/<i>/last/``, not their best epochs) become one
``smpconv_ensemble`` Hub-layout folder, ``OUTPUT_DIR/last/``, evaluated on the test split; a finished member keeps
only ``last/``, ``metrics.jsonl`` and ``summary.json``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from .._io import write_json_atomic, write_text_atomic
from ..hub import push_to_hub, save_pretrained
from ..models import family_of
from ..models.ensemble import check_member
from ..viz import has_grid_smp_kernels, plot_kernels
from .checkpoint import STATE_DIR
from .config import TrainConfig
from .data import build_data, standardise_series
from .loop import TrainingError, _recipe_card, _transforms, evaluate, run

__all__ = ['run_ensemble', 'MEMBERS_DIR']

_logger = logging.getLogger(__name__)

MEMBERS_DIR = 'members'


def _finished(member_dir: Path) -> bool:
    return (member_dir / 'summary.json').is_file() and (member_dir / 'last' / 'model.safetensors').is_file()


def _member_config(cfg: TrainConfig, i: int, member_dir: Path, resume: bool) -> TrainConfig:
    return dataclasses.replace(
        cfg, output_dir=str(member_dir), seed=cfg.seed + i, ensemble=1, plot=False, push_to_hub=None,
        data_seed=cfg.seed if cfg.data_seed is None else cfg.data_seed, resume='auto' if resume else None)


def _load_members(out: Path, n_members: int) -> tuple[str, dict[str, Any], torch.nn.Module]:
    """The ensemble of the members' final weights: ``(member architecture, member model_args, model)``."""
    configs = [json.loads((out / MEMBERS_DIR / str(i) / 'last' / 'config.json').read_text()) for i in range(n_members)]
    arch, member_args = configs[0]['architecture'], dict(configs[0].get('model_args', {}))
    for i, c in enumerate(configs[1:], 1):
        if c['architecture'] != arch or c.get('model_args', {}) != configs[0].get('model_args', {}):
            raise TrainingError(f'ensemble member {i} ({out / MEMBERS_DIR / str(i)}) was trained with another model '
                                f'({c["architecture"]} {c.get("model_args")}) than member 0 ({arch} {member_args}); '
                                'start the run afresh (without --resume)')
    member_args.pop('pretrained_cfg', None)
    model = timm.create_model('smpconv_ensemble', member=arch, n_members=n_members, **member_args)
    for i, member in enumerate(model.members):
        state = load_file(str(out / MEMBERS_DIR / str(i) / 'last' / 'model.safetensors'))
        member.load_state_dict(state)
    return arch, member_args, model


def run_ensemble(cfg: TrainConfig, argv: list[str] | None = None) -> dict[str, Any]:
    """Train ``cfg.ensemble`` members (module docstring); returns the summary written to ``summary.json``."""
    from accelerate import Accelerator, PartialState

    n_members = int(cfg.ensemble or 1)
    if PartialState().num_processes > 1:
        raise TrainingError('--ensemble trains its members in one process; run it without accelerate launch '
                            '(or train the members as separate runs with different --seed)')
    if cfg.resume not in (None, 'auto'):
        raise TrainingError(f'--resume {cfg.resume}: an ensemble resumes from its run folder; use a bare --resume '
                            'with the same --output-dir')
    if not cfg.pretrained:  # before training anything: the ensemble must be able to hold the members
        try:
            check_member(cfg.model)
        except ValueError as e:
            raise TrainingError(f'--ensemble {n_members}: {e}') from None
    out = Path(cfg.output_dir)
    members_dir = out / MEMBERS_DIR
    if not cfg.resume and members_dir.exists():  # a fresh run: earlier members do not count
        shutil.rmtree(members_dir)
    member_summaries = []
    for i in range(n_members):
        member_dir = members_dir / str(i)
        if cfg.resume and _finished(member_dir):
            _logger.info('ensemble member %d/%d already trained (%s)', i + 1, n_members, member_dir)
            member_summaries.append(json.loads((member_dir / 'summary.json').read_text()))
            continue
        resumable = bool(cfg.resume) and (member_dir / STATE_DIR / 'progress.json').is_file()
        _logger.info('ensemble member %d/%d: seed %d%s', i + 1, n_members, cfg.seed + i,
                     ' (resumed)' if resumable else '')
        summary = run(_member_config(cfg, i, member_dir, resumable), argv)
        member_summaries.append(summary)
        for folder in ('best', STATE_DIR):  # the ensemble keeps each member's final weights only
            shutil.rmtree(member_dir / folder, ignore_errors=True)

    eval_started = time.time()
    arch, member_args, model = _load_members(out, n_members)
    data_cfg = _member_config(cfg, 0, members_dir / '0', False)
    kind = family_of(arch).input_kind
    _, eval_tf = _transforms(data_cfg, data_cfg.data, kind)
    data = build_data(cfg.data, kind, img_size=cfg.img_size, seed=data_cfg.data_seed, test_fraction=cfg.test_fraction,
                      eval_transform=eval_tf, model_name=arch, missing_rate=cfg.missing_rate)
    if cfg.series_norm and kind == 'sequence':
        data.test = standardise_series(data.test)
    batch = int(cfg.batch_size or 64)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=cfg.cpu)
    loader = DataLoader(data.test, batch_size=batch, num_workers=cfg.workers)
    model, loader = accelerator.prepare(model, loader)
    metrics = evaluate(model, loader, accelerator, model.num_classes)
    model = accelerator.unwrap_model(model)
    params = sum(p.numel() for p in model.parameters())
    ensemble_args = {'member': arch, 'n_members': n_members, **member_args}
    records = [{'member': i, 'seed': cfg.seed + i, 'eval_top1': s.get('eval_top1'), 'seconds': s.get('seconds')}
               for i, s in enumerate(member_summaries)]
    records.append({'ensemble': n_members, **metrics})
    write_text_atomic(out / 'metrics.jsonl', ''.join(json.dumps(r) + '\n' for r in records))
    recipe = dict(_recipe_card(dataclasses.replace(cfg, epochs=member_summaries[0].get('epochs'))),
                  ensemble=n_members)
    save_pretrained(model, out / 'last', source=f'{n_members} members trained with smpconv-models train.py on '
                    f'{cfg.data}', metrics={k: metrics[k] for k in ('eval_top1', 'eval_top5', 'eval_loss')},
                    recipe=recipe, model_args=ensemble_args)
    summary: dict[str, Any] = {
        'model': 'smpconv_ensemble', 'member': arch, 'n_members': n_members, 'data': cfg.data, 'params': params,
        'epochs': member_summaries[0].get('epochs'), **metrics,
        'member_top1': [s.get('eval_top1') for s in member_summaries],
        'best_top1': metrics['eval_top1'], 'best_epoch': member_summaries[0].get('epochs'),
        # the members' training (each member's last session when it was resumed) and the ensemble's evaluation
        'seconds': sum(float(s.get('seconds') or 0.0) for s in member_summaries) + time.time() - eval_started,
        'member_seconds': [s.get('seconds') for s in member_summaries],
        'command': ' '.join(argv if argv is not None else sys.argv), 'output_dir': str(out),
        'best': str(out / 'last'), 'last': str(out / 'last'), 'metrics': str(out / 'metrics.jsonl'),
    }
    if cfg.plot and has_grid_smp_kernels(model.members[0]):
        summary['plot'] = str(plot_kernels(model.members[0], out / 'kernels.png'))
    if cfg.push_to_hub:
        try:
            summary['hub_commit'] = push_to_hub(out / 'last', cfg.push_to_hub, private=cfg.hub_private)
        except (RuntimeError, FileNotFoundError) as e:
            summary['hub_error'] = str(e)
            _logger.error('push to the Hub failed (the checkpoint is in %s): %s', out / 'last', e)
    write_json_atomic(out / 'summary.json', summary)
    _logger.info('ensemble of %d: test top-1 %.2f (members %s)', n_members, metrics['eval_top1'],
                 ', '.join(f'{s.get("eval_top1", float("nan")):.2f}' for s in member_summaries))
    return summary
