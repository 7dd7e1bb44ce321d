"""The CIFAR row: the ``smpconv_cifar`` training step against the same network with MAGNet kernels."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import timm
import torch
import torch.nn as nn

from ...layers import smp_param_groups
from ..peers import use_mlp_kernels
from ..steps import train_step
from ..timing import reps, time_pair

__all__ = ['cifar_setting', 'train_vs_mlp_kernel']


def cifar_setting() -> dict[str, tuple[nn.Module, Callable[[], Any]]]:
    """``smpconv_cifar`` and its MAGNet-kernel twin in train mode with their training steps (batch 64, 32x32)."""
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    torch.manual_seed(0)
    ours = timm.create_model('smpconv_cifar').train()
    peer = use_mlp_kernels(timm.create_model('smpconv_cifar')).train()
    return {'smp': (ours, train_step(ours, x, y, torch.optim.Adam(smp_param_groups(ours, 1e-5, lr=1e-3), lr=1e-3))),
            'mlp_kernel': (peer, train_step(peer, x, y, torch.optim.Adam(peer.parameters(), lr=1e-3)))}


def train_vs_mlp_kernel(quick: bool) -> dict[str, Any]:
    """``smpconv_cifar`` training step vs the same network whose kernels come from an MLP kernel generator."""
    setting = cifar_setting()
    t_ours, t_peer = time_pair(setting['smp'][1], setting['mlp_kernel'][1], *reps(quick, 3))
    return dict(ours_time=t_ours, peer_time=t_peer, batch=64,
                note='peer: the same network, kernels from MAGNet (3 layers, 32 hidden) instead of SMP points')
