"""Save smpconv models in timm's Hugging Face Hub layout and push them to the Hub.

A Hub-layout folder holds ``config.json`` (architecture, ``model_args``, ``pretrained_cfg``), ``model.safetensors``
and a ``README.md`` model card; ``timm.create_model('local-dir:FOLDER')`` and ``timm.create_model('hf-hub:REPO')``
load it. Writing goes through timm's ``save_for_hf`` (its config conventions) into a temporary sibling folder that
replaces the target only when complete, so an interrupted save never leaves a half-written folder behind.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch.nn as nn
from timm.models import save_for_hf

from .layers import SMPReparamConv

__all__ = ['save_pretrained', 'push_to_hub', 'model_card', 'is_deploy_form', 'atomic_replace_dir', 'CITATION']

_logger = logging.getLogger(__name__)

CITATION = """@inproceedings{kim2023smpconv,
  title     = {SMPConv: Self-moving Point Representations for Continuous Convolution},
  author    = {Kim, Sanghyeon and Park, Eunbyung},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2023}
}"""


def is_deploy_form(model: nn.Module) -> bool:
    """True when the model holds no SMP point parameters (reparameterized or built with ``deploy=True``)."""
    # every reparam block folded (kernel='mlp' models hold MLP kernels instead of SMP points, in train form)
    reparams = [m for m in model.modules() if isinstance(m, SMPReparamConv)]
    return bool(reparams) and all(m.reparam_conv is not None for m in reparams)


def model_card(
        model: nn.Module,
        *,
        source: str | None = None,
        metrics: Mapping[str, Any] | None = None,
        recipe: Mapping[str, Any] | None = None,
        gmacs: float | None = None,
) -> str:
    """A Hub model card: YAML metadata, model facts (params, GMACs, form), weight source, metrics, citation."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    arch = cfg.get('architecture', type(model).__name__)
    params = sum(p.numel() for p in model.parameters())
    form = 'deploy (reparameterized, standard layers only)' if is_deploy_form(model) else 'train (SMP points)'
    lines = [
        '---', 'library_name: timm', 'license: mit', 'tags:', '- image-classification', '- timm', '- smpconv',
        '---', f'# {arch}', '',
        'An SMPConv model (continuous convolution kernels made of self-moving points; Kim & Park, CVPR 2023; '
        'official code: https://github.com/sangnekim/SMPConv), saved by smpconv-models in timm\'s Hub layout.', '',
        '## Model details', f'- architecture: `{arch}`', f'- parameters: {params:,}',
        f'- form: {form}',
    ]
    if gmacs is not None:
        lines.append(f'- GMACs: {gmacs:.2f} (fvcore, `python -m smpconv_models.flops {arch}`)')
    if cfg.get('input_size'):
        lines.append(f'- input size: {tuple(cfg["input_size"])}')
    lines.append(f'- weights: {source or "trained with smpconv-models"}')
    if recipe:
        lines += ['', '## Training recipe'] + [f'- {k}: {v}' for k, v in recipe.items()]
    if metrics:
        lines += ['', '## Metrics'] + [f'- {k}: {round(v, 4) if isinstance(v, float) else v}'
                                       for k, v in metrics.items()]
    lines += ['', '## Usage', '```python', 'import timm, smpconv_models', '',
              "model = timm.create_model('local-dir:PATH_TO_THIS_FOLDER')  # or 'hf-hub:REPO_ID'", '```',
              '', '## Citation', '```bibtex', CITATION, '```', '']
    return '\n'.join(lines)


def atomic_replace_dir(tmp_dir: Path, target: Path) -> None:
    """Move a completed ``tmp_dir`` to ``target``, replacing an existing folder with two renames."""
    old = None
    if target.exists():
        old = target.with_name(f'.{target.name}.old-{uuid.uuid4().hex[:8]}')
        os.replace(target, old)
    os.replace(tmp_dir, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_pretrained(
        model: nn.Module,
        save_directory: str | os.PathLike,
        *,
        source: str | None = None,
        metrics: Mapping[str, Any] | None = None,
        recipe: Mapping[str, Any] | None = None,
        gmacs: float | None = None,
        model_args: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` + ``README.md`` for ``model`` into ``save_directory`` atomically.

    Deploy-form models record ``deploy=True`` in ``model_args`` so that loading builds the folded layers.
    """
    target = Path(save_directory)
    parent = target.parent if str(target.parent) else Path('.')
    parent.mkdir(parents=True, exist_ok=True)
    if not os.access(parent, os.W_OK):
        raise PermissionError(f'cannot write to {parent}')
    args = dict(model_args or {})
    if is_deploy_form(model):
        args['deploy'] = True
    tmp = Path(tempfile.mkdtemp(prefix=f'.{target.name}.tmp-', dir=parent))
    try:
        save_for_hf(model, str(tmp), model_args=args or None, safe_serialization=True)
        (tmp / 'README.md').write_text(model_card(model, source=source, metrics=metrics, recipe=recipe, gmacs=gmacs))
        atomic_replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _logger.info('saved %s', target)
    return target


def push_to_hub(
        model_or_folder: nn.Module | str | os.PathLike,
        repo_id: str,
        *,
        token: str | None = None,
        private: bool = False,
        commit_message: str = 'Add SMPConv model',
        revision: str | None = None,
        **card_kwargs: Any,
) -> str:
    """Upload a Hub-layout folder (or save ``model`` into one first) to ``repo_id``; returns the commit URL.

    Raises ``RuntimeError`` with the Hub's reason (no token, no network, no permission) instead of a bare traceback.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(model_or_folder, nn.Module):
            folder = save_pretrained(model_or_folder, Path(tmp) / 'model', **card_kwargs)
        else:
            folder = Path(model_or_folder)
            if not (folder / 'config.json').is_file() or not (folder / 'model.safetensors').is_file():
                raise FileNotFoundError(f'{folder} is not a Hub-layout folder (config.json + model.safetensors)')
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=commit_message,
                                     revision=revision)
        except Exception as e:
            raise RuntimeError(f'push to the Hub repo {repo_id!r} failed: {type(e).__name__}: {e}') from e
    return str(getattr(info, 'commit_url', info))


def read_config(folder: str | os.PathLike) -> dict:
    """The ``config.json`` of a Hub-layout folder."""
    path = Path(folder) / 'config.json'
    if not path.is_file():
        raise FileNotFoundError(f'no config.json in {folder}')
    return json.loads(path.read_text())
