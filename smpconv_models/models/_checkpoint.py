"""Loading checkpoint files safely (safetensors, or pickles with ``weights_only=True``) into smpconv models."""
from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
from safetensors.torch import load_file

if TYPE_CHECKING:
    from ._family import ModelFamily

__all__ = [
    'load_checkpoint_file', 'unwrap_state_dict', 'strip_prefixes', 'load_weights_', 'check_state_dict_matches',
    'validate_for_model', 'shipped_weights', 'adapt_input_weight', 'adapt_input_layers',
]

_logger = logging.getLogger(__name__)

# The only non-tensor type official checkpoints pickle: ImageNet ones store the training ``args`` namespace.
_SAFE_GLOBALS = [argparse.Namespace]


def load_checkpoint_file(path: str | os.PathLike) -> Mapping[str, Any]:
    """Read a ``.safetensors`` file, or a pickle with ``torch.load(weights_only=True)`` (``argparse.Namespace``
    allow-listed for official ImageNet checkpoints). Raises ``FileNotFoundError`` / ``ValueError`` clearly."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint file not found: {path}')
    if path.suffix == '.safetensors':
        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise ValueError(f'cannot read safetensors checkpoint {path}: {e}') from e
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise ValueError(f'cannot read checkpoint {path} with torch.load(weights_only=True): {e}') from e


def unwrap_state_dict(checkpoint: Mapping[str, Any], use_ema: bool = True) -> dict[str, torch.Tensor]:
    """Pick the weights out of a training checkpoint (``model_ema`` / ``state_dict_ema`` when ``use_ema``, else
    ``model`` / ``state_dict``) and drop DataParallel / DDP ``module.`` prefixes."""
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f'checkpoint must be a dict, got {type(checkpoint).__name__}')
    order = ('model_ema', 'state_dict_ema', 'model', 'state_dict') if use_ema else ('model', 'state_dict')
    for key in order:
        value = checkpoint.get(key)
        if isinstance(value, Mapping):
            checkpoint = value
            break
    out = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if not out:
        raise ValueError('checkpoint holds no tensors')
    return strip_prefixes(out, ('module.', '_orig_mod.'))


def strip_prefixes(state_dict: Mapping[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state_dict.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def load_weights_(model: nn.Module, state_dict: Mapping[str, torch.Tensor], family: ModelFamily) -> nn.Module:
    """Load a checkpoint's ``state_dict`` (official or ours) into ``model`` of ``family`` in place: keys converted by
    the family's checkpoint filter (which adapts the input layers to ``model.in_chans``), the classifier dropped
    where its shape differs (a new head), then every remaining key checked (``ValueError`` naming missing /
    unexpected keys and shape mismatches)."""
    converted = family.checkpoint_filter(dict(state_dict), model, validate=False)
    own = model.state_dict()
    heads = (family.classifier,) if isinstance(family.classifier, str) else tuple(family.classifier)  # (ensembles)
    new_head = {k for k, v in converted.items()
                if k.startswith(tuple(h + '.' for h in heads)) and k in own and own[k].shape != v.shape}
    for k in sorted(new_head):
        _logger.info('new classifier: dropped %s %s', k, tuple(converted.pop(k).shape))
    check_state_dict_matches(model, converted, allowed_missing=new_head)
    model.load_state_dict(converted, strict=False)
    return model


def check_state_dict_matches(
        model: nn.Module,
        state_dict: Mapping[str, torch.Tensor],
        allowed_missing: Iterable[str] = (),
        lenient: Iterable[str] = (),
) -> None:
    """Raise ``ValueError`` listing missing / unexpected keys and shape mismatches against ``model``.

    Keys under a ``lenient`` module name (the classifier and first conv, which loaders replace or adapt when
    ``num_classes`` / ``in_chans`` differ) may be missing or differ in shape.
    """
    own = model.state_dict()
    prefixes = tuple(f'{n}.' for n in lenient if n)
    missing = sorted(k for k in set(own) - set(state_dict) - set(allowed_missing) if not k.startswith(prefixes))
    unexpected = sorted(k for k in set(state_dict) - set(own) if not k.startswith(prefixes))  # e.g. no classifier
    shapes = sorted(f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
                    for k, v in state_dict.items()
                    if k in own and own[k].shape != v.shape and not k.startswith(prefixes))
    if missing or unexpected or shapes:
        parts = []
        for label, items in (('missing keys', missing), ('unexpected keys', unexpected)):
            if items:
                parts.append(f'{label} ({len(items)}): {", ".join(items[:10])}' + (' ...' if len(items) > 10 else ''))
        if shapes:
            parts.append(f'shape mismatches ({len(shapes)}): {"; ".join(shapes[:10])}')
        raise ValueError(f'checkpoint does not match {type(model).__name__}: ' + ' | '.join(parts))


def adapt_input_weight(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """timm's first-conv rule (``timm.models.adapt_input_conv``) along dim 1 of a tensor of any rank (conv weights
    ``[O, I, *k]``, SMP ``weights`` ``[G, I, P]``): one channel sums the source channels, more repeat them and
    rescale by ``old / new`` (so an input with the same image on every channel gives the source model's output)."""
    if in_chans < 1:
        raise ValueError(f'in_chans must be positive, got {in_chans}')
    old = weight.shape[1]
    if in_chans == old:
        return weight
    dtype = weight.dtype
    weight = weight.float()
    if in_chans == 1:
        return weight.sum(1, keepdim=True).to(dtype)
    reps = -(-in_chans // old)
    return (weight.repeat(1, reps, *(1,) * (weight.dim() - 2))[:, :in_chans] * (old / in_chans)).to(dtype)


def adapt_input_layers(state_dict: dict[str, torch.Tensor], model: nn.Module, keys: Iterable[str]
                       ) -> dict[str, torch.Tensor]:
    """In a converted state dict, adapt the input-channel dim of the tensors named ``keys`` (the first layer's SMP
    ``weights``, small-kernel branch, deploy conv and shortcut) to ``model.in_chans`` with
    :func:`adapt_input_weight` where the checkpoint has another channel count (``checkpoint_filter_fn``s call this,
    so ``timm.create_model(..., pretrained=True, in_chans=N)`` adapts every input layer, not only ``first_conv``)."""
    in_chans = getattr(model, 'in_chans', None)
    if not in_chans:
        return state_dict
    for key in keys:
        w = state_dict.get(key)
        if w is not None and w.dim() >= 2 and w.shape[1] != in_chans:
            state_dict[key] = adapt_input_weight(w, in_chans)
            _logger.info('adapted the input channels of %s from %d to %d', key, w.shape[1], in_chans)
    return state_dict


def validate_for_model(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """End of every ``checkpoint_filter_fn``: check the converted keys against ``model`` (lenient on the classifier
    and first conv named by its ``pretrained_cfg``, which timm's loader adapts) and return them."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    check_state_dict_matches(model, state_dict, lenient=(cfg.get('classifier'), cfg.get('first_conv')))
    return state_dict


def shipped_weights(name: str) -> Path:
    """``model.safetensors`` of a weight folder shipped with the project: inside the installed package
    (``smpconv_models/_weights/NAME``, wheels) or in a clone's ``weights/NAME``."""
    package = Path(__file__).resolve().parents[1]
    for root in (package / '_weights', package.parent / 'weights'):
        if (root / name / 'model.safetensors').is_file():
            return root / name / 'model.safetensors'
    return package.parent / 'weights' / name / 'model.safetensors'
