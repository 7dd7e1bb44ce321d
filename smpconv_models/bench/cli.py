"""``python -m smpconv_models.bench [--json FILE] [--plot FILE] [--quick] [--rows NAME ...] [--onnx-methods]
[--profile]``."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from .._io import write_json_atomic
from .profiling import run_profile
from .report import format_table, plot_ratios, run_bench
from .rows import ROWS
from .rows.deployment import onnx_fft_methods

__all__ = ['main']

_logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m smpconv_models.bench',
        description='Benchmark: our models against real peers, side by side, as ratios measured in one run.')
    parser.add_argument('--json', default=None, help='write the report as JSON here')
    parser.add_argument('--plot', default=None, help='write a PNG of the ratios here')
    parser.add_argument('--quick', action='store_true', help='fewer repetitions (a smoke run, noisier)')
    parser.add_argument('--rows', nargs='*', default=None, help=f'subset of rows: {", ".join(ROWS)}')
    parser.add_argument('--onnx-methods', action='store_true',
                        help='instead of the rows: onnxruntime time of every family per FFT export method')
    parser.add_argument('--profile', action='store_true',
                        help='instead of the rows: where smpconv_t spends its time (op groups, depthwise paths)')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    if args.onnx_methods or args.profile:
        report = {'onnx_fft_methods': onnx_fft_methods(args.quick)} if args.onnx_methods else run_profile(args.quick)
        sys.stdout.write(json.dumps(report, indent=1) + '\n')
        if args.json:
            write_json_atomic(args.json, report)
        return 0
    try:
        report = run_bench(args.rows, args.quick)
    except ValueError as e:
        _logger.error('error: %s', e)
        return 2
    report['command'] = ' '.join(['python -m smpconv_models.bench', *(argv if argv is not None else sys.argv[1:])])
    sys.stdout.write(format_table(report))
    if args.json:
        write_json_atomic(args.json, report)
    if args.plot:
        plot_ratios(report, args.plot)
    return 0
