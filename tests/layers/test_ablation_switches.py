"""Ablation switches (paper Tables 6-9): frozen positions / radii, initial spread and radius, number of points."""
from __future__ import annotations

import pytest
import timm
import torch
from timm.utils import ModelEmaV3

import smpconv_models  # noqa: F401  (registers the models)
from smpconv_models.layers import (
    SMPCausalConv1d,
    SMPConv,
    SMPDepthwiseConv2d,
    SMPLargeKernelConv2d,
    SMPParallelCausalConv1d,
    SMPParallelConv,
    clamp_radii_,
    smp_param_groups,
)
from tests.helpers import smp_layers

# (constructor taking the switches as kwargs, an input)
LAYERS = {
    'depthwise': (lambda **kw: SMPDepthwiseConv2d(4, 7, n_points=6, **kw), (2, 4, 9, 9)),
    'full': (lambda **kw: SMPConv(3, 4, 7, 5, 0.3, 0.2, **kw), (2, 3, 9, 9)),
    'causal': (lambda **kw: SMPCausalConv1d(3, 4, 16, 5, 0.1, 0.1, **kw), (2, 3, 16)),
    'large_kernel': (lambda **kw: SMPLargeKernelConv2d(4, 7, 3, n_points=6, **kw), (2, 4, 9, 9)),
    'parallel': (lambda **kw: SMPParallelConv(3, 4, 7, 5, 0.3, 0.2, **kw), (2, 3, 9, 9)),
    'parallel_causal': (lambda **kw: SMPParallelCausalConv1d(3, 4, 16, 5, 0.1, 0.1, **kw), (2, 3, 16)),
}
SWITCHES = [(True, True), (False, True), (True, False), (False, False)]


@pytest.mark.parametrize('learn_positions,learn_radius', SWITCHES)
@pytest.mark.parametrize('name', list(LAYERS))
def test_frozen_points_never_change_in_training(name, learn_positions, learn_radius):
    make, shape = LAYERS[name]
    reference = make()
    layer = make(learn_positions=learn_positions, learn_radius=learn_radius)
    assert layer.state_dict().keys() == reference.state_dict().keys()  # checkpoints keep their layout
    (smp,) = smp_layers(layer)
    assert smp.weight_coord.requires_grad == learn_positions and smp.radius.requires_grad == learn_radius
    assert f'learn_positions={learn_positions}, learn_radius={learn_radius}' in repr(smp)
    with torch.no_grad():  # radii above the upper clamp bound: a learnable radius gets clamped, a frozen one not
        smp.radius.add_(torch.rand_like(smp.radius) + 0.5)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    groups = smp_param_groups(layer, weight_decay=0.1, lr=0.05)
    grouped = {id(p) for g in groups for p in g['params']}
    assert (id(smp.weight_coord) in grouped) == learn_positions and (id(smp.radius) in grouped) == learn_radius
    ema = ModelEmaV3(layer, decay=0.5)
    opt = torch.optim.AdamW(groups, lr=0.05)
    x = torch.randn(shape)
    for step in range(3):
        layer(x).square().mean().backward()
        assert (smp.weight_coord.grad is not None) == learn_positions
        assert (smp.radius.grad is not None) == learn_radius
        opt.step()
        opt.zero_grad(set_to_none=True)
        clamp_radii_(layer)
        ema.update(layer, step=step)
    after = layer.state_dict()
    ema_after = ema.module.state_dict()
    for key, frozen in (('weight_coord', not learn_positions), ('radius', not learn_radius)):
        full = next(k for k in after if k.endswith(key))
        assert torch.equal(after[full], before[full]) == frozen, key
        if frozen:  # the EMA copy also keeps the frozen value bit for bit
            assert torch.equal(ema_after[full], before[full])
    weights = next(k for k in after if k.endswith('.weights') or k == 'weights')
    assert not torch.equal(after[weights], before[weights])
    assert (smp.radius.max() <= smp.radius_max) == learn_radius


