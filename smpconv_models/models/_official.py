"""Key conversion shared by the CIFAR and sequence families (official ``ckconv`` naming -> ours)."""
from __future__ import annotations

import re

from torch import Tensor

from ._checkpoint import unwrap_state_dict

__all__ = ['convert_ckconv_keys', 'pop_train_lengths', 'linear_from_pointwise']

# Official blocks hold ``cconv{n}`` (SMP conv, points under ``.Kernel``), ``cconv{n}s`` (small conv), ``norm{n}`` and
# ``norm{n}s``; ours group each pair as ``conv{n}.smp.{conv,bn}`` and ``conv{n}.small_conv.{conv,bn}``.
_RULES = [
    (re.compile(r'(^|\.)cconv(\d+)\.Kernel\.'), r'\1conv\2.smp.conv.'),
    (re.compile(r'(^|\.)cconv(\d+)\.bias$'), r'\1conv\2.smp.conv.bias'),
    (re.compile(r'(^|\.)cconv(\d+)s\.'), r'\1conv\2.small_conv.conv.'),
    (re.compile(r'(^|\.)norm(\d+)s\.'), r'\1conv\2.small_conv.bn.'),
    (re.compile(r'(^|\.)norm(\d+)\.'), r'\1conv\2.smp.bn.'),
    (re.compile(r'\.shortcut\.0\.'), '.shortcut.'),
]


def pop_train_lengths(state_dict: dict[str, Tensor]) -> dict[str, int]:
    """Remove the official persistent ``train_length`` buffers, returning their values by key."""
    return {k: int(state_dict.pop(k).reshape(-1)[0]) for k in [k for k in state_dict if k.endswith('.train_length')]}


def convert_ckconv_keys(state_dict: dict[str, Tensor], top_renames: list[tuple[str, str]]) -> dict[str, Tensor]:
    """Rename official CIFAR / sequence keys; ``top_renames`` maps module prefixes (``backbone.`` -> ``blocks.``)."""
    if 'model' in state_dict or 'model_ema' in state_dict or any(k.startswith('module.') for k in state_dict):
        state_dict = unwrap_state_dict(state_dict)
    out = {}
    for k, v in state_dict.items():
        for old, new in top_renames:
            if k.startswith(old):
                k = new + k[len(old):]
        for pattern, repl in _RULES:
            k = pattern.sub(repl, k)
        out[k] = v
    return out


def linear_from_pointwise(weight: Tensor) -> Tensor:
    """An official ``Linear{1,2}d`` (pointwise conv) weight ``[O, I, 1...]`` as an ``nn.Linear`` weight ``[O, I]``."""
    return weight.reshape(weight.shape[0], weight.shape[1]) if weight.dim() > 2 else weight

