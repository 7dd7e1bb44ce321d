"""Model-level helpers for SMP point parameters: radius clamping and optimizer parameter groups."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch.nn as nn

from .smp_conv import SMPConvBase

__all__ = ['clamp_radii_', 'smp_param_groups']


def clamp_radii_(model: nn.Module) -> nn.Module:
    """Clamp the radii of every SMP layer in ``model`` in place (call after each optimizer step, before EMA)."""
    for module in model.modules():
        if isinstance(module, SMPConvBase):
            module.clamp_radii_()
    return model


def smp_param_groups(
        model: nn.Module,
        weight_decay: float = 0.05,
        radius_lr_scale: float = 0.1,
        lr: float | None = None,
        no_weight_decay: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """Optimizer parameter groups as in the official SMPConv training.

    * ``decay``: every other weight with ``weight_decay``;
    * ``no_decay``: point positions, biases, 1-d parameters (norms) and names in ``no_weight_decay``, decay 0;
    * ``radius``: point radii, decay 0, learning rate scaled by ``radius_lr_scale``.

    Each group carries ``lr_scale`` (timm's schedulers multiply the scheduled rate by it); when ``lr`` is given the
    groups also carry their absolute ``lr``. Frozen parameters are left out; empty groups are dropped.
    """
    positions, radii = set(), set()
    for module in model.modules():
        if isinstance(module, SMPConvBase):
            positions.add(id(module.weight_coord))
            radii.add(id(module.radius))
    skip = set(no_weight_decay)
    groups: dict[str, dict[str, Any]] = {
        'decay': dict(params=[], weight_decay=weight_decay, lr_scale=1.0),
        'no_decay': dict(params=[], weight_decay=0.0, lr_scale=1.0),
        'radius': dict(params=[], weight_decay=0.0, lr_scale=radius_lr_scale),
    }
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if id(param) in radii:
            key = 'radius'
        elif id(param) in positions or param.ndim <= 1 or name.endswith('.bias') or name in skip:
            key = 'no_decay'
        else:
            key = 'decay'
        groups[key]['params'].append(param)
    out = []
    for key, group in groups.items():
        if group['params']:
            if lr is not None:
                group['lr'] = lr * group['lr_scale']
            out.append(dict(name=key, **group))
    return out
