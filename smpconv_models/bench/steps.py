"""What the rows time: a training step, and an eval model with trained-like BatchNorm statistics."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['train_step', 'calibrate_bn_']


def train_step(model: nn.Module, x: torch.Tensor | dict[str, torch.Tensor], y: torch.Tensor,
               opt: torch.optim.Optimizer) -> Callable:
    """One cross-entropy training step; a dict ``x`` is passed as keyword inputs (``model(**x)``)."""
    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(**x) if isinstance(x, dict) else model(x), y).backward()
        opt.step()
    return step


@torch.no_grad()
def calibrate_bn_(model: nn.Module, x: torch.Tensor, passes: int = 2) -> nn.Module:
    """Set every BatchNorm's running statistics to the statistics of ``model``'s activations on ``x`` (train-mode
    passes with a cumulative average), then switch to eval.

    A freshly initialised BN network in eval mode (running mean 0, variance 1) shrinks its activations layer by layer
    (to ~1e-9 in smpconv_t's last stages), where exact GELU takes a several times slower path; trained
    weights keep activations O(1). Calibrated statistics give the benchmark trained-like activation scales.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    for _ in range(passes):
        model(x)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    return model.eval()
