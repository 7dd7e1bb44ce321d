"""The ImageNet rows: ``smpconv_t`` against timm's ConvNeXt-T (inference, training, compiled training) and its
cached eval form against the reparameterized one; batch 8, 224, each model in its faster memory format."""
from __future__ import annotations

from typing import Any

import timm
import torch

from ...layers import calibrate_bn_
from ..steps import adamw, infer_factory, train_step
from ..timing import best_format, gmacs, reps, time_pair

__all__ = ['infer_vs_convnext', 'train_vs_convnext', 'eval_cached_vs_reparam', 'compiled_train_vs_convnext']


def infer_vs_convnext(quick: bool) -> dict[str, Any]:
    """Reparameterized ``smpconv_t`` (BatchNorm statistics calibrated on the input) vs ``convnext_tiny``, eval."""
    x = torch.randn(8, 3, 224, 224)
    torch.manual_seed(0)
    ours_model = timm.utils.reparameterize_model(calibrate_bn_(timm.create_model('smpconv_t'), x))
    peer_model = timm.create_model('convnext_tiny').eval()
    ours, ours_fmt = best_format(infer_factory(ours_model, x))
    peer, peer_fmt = best_format(infer_factory(peer_model, x))
    t_ours, t_peer = time_pair(ours, peer, *reps(quick, 9))
    return dict(ours_time=t_ours, peer_time=t_peer, note=f'ours {ours_fmt}, convnext_tiny {peer_fmt}',
                ours_gmacs=gmacs(ours_model, x[:1]), peer_gmacs=gmacs(peer_model, x[:1]), batch=8)


def train_vs_convnext(quick: bool) -> dict[str, Any]:
    """One training step (forward, backward, AdamW step) of both, stochastic depth 0.1 (their papers' recipes)."""
    x, y = torch.randn(8, 3, 224, 224), torch.randint(0, 1000, (8,))

    def factory(name, ours):
        def make(cl: bool):
            torch.manual_seed(0)
            m = timm.create_model(name, drop_path_rate=0.1).train()  # both papers' ImageNet recipes
            if cl:
                m = m.to(memory_format=torch.channels_last)
            return train_step(m, x.contiguous(memory_format=torch.channels_last) if cl else x, y, adamw(m, ours))
        return make

    ours, ours_fmt = best_format(factory('smpconv_t', ours=True))
    peer, peer_fmt = best_format(factory('convnext_tiny', ours=False))
    t_ours, t_peer = time_pair(ours, peer, *reps(quick, 3))
    return dict(ours_time=t_ours, peer_time=t_peer, note=f'ours {ours_fmt}, convnext_tiny {peer_fmt}', batch=8)


def eval_cached_vs_reparam(quick: bool) -> dict[str, Any]:
    """Eval without reparameterization (SMP kernels and folded BatchNorms cached) vs reparameterized."""
    x = torch.randn(8, 3, 224, 224)
    torch.manual_seed(0)
    cached = calibrate_bn_(timm.create_model('smpconv_t'), x)
    deployed = timm.utils.reparameterize_model(cached)  # a copy
    ours, ours_fmt = best_format(infer_factory(cached, x))
    peer, peer_fmt = best_format(infer_factory(deployed, x))
    t_ours, t_peer = time_pair(ours, peer, *reps(quick, 9))
    return dict(ours_time=t_ours, peer_time=t_peer, batch=8,
                note=f'ours: eval, not reparameterized (kernels and folded BNs cached), {ours_fmt}; '
                     f'peer: reparameterized, {peer_fmt}')


def compiled_train_vs_convnext(quick: bool) -> dict[str, Any]:
    """``torch.compile`` (default settings) training steps of smpconv_t and ConvNeXt-T, batch 8, 224, NCHW."""
    x, y = torch.randn(8, 3, 224, 224), torch.randint(0, 1000, (8,))

    def make(name, ours):
        torch.manual_seed(0)
        m = timm.create_model(name, drop_path_rate=0.1).train()
        return train_step(torch.compile(m), x, y, adamw(m, ours))

    t_ours, t_peer = time_pair(make('smpconv_t', ours=True), make('convnext_tiny', ours=False), *reps(quick, 3))
    return dict(ours_time=t_ours, peer_time=t_peer, batch=8, note='both torch.compile(model), default settings')
