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
    assert len(BLOCKS) == 6


def test_irregular_series_block(monkeypatch):
    index = next(i for i, b in enumerate(BLOCKS) if 'smpconv_irregular_tcn' in b)
    ns = run_block(index, monkeypatch)
    assert ns['logits'].shape == (3, 10) and ns['logits'].isfinite().all() and ns['same']
    model, timestamps, mask = ns['model'], ns['timestamps'], ns['mask']
    with torch.no_grad():  # the padded steps of the third series do not matter
        expected = model(ns['values'], timestamps, mask)
        values = ns['values'].clone()
        values[2, :, 30:] = float('nan')
        torch.testing.assert_close(model(values, timestamps, mask), expected)
    assert ns['mlp_model'].kernel == 'mlp'


def test_point_set_block(monkeypatch):
    index = next(i for i, b in enumerate(BLOCKS) if 'PointConv(' in b)
    ns = run_block(index, monkeypatch)
    assert ns['h'].shape == (8, 38, 32) and ns['h_query'].shape == (8, 5, 32) and ns['logits'].shape == (8, 10)
    assert torch.equal(ns['h_shared'], ns['h']) and ns['nbrs'].idx.shape == (8, 38, 16)
    # outputs at the support points equal the outputs when the same positions are passed as the query
    torch.testing.assert_close(ns['conv'](ns['features'][:8], ns['positions'][:8], query=ns['positions'][:8],
                                          mask=ns['mask'][:8]), ns['h'])


def test_deployment_block(monkeypatch):
    ns = run_block(next(i for i, b in enumerate(BLOCKS) if 'onnxruntime' in b), monkeypatch)
    with torch.no_grad():
        expected = ns['model'](torch.from_numpy(ns['x']))
    got = torch.from_numpy(ns['logits'])
    assert got.shape == (4, 10) and float((got - expected).norm() / expected.norm()) < 1e-4


def test_dense_prediction_block(tmp_path, monkeypatch):
    """The converted-weights block: run where a converted full-size smpconv_t lies at smpconv_t/model.safetensors;
    both encoders hold its weights, the timm one at strides 4, 8, 16, 16."""
    import pytest

    pytest.importorskip('segmentation_models_pytorch')
    import timm
    from safetensors.torch import save_file

    import smpconv_models  # noqa: F401

    torch.manual_seed(0)
    source = timm.create_model('smpconv_t')
    (tmp_path / 'smpconv_t').mkdir()
    save_file(source.state_dict(), str(tmp_path / 'smpconv_t' / 'model.safetensors'))
    monkeypatch.chdir(tmp_path)
    index = next(i for i, b in enumerate(BLOCKS) if 'DeepLabV3Plus' in b)
    ns: dict = {}
    exec(compile(BLOCKS[index], f'README.md python block {index}', 'exec'), ns)
    assert ns['encoder'].feature_info.reduction() == [4, 8, 16, 16]
    assert ns['logits'].shape == (2, 21, 128, 128) and ns['logits'].dtype == torch.bfloat16
    stem = source.stem[0].conv.weight
    assert torch.equal(ns['encoder'].stem_0.conv.weight, stem)
    assert torch.equal(ns['model'].encoder.model.stem_0.conv.weight, stem)
