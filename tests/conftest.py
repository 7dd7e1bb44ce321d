"""Shared test fixtures: the official reference tensors beside the repo (``../shared/fixtures/official``)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_DIR = Path(os.environ.get('SMPCONV_OFFICIAL_FIXTURES', REPO_ROOT.parent / 'shared' / 'fixtures' / 'official'))


@pytest.fixture(scope='session')
def official_dir() -> Path:
    if not OFFICIAL_DIR.is_dir():
        raise FileNotFoundError(
            f'official fixtures not found at {OFFICIAL_DIR}; set SMPCONV_OFFICIAL_FIXTURES to their folder')
    return OFFICIAL_DIR


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
