"""``train.py``'s command line: parse, run, report where the results are; clear errors and exit codes."""
from __future__ import annotations

import logging
import sys

from .config import parse_config
from .data import DatasetNotFoundError
from .loop import TrainingError
from .runner import run

__all__ = ['main']

_logger = logging.getLogger('smpconv_models.train')


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    for noisy in ('timm', 'accelerate', 'httpx', 'huggingface_hub'):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_config(args)
        summary = run(cfg, ['train.py', *args])
    except (TrainingError, DatasetNotFoundError, FileNotFoundError, ValueError, PermissionError) as e:
        _logger.error('error: %s', e)
        return 2
    if summary.get('eval_only'):
        sys.stdout.write(f"top-1 {summary['eval_top1']:.2f}%  top-5 {summary['eval_top5']:.2f}%  "
                         f"(loss {summary['eval_loss']:.4f}, {summary['model']} on {summary['data']})\n")
        return 0
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return 0
    lines = [f"done: {summary['model']} on {summary['data']}: test top-1 {summary['eval_top1']:.2f}% "
             f"(best {summary['best_top1']:.2f}% at epoch {summary['best_epoch']}), {summary['seconds']:.0f} s",
             f"best checkpoint: {summary['best']}  (timm.create_model('local-dir:{summary['best']}', "
             'pretrained=True))', f"last checkpoint: {summary['last']}", f"metrics: {summary['metrics']}",
             f"summary: {summary['output_dir']}/summary.json"]
    if summary.get('plot'):
        lines.append(f"kernel plot: {summary['plot']}")
    if summary.get('hub_error'):
        lines.append(f"Hub push FAILED: {summary['hub_error']}")
    elif summary.get('hub_commit'):
        lines.append(f"pushed to the Hub: {summary['hub_commit']}")
    sys.stdout.write('\n'.join(lines) + '\n')
    return 3 if summary.get('hub_error') else 0
