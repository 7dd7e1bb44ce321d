"""Sequence TCN options for classifying whole series: 'avgmax' pooling (masked_pool: the average and the maximum
over the real steps, side by side) on the grid and irregular TCNs, and one coord_std per block."""
from __future__ import annotations

import pytest
import timm
import torch

import smpconv_models  # noqa: F401  (registers the models)
from tests.helpers import randomize_bn_

SMALL = dict(in_chans=2, num_classes=3, seq_len=12, depth=2, width=5, n_points=4, radius=0.2)


@pytest.mark.parametrize('name', ['smpconv_tcn_chartraj', 'smpconv_irregular_tcn'])
def test_avgmax_is_the_mean_and_the_maximum_over_real_steps(name):
    torch.manual_seed(0)
    model = timm.create_model(name, global_pool='avgmax', **SMALL).double()
    randomize_bn_(model)
    model.eval()
    assert model.head.in_features == 10 and model.head_hidden_size == 10  # twice the 5 features
    x = torch.randn(2, 2, 12, dtype=torch.float64)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, :5] = False
    x[1, :, :5] = 0.0
    with torch.no_grad():
        if name == 'smpconv_irregular_tcn':
            features = model.forward_features(x, None, mask)
            logits = model(x, None, mask)
        else:
            features = model.forward_features(x, mask)
            logits = model(x, mask)
        rows = []
        for b in range(2):
            real = features[b][:, mask[b]]
            rows.append(torch.cat([real.mean(-1), real.amax(-1)]))
        pooled = torch.stack(rows)
        torch.testing.assert_close(logits, model.head(pooled))
    model.reset_classifier(4, 'max')
    assert model.head.in_features == 5 and model.head_hidden_size == 5


def test_coord_std_per_block():
    torch.manual_seed(0)
    model = timm.create_model('smpconv_tcn_chartraj', **{**SMALL, 'n_points': 200, 'coord_std': (0.02, 0.4),
                                                          'causal': False})
    spread = [block.conv1.smp.conv.weight_coord.std().item() for block in model.blocks]
    assert spread[0] < 0.03 and 0.3 < spread[1] < 0.5  # N(0, std) truncated to [-1, 1], per block
    with pytest.raises(ValueError, match='one value or one per block'):
        timm.create_model('smpconv_tcn_chartraj', **{**SMALL, 'coord_std': (0.1, 0.2, 0.3)})
