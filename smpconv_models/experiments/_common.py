"""What the experiment commands share: ``train.py`` runs over seeds and their summary, mean +- std, thread limits."""
from __future__ import annotations

import contextlib
import json
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._io import write_json_atomic
from ..train import main as train_main

__all__ = ['mean_std', 'train_run', 'seed_row', 'seed_cells', 'write_rows_json', 'torch_threads']


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def train_run(args: list[str], out: Path, extra: list[str] | None = None) -> dict[str, Any]:
    """One ``train.py`` run with ``args`` (then ``extra``) writing to ``out``: ``{'top1', 'best_top1', 'params',
    'items_per_s', 'seconds'}`` (final-epoch and best test top-1, parameters, the loop's throughput as the median
    over epochs)."""
    args = [*args, '--output-dir', str(out), '--plot', 'false', *(extra or [])]
    code = train_main(args)
    if code != 0:
        raise RuntimeError(f'train.py {" ".join(args)} exited with {code}')
    summary = json.loads((out / 'summary.json').read_text())
    epochs = [json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines()]
    return {'top1': summary['eval_top1'], 'best_top1': summary['best_top1'], 'params': summary['params'],
            'items_per_s': statistics.median(e['images_per_s'] for e in epochs), 'seconds': summary['seconds']}


def seed_row(runs: list[dict[str, Any]], seeds: list[int], rate_key: str) -> dict[str, Any]:
    """One table row from the runs of every seed: test top-1 per seed, its mean +- sample std, parameters and the
    median throughput over seeds (``runs[i][rate_key]``, stored under ``rate_key``)."""
    top1 = [r['top1'] for r in runs]
    top1_mean, top1_std = mean_std(top1)
    return {'seeds': seeds, 'top1': top1, 'top1_mean': top1_mean, 'top1_std': top1_std,
            'best_top1': [r['best_top1'] for r in runs], 'params': runs[0]['params'],
            rate_key: statistics.median(r[rate_key] for r in runs)}


def seed_cells(row: dict[str, Any], rate_key: str) -> str:
    """The Markdown cells of a :func:`seed_row`: ``top-1 mean +- std | seeds | params | throughput``."""
    return (f"{row['top1_mean']:.2f} +- {row['top1_std']:.2f} | {len(row['seeds'])} | {row['params']:,} | "
            f"{row[rate_key]:.0f}")


def write_rows_json(path: str | Path, module: str, argv: list[str] | None, rows: list[dict[str, Any]]) -> None:
    """Write ``{'command', 'rows'}`` atomically; ``command`` is ``python -m <module>`` with the arguments given."""
    command = ' '.join([f'python -m {module}', *(argv or sys.argv[1:])])
    write_json_atomic(Path(path), {'command': command, 'rows': rows})


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)``, restoring the previous count afterwards."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
