"""Running the rows (each in a fresh process, with its peak memory) and reporting them: a Markdown table, JSON, a
plot of the ratios against their targets."""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import platform
from pathlib import Path
from typing import Any

import torch

from ..viz import pyplot, save_figure
from .memory import own_peak_rss_mb
from .rows import ROWS, TARGETS
from .timing import matmul_gflops

__all__ = ['run_bench', 'format_table', 'plot_ratios']

_logger = logging.getLogger(__name__)


def _child(name: str, quick: bool, queue) -> None:
    try:
        result = ROWS[name].run(quick)
        result['peak_rss_mb'] = own_peak_rss_mb()
        queue.put(result)
    except Exception as e:  # reported as the row's error
        queue.put({'error': f'{type(e).__name__}: {e}'})


def run_bench(rows: list[str] | None = None, quick: bool = False) -> dict[str, Any]:
    """Run the rows (each in a fresh process) and return ``{'machine': ..., 'rows': [...]}``."""
    names = rows or list(ROWS)
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise ValueError(f'unknown rows {unknown}; available: {", ".join(ROWS)}')
    ctx = mp.get_context('spawn')
    results = []
    for name in names:
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(name, quick, queue))
        proc.start()
        result = queue.get()
        proc.join()
        result = {'name': name, **result}
        if 'ours_time' in result:
            result['ratio'] = result['peer_time'] / result['ours_time']
            result['target'] = TARGETS.get(name)  # None: a row with a peer but no ratio target
            if result.get('ours_gmacs'):
                result['ours_gmacs_per_s'] = result['ours_gmacs'] * result['batch'] / result['ours_time']
            if result.get('peer_gmacs'):
                result['peer_gmacs_per_s'] = result['peer_gmacs'] * result['batch'] / result['peer_time']
        results.append(result)
        _logger.info('%s: %s', name, {k: v for k, v in result.items() if k != 'name'})
    machine = {
        'platform': platform.platform(), 'processor': platform.processor() or platform.machine(),
        'cpus': os.cpu_count(), 'torch': torch.__version__, 'threads': torch.get_num_threads(),
        'matmul_fp32_gflops': matmul_gflops(),
    }
    return {'machine': machine, 'quick': quick, 'rows': results}


def format_table(report: dict[str, Any]) -> str:
    lines = [f"machine: {report['machine']['processor']}, {report['machine']['cpus']} CPUs, torch "
             f"{report['machine']['torch']}, fp32 matmul {report['machine']['matmul_fp32_gflops']:.1f} GFLOP/s", '',
             '| row | ours (s) | peer (s) | ratio peer/ours | target | peak RSS (MB) | note |',
             '| --- | --- | --- | --- | --- | --- | --- |']
    for r in report['rows']:
        if 'error' in r:
            lines.append(f"| {r['name']} | error: {r['error']} | | | | | |")
            continue
        if 'scaling' in r:
            continue
        note = r.get('note', '')
        if r.get('ours_gmacs_per_s'):
            note += f"; ours {r['ours_gmacs_per_s']:.1f} GMAC/s, peer {r.get('peer_gmacs_per_s', 0):.1f} GMAC/s"
        target = '-' if r['target'] is None else f">= {r['target']}"
        lines.append(f"| {r['name']} | {r['ours_time']:.4f} | {r['peer_time']:.4f} | {r['ratio']:.2f} | "
                     f"{target} | {r['peak_rss_mb']:.0f} | {note} |")
    for r in report['rows']:
        if 'scaling' in r:
            lines += ['', f"{r['name']} ({r['note']}; RSS before: {r['base_rss_mb']:.0f} MB):", '',
                      '| points | search (s) | forward + backward (s) | points / s | peak RSS (MB) |',
                      '| --- | --- | --- | --- | --- |']
            lines += [f"| {s['n']:,} | {s['search_s']:.3f} | {s['fwd_bwd_s']:.3f} | {s['points_per_s']:,.0f} | "
                      f"{s['peak_rss_mb']:.0f} |" for s in r['scaling']]
    return '\n'.join(lines) + '\n'


def plot_ratios(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """A horizontal bar per row: the ratio (green where it meets its target, grey without one), the target marked."""
    plt = pyplot()
    rows = [r for r in report['rows'] if 'ratio' in r]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.2))
    names = [r['name'] for r in rows]
    ax.barh(names, [r['ratio'] for r in rows], color=['tab:grey' if r['target'] is None else 'tab:green'
                                                       if r['ratio'] >= r['target'] else 'tab:red' for r in rows])
    targeted = [r for r in rows if r['target'] is not None]
    ax.scatter([r['target'] for r in targeted], [r['name'] for r in targeted], marker='|', s=300, c='k',
               label='target')
    ax.axvline(1.0, color='grey', lw=0.8, ls='--')
    ax.set_xlabel('peer time / our time (> 1: we are faster)')
    ax.legend(loc='lower right')
    return save_figure(fig, path)
