"""The timm models against the official code: logits, key layouts, parameter counts, reparameterization."""
from __future__ import annotations

import argparse
import importlib
import json
import pickle

import pytest
import timm
import torch
import torch.nn as nn
from safetensors.torch import load_file

import smpconv_models  # noqa: F401
from smpconv_models.layers import SMPConvBase, SMPReparamConv
from smpconv_models.models._checkpoint import check_state_dict_matches
from tests.helpers import rel_err

PARAMS = {
    'smpconv_t': 26_705_248, 'smpconv_b': 79_546_520, 'smpconv_cifar': 489_646, 'smpconv_tcn_mnist': 370_960,
    'smpconv_tcn_scifar10': 373_480, 'smpconv_tcn_chartraj': 373_790, 'smpconv_tcn_speech': 391_840,
    'smpconv_tcn_speech_raw': 370_960,
    'smpconv_irregular_tcn': 370_960, 'smpconv_irregular_tcn_chartraj': 373_790,
    'smpconv_points': 68_706, 'smpconv_points_3d': 1_126_056,
    'smpconv_ensemble': 5 * 373_790,  # five smpconv_tcn_chartraj members by default
}


def tiny_imagenet_kwargs(official_dir):
    cfg = json.loads((official_dir / 'official_tiny_imagenet_config.json').read_text())
    return dict(depths=cfg['layers'], dims=cfg['channels'], kernel_sizes=cfg['large_kernel_sizes'],
                n_points_divide=cfg['n_points_divide'], ffn_ratio=cfg['ffn_ratio'])


# (model name, state file, io file, architecture kwargs)
def fixture_cases(official_dir):
    return {
        'imagenet': ('smpconv_t', 'official_tiny_imagenet_state', 'official_tiny_imagenet_io',
                     tiny_imagenet_kwargs(official_dir)),
        'cifar': ('smpconv_cifar', 'official_cifar10_resnet_state', 'official_cifar10_resnet_io', {}),
        'tcn': ('smpconv_tcn_mnist', 'official_smnist_tcn_state', 'official_smnist_tcn_io', {'seq_len': 100}),
    }


def test_registered_models_and_param_counts():
    assert set(timm.list_models('smpconv_*')) == set(PARAMS)
    for name, count in PARAMS.items():
        model = timm.create_model(name)
        assert sum(p.numel() for p in model.parameters()) == count, name


