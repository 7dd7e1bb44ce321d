"""What the rows time: a training step, an inference step in either memory format, and the optimizer both sides
use. (Trained-like BatchNorm statistics for eval rows: :func:`~smpconv_models.layers.calibrate_bn_`.)"""
from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import smp_param_groups

__all__ = ['train_step', 'infer_factory', 'adamw']


def train_step(model: nn.Module, x: torch.Tensor | dict[str, torch.Tensor], y: torch.Tensor,
               opt: torch.optim.Optimizer) -> Callable:
    """One cross-entropy training step; a dict ``x`` is passed as keyword inputs (``model(**x)``)."""
    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(**x) if isinstance(x, dict) else model(x), y).backward()
        opt.step()
    return step


def infer_factory(model: nn.Module, x: torch.Tensor) -> Callable[[bool], Callable[[], Any]]:
    """``make(channels_last)``: an inference-mode forward of a copy of ``model`` on ``x`` in that memory format (for
    :func:`~smpconv_models.bench.timing.best_format`)."""
    def make(cl: bool):
        m = copy.deepcopy(model).to(memory_format=torch.channels_last if cl else torch.contiguous_format)
        xi = x.contiguous(memory_format=torch.channels_last) if cl else x

        def step():
            with torch.inference_mode():
                m(xi)
        return step
    return make


def adamw(model: nn.Module, ours: bool) -> torch.optim.Optimizer:
    """AdamW at 1e-4; ours in the official parameter groups (no weight decay on points, radius lr x0.1)."""
    return torch.optim.AdamW(smp_param_groups(model, 0.05, lr=1e-4) if ours else model.parameters(), lr=1e-4)
