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
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = ['run_one', 'run_grid', 'format_table', 'main']

KERNELS = ('smp', 'mlp')


def run_one(kernel: str, missing_rate: float, seed: int, out: Path, extra: list[str] | None = None,
            model_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train once through ``train.py``; ``{'top1', 'best_top1', 'params', 'series_per_s', 'seconds'}``."""
    from ..train import main as train_main

    args = ['--model', 'smpconv_irregular_tcn', '--data', 'digits-irregular', '--missing-rate', str(missing_rate),
            '--seed', str(seed), '--model-args', json.dumps({'kernel': kernel, **(model_args or {})}),
            '--output-dir', str(out), '--plot', 'false', *(extra or [])]
    code = train_main(args)
    if code != 0:
        raise RuntimeError(f'train.py {" ".join(args)} exited with {code}')
    summary = json.loads((out / 'summary.json').read_text())
    epochs = [json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines()]
    return {'top1': summary['eval_top1'], 'best_top1': summary['best_top1'], 'params': summary['params'],
            'series_per_s': statistics.median(e['images_per_s'] for e in epochs), 'seconds': summary['seconds']}


def run_grid(missing_rates: list[float], seeds: list[int], workdir: Path, extra: list[str] | None = None,
             model_args: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every (missing rate, kernel, seed) run, then one row per (missing rate, kernel)."""
    rows = []
    for rate in missing_rates:
        for kernel in KERNELS:
            runs = [run_one(kernel, rate, seed, workdir / f'{kernel}_m{round(100 * rate)}_s{seed}', extra, model_args)
                    for seed in seeds]
            top1 = [r['top1'] for r in runs]
            rows.append({'missing_rate': rate, 'kernel': kernel, 'seeds': seeds, 'top1': top1,
                         'top1_mean': statistics.mean(top1), 'top1_std': statistics.stdev(top1) if len(top1) > 1
                         else 0.0, 'best_top1': [r['best_top1'] for r in runs], 'params': runs[0]['params'],
                         'series_per_s': statistics.median(r['series_per_s'] for r in runs)})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ['| missing | kernel | test top-1 (%), mean +- std | seeds | params | train series/s |',
             '| --- | --- | --- | --- | --- | --- |']
    for r in rows:
        lines.append(f"| {round(100 * r['missing_rate'])}% | {r['kernel'].upper()} | {r['top1_mean']:.2f} +- "
                     f"{r['top1_std']:.2f} | {len(r['seeds'])} | {r['params']:,} | {r['series_per_s']:.0f} |")
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
        from .._io import write_json_atomic

        write_json_atomic(Path(args.json), {'command': ' '.join(['python -m smpconv_models.experiments.'
                                                                  'irregular_kernels', *(argv or sys.argv[1:])]),
                                            'rows': rows})
    sys.stdout.write(format_table(rows) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