@pytest.mark.parametrize('case', ['imagenet', 'cifar', 'tcn'])
def test_official_logits_and_reparameterization(official_dir, case):
    name, state, io, kwargs = fixture_cases(official_dir)[case]
    num_classes = load_file(official_dir / f'{io}.safetensors')['logits'].shape[1]
    model = timm.create_model(name, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=dict(
        file=str(official_dir / f'{state}.safetensors'), num_classes=num_classes), **kwargs).eval()
    data = load_file(official_dir / f'{io}.safetensors')
    with torch.no_grad():
        logits = model(data['input'])
        assert rel_err(logits, data['logits']) <= 1e-4
        deployed = timm.utils.reparameterize_model(model)
        assert rel_err(deployed(data['input']), logits) <= 1e-5
    assert not any(isinstance(m, SMPConvBase) for m in deployed.modules())
    assert all(m.reparam_conv is not None for m in deployed.modules() if isinstance(m, SMPReparamConv))
    bns = [n for n, m in deployed.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns == (['norm'] if case == 'imagenet' else [])  # only the pre-pooling norm, which no conv touches
    # the deploy form saves and loads into a model built with deploy=True
    fresh = timm.create_model(name, num_classes=num_classes, deploy=True, **kwargs).eval()
    fresh.load_state_dict(deployed.state_dict())
    with torch.no_grad():
        assert rel_err(fresh(data['input']), logits) <= 1e-5


@pytest.mark.parametrize('variant', ['SMPConv_T', 'SMPConv_B'])
def test_full_official_keys_map(official_dir, variant):
    keys = json.loads((official_dir / 'official_full_keys.json').read_text())
    official = {k: torch.empty(shape) for k, shape in keys[variant].items()}
    model = timm.create_model(variant.lower())
    filter_fn = importlib.import_module('smpconv_models.models.smpconv').checkpoint_filter_fn
    check_state_dict_matches(model, filter_fn(official, model))
    assert sum(v.numel() for k, v in official.items() if 'running' not in k and 'num_batches' not in k
               and not k.endswith('kernel_coord')) == keys[f'{variant}_num_params']


def test_small_model_key_lists(official_dir):
    info = json.loads((official_dir / 'official_small_models.json').read_text())
    cases = [('smnist_tcn', 'smpconv_tcn_mnist', 'smpconv_tcn'), ('cifar10_resnet', 'smpconv_cifar', 'smpconv_cifar')]
    for key, name, module in cases:
        official = {k: torch.zeros(shape) for k, shape in info[key]['keys'].items()}
        for k in official:
            if k.endswith('train_length'):
                official[k] = torch.tensor([784])
        model = timm.create_model(name)
        filter_fn = importlib.import_module(f'smpconv_models.models.{module}').checkpoint_filter_fn
        check_state_dict_matches(model, filter_fn(official, model))


def test_official_pth_checkpoint_with_namespace_and_ema(official_dir, tmp_path):
    """An official ImageNet .pth: model / model_ema / args (Namespace), DDP 'module.' prefixes."""
    state = load_file(official_dir / 'official_tiny_imagenet_state.safetensors')
    data = load_file(official_dir / 'official_tiny_imagenet_io.safetensors')
    kwargs = tiny_imagenet_kwargs(official_dir)
    raw = {f'module.{k}': torch.zeros_like(v) if k.endswith('head.weight') else v for k, v in state.items()}
    path = tmp_path / 'checkpoint-best.pth'
    torch.save({'model': raw, 'model_ema': state, 'optimizer': {'state': {}}, 'epoch': 299, 'scaler': {},
                'args': argparse.Namespace(model='SMPConv_T', lr=4e-3)}, path)
    model = timm.create_model('smpconv_t', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              **kwargs).eval()
    with torch.no_grad():
        assert rel_err(model(data['input']), data['logits']) <= 1e-4  # EMA weights were taken
    model.load_pretrained(str(path), use_ema=False)
    assert model.head.fc.weight.abs().sum() == 0  # the raw weights, head zeroed above


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / 'evil.pth'

    class Payload:
        def __reduce__(self):
            return (print, ('pwned',))

    path.write_bytes(pickle.dumps({'model': Payload()}))
    with pytest.raises(RuntimeError, match='weights_only=True blocked'):  # timm's loader, weights_only=True
        timm.create_model('smpconv_cifar', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    with pytest.raises(ValueError, match='weights_only=True'):  # ours (model.load_pretrained, the converter)
        timm.create_model('smpconv_cifar').load_pretrained(str(path))


def test_mismatched_checkpoint_names_keys(official_dir):
    path = official_dir / 'official_cifar10_resnet_state.safetensors'
    with pytest.raises(ValueError, match='shape mismatches'):
        timm.create_model('smpconv_cifar', widths=(24, 24, 36, 36, 36, 48, 64), pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(path)))
    with pytest.raises(ValueError, match='unexpected keys'):
        timm.create_model('smpconv_cifar', widths=(24, 24, 36), pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(path)))
    with pytest.raises(FileNotFoundError, match='not found'):
        timm.create_model('smpconv_cifar').load_pretrained('/nonexistent.pth')


def test_train_length_mismatch_is_clear(official_dir):
    path = official_dir / 'official_smnist_tcn_state.safetensors'
    with pytest.raises(ValueError, match=r'train_length.*100.*seq_len=784'):
        timm.create_model('smpconv_tcn_mnist', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_new_head_when_classes_differ(official_dir):
    path = official_dir / 'official_cifar10_resnet_state.safetensors'
    state = load_file(path)
    model = timm.create_model('smpconv_cifar', num_classes=100, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=10))
    assert model.head.fc.out_features == 100
    torch.testing.assert_close(model.stem.smp.conv.weights, state['cconv1.Kernel.weights'])
