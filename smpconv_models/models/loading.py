"""Building a model with weights, wherever they are (``train.py --pretrained``, export, viz and conversion use this):

* a registered name (``smpconv_cifar``: no weights) or pretrained tag (``smpconv_tcn_mnist.digits``, built with the
  architecture kwargs of those weights);
* a Hub-layout folder (``config.json`` + ``model.safetensors``; ``local-dir:`` optional) or a ``train.py`` run
  folder (its ``best/``, else ``last/``), built with the ``model_args`` saved there;
* ``hf-hub:REPO`` (through timm);
* a checkpoint file, official or ours (``.pth``, ``.safetensors``, ...), converted by the family's checkpoint filter.

A different ``num_classes`` replaces the classifier, a different ``in_chans`` adapts the family's input layers
(timm's rule: sum for one channel, repeat and rescale otherwise), and every other key must match
(:func:`~smpconv_models.models._checkpoint.load_weights_`).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn

from ._checkpoint import load_checkpoint_file, load_weights_, unwrap_state_dict
from .families import family_of

__all__ = ['resolve_pretrained', 'build_model', 'load_model']

_logger = logging.getLogger(__name__)

_CHECKPOINT_SUFFIXES = ('.pth', '.pt', '.bin', '.safetensors', '.ckpt')


def _hub_folder(path: Path) -> Path | None:
    """``path`` itself when it is a Hub-layout folder (has ``config.json``), else a ``train.py`` run folder's
    ``best/`` or ``last/``; None when it is neither."""
    if (path / 'config.json').is_file():
        return path
    return next((path / d for d in ('best', 'last') if (path / d / 'config.json').is_file()), None)


def resolve_pretrained(spec: str, model_name: str | None = None
                       ) -> tuple[str | None, dict[str, Any], dict[str, torch.Tensor]]:
    """``(architecture, model_args, state_dict)`` of the weights ``spec`` names (see the module docstring; the state
    dict not yet converted). ``model_name`` is the architecture of a bare checkpoint file (which does not say)."""
    if spec.startswith('hf-hub:'):
        model = timm.create_model(spec, pretrained=True)
        return model.pretrained_cfg['architecture'], dict(model.pretrained_model_args), model.state_dict()
    path = Path(spec.removeprefix('local-dir:'))
    if path.is_dir():
        folder = _hub_folder(path)
        if folder is None:
            raise FileNotFoundError(f'{path} is neither a Hub-layout folder (config.json + model.safetensors) nor a '
                                    'train.py run folder (best/ or last/)')
        if not (folder / 'model.safetensors').is_file():
            raise FileNotFoundError(f'{folder} is not a Hub-layout folder (needs config.json and model.safetensors)')
        config = json.loads((folder / 'config.json').read_text())
        return (config.get('architecture', model_name), dict(config.get('model_args', {})),
                unwrap_state_dict(load_checkpoint_file(folder / 'model.safetensors')))
    if path.exists():
        return model_name, {}, unwrap_state_dict(load_checkpoint_file(path))
    if path.suffix in _CHECKPOINT_SUFFIXES:
        raise FileNotFoundError(f'checkpoint file not found: {path}')
    name, _, tag = spec.partition('.')
    if tag and name in timm.list_models('smpconv_*'):
        model = timm.create_model(spec, pretrained=True)
        return name, dict(family_of(name).tag_args.get(spec, {})), model.state_dict()
    raise FileNotFoundError(f'{spec!r} is neither a file, a Hub-layout folder, local-dir:/hf-hub: nor a registered '
                            'pretrained tag (timm.list_pretrained("smpconv_*"))')


def build_model(name: str | None, model_args: dict[str, Any], pretrained: str | None = None) -> nn.Module:
    """Create ``name`` with ``model_args``; with ``pretrained`` (any ``spec`` of :func:`resolve_pretrained`) start
    from those weights, in the architecture they were saved with (``name`` may then be None) and with their saved
    architecture kwargs unless ``model_args`` overrides them."""
    state_dict = None
    if pretrained:
        arch, saved_args, state_dict = resolve_pretrained(pretrained, name)
        if arch is None:
            raise ValueError(f'{pretrained} does not say its architecture: name it (e.g. smpconv_cifar)')
        if name is not None and arch != name:
            _logger.info('%s holds %s weights; using that architecture', pretrained, arch)
        name = arch
        model_args = {**{k: v for k, v in saved_args.items() if k != 'pretrained_cfg'}, **model_args}
    if name is None:
        raise ValueError('build_model needs a model name or pretrained weights')
    family_of(name)  # an unknown name is an error listing the registered models
    model = timm.create_model(name, **model_args)
    if state_dict is not None:
        load_weights_(model, state_dict, family_of(model))
    return model


def load_model(spec: str, model: str | None = None, model_args: dict[str, Any] | None = None) -> nn.Module:
    """An eval-mode model from a registered name or pretrained tag, a Hub-layout or ``train.py`` run folder,
    ``hf-hub:REPO``, or a checkpoint file (``model`` names its architecture)."""
    model_args = dict(model_args or {})
    path = Path(spec.removeprefix('local-dir:'))
    if spec.startswith('hf-hub:') or path.is_dir():
        return build_model(model, model_args, spec).eval()
    if path.is_file():
        if model is None:
            raise ValueError(f'{path} is a checkpoint file: name its architecture with --model (e.g. smpconv_cifar)')
        return build_model(model, model_args, str(path)).eval()
    try:
        family_of(spec)
    except ValueError as e:
        raise ValueError(f'{spec!r} is neither a file, a folder nor a registered model ({e})') from None
    # a pretrained tag brings its own architecture kwargs (e.g. the digits TCN's seq_len=64)
    return timm.create_model(spec, pretrained='.' in spec, **model_args).eval()
