"""Ablations of the SMP points (Kim & Park, CVPR 2023, Tables 6-9) on the embedded scikit-learn digits.

Two small models are trained in-process for every setting and seed:

* ``image``: the CIFAR-style ResNet (``smpconv_cifar``: stem and one residual block, 16 channels) on the digits
  upsampled to 12 x 12, with 13 x 13 SMP kernels that cover the whole image as the 33 x 33 ones do on CIFAR-10;
* ``sequence``: the sequence TCN (``smpconv_tcn_mnist``, narrow) on the digits as 64-step sequences.

Settings (one change from the base at a time): learnable positions and radii / radius only / positions only /
neither (Tables 6-7), the initial position spread ``coord_std`` and radius (Table 8), ``n_points`` in
(4, 8, 16, 32) (Table 9). Every run uses the same data split, optimizer (Adam, cosine, the official radius
learning-rate factor 0.1, radii clamped after each step) and step budget.

    python -m smpconv_models.experiments.ablate --out DIR [--quick]

writes ``DIR/ablate.json`` (one row per model and setting: top-1 mean and std over seeds, parameters, seconds),
``DIR/ablate.md`` (the table) and ``DIR/kernels_{image,sequence}.png`` (the trained base models' points and kernels,
first seed, drawn by :func:`smpconv_models.viz.plot_smp_kernels`).
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .._io import write_json_atomic, write_text_atomic
from ..layers import clamp_radii_, smp_param_groups
from ..train.data import build_data
from ..viz import plot_smp_kernels
from ._common import mean_std, torch_threads

__all__ = ['MODELS', 'settings', 'AblateConfig', 'load_digits', 'train_eval', 'run_ablation', 'main']

_logger = logging.getLogger(__name__)

# model -> (registered name, architecture kwargs of the base setting, data kind, image size)
MODELS: dict[str, tuple[str, dict[str, Any], str, int | None]] = {
    # radius 0.33 = two taps of the 13-point grid, as the official 0.12 is two taps of the 33-point CIFAR grid
    'image': ('smpconv_cifar', dict(in_chans=1, num_classes=10, stem_width=16, widths=(16,), kernel_size=13,
                                    n_points=16, radius=0.33, coord_std=0.05, drop_rate=0.0), 'image', 12),
    # radius 0.03: train.py's digits setting (two taps of the 64-step grid)
    'sequence': ('smpconv_tcn_mnist', dict(in_chans=1, num_classes=10, seq_len=64, depth=2, width=16, n_points=16,
                                           radius=0.03, coord_std=0.1), 'sequence', None),
}

# sweep values per model (Table 8): the initial spread and radius around the base
_STD_SWEEP = {'image': (0.2, 0.5), 'sequence': (0.3, 1.0)}
_RADIUS_SWEEP = {'image': (0.17, 0.67), 'sequence': (0.015, 0.1)}


def settings(model: str) -> list[tuple[str, str, dict[str, Any]]]:
    """``(group, label, kwargs overriding the base)`` for every ablation setting of ``model``."""
    rows: list[tuple[str, str, dict[str, Any]]] = [
        ('learnable', 'positions + radii (base)', {}),
        ('learnable', 'radii only', dict(learn_positions=False)),
        ('learnable', 'positions only', dict(learn_radius=False)),
        ('learnable', 'neither', dict(learn_positions=False, learn_radius=False)),
    ]
    rows += [('n_points', f'n_points={n}', dict(n_points=n)) for n in (4, 8, 32)]
    rows += [('coord_std', f'coord_std={s}', dict(coord_std=s)) for s in _STD_SWEEP[model]]
    rows += [('radius', f'radius={r}', dict(radius=r)) for r in _RADIUS_SWEEP[model]]
    return rows


@dataclass
class AblateConfig:
    epochs: int = 5
    batch_size: int = 64
    lr: float = 3e-3  # train.py's digits learning rate
    weight_decay: float = 1e-5  # the official CIFAR / sequence recipe (Adam's coupled L2, not on points)
    seeds: tuple[int, ...] = (0, 1, 2)
    limit_train_batches: int | None = None
    models: tuple[str, ...] = ('image', 'sequence')


def load_digits(kind: str, img_size: int | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_test, y_test)`` of the embedded digits (train.py's fixed split)."""
    bundle = build_data('digits', kind, img_size=img_size)

    def stack(ds) -> tuple[Tensor, Tensor]:
        xs, ys = zip(*(ds[i] for i in range(len(ds))))
        return torch.stack(xs), torch.as_tensor(ys)

    return (*stack(bundle.train), *stack(bundle.test))


def train_eval(model: nn.Module, data: tuple[Tensor, Tensor, Tensor, Tensor], cfg: AblateConfig, seed: int
               ) -> float:
    """Train ``model`` (Adam, cosine with one warmup epoch, SMP radius group at lr x 0.1, radii clamped after each
    step) and return its test top-1 in percent."""
    x_train, y_train, x_test, y_test = data
    gen = torch.Generator().manual_seed(seed)
    n_batches = len(x_train) // cfg.batch_size
    if cfg.limit_train_batches is not None:
        n_batches = min(n_batches, cfg.limit_train_batches)
    total = max(1, n_batches * cfg.epochs)
    warmup = min(n_batches, total)
    groups = smp_param_groups(model, weight_decay=cfg.weight_decay, lr=cfg.lr)
    opt = torch.optim.Adam(groups, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, 1.0 / warmup, 1.0, warmup),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, total - warmup), eta_min=cfg.lr * 0.01)],
        milestones=[warmup])
    for _ in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        for b in range(n_batches):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            clamp_radii_(model)
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in zip(x_test.split(256), y_test.split(256)))
    return 100.0 * correct / len(x_test)


