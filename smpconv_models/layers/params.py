"""Model-level helpers for SMP point parameters: radius clamping and optimizer parameter groups."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch.nn as nn

from .reparam import SMPReparamConv
from .smp_conv import SMPConvBase
from .smp_points import SMPPoints

__all__ = ['clamp_radii_', 'smp_param_groups', 'rescale_smp_kernels_', 'scaled_kernel_size']


def clamp_radii_(model: nn.Module) -> nn.Module:
    """Clamp the radii of every SMP layer in ``model`` in place (call after each optimizer step, before EMA); frozen
    radii (``learn_radius=False``) are left as initialised."""
    for module in model.modules():
        if isinstance(module, SMPPoints):
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
    groups also carry their absolute ``lr``. Frozen parameters (``requires_grad=False``, e.g. the points of a layer
    built with ``learn_positions=False`` / ``learn_radius=False``) are left out; empty groups are dropped.
    """
    positions, radii = set(), set()
    for module in model.modules():
        if isinstance(module, SMPPoints):
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


def scaled_kernel_size(kernel_size: int, scale: float, odd: bool) -> int:
    """``round((K - 1) * scale) + 1`` (an integer ``scale`` keeps every old tap on the new grid), made odd when a
    'same' convolution needs it."""
    if not scale > 0:
        raise ValueError(f'kernel scale must be positive, got {scale}')
    k = max(1, round((kernel_size - 1) * scale) + 1)
    return k + 1 if odd and k % 2 == 0 else k


def rescale_smp_kernels_(model: nn.Module, scale: float) -> dict[str, tuple[int, ...]]:
    """Re-sample every SMP kernel of ``model`` on a grid ``scale`` times as fine (same continuous functions, more
    taps: the kernel's extent in pixels / steps grows by ``scale``). Returns ``{layer name: new kernel size}``."""
    changed: dict[str, tuple[int, ...]] = {}
    inside = set()
    for name, module in model.named_modules():
        if isinstance(module, SMPReparamConv):
            if module.reparam_conv is not None:
                raise ValueError(f'{name} is reparameterized: rescale kernels before reparameterize()')
            odd = module.smp.conv.requires_odd_kernel
            module.set_kernel_size_(scaled_kernel_size(module.kernel_size[0], scale, odd))
            changed[name] = module.kernel_size
            inside.add(id(module.smp.conv))
    for name, module in model.named_modules():
        if isinstance(module, SMPConvBase) and id(module) not in inside:
            module.set_kernel_size_(tuple(scaled_kernel_size(k, scale, module.requires_odd_kernel)
                                          for k in module.kernel_size))
            changed[name] = module.kernel_size
    return changed
