"""The execution mode: one switch for the few places where eager PyTorch, ``torch.compile``, the exporters, tracers
and TorchScript must differ.

:func:`execution_mode` is one of

* ``'eager'``: plain Python calls. Only here do the eager-only shortcuts apply: the SMP kernel cache and kernel
  sharing (keyed on storage pointers), folded-BatchNorm caches, oneDNN post-op fusion and CPU micro-batching;
* ``'compile'``: ``torch.compile`` is tracing. A graph cannot read storage pointers, and Inductor fuses the plain
  ops itself, so the shortcuts stand aside; the kernels are generated in the graph;
* ``'export'``: ``torch.onnx.export`` (either exporter) or ``torch.export``: the plain ops, FFT convolutions in their
  real-arithmetic export forms (:mod:`~smpconv_models.layers.export_conv`), no host reads of values;
* ``'trace'``: ``torch.jit.trace`` (fvcore's FLOP counts) or ``torch.fx`` symbolic tracing: the modules as they are;
* ``'script'``: TorchScript. Python-only code (custom autograd Functions, caches, the export forms) is marked
  :func:`python_only`, so the compiler never reads it.

Checks of input *values* (finite, ordered, enough points) go through :func:`check_values`: one host read in eager
mode, run-time asserts inside a compiled graph (no graph break), none in an exported graph.

The eager-only shortcuts are :func:`python_only` methods or functions reached only when :func:`is_eager`; the few
other places that differ by mode ask :func:`execution_mode`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

__all__ = ['execution_mode', 'is_eager', 'python_only', 'is_torchscript_onnx_export', 'is_jit_tracing',
           'computes_in_half_precision', 'check_values', 'EXECUTION_MODES']

EXECUTION_MODES = ('eager', 'compile', 'export', 'trace', 'script')

F = TypeVar('F', bound=Callable)


def _python_mode() -> str:
    """:func:`execution_mode` outside TorchScript."""
    if torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting():
        return 'export'
    if torch.compiler.is_compiling():
        return 'compile'
    if torch.jit.is_tracing() or is_fx_symbolic_tracing():
        return 'trace'
    return 'eager'


def execution_mode() -> str:
    """``'eager'``, ``'compile'``, ``'export'``, ``'trace'`` or ``'script'`` (see the module docstring)."""
    if torch.jit.is_scripting():
        return 'script'
    else:  # (TorchScript compiles only the branch of a torch.jit.is_scripting() test that it takes)
        return _python_mode()


def is_eager() -> bool:
    """Whether the eager-only shortcuts may run (``execution_mode() == 'eager'``)."""
    return execution_mode() == 'eager'


def python_only(fn: F) -> F:
    """Mark ``fn`` (a function or method) as Python-only: an eager-only shortcut, an export form or anything else
    TorchScript cannot compile, called only in the modes that use it. TorchScript replaces it by a stub instead of
    compiling it, so a scripted model that holds it still saves. (Leave its signature unannotated under
    ``from __future__ import annotations``: TorchScript cannot resolve the string annotations of a stub, and takes
    unannotated arguments and results as tensors.)"""
    return torch.jit.unused(fn)


def is_torchscript_onnx_export() -> bool:
    """Whether the TorchScript-based ONNX exporter (a ``torch.jit`` trace) captures the graph: one of the ``'export'``
    modes, where ``torch.fft`` needs an ONNX symbolic (the dynamo exporter and ``torch.export`` have their own)."""
    return torch.onnx.is_in_onnx_export() and not torch.compiler.is_exporting()


def is_jit_tracing() -> bool:
    """Whether ``torch.jit.trace`` records the ops: ``'trace'`` from ``torch.jit.trace`` (fvcore's FLOP counts), or the
    TorchScript-based ONNX exporter (``'export'``). Sizes read from tensors are traced values there, and the traced
    graph sees the modules as they are."""
    return torch.jit.is_tracing()


def computes_in_half_precision(x: torch.Tensor) -> bool:
    """Whether CPU ops on ``x`` compute in fp16 / bf16: its own dtype, or CPU autocast (eager, compile and export;
    TorchScript runs without autocast)."""
    if x.dtype == torch.float16 or x.dtype == torch.bfloat16:
        return True
    if torch.jit.is_scripting():
        return False
    else:  # (compiled by TorchScript only on the branch it takes)
        return torch.is_autocast_enabled('cpu')


def check_values(checks: list[tuple[torch.Tensor, str]], error: type[Exception] = ValueError) -> None:
    """Raise ``error(message)`` for the first ``(flag, message)`` whose 0-d bool ``flag`` is false. Eager (and
    traced) code reads every flag in one host sync; a ``torch.compile`` graph asserts each flag at run time instead
    (``torch._assert_async``: a ``RuntimeError`` with the message, and no graph break); an exported graph skips the
    checks (an exporter cannot raise on values)."""
    mode = execution_mode()
    if mode == 'export' or not checks:
        return
    if mode == 'compile':
        for flag, message in checks:
            torch._assert_async(flag, message)
        return
    ok = torch.stack([flag for flag, _ in checks]).tolist()
    for good, (_, message) in zip(ok, checks):
        if not good:
            raise error(message)