def run_ablation(cfg: AblateConfig, out: str | Path) -> dict[str, Any]:
    """Every model, setting and seed; writes ``ablate.json`` and ``ablate.md`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unknown = [m for m in cfg.models if m not in MODELS]
    if unknown:
        raise ValueError(f'unknown model(s) {unknown}; models: {", ".join(MODELS)}')
    started = time.time()
    rows = []
    for model_key in cfg.models:
        arch, base, kind, img_size = MODELS[model_key]
        data = load_digits(kind, img_size)
        for group, label, overrides in settings(model_key):
            kwargs = dict(base, **overrides)
            accs, seconds, cpu_seconds = [], [], []
            for seed in cfg.seeds:
                torch.manual_seed(seed)
                model = timm.create_model(arch, **kwargs)
                t0, c0 = time.time(), time.process_time()
                accs.append(train_eval(model, data, cfg, seed))
                seconds.append(time.time() - t0)
                cpu_seconds.append(time.process_time() - c0)
                if not overrides and seed == cfg.seeds[0]:  # the trained base model's points and kernels
                    plot_smp_kernels(model, out / f'kernels_{model_key}.png', max_layers=3)
            mean, std = mean_std(accs)
            _logger.info('%s %s: top-1 %.2f +- %.2f (%.1f s / run)', model_key, label, mean, std,
                         statistics.fmean(seconds))
            rows.append({
                'model': model_key, 'arch': arch, 'group': group, 'setting': label, 'kwargs': overrides,
                'top1_mean': mean, 'top1_std': std, 'top1': accs,
                'params': sum(p.numel() for p in model.parameters()),
                'trainable_params': sum(p.numel() for p in model.parameters() if p.requires_grad),
                'seconds': statistics.fmean(seconds), 'cpu_seconds': statistics.fmean(cpu_seconds),
            })
            write_json_atomic(out / 'ablate.json', _summary(rows, cfg, started, done=False))
    summary = _summary(rows, cfg, started, done=True)
    write_json_atomic(out / 'ablate.json', summary)
    write_text_atomic(out / 'ablate.md', ablate_table(summary))
    return summary


def _summary(rows: list[dict[str, Any]], cfg: AblateConfig, started: float, done: bool) -> dict[str, Any]:
    return {
        'rows': rows,
        'base': {k: {'arch': v[0], 'kwargs': {a: list(b) if isinstance(b, tuple) else b for a, b in v[1].items()},
                     'data': f'digits ({v[2]}, ' + (f'{v[3]}x{v[3]})' if v[3] else '64 steps)')}
                 for k, v in MODELS.items() if k in cfg.models},
        'config': {**asdict(cfg), 'seeds': list(cfg.seeds), 'models': list(cfg.models)},
        'seconds': time.time() - started,
        'complete': done,  # rows are written after every setting; False while the run is still going
    }


def ablate_table(summary: dict[str, Any]) -> str:
    """The markdown table of ``ablate.json``."""
    cfg = summary['config']
    lines = ['| model | group | setting | top-1 % (mean ± std) | params (trainable) | s / run (CPU s) |',
             '|---|---|---|---|---|---|']
    for r in summary['rows']:
        lines.append(f'| {r["model"]} | {r["group"]} | {r["setting"]} | {r["top1_mean"]:.2f} ± {r["top1_std"]:.2f} | '
                     f'{r["params"]:,} ({r["trainable_params"]:,}) | {r["seconds"]:.1f} ({r["cpu_seconds"]:.1f}) |')
    lines.append('')
    lines.append(f'Digits test split (360 images), {len(cfg["seeds"])} seed(s), {cfg["epochs"]} epochs of batch '
                 f'{cfg["batch_size"]}' + (f' (at most {cfg["limit_train_batches"]} batches each)'
                                          if cfg['limit_train_batches'] else '')
                 + f', Adam lr {cfg["lr"]}; total {summary["seconds"]:.0f} s.')
    return '\n'.join(lines) + '\n'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m smpconv_models.experiments.ablate', description=__doc__.split('\n\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--out', required=True, help='output folder (ablate.json, ablate.md)')
    parser.add_argument('--quick', action='store_true',
                        help='one seed, one epoch of 3 batches per setting (a smoke run, under a minute)')
    defaults = AblateConfig()
    parser.add_argument('--epochs', type=int, default=None, help=f'epochs per run (default {defaults.epochs})')
    parser.add_argument('--seeds', type=int, default=None, help=f'number of seeds (default {len(defaults.seeds)})')
    parser.add_argument('--threads', type=int, default=1,
                        help='torch CPU threads (the operations are small: one thread wastes nothing and is immune '
                             'to oversubscription on a shared machine)')
    parser.add_argument('--models', nargs='+', default=list(defaults.models), choices=list(MODELS),
                        help='which models to ablate')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    epochs = args.epochs or (1 if args.quick else defaults.epochs)
    n_seeds = args.seeds or (1 if args.quick else len(defaults.seeds))
    if epochs < 1 or n_seeds < 1 or args.threads < 1:
        parser.error('--epochs, --seeds and --threads must be positive')
    cfg = AblateConfig(epochs=epochs, seeds=tuple(range(n_seeds)), models=tuple(args.models),
                       limit_train_batches=3 if args.quick else None)
    with torch_threads(args.threads):
        summary = run_ablation(cfg, args.out)
    sys.stdout.write(ablate_table(summary) + f'wrote {Path(args.out) / "ablate.json"} and ablate.md\n')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
