"""The point-set rows: ``smpconv_points`` with SMP against MLP kernels, and one ``PointConv`` layer's scaling."""
from __future__ import annotations

import resource
import statistics
from typing import Any

import timm
import torch

from ...layers import PointConv, find_neighbors
from ...train.data.points import digits_point_sets
from ..steps import train_step
from ..timing import reps, time_pair, timed

__all__ = ['train_smp_vs_mlp', 'point_conv_scaling']


def train_smp_vs_mlp(quick: bool) -> dict[str, Any]:
    """smpconv_points training step (AdamW) on a digits-points batch: SMP kernels (ours) vs MLP kernels (peer) with
    the same basis size (16 points / 16 last-hidden units), the same network and data."""
    features, positions, mask, labels = digits_point_sets()
    batch = dict(features=features[:32], positions=positions[:32], mask=mask[:32])
    y = labels[:32]

    def make(kernel: str):
        torch.manual_seed(0)
        m = timm.create_model('smpconv_points', kernel=kernel).train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        return train_step(m, batch, y, opt), sum(p.numel() for p in m.parameters())

    (ours, n_ours), (peer, n_peer) = make('smp'), make('mlp')
    t_ours, t_peer = time_pair(ours, peer, *reps(quick, 7))
    return dict(ours_time=t_ours, peer_time=t_peer, batch=32,
                note=f'sets of <= 38 points, k=16; ours: SMP kernels ({n_ours:,} params); peer: MLP kernels '
                     f'({n_peer:,} params)')


def point_conv_scaling(quick: bool) -> dict[str, Any]:
    """One PointConv (SMP kernel, 16 shared points, 32 -> 32 channels, k = 16 nearest, 3-d points, batch 1) at
    N = 1k, 10k, 100k points (query = support): neighbour search time, forward + backward time (search included),
    points / s, and the process peak RSS after each size (sizes run in increasing order, so it is that size's peak)."""
    sizes = (1_000, 10_000) if quick else (1_000, 10_000, 100_000)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = []
    for n in sizes:
        torch.manual_seed(0)
        layer = PointConv(32, 32, 'smp', dim=3, k=16, n_points=16, backend='torch')
        feats = torch.randn(1, n, 32)
        pos = torch.rand(1, n, 3) * n ** (1 / 3)  # unit density: the neighbourhood size does not depend on n

        def search(pos=pos):
            find_neighbors(pos, pos, 16, backend='torch')

        def step(layer=layer, feats=feats, pos=pos):
            layer(feats, pos).square().mean().backward()

        repeats = 1 if n >= 100_000 or quick else 3
        search_s = statistics.median(timed(search) for _ in range(repeats))
        step_s = statistics.median(timed(step) for _ in range(repeats))
        out.append(dict(n=n, search_s=search_s, fwd_bwd_s=step_s, points_per_s=n / step_s,
                        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    return dict(scaling=out, base_rss_mb=base_rss, note='PointConv smp, F 32->32, k=16, d=3, batch 1, plain-torch '
                                                          'chunked search')
