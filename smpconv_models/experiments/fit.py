"""Function fitting with self-moving vs fixed points (Kim & Park, CVPR 2023, Sec. 4.1 and Fig. 3).

An SMP function (Eq. 1) of 204 points is fitted to 2-D targets sampled on a 51 x 51 grid over ``[-1, 1]^2``, once
with moving points (positions trained) and once with fixed points (positions frozen at the same initialisation;
radii and weights are trained in both), with the same optimizer, step budget and seeds. A MAGNet MLP kernel
(FlexConv's generator, :class:`~smpconv_models.layers.MAGNetKernel`, also the benchmark's peer) with a comparable
parameter count is the third column.

    python -m smpconv_models.experiments.fit --out DIR [--quick]

writes ``DIR/fit.json`` (per target: mean and std over seeds of the final MSE of each method), ``DIR/fit.md``
(the table) and ``DIR/fit.png`` (target, the three fits, and the moved points as L1 balls over their start).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .._io import write_json_atomic, write_text_atomic
from ..layers import MAGNetKernel, SMPConv, clamp_radii_, smp_param_groups
from ..viz import add_l1_balls, pyplot, save_figure
from ._common import mean_std, torch_threads

__all__ = ['TARGETS', 'FitConfig', 'target_grid', 'make_smp', 'make_mlp', 'fit_one', 'run_fit', 'main']

METHODS = ('moving', 'fixed', 'mlp')


def _product(a: float, b: float) -> Callable[[Tensor, Tensor], Tensor]:
    return lambda x, y: torch.sin(2 * math.pi * a * x) * torch.cos(2 * math.pi * b * y)


# name -> (formula as documented, function of (x, y) on [-1, 1]^2)
TARGETS: dict[str, tuple[str, Callable[[Tensor, Tensor], Tensor]]] = {
    'sin_cos': ('sin(2*pi*x) * cos(2*pi*0.75*y)', _product(1.0, 0.75)),
    'two_freq': ('0.6*sin(2*pi*0.5*x)*cos(2*pi*0.5*y) + 0.4*sin(2*pi*2*x)*cos(2*pi*1.5*y)',
                 lambda x, y: 0.6 * _product(0.5, 0.5)(x, y) + 0.4 * _product(2.0, 1.5)(x, y)),
}


@dataclass
class FitConfig:
    """Settings shared by every method (defaults: the paper's 204 points on a 51 x 51 grid)."""

    n_points: int = 204
    grid: int = 51
    steps: int = 2000
    lr: float = 1e-2
    radius: float = 0.2  # initial radius: 204 L1 balls of radius 0.2 cover [-1, 1]^2 about twice on average
    radius_lr_scale: float = 0.1  # the official SMP radius learning-rate factor
    normalize: bool = True  # Eq. 1's 1 / |N(x)| average
    mlp_hidden: int | None = None  # None: the hidden width whose parameter count is closest to the SMP one
    seeds: tuple[int, ...] = (0, 1, 2)
    targets: tuple[str, ...] = field(default_factory=lambda: tuple(TARGETS))


def target_grid(name: str, coords: Tensor, grid: int) -> Tensor:
    """Target ``name`` at the query coordinates ``coords`` [Q, 2] (``kernel_coords`` order), as a [grid, grid]."""
    if name not in TARGETS:
        raise ValueError(f'unknown target {name!r}; targets: {", ".join(TARGETS)}')
    return TARGETS[name][1](coords[:, 0], coords[:, 1]).reshape(grid, grid)


def make_smp(cfg: FitConfig, seed: int, moving: bool) -> SMPConv:
    """An SMP function on the grid: ``cfg.n_points`` points at uniform random positions (the same for a ``seed``
    whether moving or not), radius ``cfg.radius``, small random weights; ``moving=False`` freezes the positions."""
    layer = SMPConv(1, 1, cfg.grid, cfg.n_points, cfg.radius, coord_std=1.0, bias=False, learn_positions=moving)
    layer.normalize = cfg.normalize
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight_coord.copy_(torch.rand(layer.weight_coord.shape, generator=gen) * 2 - 1)
        layer.weights.copy_(torch.randn(layer.weights.shape, generator=gen) * 0.02)
    return layer


def _mlp_params(hidden: int) -> int:
    return sum(p.numel() for p in MAGNetKernel(2, 1, hidden=hidden).parameters())


def mlp_hidden_for(n_params: int) -> int:
    """The MAGNet hidden width (3 layers) whose parameter count is closest to ``n_params``."""
    return min(range(2, 129), key=lambda h: abs(_mlp_params(h) - n_params))


def make_mlp(cfg: FitConfig, seed: int, hidden: int) -> MAGNetKernel:
    torch.manual_seed(seed)
    return MAGNetKernel(2, 1, hidden=hidden)


def fit_one(model: nn.Module, predict: Callable[[], Tensor], target: Tensor, cfg: FitConfig) -> tuple[float, Tensor]:
    """Adam on the grid MSE for ``cfg.steps`` steps with a cosine learning rate (radius groups at
    ``radius_lr_scale``, SMP radii clamped after each step). Returns the final MSE and prediction."""
    groups = smp_param_groups(model, weight_decay=0.0, radius_lr_scale=cfg.radius_lr_scale, lr=cfg.lr)
    opt = torch.optim.Adam(groups, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    model.train()
    for _ in range(cfg.steps):
        loss = F.mse_loss(predict(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        clamp_radii_(model)
    with torch.no_grad():
        pred = predict()
        return F.mse_loss(pred, target).item(), pred


def run_fit(cfg: FitConfig, out: str | Path) -> dict[str, Any]:
    """Fit every target with every method and seed; write ``fit.json``, ``fit.md`` and ``fit.png`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in cfg.targets:
        if name not in TARGETS:
            raise ValueError(f'unknown target {name!r}; targets: {", ".join(TARGETS)}')
    started, cpu_started = time.time(), time.process_time()
    probe = make_smp(cfg, 0, True)
    coords = probe.kernel_coord
    smp_params = sum(p.numel() for p in probe.parameters())
    hidden = cfg.mlp_hidden or mlp_hidden_for(smp_params)
    results: dict[str, Any] = {}
    pictures: dict[str, dict[str, Any]] = {}
    for name in cfg.targets:
        target = target_grid(name, coords, cfg.grid)
        per_seed: dict[str, list[float]] = {m: [] for m in METHODS}
        for seed in cfg.seeds:
            fits = {}
            for method in ('moving', 'fixed'):
                layer = make_smp(cfg, seed, method == 'moving')
                start = (layer.weight_coord[0].detach().clone(), layer.radius[0].detach().reshape(-1).clone())
                mse, pred = fit_one(layer, lambda layer=layer: layer.generate_kernel()[0, 0], target, cfg)
                per_seed[method].append(mse)
                fits[method] = dict(pred=pred, start=start, end=(layer.weight_coord[0].detach().clone(),
                                                                 layer.radius[0].detach().reshape(-1).clone()))
            mlp = make_mlp(cfg, seed, hidden)
            mse, pred = fit_one(mlp, lambda mlp=mlp: mlp(coords).reshape(cfg.grid, cfg.grid), target, cfg)
            per_seed['mlp'].append(mse)
            fits['mlp'] = dict(pred=pred)
            if seed == cfg.seeds[0]:
                pictures[name] = dict(target=target, **fits)
        entry: dict[str, Any] = {'formula': TARGETS[name][0]}
        for method in METHODS:
            entry[f'{method}_mse'], entry[f'{method}_mse_std'] = mean_std(per_seed[method])
        entry['per_seed'] = per_seed
        results[name] = entry
    summary = {
        'targets': results,
        'params': {'smp': smp_params, 'mlp': _mlp_params(hidden), 'mlp_hidden': hidden},
        'config': {**asdict(cfg), 'seeds': list(cfg.seeds), 'targets': list(cfg.targets)},
        'seconds': time.time() - started,
        'cpu_seconds': time.process_time() - cpu_started,
    }
    write_json_atomic(out / 'fit.json', summary)
    write_text_atomic(out / 'fit.md', fit_table(summary))
    _plot(pictures, results, out / 'fit.png')
    return summary


def fit_table(summary: dict[str, Any]) -> str:
    """The markdown table of ``fit.json``: final MSE, mean +- std over seeds."""
    p = summary['params']
    seeds = len(summary['config']['seeds'])
    lines = [f'| target | moving points ({p["smp"]} params) | fixed points ({p["smp"]} params) | '
             f'MAGNet MLP ({p["mlp"]} params) |', '|---|---|---|---|']
    for name, r in summary['targets'].items():
        cells = [f'{r[f"{m}_mse"]:.2e} ± {r[f"{m}_mse_std"]:.1e}' for m in METHODS]
        lines.append(f'| `{name}`: {r["formula"]} | ' + ' | '.join(cells) + ' |')
    cfg = summary['config']
    lines.append('')
    lines.append(f'Final MSE on the {cfg["grid"]}x{cfg["grid"]} grid, mean ± std over {seeds} seeds; '
                 f'{cfg["n_points"]} points, Adam lr {cfg["lr"]} (cosine), {cfg["steps"]} steps.')
    return '\n'.join(lines) + '\n'


def _plot(pictures: dict[str, dict[str, Any]], results: dict[str, Any], path: Path) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(len(pictures), 5, figsize=(16, 3.4 * len(pictures)), squeeze=False)
    for row, (name, pic) in zip(axes, pictures.items()):
        lim = pic['target'].abs().max().item()
        shown = [('target', pic['target'])] + [(m, pic[m]['pred']) for m in METHODS]
        for ax, (label, img) in zip(row, shown):
            ax.imshow(img.numpy(), cmap='RdBu_r', vmin=-lim, vmax=lim, extent=(-1, 1, -1, 1))
            title = name if label == 'target' else f'{label}: MSE {results[name][f"{label}_mse"]:.1e}'
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        ax = row[4]
        start, end = pic['moving']['start'], pic['moving']['end']
        ax.scatter(start[0][:, 0].numpy(), start[0][:, 1].numpy(), s=4, c='0.6', label='start (= fixed points)')
        add_l1_balls(ax, end[0], end[1], color='C3', alpha=0.04)
        ax.scatter(end[0][:, 0].numpy(), end[0][:, 1].numpy(), s=4, c='C3', label='moved')
        ax.set_xlim(-1.1, 1.1)
        ax.set_ylim(-1.1, 1.1)
        ax.set_aspect('equal')
        ax.legend(fontsize=7, loc='upper right')
        ax.set_title('moving points: positions, L1 radii', fontsize=9)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m smpconv_models.experiments.fit', description=__doc__.split('\n\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--out', required=True, help='output folder (fit.json, fit.md, fit.png)')
    parser.add_argument('--quick', action='store_true', help='150 steps, one seed (a smoke run, under a minute)')
    defaults = FitConfig()
    parser.add_argument('--steps', type=int, default=None, help=f'optimizer steps (default {defaults.steps})')
    parser.add_argument('--seeds', type=int, default=None, help=f'number of seeds (default {len(defaults.seeds)})')
    parser.add_argument('--n-points', type=int, default=defaults.n_points, help='SMP points')
    parser.add_argument('--lr', type=float, default=defaults.lr, help='Adam learning rate')
    parser.add_argument('--threads', type=int, default=1,
                        help='torch CPU threads (the operations are small: one thread wastes nothing and is immune '
                             'to oversubscription on a shared machine)')
    parser.add_argument('--targets', nargs='+', default=list(TARGETS), choices=list(TARGETS), help='targets')
    args = parser.parse_args(argv)
    steps = args.steps or (150 if args.quick else defaults.steps)
    n_seeds = args.seeds or (1 if args.quick else len(defaults.seeds))
    if steps < 1 or n_seeds < 1 or args.threads < 1:
        parser.error('--steps, --seeds and --threads must be positive')
    cfg = FitConfig(n_points=args.n_points, steps=steps, lr=args.lr, seeds=tuple(range(n_seeds)),
                    targets=tuple(args.targets))
    with torch_threads(args.threads):
        summary = run_fit(cfg, args.out)
    sys.stdout.write(fit_table(summary) + f'wrote {Path(args.out) / "fit.json"}, fit.md, fit.png in '
                     f'{summary["seconds"]:.0f} s\n')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
