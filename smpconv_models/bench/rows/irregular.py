"""The irregular-series row: ``smpconv_irregular_tcn`` with SMP kernels against the same network with MLP kernels."""
from __future__ import annotations

from typing import Any

import timm
import torch

from ...layers import smp_param_groups
from ...models import family_of
from ...train.data import build_data
from ..steps import train_step
from ..timing import reps, time_pair

__all__ = ['train_smp_vs_mlp']


def train_smp_vs_mlp(quick: bool) -> dict[str, Any]:
    """``smpconv_irregular_tcn`` training step on a batch of digits-irregular (50% of each series dropped), SMP
    kernels vs MLP kernels (Wang et al.'s kernel MLP, 2 hidden layers of 32) in the same network."""
    data = build_data('digits-irregular', family_of('smpconv_irregular_tcn').input_kind, missing_rate=0.5)
    batch = [data.train[i] for i in range(64)]
    inputs = {k: torch.stack([b[0][k] for b in batch]) for k in batch[0][0]}
    y = torch.stack([b[1] for b in batch])

    def make(kernel: str):
        torch.manual_seed(0)
        m = timm.create_model('smpconv_irregular_tcn', kernel=kernel).train()
        opt = torch.optim.Adam(smp_param_groups(m, 1e-5, lr=3e-3), lr=3e-3)
        return train_step(m, inputs, y, opt), sum(p.numel() for p in m.parameters())

    (ours, n_ours), (peer, n_peer) = make('smp'), make('mlp')
    t_ours, t_peer = time_pair(ours, peer, *reps(quick, 5))
    return dict(ours_time=t_ours, peer_time=t_peer, batch=64,
                note=f'peer: the same network with MLP kernels (2 x 32 hidden); params {n_ours:,} vs {n_peer:,}; '
                     '32 of 64 steps observed, integer timestamps (grid path)')
