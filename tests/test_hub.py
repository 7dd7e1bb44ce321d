"""Hub-layout saving (atomic, deploy-aware) and torch.hub entrypoints."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

import smpconv_models  # noqa: F401
from smpconv_models.hub import is_deploy_form, save_pretrained

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_save_and_load_train_and_deploy_forms(tmp_path):
    model = timm.create_model('smpconv_cifar', widths=(8, 12), stem_width=8, kernel_size=9, num_classes=5).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
    save_pretrained(model, tmp_path / 'train')
    loaded = timm.create_model(f'local-dir:{tmp_path / "train"}', pretrained=True).eval()
    deployed = timm.utils.reparameterize_model(model)
    assert is_deploy_form(deployed) and not is_deploy_form(model)
    save_pretrained(deployed, tmp_path / 'deploy')
    assert json.loads((tmp_path / 'deploy' / 'config.json').read_text())['model_args']['deploy'] is True
    loaded_deploy = timm.create_model(f'local-dir:{tmp_path / "deploy"}', pretrained=True).eval()
    assert is_deploy_form(loaded_deploy)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ref)
        torch.testing.assert_close(loaded_deploy(x), ref, rtol=1e-4, atol=1e-5)


def test_save_replaces_atomically(tmp_path, monkeypatch):
    model = timm.create_model('smpconv_tcn_mnist', seq_len=16, depth=1, width=4, n_points=3)
    target = save_pretrained(model, tmp_path / 'm')
    before = (target / 'model.safetensors').read_bytes()

    def broken(*args, **kwargs):
        raise OSError('disk full')

    monkeypatch.setattr('smpconv_models.hub.save_for_hf', broken)
    with pytest.raises(OSError, match='disk full'):
        save_pretrained(timm.create_model('smpconv_tcn_mnist', seq_len=16, depth=1, width=4, n_points=3), target)
    assert (target / 'model.safetensors').read_bytes() == before  # previous checkpoint intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ['m']  # no temporary folder left behind


def test_hubconf_entrypoints_match_registry():
    # what torch.hub.list / torch.hub.help read: hubconf's public callables and their docstrings
    hubconf = torch.hub._import_module('hubconf', str(REPO_ROOT / 'hubconf.py'))
    entrypoints = {n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith('_')}
    assert entrypoints == set(timm.list_models('smpconv_*'))
    assert all(getattr(hubconf, n).__doc__ for n in entrypoints)
    model = torch.hub.load(str(REPO_ROOT), 'smpconv_cifar', source='local', num_classes=7, trust_repo=True)
    assert model.num_classes == 7 and model(torch.randn(1, 3, 32, 32)).shape == (1, 7)
