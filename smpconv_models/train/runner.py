"""``train.py``'s entry point: one model (:func:`~smpconv_models.train.loop.run`) or, with ``--ensemble N`` (or a
recipe that asks for one), N members saved as one ensemble (:func:`~smpconv_models.train.ensemble.run_ensemble`)."""
from __future__ import annotations

import dataclasses
from typing import Any

from . import loop
from .config import TrainConfig
from .ensemble import run_ensemble

__all__ = ['run']


def run(cfg: TrainConfig, argv: list[str] | None = None) -> dict[str, Any]:
    """Train (or with ``eval_only`` evaluate) as configured; returns the summary written to ``summary.json``."""
    resolved = loop.resolve_config(cfg)
    if (resolved.ensemble or 1) > 1 and not resolved.eval_only:
        return run_ensemble(resolved, argv)
    return loop.run(dataclasses.replace(resolved, ensemble=1), argv)
