"""Timing: alternating repetitions and their medians, the faster memory format, the machine's matmul rate and the
MAC rates of the models (fvcore, when installed)."""
from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from ..flops import flop_count_analysis

__all__ = ['time_pair', 'best_format', 'alternating_medians', 'timed', 'matmul_gflops', 'gmacs', 'reps']

_logger = logging.getLogger(__name__)


def time_pair(ours: Callable[[], Any], peer: Callable[[], Any], reps: int, warmup: int) -> tuple[float, float]:
    """Median seconds of ``ours`` and ``peer``, alternating which runs first in each repetition."""
    for _ in range(warmup):
        ours()
        peer()
    t_ours, t_peer = [], []
    for i in range(reps):
        order = ((ours, t_ours), (peer, t_peer)) if i % 2 == 0 else ((peer, t_peer), (ours, t_ours))
        for fn, sink in order:
            start = time.perf_counter()
            fn()
            sink.append(time.perf_counter() - start)
    return statistics.median(t_ours), statistics.median(t_peer)


def best_format(make_step: Callable[[bool], Callable[[], Any]], reps: int = 3) -> tuple[Callable[[], Any], str]:
    """The faster of NCHW and channels_last for a step factory ``make_step(channels_last)`` (alternating runs, the
    smaller median wins)."""
    steps = {False: make_step(False), True: make_step(True)}
    medians = alternating_medians(steps, reps)
    cl = medians[True] < medians[False]
    return steps[cl], 'channels_last' if cl else 'NCHW'


def alternating_medians(calls: dict[Any, Callable[[], Any]], reps: int) -> dict[Any, float]:
    """Median seconds of each call after one warm-up each, the order reversed on every other repetition."""
    times: dict[Any, list[float]] = {k: [] for k in calls}
    for fn in calls.values():
        fn()
    for i in range(reps):
        for key in (list(calls) if i % 2 == 0 else list(reversed(calls))):
            times[key].append(timed(calls[key]))
    return {k: statistics.median(t) for k, t in times.items()}


def timed(fn: Callable[[], Any]) -> float:
    """Seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    """Measured fp32 matmul rate of this machine (2 flops per multiply-add)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    t = min(timed(lambda: torch.mm(a, b)) for _ in range(reps))
    return 2 * n ** 3 / t / 1e9


def gmacs(model: nn.Module, x: torch.Tensor) -> float | None:
    """fvcore GMACs of one forward of ``model`` on ``x``; None without fvcore or when the trace fails."""
    try:
        with torch.no_grad():
            return flop_count_analysis(model, (x,)).total() / 1e9
    except ImportError:
        return None
    except Exception as e:  # a model fvcore cannot trace still gets timed
        _logger.warning('MAC count failed: %s', e)
        return None


def reps(quick: bool, full: int) -> tuple[int, int]:
    """``(repetitions, warm-up runs)`` of a row: ``full`` repetitions, or 3 with ``--quick``."""
    return (3, 1) if quick else (full, 2)
