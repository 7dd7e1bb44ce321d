"""smpconv_points: the timm contract, input forms, padding, masked batch norm, bad input."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn

from smpconv_models.layers.masked import MaskedBatchNorm1d
from smpconv_models.models.smpconv_points import PointSet

SMALL = dict(stem_width=8, widths=(8, 16), depths=(1, 1), stage_points=(10, 5), radii=(0.6, 1.0), k=8)


def _inputs(batch=3, n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(batch, n, 1, generator=g)
    pos = torch.rand(batch, n, 2, generator=g) * 2 - 1
    mask = torch.ones(batch, n, dtype=torch.bool)
    mask[1, 15:] = False
    return feats, pos, mask


@pytest.mark.parametrize('kernel', ['smp', 'mlp'])
def test_contract_and_input_forms(kernel):
    torch.manual_seed(0)
    model = timm.create_model('smpconv_points', kernel=kernel, num_classes=7, **SMALL).eval()
    feats, pos, mask = _inputs()
    with torch.no_grad():
        out = model(feats, pos, mask)
        assert out.shape == (3, 7)
        torch.testing.assert_close(model({'features': feats, 'positions': pos, 'mask': mask}), out)
        torch.testing.assert_close(model((feats, pos, mask)), out)
        torch.testing.assert_close(model(features=feats, positions=pos, mask=mask), out)
        state = model.forward_features(feats, pos, mask)
        assert isinstance(state, PointSet) and state.features.shape[-1] == model.num_features
        torch.testing.assert_close(model.forward_head(state), out)
        assert model.forward_head(state, pre_logits=True).shape == (3, 2 * model.num_features)  # avg + max pool
    assert model.get_classifier() is model.head.fc
    model.reset_classifier(4, 'avg')
    assert model(feats, pos, mask).shape == (3, 4) and model.get_classifier().in_features == model.num_features
    model.reset_classifier(0)
    assert model(feats, pos, mask).shape == (3, model.num_features)
    nwd = model.no_weight_decay()
    if kernel == 'smp':
        assert 'stem.kernel.weight_coord' in nwd and 'stages.1.blocks.0.conv.kernel.radius' in nwd
    else:
        assert not nwd
    assert model.pretrained_cfg['architecture'] == 'smpconv_points'


@pytest.mark.parametrize('kernel', ['smp', 'mlp'])
def test_padded_points_do_not_change_logits(kernel):
    torch.manual_seed(1)
    model = timm.create_model('smpconv_points', kernel=kernel, **SMALL).eval()
    feats, pos, mask = _inputs()
    extra = 9
    feats_pad = torch.cat([feats, torch.randn(3, extra, 1) * 100], 1)
    pos_pad = torch.cat([pos, torch.full((3, extra, 2), float('nan'))], 1)
    mask_pad = torch.cat([mask, torch.zeros(3, extra, dtype=torch.bool)], 1)
    with torch.no_grad():
        torch.testing.assert_close(model(feats_pad, pos_pad, mask_pad), model(feats, pos, mask))
    # in training, batch statistics only count real points too
    model.train()
    torch.manual_seed(2)
    a = model(feats_pad, pos_pad, mask_pad)
    torch.manual_seed(2)
    b = model(feats, pos, mask)
    torch.testing.assert_close(a, b)


def test_masked_batch_norm_counts_real_points_only():
    torch.manual_seed(3)
    bn, ref = MaskedBatchNorm1d(4), nn.BatchNorm1d(4)
    x = torch.randn(2, 6, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    out = bn(x, mask)
    torch.testing.assert_close(out[mask], ref(x[mask]))
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    bn.eval(), ref.eval()
    torch.testing.assert_close(bn(x, mask).reshape(-1, 4), ref(x.reshape(-1, 4)))


def test_gradients_reach_every_parameter():
    model = timm.create_model('smpconv_points', **SMALL)
    for block in (b for stage in model.stages for b in stage.blocks):
        nn.init.ones_(block.bn2.weight)  # zero-initialised (blocks start as identities), which stops the gradient
    feats, pos, mask = _inputs()
    model(feats, pos, mask).logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize('call,error', [
    (lambda m, f, p, k: m({'features': f}), "keys 'features' and 'positions'"),
    (lambda m, f, p, k: m(f), 'need positions'),
    (lambda m, f, p, k: m((f, p, k, k)), 'tuple input'),
    (lambda m, f, p, k: m(f, p[..., :1], k), 'coordinate dimension d=2'),
    (lambda m, f, p, k: m(torch.randn(3, 20, 2), p, k), 'expected F_in=1'),
    (lambda m, f, p, k: m(f, p, k.float()), 'mask must be a bool'),
])
def test_bad_input(call, error):
    model = timm.create_model('smpconv_points', **SMALL)
    feats, pos, mask = _inputs()
    with pytest.raises((ValueError, TypeError), match=error):
        call(model, feats, pos, mask)


def test_bad_config():
    with pytest.raises(ValueError, match='one entry per stage'):
        timm.create_model('smpconv_points', widths=(8, 16), depths=(1,))
    with pytest.raises(ValueError, match="global_pool must be"):
        timm.create_model('smpconv_points', global_pool='token')


def _forward_searching_per_layer(model, feats, pos, mask):
    """The network with every PointConv searching its own neighbourhood (the forward before sharing; reference)."""
    from smpconv_models.layers import farthest_point_sample

    pos = pos.masked_fill(~mask[..., None], 0.0)
    x = model.stem_act(model.stem_bn(model.stem(feats, pos, mask=mask), mask))
    for stage in model.stages:
        if stage.n_points is not None and stage.n_points < pos.shape[1]:
            idx = farthest_point_sample(pos, stage.n_points, mask)
            query, query_mask = pos.gather(1, idx[..., None].expand(-1, -1, pos.shape[-1])), mask.gather(1, idx)
        else:
            query, query_mask = pos, mask
        x = stage.act(stage.bn(stage.down(x, pos, query, mask), query_mask))
        for block in stage.blocks:
            y = block.act(block.bn1(block.conv(x, query, mask=query_mask), query_mask))
            x = block.act(x + block.bn2(block.mix(y), query_mask))
        pos, mask = query, query_mask
    return model.forward_head(PointSet(x, pos, mask))


@pytest.mark.parametrize('kernel', ['smp', 'mlp'])
def test_one_search_per_resolution_gives_the_same_logits(kernel, monkeypatch):
    """Layers on one point set with the same k and radius share one search: 3 searches instead of 7 here (stem;
    stage 0's down conv and its two blocks on the 12 kept points; stage 1 keeps those points, same radius), and
    the logits are bit for bit those of every layer searching for itself (float64)."""
    import importlib

    from tests.helpers import randomize_bn_

    point_conv_module = importlib.import_module('smpconv_models.layers.point_conv')

    torch.manual_seed(4)
    model = timm.create_model('smpconv_points', kernel=kernel, stem_width=6, widths=(8, 8), depths=(2, 2),
                              stage_points=(12, None), radii=(0.6, 0.6), k=6).double().eval()
    randomize_bn_(model)  # opens the zero-initialised residual branches
    feats, pos, mask = (t.double() if t.is_floating_point() else t for t in _inputs(n=30))
    searches = []
    search = point_conv_module.find_neighbors
    monkeypatch.setattr(point_conv_module, 'find_neighbors', lambda *a, **kw: searches.append(a) or search(*a, **kw))
    with torch.no_grad():
        shared = model(feats, pos, mask)
        assert len(searches) == 3
        expected = _forward_searching_per_layer(model, feats, pos, mask)
        assert len(searches) == 10
    assert torch.equal(shared, expected)
    # a block with another radius gets its own search
    model.stages[1].blocks[1].conv.radius = 0.9
    searches.clear()
    with torch.no_grad():
        model(feats, pos, mask)
    assert len(searches) == 4
