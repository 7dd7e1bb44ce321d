"""Building the model of a run: registered name + data-derived kwargs, then initial weights from ``--pretrained``.

``--pretrained`` accepts a registered tag (``smpconv_tcn_mnist.digits``), ``local-dir:PATH`` / a Hub-layout folder,
``hf-hub:REPO`` (through timm) or a checkpoint file (official or ours, through the model's converter). A different
``num_classes`` replaces the head, a different ``in_chans`` adapts the input layers (timm's rule: sum for one
channel, repeat and rescale otherwise), and every other key must match.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn

from ..models._checkpoint import (
    adapt_input_weight,
    check_state_dict_matches,
    load_checkpoint_file,
    unwrap_state_dict,
)

__all__ = ['model_kind', 'build_model', 'resolve_pretrained', 'adapt_channels']

_logger = logging.getLogger(__name__)


def model_kind(name: str) -> str:
    """``'sequence'`` for the TCNs, ``'irregular'`` for the irregular-series TCNs, ``'points'`` for point-set models,
    ``'image'`` for the rest."""
    base = name.split(':')[-1].split('.')[0]
    if base.startswith('smpconv_irregular_tcn'):
        return 'irregular'
    if base.startswith('smpconv_points'):
        return 'points'
    return 'sequence' if base.startswith('smpconv_tcn') else 'image'


def _check_name(name: str) -> None:
    available = timm.list_models('smpconv_*')
    if name not in available:
        raise ValueError(f'unknown model {name!r}; smpconv models: {", ".join(available)}')


def resolve_pretrained(spec: str, model_name: str) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """``(architecture, model_args, state_dict)`` for a ``--pretrained`` spec (state dict not yet converted)."""
    if spec.startswith('hf-hub:'):
        model = timm.create_model(spec, pretrained=True)
        return model.pretrained_cfg['architecture'], dict(getattr(model, 'pretrained_model_args', {}) or {}), \
            model.state_dict()
    path = Path(spec[len('local-dir:'):] if spec.startswith('local-dir:') else spec)
    if path.is_dir():
        config_path = path / 'config.json'
        weights = path / 'model.safetensors'
        if not config_path.is_file() or not weights.is_file():
            raise FileNotFoundError(f'{path} is not a Hub-layout folder (needs config.json and model.safetensors)')
        config = json.loads(config_path.read_text())
        arch = config.get('architecture', model_name)
        return arch, dict(config.get('model_args', {})), unwrap_state_dict(load_checkpoint_file(weights))
    if path.exists():
        return model_name, {}, unwrap_state_dict(load_checkpoint_file(path))
    if path.suffix in ('.pth', '.pt', '.bin', '.safetensors', '.ckpt'):
        raise FileNotFoundError(f'--pretrained checkpoint file not found: {path}')
    name, _, tag = spec.partition('.')
    if name in timm.list_models('smpconv_*') and tag:
        model = timm.create_model(spec, pretrained=True)
        return name, dict(getattr(model, 'pretrained_model_args', {}) or {}), model.state_dict()
    raise FileNotFoundError(f'--pretrained {spec!r} is neither a file, a Hub-layout folder, local-dir:/hf-hub: '
                            'nor a registered pretrained tag (timm.list_pretrained("smpconv_*"))')


def adapt_channels(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """timm's input-channel rule along dim 1: one channel sums, more repeat and rescale by ``old / new``."""
    return adapt_input_weight(weight, in_chans)


def _load_into(model: nn.Module, state_dict: dict[str, torch.Tensor], classifier: str | None) -> None:
    own = model.state_dict()
    allowed_missing = set()
    for k in list(state_dict):
        if k not in own or own[k].shape == state_dict[k].shape:
            continue
        if classifier and k.startswith(classifier + '.'):
            del state_dict[k]
            allowed_missing.add(k)
            _logger.info('new classifier: dropped %s %s', k, tuple(own[k].shape))
        elif state_dict[k].dim() >= 2 and state_dict[k].shape[0] == own[k].shape[0] \
                and state_dict[k].shape[2:] == own[k].shape[2:]:
            state_dict[k] = adapt_channels(state_dict[k], own[k].shape[1])
            _logger.info('adapted input channels of %s to %d', k, own[k].shape[1])
    check_state_dict_matches(model, state_dict, allowed_missing)
    model.load_state_dict(state_dict, strict=False)


def build_model(name: str, model_args: dict[str, Any], pretrained: str | None = None) -> nn.Module:
    """Create ``name`` with ``model_args``; with ``pretrained``, start from those weights (architecture kwargs saved
    with them are used unless ``model_args`` overrides them)."""
    state_dict = None
    if pretrained:
        arch, saved_args, state_dict = resolve_pretrained(pretrained, name)
        if arch != name:
            _logger.info('--pretrained holds %s weights; using that architecture', arch)
            name = arch
        model_args = {**{k: v for k, v in saved_args.items() if k not in ('pretrained_cfg',)}, **model_args}
    _check_name(name)
    model = timm.create_model(name, **model_args)
    if state_dict is not None:
        filter_fn = sys.modules[type(model).__module__].checkpoint_filter_fn
        classifier = model.pretrained_cfg.get('classifier')
        # convert the keys only: _load_into adapts the head and input channels, then checks what remains
        converted = filter_fn(dict(state_dict), model, validate=False)
        _load_into(model, converted, classifier)
    return model

