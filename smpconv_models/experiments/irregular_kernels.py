"""MLP kernels against SMP kernels on irregularly sampled series: the same network, data and recipe.

``python -m smpconv_models.experiments.irregular_kernels [--missing-rates 0.3 0.5 0.7] [--seeds 0 1 2]
[--epochs N] [--json FILE] [--out DIR]`` trains ``smpconv_irregular_tcn`` with ``kernel='smp'`` and
``kernel='mlp'`` (Wang et al.'s kernel MLP through :class:`~smpconv_models.layers.point_conv.MLPKernel`, 2 hidden
layers of 32) through ``train.py``'s loop on ``digits-irregular`` (scikit-learn's digits as 64-step series with each
series' observations dropped at random, the Neural CDE / CKConv protocol) with the digits recipe, once per seed,
and prints a Markdown table: final-epoch test top-1 mean +- std over seeds (sample std), parameters, and the training
throughput the loop measured (series per second, median over epochs; a shared machine makes it noisy: the bench row
``irregular_tcn_train_smp_vs_mlp`` gives the interleaved ratio). ``--quick`` shrinks everything for a test.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from ._common import seed_cells, seed_row, train_run, write_rows_json

__all__ = ['run_one', 'run_grid', 'format_table', 'main']

KERNELS = ('smp', 'mlp')


def run_one(kernel: str, missing_rate: float, seed: int, out: Path, extra: list[str] | None = None,
            model_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train once through ``train.py``; ``{'top1', 'best_top1', 'params', 'series_per_s', 'seconds'}``."""
    args = ['--model', 'smpconv_irregular_tcn', '--data', 'digits-irregular', '--missing-rate', str(missing_rate),
            '--seed', str(seed), '--model-args', json.dumps({'kernel': kernel, **(model_args or {})})]
    run = train_run(args, out, extra)
    run['series_per_s'] = run.pop('items_per_s')
    return run


def run_grid(missing_rates: list[float], seeds: list[int], workdir: Path, extra: list[str] | None = None,
             model_args: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every (missing rate, kernel, seed) run, then one row per (missing rate, kernel)."""
    rows = []
    for rate in missing_rates:
        for kernel in KERNELS:
            runs = [run_one(kernel, rate, seed, workdir / f'{kernel}_m{round(100 * rate)}_s{seed}', extra, model_args)
                    for seed in seeds]
            rows.append({'missing_rate': rate, 'kernel': kernel, **seed_row(runs, seeds, 'series_per_s')})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ['| missing | kernel | test top-1 (%), mean +- std | seeds | params | train series/s |',
             '| --- | --- | --- | --- | --- | --- |']
    for r in rows:
        lines.append(f"| {round(100 * r['missing_rate'])}% | {r['kernel'].upper()} | {seed_cells(r, 'series_per_s')} |")
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m smpconv_models.experiments.irregular_kernels',
                                     description=__doc__.split('\n\n')[0])
    parser.add_argument('--missing-rates', type=float, nargs='+', default=[0.5])
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--epochs', type=int, default=None, help='training epochs (default: the digits recipe, 12)')
    parser.add_argument('--json', default=None, help='write the rows as JSON here')
    parser.add_argument('--out', default=None, help='keep the runs here (default: a temporary folder)')
    parser.add_argument('--quick', action='store_true', help='a tiny network, 1 epoch, 2 seeds (tests)')
    args = parser.parse_args(argv)
    extra = ['--epochs', str(args.epochs)] if args.epochs else []
    model_args = None
    if args.quick:
        extra, model_args = ['--epochs', '1', '--limit-train-batches', '4'], {'depth': 1, 'width': 4, 'n_points': 3}
        args.seeds = args.seeds[:2]
    with tempfile.TemporaryDirectory() as tmp:
        rows = run_grid(args.missing_rates, args.seeds, Path(args.out or tmp), extra, model_args)
    if args.json:
        write_rows_json(args.json, 'smpconv_models.experiments.irregular_kernels', argv, rows)
    sys.stdout.write(format_table(rows) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
