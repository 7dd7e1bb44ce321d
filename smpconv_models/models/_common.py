"""What every smpconv model family shares beyond timm's API: point-parameter helpers and checkpoint loading."""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.models import checkpoint_seq

from ..layers import rescale_smp_kernels_
from ..layers.mode import execution_mode, python_only
from ._checkpoint import load_checkpoint_file, load_weights_, unwrap_state_dict

__all__ = ['SMPModelMixin', 'CheckpointSequential']


class CheckpointSequential(nn.Sequential):
    """``nn.Sequential`` that recomputes its modules' activations in backward (timm's ``checkpoint_seq``) while
    ``grad_checkpointing`` is set (``set_grad_checkpointing``), except under TorchScript."""

    def __init__(self, *args: nn.Module):
        super().__init__(*args)
        self.grad_checkpointing = False

    def forward(self, x):
        if self.grad_checkpointing and execution_mode() != 'script':
            return self._checkpointed(x)
        for module in self:
            x = module(x)
        return x

    @python_only
    def _checkpointed(self, x):
        return checkpoint_seq(self, x)


class SMPModelMixin:
    """Mixed into the model classes: kernel re-sampling, no weight decay on points, official checkpoint loading
    through the family's checkpoint filter. Each model file sets its class's ``family`` (the
    :class:`~smpconv_models.models._family.ModelFamily` it describes at its bottom)."""

    @torch.jit.ignore
    def rescale_kernels(self, scale: float) -> dict[str, tuple[int, ...]]:
        """Re-sample every SMP kernel on a grid ``scale`` times as fine: the same continuous kernels spanning
        ``scale`` times as many pixels / steps (fine-tuning at a higher resolution or longer sequences)."""
        return rescale_smp_kernels_(self, scale)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Point positions and radii (the official training applies no weight decay to them)."""
        return {n for n, _ in self.named_parameters() if n.endswith(('.weight_coord', '.radius'))}

    @torch.jit.ignore
    def get_classifier(self):
        """The classifier layer (``head.fc`` of a timm ``ClassifierHead``; families with another head override)."""
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new ``num_classes`` head (and pooling) that follows the model's device, dtype and train / eval mode."""
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)
        p = next(self.parameters(), None)
        self.head.to(**({} if p is None else dict(device=p.device, dtype=p.dtype))).train(self.training)

    @torch.jit.ignore
    def load_pretrained(self, path: str, use_ema: bool = True) -> None:
        """Load an official checkpoint of this family (``model_ema`` preferred) or one of ours, converting keys (what
        ``timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=PATH, custom_load=True))`` calls):
        a classifier of another class count is replaced, the input layers follow ``in_chans``, every other key must
        match (:func:`~smpconv_models.models._checkpoint.load_weights_`)."""
        load_weights_(self, unwrap_state_dict(load_checkpoint_file(path), use_ema=use_ema), type(self).family)
