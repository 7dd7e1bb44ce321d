"""MLP kernels against SMP kernels off the grid: the same network, data and recipe, with one kernel or the other.

``python -m smpconv_models.experiments.kernels {irregular,points} [--seeds 0 1 2] [--epochs N] [--json FILE]
[--out DIR] [--quick]`` (``irregular`` also ``[--missing-rates 0.3 0.5 0.7]``) trains the setting's model with
``kernel='smp'`` and ``kernel='mlp'`` (Wang et al.'s kernel MLP, :class:`~smpconv_models.layers.point_conv.MLPKernel`)
through ``train.py``'s loop, once per seed, and prints a Markdown table: final-epoch test top-1 mean +- std over seeds
(sample std), parameters, and the training throughput the loop measured (median over epochs; a shared machine makes
it noisy: the bench rows give the interleaved ratios). ``--quick`` shrinks everything for a test. The settings, also
their own commands with the same options and JSON:

* ``irregular`` (``python -m smpconv_models.experiments.irregular_kernels``): ``smpconv_irregular_tcn`` (MLP: 2
  hidden layers of 32) on ``digits-irregular`` (scikit-learn's digits as 64-step series with each series'
  observations dropped at random, the Neural CDE / CKConv protocol) at each missing rate, with the digits recipe;
  throughput in series / s, bench row ``irregular_tcn_train_smp_vs_mlp``;
* ``points`` (``python -m smpconv_models.experiments.point_kernels``): ``smpconv_points`` (8 shared SMP points per
  kernel; MLP: 2 hidden layers of 8, the same basis size) on ``digits-points`` (the digits as 2-d point sets, 30-60%
  of the pixels, jittered), 4 epochs; throughput in sets / s, bench row ``points_train_smp_vs_mlp``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ._common import seed_cells, seed_row, train_run, write_rows_json

__all__ = ['KERNELS', 'Setting', 'SETTINGS', 'train_once', 'compare_kernels', 'format_table', 'main']

KERNELS = ('smp', 'mlp')


@dataclass(frozen=True)
class Setting:
    """One comparison: the model and data for ``train.py``, the throughput's unit, the default epochs (None: the
    recipe's), whether it runs over missing rates, the tiny network of ``--quick`` and its command's module."""

    model: str
    data: str
    unit: str
    epochs: int | None
    missing_rates: bool
    quick_model_args: Mapping[str, Any]
    module: str

    @property
    def rate_key(self) -> str:
        """The throughput's key in the rows (``series_per_s``, ``sets_per_s``)."""
        return f'{self.unit}_per_s'


SETTINGS: Mapping[str, Setting] = MappingProxyType({
    'irregular': Setting('smpconv_irregular_tcn', 'digits-irregular', 'series', None, True,
                         MappingProxyType({'depth': 1, 'width': 4, 'n_points': 3}),
                         'smpconv_models.experiments.irregular_kernels'),
    'points': Setting('smpconv_points', 'digits-points', 'sets', 4, False,
                      MappingProxyType({'stem_width': 4, 'widths': [8], 'depths': [1], 'stage_points': [8],
                                        'radii': [0.8]}),
                      'smpconv_models.experiments.point_kernels'),
})


def train_once(setting: Setting, kernel: str, seed: int, out: Path, extra: list[str] | None = None,
               model_args: dict[str, Any] | None = None, missing_rate: float | None = None) -> dict[str, Any]:
    """One ``train.py`` run; ``{'top1', 'best_top1', 'params', setting.rate_key, 'seconds'}``."""
    args = ['--model', setting.model, '--data', setting.data]
    if missing_rate is not None:
        args += ['--missing-rate', str(missing_rate)]
    args += ['--seed', str(seed), '--model-args', json.dumps({'kernel': kernel, **(model_args or {})})]
    run = train_run(args, out, extra)
    run[setting.rate_key] = run.pop('items_per_s')
    return run


def compare_kernels(setting: Setting, seeds: list[int], workdir: Path, extra: list[str] | None = None,
                    model_args: dict[str, Any] | None = None,
                    missing_rates: list[float] | None = None) -> list[dict[str, Any]]:
    """Every (missing rate, kernel, seed) run, then one row per (missing rate, kernel); settings without missing
    rates have one row per kernel."""
    rows = []
    for rate in (missing_rates if setting.missing_rates else [None]):
        for kernel in KERNELS:
            tag = kernel if rate is None else f'{kernel}_m{round(100 * rate)}'
            runs = [train_once(setting, kernel, seed, workdir / f'{tag}_s{seed}', extra, model_args, rate)
                    for seed in seeds]
            rows.append({**({} if rate is None else {'missing_rate': rate}), 'kernel': kernel,
                         **seed_row(runs, seeds, setting.rate_key)})
    return rows


def format_table(setting: Setting, rows: list[dict[str, Any]]) -> str:
    missing = '| missing ' if setting.missing_rates else ''
    lines = [f'{missing}| kernel | test top-1 (%), mean +- std | seeds | params | train {setting.unit}/s |',
             f'{"| --- " if missing else ""}| --- | --- | --- | --- | --- |']
    for r in rows:
        rate = f"| {round(100 * r['missing_rate'])}% " if setting.missing_rates else ''
        lines.append(f"{rate}| {r['kernel'].upper()} | {seed_cells(r, setting.rate_key)} |")
    return '\n'.join(lines)


def _add_options(parser: argparse.ArgumentParser, setting: Setting) -> None:
    if setting.missing_rates:
        parser.add_argument('--missing-rates', type=float, nargs='+', default=[0.5])
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--epochs', type=int, default=setting.epochs,
                        help='training epochs (default: the digits recipe, 12)' if setting.epochs is None
                        else f'training epochs ({setting.epochs} draws of each digit per epoch)')
    parser.add_argument('--json', default=None, help='write the rows as JSON here')
    parser.add_argument('--out', default=None, help='keep the runs here (default: a temporary folder)')
    parser.add_argument('--quick', action='store_true', help='a tiny network, 1 epoch of 4 batches, 2 seeds (tests)')


def main(argv: list[str] | None = None, setting: str | None = None) -> int:
    """``python -m smpconv_models.experiments.kernels SETTING [options]``, or with ``setting`` given the options of
    that setting's own command."""
    description = __doc__.split('\n\n')[0]
    if setting is None:
        parser = argparse.ArgumentParser(prog='python -m smpconv_models.experiments.kernels', description=description)
        settings = parser.add_subparsers(dest='setting', required=True)
        for name, choice in SETTINGS.items():
            _add_options(settings.add_parser(name, description=description), choice)
    else:
        parser = argparse.ArgumentParser(prog=f'python -m {SETTINGS[setting].module}', description=description)
        _add_options(parser, SETTINGS[setting])
    args = parser.parse_args(argv)
    chosen = SETTINGS[setting or args.setting]
    extra = ['--epochs', str(args.epochs)] if args.epochs else []
    model_args = None
    if args.quick:
        extra, model_args = ['--epochs', '1', '--limit-train-batches', '4'], dict(chosen.quick_model_args)
        args.seeds = args.seeds[:2]
    with tempfile.TemporaryDirectory() as tmp:
        rows = compare_kernels(chosen, args.seeds, Path(args.out or tmp), extra, model_args,
                               getattr(args, 'missing_rates', None))
    if args.json:
        write_rows_json(args.json, chosen.module if setting else 'smpconv_models.experiments.kernels', argv, rows)
    sys.stdout.write(format_table(chosen, rows) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
