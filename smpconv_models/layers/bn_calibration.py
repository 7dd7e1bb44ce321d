"""BatchNorm running statistics recomputed for the current weights (cumulative average over given batches)."""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

__all__ = ['calibrate_bn_']


@torch.no_grad()
def calibrate_bn_(model: nn.Module, inputs: torch.Tensor | Iterable[torch.Tensor], passes: int = 2) -> nn.Module:
    """Set every BatchNorm's running statistics to the statistics of ``model``'s activations on ``inputs`` (one
    batch, or an iterable of batches; train-mode passes without autograd, a cumulative average over every batch of
    every pass), then switch to eval. Momenta are restored.

    Uses: trained-like activation scales for a freshly initialised network (in eval mode with running mean 0 and
    variance 1, smpconv_t's activations shrink layer by layer to ~1e-9 in its last stages, where exact GELU takes a
    several times slower path: the benchmark calibrates its models); and "precise" statistics after a short
    fine-tuning, whose momentum averages still mix the statistics of much earlier weights.
    """
    batches = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
    if not batches:
        raise ValueError('calibrate_bn_ needs at least one input batch')
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    try:
        for _ in range(passes):
            for x in batches:
                model(x)
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
    return model.eval()
