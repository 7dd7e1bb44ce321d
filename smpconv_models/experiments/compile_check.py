"""``torch.compile`` at full size: each registered family, default compile settings, against eager.

    python -m smpconv_models.experiments.compile_check [--models NAME ...] [--dtype float64|float32] [--out FILE.json]

For each model (its registered configuration and input size, dropout and stochastic depth off so both runs draw
nothing at random, BatchNorm momentum 0 so both see the same statistics): a training-mode forward and backward at
batch 2, then at batch 3 (Dynamo's automatic dynamic-shape recompile), outputs and every parameter gradient against
eager; then an eval forward without autograd at batch 3. Errors are norm-based and relative: ``||compiled - eager|| /
||eager||`` for outputs, ``max_p ||g_p' - g_p|| / ||g||`` over parameters ``p`` for gradients (``g``: all eager
gradients; parameters whose true gradient is zero carry only rounding noise). Seconds are those of the compiled call
(compilation included). In float64 both errors are rounding-level (< 1e-9) when the compiled graph is right.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

import timm
import torch
import torch.nn as nn
from timm.layers import DropPath
from torch import Tensor

from .._io import write_json_atomic
from ..models import family_of

__all__ = ['GRID_FAMILIES', 'compare_compiled', 'deterministic_', 'full_size_inputs', 'main']

_logger = logging.getLogger(__name__)

# One registered name per model structure: smpconv_b is smpconv_t's class at larger widths, the TCNs share one class.
GRID_FAMILIES = ('smpconv_t', 'smpconv_b', 'smpconv_cifar', 'smpconv_tcn_mnist', 'smpconv_tcn_scifar10',
                 'smpconv_tcn_chartraj', 'smpconv_tcn_speech', 'smpconv_tcn_speech_raw')


def _relative(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _grads(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def deterministic_(model: nn.Module) -> nn.Module:
    """In place: dropout and stochastic depth off, BatchNorm momentum 0 (running statistics frozen), so an eager and
    a compiled training pass compute the same function."""
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = 0.0
        elif isinstance(m, DropPath):
            m.drop_prob = 0.0
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.0
    return model


def compare_compiled(model: nn.Module, inputs: Sequence[tuple[Tensor, ...]]) -> list[dict[str, Any]]:
    """``torch.compile(model)`` against eager: training forward + backward on each input tuple in turn (the sum of
    squared outputs as the loss), then eval without autograd on the last one. Call :func:`deterministic_` first.

    Returns one row per training input (``batch``, ``output_rel``, ``grad_rel``, ``seconds``) and an eval row
    (``grad_rel`` None)."""
    torch._dynamo.reset()
    compiled = torch.compile(model)
    rows = []
    for args in inputs:
        model.train()
        outs, grads, seconds = [], [], 0.0
        for fn in (model, compiled):
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            out = fn(*args)
            out.square().sum().backward()
            seconds = time.perf_counter() - start
            outs.append(out.detach())
            grads.append(_grads(model))
        if grads[0].keys() != grads[1].keys():
            raise RuntimeError(f'compiled and eager gradients cover different parameters: '
                               f'{sorted(grads[0].keys() ^ grads[1].keys())}')
        scale = torch.cat([g.flatten() for g in grads[0].values()]).norm().clamp_min(1e-300)
        worst = max(float((grads[1][k] - grads[0][k]).norm() / scale) for k in grads[0])
        rows.append(dict(mode='train', batch=int(args[0].shape[0]), output_rel=_relative(outs[1], outs[0]),
                         grad_rel=worst, seconds=seconds))
    model.eval()
    with torch.no_grad():
        start = time.perf_counter()
        out = compiled(*inputs[-1])
        seconds = time.perf_counter() - start
        rows.append(dict(mode='eval', batch=int(inputs[-1][0].shape[0]), output_rel=_relative(out, model(*inputs[-1])),
                         grad_rel=None, seconds=seconds))
    return rows


def full_size_inputs(model: nn.Module, batch_size: int) -> tuple[Tensor, ...]:
    """Random inputs of the model's registered size (``[B, C, H, W]`` images, ``[B, C, L]`` sequences; the point-set
    and irregular-series models' input tuples), as its family makes them
    (:meth:`~smpconv_models.models.ModelFamily.example_inputs`)."""
    return family_of(model).example_inputs(model, batch_size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m smpconv_models.experiments.compile_check',
                                     description=__doc__.split('\n\n')[0])
    parser.add_argument('--models', nargs='*', default=list(GRID_FAMILIES), help='registered names')
    parser.add_argument('--dtype', default='float64', choices=['float64', 'float32'])
    parser.add_argument('--out', default=None, help='write the rows as JSON here')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    dtype = getattr(torch, args.dtype)
    known = set(timm.list_models('smpconv_*'))
    unknown = [m for m in args.models if m.split('.')[0] not in known]
    if unknown:
        parser.error(f'unknown model(s) {unknown}; smpconv models: {", ".join(sorted(known))}')
    results = []
    for name in args.models:
        torch.manual_seed(0)
        model = deterministic_(timm.create_model(name).to(dtype))
        inputs = [full_size_inputs(model, b) for b in (2, 3)]
        for row in compare_compiled(model, inputs):
            row = dict(model=name, dtype=args.dtype, **row)
            results.append(row)
            grad = '-' if row['grad_rel'] is None else f"{row['grad_rel']:.1e}"
            _logger.info('%-24s %-5s batch %d  output %.1e  grad %s  %.0f s', name, row['mode'], row['batch'],
                         row['output_rel'], grad, row['seconds'])
    if args.out:
        write_json_atomic(args.out, {'command': ' '.join(['python -m smpconv_models.experiments.compile_check',
                                                          *(sys.argv[1:] if argv is None else argv)]),
                                     'torch': torch.__version__, 'rows': results})
    return 0


if __name__ == '__main__':
    sys.exit(main())
