"""The irregular-series rows: ``smpconv_irregular_tcn`` with SMP kernels against the same network with MLP kernels,
and the irregular TCN on long series against the grid TCN on the same length."""
from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from typing import Any

import timm
import torch

from ...layers import smp_param_groups
from ...models import family_of
from ...train.data import build_data
from ..memory import peak_rss_in_child
from ..steps import train_step
from ..timing import reps, time_pair

__all__ = ['train_smp_vs_mlp', 'long_series_step', 'irregular_vs_grid_tcn', 'LONG_ROWS']


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


# the long-series rows: the default smpconv_irregular_tcn (6 blocks of 30 channels, 64-step kernels) on a batch of 8
LONG_BATCH = 8


def long_series_step(side: str, length: int) -> Callable[[], Any]:
    """One training step (Adam) of ``smpconv_irregular_tcn`` on ``LONG_BATCH`` series of ``length`` observations at real
    timestamps (gaps uniform in [1, 2) time units: its pairwise path, about 42 observations per 64-step kernel span),
    or (``side='grid'``) of the same network as the grid TCN (``smpconv_tcn_mnist`` with the same kwargs) on series of
    the same length."""
    g = torch.Generator().manual_seed(0)
    values = torch.randn(LONG_BATCH, 1, length, generator=g)
    y = torch.randint(0, 10, (LONG_BATCH,), generator=g)
    kwargs = dict(in_chans=1, num_classes=10, seq_len=64, radius=0.03)
    torch.manual_seed(0)
    if side == 'grid':
        model = timm.create_model('smpconv_tcn_mnist', **kwargs).train()
        inputs: Any = values
    else:
        model = timm.create_model('smpconv_irregular_tcn', **kwargs).train()
        timestamps = (torch.rand(LONG_BATCH, length, generator=g) + 1.0).cumsum(1)
        inputs = dict(values=values, timestamps=timestamps)
    opt = torch.optim.Adam(smp_param_groups(model, 1e-5, lr=1e-3), lr=1e-3)
    return train_step(model, inputs, y, opt)


def irregular_vs_grid_tcn(length: int, quick: bool) -> dict[str, Any]:
    """Training step of the irregular TCN at real timestamps (ours) against the grid TCN (peer) on series of
    ``length`` steps, and each side's peak RSS from a fresh process."""
    ours, peer = long_series_step('irregular', length), long_series_step('grid', length)
    repeats, warmup = (1, 0) if quick or length > 1000 else (3, 1)
    t_ours, t_peer = time_pair(ours, peer, repeats, warmup)
    ours_base, ours_peak = peak_rss_in_child(long_series_step, 'irregular', length)
    peer_base, peer_peak = peak_rss_in_child(long_series_step, 'grid', length)
    fused = importlib.util.find_spec('numba') is not None
    return dict(ours_time=t_ours, peer_time=t_peer, batch=LONG_BATCH, ours_peak_rss_mb=ours_peak,
                peer_peak_rss_mb=peer_peak, ours_setup_rss_mb=ours_base, peer_setup_rss_mb=peer_base,
                fused_cpu_loops=fused,
                note=f'{length:,} steps, batch {LONG_BATCH}; ours: smpconv_irregular_tcn at real timestamps (gaps 1-2, '
                     f'pairwise path, {"fused CPU loops (numba)" if fused else "plain torch ops (no numba)"}); peer: '
                     f'the grid TCN; peak RSS ours {ours_peak:,.0f} MB, peer {peer_peak:,.0f} MB (after setup '
                     f'{ours_base:,.0f} / {peer_base:,.0f})')


# name -> (row, ratio target): the irregular TCN within 3x of the grid TCN's step (issue 18)
LONG_ROWS: dict[str, tuple[Callable[[bool], dict[str, Any]], float]] = {
    f'irregular_tcn_vs_grid_tcn_{label}': (functools.partial(irregular_vs_grid_tcn, n), 1 / 3)
    for label, n in (('1k', 1_000), ('10k', 10_000))}
