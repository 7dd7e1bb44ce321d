"""Checkpoints of a training run: Hub-layout weight folders (best / last) and the resumable training state.

Both are written into a temporary sibling folder and renamed into place when complete, so a run killed at any
moment leaves the previous checkpoint loadable. The training state is Accelerate's ``save_state`` (model,
optimizer, scheduler, grad scaler, RNG states of every process, loaded back with ``weights_only=True``) plus
``progress.json`` (epoch, step, best score) and, with EMA, ``ema.safetensors``.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch.nn as nn
from safetensors.torch import load_file, save_file

from ..hub import atomic_replace_dir

__all__ = ['save_training_state', 'load_training_state', 'STATE_DIR']

STATE_DIR = 'state'
_PROGRESS = 'progress.json'
_EMA = 'ema.safetensors'


def save_training_state(accelerator, state_dir: Path, progress: dict[str, Any], ema: nn.Module | None) -> None:
    """Save the full training state to ``state_dir`` atomically (all processes must call this)."""
    state_dir = Path(state_dir)
    tmp = state_dir.with_name(f'.{state_dir.name}.tmp')
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if ema is not None:
            save_file({k: v.detach().contiguous().cpu() for k, v in ema.state_dict().items()}, str(tmp / _EMA))
        (tmp / _PROGRESS).write_text(json.dumps(progress, indent=1))
        atomic_replace_dir(tmp, state_dir)
    accelerator.wait_for_everyone()


def load_training_state(accelerator, state_dir: Path, ema: nn.Module | None) -> dict[str, Any]:
    """Restore what :func:`save_training_state` wrote; returns the progress record."""
    state_dir = Path(state_dir)
    if not (state_dir / _PROGRESS).is_file():
        raise FileNotFoundError(f'no resumable training state in {state_dir} (expected {_PROGRESS} from a run)')
    accelerator.load_state(str(state_dir))
    if ema is not None:
        if not (state_dir / _EMA).is_file():
            raise FileNotFoundError(f'{state_dir} has no {_EMA} but this run keeps an EMA; resume with the same --ema')
        ema.load_state_dict(load_file(str(state_dir / _EMA)))
    return json.loads((state_dir / _PROGRESS).read_text())
