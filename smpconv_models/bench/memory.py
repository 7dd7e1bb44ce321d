"""Peak memory: a process' own peak resident set, and the peak of one call in a fresh process."""
from __future__ import annotations

import multiprocessing as mp
import resource
from collections.abc import Callable
from typing import Any

__all__ = ['own_peak_rss_mb', 'peak_rss_in_child']


def own_peak_rss_mb() -> float:
    """This process' peak resident memory (MB) since it started: ``VmHWM`` where /proc has it (``ru_maxrss`` also
    counts what the process held before an ``exec``, e.g. the parent a spawned child started from)."""
    try:
        with open('/proc/self/status') as f:
            return next(int(line.split()[1]) for line in f if line.startswith('VmHWM:')) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(make: Callable[..., Callable[[], Any]], args: tuple, queue) -> None:
    try:
        call = make(*args)
        before = own_peak_rss_mb()
        call()
        queue.put((before, own_peak_rss_mb()))
    except Exception as e:  # re-raised in the parent
        queue.put((f'{type(e).__name__}: {e}', None))


def peak_rss_in_child(make: Callable[..., Callable[[], Any]], *args) -> tuple[float, float]:
    """``(peak RSS after setup, peak RSS after one call)`` in MB of ``make(*args)()`` in a fresh (spawned) process:
    ``make`` (a module-level function) builds the inputs and returns the call."""
    ctx = mp.get_context('spawn')
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(make, args, queue))
    proc.start()
    before, peak = queue.get()
    proc.join()
    if peak is None:
        raise RuntimeError(f'{getattr(make, "__name__", make)}{args} failed: {before}')
    return before, peak
