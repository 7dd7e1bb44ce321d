"""The converter CLI: official checkpoint -> Hub-layout folder that timm loads with identical outputs."""
from __future__ import annotations

import argparse
import json

import pytest
import timm
import torch
from safetensors.torch import load_file

import smpconv_models  # noqa: F401
from smpconv_models.convert import convert_checkpoint, main


def test_convert_tcn_and_load_local_dir(official_dir, tmp_path, capsys):
    out = tmp_path / 'tcn'
    rc = main(['smpconv_tcn_mnist', str(official_dir / 'official_smnist_tcn_state.safetensors'), str(out),
               '--model-args', '{"seq_len": 100}'])
    assert rc == 0 and 'local-dir' in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 'smpconv_tcn_mnist' and config['model_args']['seq_len'] == 100
    card = (out / 'README.md').read_text()
    assert 'official checkpoint official_smnist_tcn_state.safetensors' in card and 'kim2023smpconv' in card
    model = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    data = load_file(official_dir / 'official_smnist_tcn_io.safetensors')
    with torch.no_grad():
        torch.testing.assert_close(model(data['input']), data['logits'], rtol=1e-4, atol=1e-5)


def test_convert_imagenet_pth_with_ema(official_dir, tmp_path):
    state = load_file(official_dir / 'official_tiny_imagenet_state.safetensors')
    cfg = json.loads((official_dir / 'official_tiny_imagenet_config.json').read_text())
    src = tmp_path / 'SMPConv_T.pth'
    torch.save({'model': {k: v * 0 for k, v in state.items()}, 'model_ema': state, 'epoch': 1,
                'args': argparse.Namespace(lr=4e-3)}, src)
    model_args = dict(depths=cfg['layers'], dims=cfg['channels'], kernel_sizes=cfg['large_kernel_sizes'])
    out = convert_checkpoint('smpconv_t', src, tmp_path / 'out', use_ema=True, model_args=model_args)
    model = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    data = load_file(official_dir / 'official_tiny_imagenet_io.safetensors')
    with torch.no_grad():
        torch.testing.assert_close(model(data['input']), data['logits'], rtol=1e-4, atol=1e-4)


def test_convert_errors_leave_nothing(official_dir, tmp_path):
    src = str(official_dir / 'official_smnist_tcn_state.safetensors')
    out = tmp_path / 'out'
    assert main(['smpconv_tcn_mnist', src, str(out)]) == 2  # train_length 100 != seq_len 784
    assert main(['smpconv_nope', src, str(out)]) == 2
    assert main(['smpconv_tcn_mnist', str(tmp_path / 'missing.pth'), str(out)]) == 2
    assert main(['smpconv_tcn_mnist', src, str(out), '--ema', '--model-args', '{"seq_len": 100}']) == 2  # no EMA
    assert main(['smpconv_cifar', src, str(out)]) == 2  # wrong family: keys do not match
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match='unknown model'):
        convert_checkpoint('resnet50', src, out)
