"""The shipped default-run weights: registered as a pretrained tag, loadable via timm and torch.hub, accurate."""
from __future__ import annotations

import json
from pathlib import Path

import timm
import torch

import smpconv_models  # noqa: F401
from smpconv_models.train.data import build_data

REPO_ROOT = Path(__file__).resolve().parents[1]
DIGITS = REPO_ROOT / 'weights' / 'smpconv_tcn_mnist.digits'


def test_folder_is_hub_layout_with_card():
    assert sorted(p.name for p in DIGITS.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    config = json.loads((DIGITS / 'config.json').read_text())
    assert config['architecture'] == 'smpconv_tcn_mnist' and config['model_args']['seq_len'] == 64
    card = (DIGITS / 'README.md').read_text()
    assert 'kim2023smpconv' in card and 'python train.py' in card


def test_registered_tag_reaches_95_percent_on_held_out_digits():
    assert 'smpconv_tcn_mnist.digits' in timm.list_pretrained('smpconv_*')
    model = timm.create_model('smpconv_tcn_mnist.digits', pretrained=True).eval()
    assert model.seq_len == 64 and model.blocks[0].conv1.kernel_size == (64,)
    data = build_data('digits', 'sequence')
    x = torch.stack([data.test[i][0] for i in range(len(data.test))])
    y = torch.stack([data.test[i][1] for i in range(len(data.test))])
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert len(y) == 359 and accuracy >= 0.95
    # the Hub-layout folder itself loads to the same weights, and so does torch.hub from the clone
    local = timm.create_model(f'local-dir:{DIGITS}', pretrained=True).eval()
    hub = torch.hub.load(str(REPO_ROOT), 'smpconv_tcn_mnist', source='local', pretrained=True, tag='digits',
                         trust_repo=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(local(x[:8]), model(x[:8]))
        torch.testing.assert_close(hub(x[:8]), model(x[:8]))