def test_frozen_positions_give_the_same_weight_gradient():
    torch.manual_seed(1)
    learnable = SMPConv(3, 4, 9, 6, 0.3, 0.3, dtype=torch.float64)
    frozen = SMPConv(3, 4, 9, 6, 0.3, 0.3, learn_positions=False, learn_radius=False, dtype=torch.float64)
    frozen.load_state_dict(learnable.state_dict())
    x = torch.randn(2, 3, 11, 11, dtype=torch.float64)
    for layer in (learnable, frozen):
        layer(x).sin().sum().backward()
    torch.testing.assert_close(frozen.weights.grad, learnable.weights.grad, rtol=1e-12, atol=1e-12)
    assert frozen.weight_coord.grad is None and frozen.radius.grad is None
    assert learnable.weight_coord.grad.abs().sum() > 0 and learnable.radius.grad.abs().sum() > 0


def test_eval_cache_with_frozen_points(monkeypatch):
    layer = SMPConv(3, 4, 7, 5, 0.4, 0.3, learn_positions=False, learn_radius=False).eval()
    calls = []
    original = SMPConv.generate_kernel
    monkeypatch.setattr(SMPConv, 'generate_kernel', lambda self: calls.append(1) or original(self))
    x = torch.randn(1, 3, 9, 9)
    with torch.no_grad():
        y0, y1 = layer(x), layer(x)
    assert len(calls) == 1 and torch.equal(y0, y1)
    with torch.no_grad():
        layer.weights.mul_(2.0)
        layer(x)
    assert len(calls) == 2
    y = layer(x)  # eval with autograd (weights still learnable): a fresh kernel with a graph
    assert len(calls) == 3 and y.requires_grad


@pytest.mark.parametrize('name,kwargs', [
    ('smpconv_cifar', dict(stem_width=4, widths=(4, 6), kernel_size=9)),
    ('smpconv_tcn_mnist', dict(seq_len=32, depth=2, width=4)),
    ('smpconv_t', dict(depths=(1, 1), dims=(8, 16), kernel_sizes=(7, 5))),
])
def test_model_kwargs_reach_every_smp_layer(name, kwargs):
    switches = dict(n_points=7, radius=0.25, coord_std=0.5, learn_positions=False, learn_radius=False)
    model = timm.create_model(name, **kwargs, **switches)
    reference = timm.create_model(name, **kwargs, n_points=7)
    layers = smp_layers(model)
    assert len(layers) == len(smp_layers(reference)) > 0
    for layer in layers:
        assert layer.n_points == 7 and layer.weight_coord.shape[1] == 7
        assert torch.all(layer.radius == 0.25)
        assert not layer.weight_coord.requires_grad and not layer.radius.requires_grad and layer.weights.requires_grad
    positions = torch.cat([m.weight_coord.reshape(-1) for m in layers])
    ref_positions = torch.cat([m.weight_coord.reshape(-1) for m in smp_layers(reference)])
    if name != 'smpconv_tcn_mnist':  # N(0, 0.5) truncated to [-1, 1] has std 0.44 (defaults: 0.2 / 0.05)
        assert 0.35 < positions.std() < 0.55 and positions.std() > ref_positions.std() + 0.1
    # the same state-dict layout: a checkpoint of either loads into the other
    assert model.state_dict().keys() == reference.state_dict().keys()
    model.load_state_dict(reference.state_dict())
    assert not layers[0].weight_coord.requires_grad  # loading values does not unfreeze


def test_imagenet_defaults_are_unchanged():
    model = timm.create_model('smpconv_t', depths=(1, 1), dims=(8, 16), kernel_sizes=(7, 5))
    for layer, k in zip(smp_layers(model), (7, 5)):
        assert layer.n_points == k * k // 4
        assert torch.all(layer.radius == 4.0 / k)
        assert layer.weight_coord.requires_grad and layer.radius.requires_grad
