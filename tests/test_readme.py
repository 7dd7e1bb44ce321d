"""The README's Python examples run as written (from the repository root) and produce what they claim."""
from __future__ import annotations

import re
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r'```python\n(.*?)```', (REPO_ROOT / 'README.md').read_text(), flags=re.S)


def run_block(index: int, monkeypatch) -> dict:
    monkeypatch.chdir(REPO_ROOT)
    namespace: dict = {}
    exec(compile(BLOCKS[index], f'README.md python block {index}', 'exec'), namespace)
    return namespace


def test_model_block(monkeypatch):
    ns = run_block(0, monkeypatch)
    assert ns['logits'].shape == (1, 10)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ns['deployed'](x), ns['model'](x), rtol=1e-4, atol=1e-4)
    assert ns['digits'].seq_len == 64 and ns['hub_model'].num_classes == 100
    assert [f['num_chs'] for f in ns['features'].feature_info.get_dicts()] == [36, 48]


def test_layers_block(monkeypatch):
    ns = run_block(1, monkeypatch)
    assert ns['y'].shape == (2, 96, 56, 56) and ns['out'].shape == (8, 30, 784)
    assert ns['block'].reparam_conv is not None and ns['block'].smp is None
    assert len(BLOCKS) == 3


def test_deployment_block(monkeypatch):
    ns = run_block(2, monkeypatch)
    with torch.no_grad():
        expected = ns['model'](torch.from_numpy(ns['x']))
    got = torch.from_numpy(ns['logits'])
    assert got.shape == (4, 10) and float((got - expected).norm() / expected.norm()) < 1e-4
