"""The sequence-TCN row: the ``smpconv_tcn_mnist`` training step at 784 steps, FFT against direct convolution."""
from __future__ import annotations

from typing import Any

import timm
import torch

from ...layers import smp_param_groups
from ..steps import train_step
from ..timing import reps, time_pair

__all__ = ['train_fft_vs_direct']


def train_fft_vs_direct(quick: bool) -> dict[str, Any]:
    """``smpconv_tcn_mnist`` training step at 784 steps (batch 64), FFT vs direct causal convolution."""
    x, y = torch.randn(64, 1, 784), torch.randint(0, 10, (64,))

    def make(fft: bool):
        torch.manual_seed(0)
        m = timm.create_model('smpconv_tcn_mnist', use_fft=fft).train()
        return train_step(m, x, y, torch.optim.Adam(smp_param_groups(m, 1e-5, lr=1e-4), lr=1e-4))

    t_ours, t_peer = time_pair(make(True), make(False), *reps(quick, 3))
    return dict(ours_time=t_ours, peer_time=t_peer, batch=64, note='ours: FFT causal conv; peer: direct conv1d')
