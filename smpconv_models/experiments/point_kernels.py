"""MLP kernels against SMP kernels on point sets: the same network (``smpconv_points``), data and recipe.

``python -m smpconv_models.experiments.point_kernels [--seeds 0 1 2] [--epochs N] [--json FILE] [--out DIR]``
trains ``smpconv_points`` with ``kernel='smp'`` (8 shared SMP points per kernel) and ``kernel='mlp'`` (Wang et
al.'s kernel MLP, 2 hidden layers of 8: the same basis size) through ``train.py``'s loop on ``digits-points``
(scikit-learn's digits as 2-d point sets, 30-60% of the pixels, jittered), once per seed, and prints a Markdown
table: final-epoch test top-1 mean +- std over seeds (sample std), parameters, and the training throughput the loop
measured (sets per second, median over epochs; noisy on a shared machine: the bench row ``points_train_smp_vs_mlp``
gives the interleaved ratio). ``--quick`` shrinks everything for a test.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from ._common import seed_cells, seed_row, train_run, write_rows_json

__all__ = ['train_once', 'compare_kernels', 'format_table', 'main']

KERNELS = ('smp', 'mlp')


def train_once(kernel: str, seed: int, out: Path, extra: list[str] | None = None,
               model_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """One ``train.py`` run; ``{'top1', 'best_top1', 'params', 'sets_per_s', 'seconds'}``."""
    args = ['--model', 'smpconv_points', '--data', 'digits-points', '--seed', str(seed),
            '--model-args', json.dumps({'kernel': kernel, **(model_args or {})})]
    run = train_run(args, out, extra)
    run['sets_per_s'] = run.pop('items_per_s')
    return run


def compare_kernels(seeds: list[int], workdir: Path, extra: list[str] | None = None,
                    model_args: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every (kernel, seed) run, then one row per kernel."""
    rows = []
    for kernel in KERNELS:
        runs = [train_once(kernel, seed, workdir / f'{kernel}_s{seed}', extra, model_args) for seed in seeds]
        rows.append({'kernel': kernel, **seed_row(runs, seeds, 'sets_per_s')})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ['| kernel | test top-1 (%), mean +- std | seeds | params | train sets/s |',
             '| --- | --- | --- | --- | --- |']
    for r in rows:
        lines.append(f"| {r['kernel'].upper()} | {seed_cells(r, 'sets_per_s')} |")
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m smpconv_models.experiments.point_kernels',
                                     description=__doc__.split('\n\n')[0])
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--epochs', type=int, default=4, help='training epochs (4 draws of each digit per epoch)')
    parser.add_argument('--json', default=None, help='write the rows as JSON here')
    parser.add_argument('--out', default=None, help='keep the runs here (default: a temporary folder)')
    parser.add_argument('--quick', action='store_true', help='a tiny network, 1 epoch of 4 batches, 2 seeds (tests)')
    args = parser.parse_args(argv)
    extra = ['--epochs', str(args.epochs)]
    model_args = None
    if args.quick:
        extra = ['--epochs', '1', '--limit-train-batches', '4']
        model_args = {'stem_width': 4, 'widths': [8], 'depths': [1], 'stage_points': [8], 'radii': [0.8]}
        args.seeds = args.seeds[:2]
    with tempfile.TemporaryDirectory() as tmp:
        rows = compare_kernels(args.seeds, Path(args.out or tmp), extra, model_args)
    if args.json:
        write_rows_json(args.json, 'smpconv_models.experiments.point_kernels', argv, rows)
    sys.stdout.write(format_table(rows) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
