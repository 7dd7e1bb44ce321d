"""Convert an official SMPConv checkpoint into a timm Hub-layout folder.

``python -m smpconv_models.convert MODEL SRC OUT_DIR [--ema] [--model-args JSON]``

``SRC`` is an official ``.pth`` (read with ``torch.load(weights_only=True)``) or a ``.safetensors`` state dict;
``OUT_DIR`` receives ``config.json`` + ``model.safetensors`` + ``README.md`` and loads with
``timm.create_model('local-dir:OUT_DIR', pretrained=True)``. ``--model-args`` passes architecture kwargs, e.g.
``'{"seq_len": 784}'`` for a sequence model or ``'{"num_classes": 100}'``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

import timm
import torch.nn as nn

from ._io import parse_json_object
from .hub import save_pretrained
from .models import family_of
from .models._checkpoint import check_state_dict_matches, load_checkpoint_file, unwrap_state_dict

__all__ = ['convert_checkpoint', 'create_smpconv_model', 'main']

_logger = logging.getLogger(__name__)


def create_smpconv_model(name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` restricted to registered smpconv models, with a clear error for unknown names."""
    family_of(name)  # an unknown name is an error listing the registered models
    return timm.create_model(name, **kwargs)


def convert_checkpoint(
        model_name: str,
        src: str | os.PathLike,
        out_dir: str | os.PathLike,
        use_ema: bool = False,
        model_args: dict[str, Any] | None = None,
) -> Path:
    """Load an official checkpoint into ``model_name`` (built with ``model_args``) and save it in Hub layout.

    Every key must map (``ValueError`` lists missing / unexpected keys and shape mismatches); ``use_ema`` picks the
    checkpoint's ``model_ema`` weights and fails if there are none.
    """
    model_args = dict(model_args or {})
    model = create_smpconv_model(model_name, **model_args)
    checkpoint = load_checkpoint_file(src)
    if use_ema and not any(k in checkpoint for k in ('model_ema', 'state_dict_ema')):
        raise ValueError(f'--ema requested but {src} holds no EMA weights (keys: {", ".join(list(checkpoint)[:8])})')
    state_dict = family_of(model).checkpoint_filter(unwrap_state_dict(checkpoint, use_ema=use_ema), model)
    check_state_dict_matches(model, state_dict)
    model.load_state_dict(state_dict)
    source = f'converted from the official checkpoint {Path(src).name}' + (' (EMA weights)' if use_ema else '')
    return save_pretrained(model.eval(), out_dir, source=source, model_args=model_args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m smpconv_models.convert', description=__doc__.split('\n\n')[0],
        epilog='Example: python -m smpconv_models.convert smpconv_t SMPConv_T.pth weights/smpconv_t --ema')
    parser.add_argument('model', help='registered model name, e.g. smpconv_t, smpconv_cifar, smpconv_tcn_mnist')
    parser.add_argument('src', help='official checkpoint (.pth / .safetensors)')
    parser.add_argument('out_dir', help='output folder (Hub layout)')
    parser.add_argument('--ema', action='store_true', help='use the EMA weights (model_ema) of the checkpoint')
    parser.add_argument('--model-args', default='{}', help='JSON object of architecture kwargs')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        model_args = parse_json_object(args.model_args, '--model-args')
        out = convert_checkpoint(args.model, args.src, args.out_dir, use_ema=args.ema, model_args=model_args)
    except (ValueError, FileNotFoundError, PermissionError) as e:
        _logger.error('error: %s', e)
        return 2
    sys.stdout.write(f'wrote {out} (load with timm.create_model("local-dir:{out}", pretrained=True))\n')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
