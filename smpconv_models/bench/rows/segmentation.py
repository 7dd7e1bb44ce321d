"""The dense-prediction rows: ``smpconv_t`` and ``convnext_tiny`` as the encoder of the same
segmentation_models_pytorch ``UPerNet`` (``tu-`` encoders, its default 256-channel decoder, 150 classes as ADE20K),
512x512, batch 2, each model in its faster memory format. Need segmentation_models_pytorch (the ``seg`` extra)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import timm
import torch
import torch.nn as nn

from ...layers import calibrate_bn_
from ..steps import adamw, infer_factory, train_step
from ..timing import best_format, gmacs, reps, time_pair

__all__ = ['upernet_train_vs_convnext', 'upernet_infer_vs_convnext']


def _upernet(encoder: str, drop_path_rate: float) -> nn.Module:
    try:
        import segmentation_models_pytorch as smp
    except ImportError as e:
        raise ImportError(f'the UPerNet rows need segmentation_models_pytorch ({e}): pip install '
                          '"smpconv-models[seg]"') from e
    torch.manual_seed(0)
    return smp.UPerNet(f'tu-{encoder}', encoder_weights=None, classes=150, drop_path_rate=drop_path_rate)


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(2, 3, 512, 512), torch.randint(0, 150, (2, 512, 512))


def _note(ours_fmt: str, peer_fmt: str) -> str:
    return f'UPerNet 512x512; ours {ours_fmt}, convnext_tiny {peer_fmt}'


def upernet_train_vs_convnext(quick: bool) -> dict[str, Any]:
    """One training step (per-pixel cross-entropy, AdamW, stochastic depth 0.1 in both encoders). In ``--quick``
    mode the format choice takes one timed run per format instead of three."""
    x, y = _inputs()

    def factory(encoder: str, ours: bool) -> Callable[[bool], Callable[[], Any]]:
        def make(cl: bool):
            m = _upernet(encoder, 0.1).train()
            if cl:
                m = m.to(memory_format=torch.channels_last)
            return train_step(m, x.contiguous(memory_format=torch.channels_last) if cl else x, y, adamw(m, ours))
        return make

    format_reps = 1 if quick else 3
    ours, ours_fmt = best_format(factory('smpconv_t', ours=True), format_reps)
    peer, peer_fmt = best_format(factory('convnext_tiny', ours=False), format_reps)
    t_ours, t_peer = time_pair(ours, peer, *reps(quick, 3))
    return dict(ours_time=t_ours, peer_time=t_peer, batch=2, note=_note(ours_fmt, peer_fmt))


def upernet_infer_vs_convnext(quick: bool) -> dict[str, Any]:
    """Inference (eval, both models' BatchNorms calibrated on the input, ours reparameterized)."""
    x, _ = _inputs()
    ours_model = timm.utils.reparameterize_model(calibrate_bn_(_upernet('smpconv_t', 0.0), x))
    peer_model = calibrate_bn_(_upernet('convnext_tiny', 0.0), x)
    format_reps = 1 if quick else 3
    ours, ours_fmt = best_format(infer_factory(ours_model, x), format_reps)
    peer, peer_fmt = best_format(infer_factory(peer_model, x), format_reps)
    t_ours, t_peer = time_pair(ours, peer, *reps(quick, 5))
    return dict(ours_time=t_ours, peer_time=t_peer, batch=2, note=_note(ours_fmt, peer_fmt),
                ours_gmacs=gmacs(ours_model, x[:1]), peer_gmacs=gmacs(peer_model, x[:1]))
