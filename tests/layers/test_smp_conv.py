"""SMP conv modules: outputs against plain convolutions, reparameterization, kernel cache, bad input."""
from __future__ import annotations

import contextlib
import copy

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from smpconv_models.layers import (
    SMPCausalConv1d,
    SMPConv,
    SMPConvBase,
    SMPDepthwiseConv2d,
    SMPLargeKernelConv2d,
    SMPParallelCausalConv1d,
    SMPParallelConv,
    causal_conv1d,
    clamp_radii_,
    fold_bn_into_next_conv,
    fuse_bn,
    share_kernels,
    smp_param_groups,
)
from tests.helpers import randomize_bn_, rel_err


def test_depthwise_forward_is_grouped_conv():
    layer = SMPDepthwiseConv2d(6, 13)
    x = torch.randn(2, 6, 20, 20)
    expected = F.conv2d(x, layer.generate_kernel(), padding=6, groups=6)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('ndim', [1, 2, 3])
def test_full_conv_forward_is_same_conv(ndim):
    layer = SMPConv(3, 4, 5, n_points=6, radius=0.3, coord_std=0.3, ndim=ndim)
    nn.init.normal_(layer.bias)
    x = torch.randn(2, 3, *(7,) * ndim)
    conv = (F.conv1d, F.conv2d, F.conv3d)[ndim - 1]
    expected = conv(x, layer.generate_kernel(), layer.bias, padding=2)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    assert layer.weight_coord.shape == (4, 6, ndim) and layer.radius.shape == (4, 6, *(1,) * ndim)


def test_causal_smp_conv():
    layer = SMPCausalConv1d(2, 3, kernel_size=50, n_points=8, radius=0.1, coord_std=0.1)
    assert (layer.weight_coord > -1).all() and (layer.weight_coord <= 1).all()
    assert layer.weight_coord.mean() > 0.5  # initialised near +1 = "now"
    x = torch.randn(2, 2, 50)
    y = layer(x)
    torch.testing.assert_close(y, causal_conv1d(x, layer.generate_kernel(), layer.bias, fft=False),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(SMPCausalConv1d(2, 3, 50, 8, 0.1, 0.1, fft=True).eval()(x).shape, y.shape)


def test_reparameterize_matches_eval_output():
    block = SMPLargeKernelConv2d(8, 13, small_kernel_size=5)
    randomize_bn_(block)
    nn.init.normal_(block.small_conv.conv.weight, std=0.2)
    block.eval()
    x = torch.randn(2, 8, 24, 24)
    ref = block(x).detach()  # autograd recording: the two branches, not the eval-mode folded kernel
    with torch.no_grad():
        block.reparameterize()
        out = block(x)
    assert block.smp is None and block.small_conv is None
    assert isinstance(block.reparam_conv, nn.Conv2d) and block.reparam_conv.bias is not None
    assert block.reparam_conv.groups == 8 and block.reparam_conv.kernel_size == (13, 13)
    assert rel_err(out, ref) <= 1e-5
    weight = block.reparam_conv.weight.clone()
    block.reparameterize()  # idempotent
    assert torch.equal(block.reparam_conv.weight, weight)


def test_timm_reparameterize_model_and_deploy_load():
    model = nn.Sequential(SMPLargeKernelConv2d(4, 9, 3), nn.ReLU(), SMPLargeKernelConv2d(4, 7, 5))
    randomize_bn_(model)
    model.eval()
    x = torch.randn(1, 4, 16, 16)
    ref = model(x).detach()
    with torch.no_grad():
        deployed = timm.utils.reparameterize_model(model)
        assert rel_err(deployed(x), ref) <= 1e-5
    assert not any(isinstance(m, SMPDepthwiseConv2d) for m in deployed.modules())
    fresh = nn.Sequential(SMPLargeKernelConv2d(4, 9, 3, deploy=True), nn.ReLU(),
                          SMPLargeKernelConv2d(4, 7, 5, deploy=True)).eval()
    fresh.load_state_dict(deployed.state_dict())
    with torch.no_grad():
        assert rel_err(fresh(x), ref) <= 1e-5


def test_eval_cache_reuses_and_invalidates(monkeypatch):
    layer = SMPConv(3, 4, 7, n_points=5, radius=0.4, coord_std=0.3).eval()
    x = torch.randn(1, 3, 9, 9)
    calls = []
    original = SMPConv.generate_kernel
    monkeypatch.setattr(SMPConv, 'generate_kernel', lambda self: calls.append(1) or original(self))
    with torch.no_grad():
        y0 = layer(x)
        y1 = layer(x)
        assert len(calls) == 1 and torch.equal(y0, y1)
        # in-place parameter change (as an optimizer step does)
        layer.weights.mul_(2.0)
        y2 = layer(x)
        assert len(calls) == 2
        torch.testing.assert_close(y2 - layer.bias[:, None, None], 2 * (y0 - layer.bias[:, None, None]))
        # load_state_dict of other values
        other = SMPConv(3, 4, 7, n_points=5, radius=0.4, coord_std=0.3).eval()
        layer.load_state_dict(other.state_dict())
        torch.testing.assert_close(layer(x), other(x))
        # .data replacement and radius clamping
        layer.radius.data = torch.full_like(layer.radius, 5.0)
        y3 = layer(x)
        layer.clamp_radii_()
        assert layer.radius.max() == 1.0
        assert not torch.allclose(layer(x), y3)


def test_cache_never_stale_after_optimizer_step():
    layer = SMPDepthwiseConv2d(4, 9)
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    x = torch.randn(2, 4, 12, 12)
    layer.eval()
    with torch.no_grad():
        before = layer(x)
    layer.train()
    layer(x).square().sum().backward()
    opt.step()
    layer.eval()
    with torch.no_grad():
        after = layer(x)
        expected = F.conv2d(x, layer.generate_kernel(), padding=4, groups=4)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)


def test_eval_with_grad_still_backprops_to_points():
    layer = SMPDepthwiseConv2d(2, 7).eval()
    layer(torch.randn(1, 2, 8, 8)).sum().backward()
    assert layer.weight_coord.grad is not None and layer.weight_coord.grad.abs().sum() > 0


def _accumulation_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(SMPConv(3, 4, 5, n_points=6, radius=0.3, coord_std=0.3), nn.GELU(),
                         SMPDepthwiseConv2d(4, 7), nn.GELU(), SMPConv(4, 2, 3, n_points=4, radius=0.5, coord_std=0.3)
                         ).double()


def _accumulate(net: nn.Module, xs: list[torch.Tensor], share: bool) -> dict[str, torch.Tensor]:
    net.zero_grad()
    for i, x in enumerate(xs):
        with share_kernels(net, final=i == len(xs) - 1) if share else contextlib.nullcontext():
            (net(x) * torch.linspace(-1, 1, x.shape[-1], dtype=x.dtype)).square().sum().backward()
    return {n: p.grad.clone() for n, p in net.named_parameters()}


def test_share_kernels_generates_once_per_step_with_equal_gradients(monkeypatch):
    net = _accumulation_net()
    xs = [torch.randn(2, 3, 10, 10, dtype=torch.float64) for _ in range(3)]
    expected = _accumulate(net, xs, share=False)
    calls = []
    original = SMPConvBase.generate_kernel
    monkeypatch.setattr(SMPConvBase, 'generate_kernel', lambda self: calls.append(1) or original(self))
    got = _accumulate(net, xs, share=True)
    assert len(calls) == 3  # one per layer, not one per layer and micro-batch
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-12, atol=1e-14, msg=name)
    assert all(m._shared is None and m._share_final is None for m in net.modules() if isinstance(m, SMPConvBase))
    # after an optimizer step the next accumulation window generates fresh kernels from the new points
    torch.optim.SGD(net.parameters(), lr=0.1).step()
    expected = _accumulate(net, xs, share=False)
    calls.clear()
    got = _accumulate(net, xs, share=True)
    assert len(calls) == 3
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


def test_copy_mid_window_starts_without_shared_kernels():
    net = _accumulation_net()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    with share_kernels(net, final=False):
        net(x).sum().backward()
    assert net[0]._shared is not None
    twin = copy.deepcopy(net)
    assert all(m._shared is None for m in twin.modules() if isinstance(m, SMPConvBase))
    twin.zero_grad()
    twin(x).sum().backward()
    with share_kernels(net, final=True):  # the original still finishes its window: two micro-batches of gradient
        net(x).sum().backward()
    for (name, p), q in zip(net.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, 2 * q.grad, msg=name)


def test_share_kernels_warns_when_points_change_mid_window():
    net = _accumulation_net()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    with share_kernels(net, final=False):
        net(x).sum().backward()
    with torch.no_grad():  # points updated without a final micro-batch (its gradient never reached them)
        net[2].weights.mul_(2.0)
    with pytest.warns(UserWarning, match='before the final micro-batch'), share_kernels(net, final=True):
        net(x).sum()
    with pytest.raises(TypeError, match=r'expects an nn\.Module, got list'), share_kernels([net], True):
        pass


def test_deepcopy_and_to_regenerate():
    layer = SMPDepthwiseConv2d(2, 7).eval()
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        layer(x.float())
        double = copy.deepcopy(layer).double()
        torch.testing.assert_close(double(x), layer(x.float()).double(), rtol=1e-5, atol=1e-6)
        assert double.smp_weight().dtype == torch.float64


def test_clamp_and_param_groups():
    model = nn.Sequential(SMPLargeKernelConv2d(4, 9, 3), SMPConv(4, 4, 5, 6, 0.3, 0.1))
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, 'radius'):
                m.radius.uniform_(-1, 3)
    clamp_radii_(model)
    assert model[0].smp.conv.radius.min() >= 1e-3 and model[0].smp.conv.radius.max() <= 1
    assert model[1].radius.min() >= 1e-4 and model[1].radius.max() <= 1
    groups = {g['name']: g for g in smp_param_groups(model, weight_decay=0.05, lr=1e-3)}
    radius_ids = {id(model[0].smp.conv.radius), id(model[1].radius)}
    assert {id(p) for p in groups['radius']['params']} == radius_ids
    assert groups['radius']['lr'] == pytest.approx(1e-4) and groups['radius']['weight_decay'] == 0
    no_decay = {id(p) for p in groups['no_decay']['params']}
    assert id(model[1].weight_coord) in no_decay and id(model[1].bias) in no_decay
    assert {id(p) for p in groups['decay']['params']} == {
        id(model[0].smp.conv.weights), id(model[0].small_conv.conv.weight), id(model[1].weights)}
    assert sum(len(g['params']) for g in groups.values()) == len(list(model.parameters()))
    torch.optim.AdamW(list(groups.values()), lr=1e-3)  # accepted by a torch optimizer


@pytest.mark.parametrize('make,x,err,match', [
    (lambda: SMPDepthwiseConv2d(4, 9), torch.randn(1, 3, 8, 8), ValueError, 'channels'),
    (lambda: SMPDepthwiseConv2d(4, 9), torch.randn(4, 8, 8), ValueError, '4-d input'),
    (lambda: SMPConv(3, 4, 5, 6, 0.3, 0.1), torch.randint(0, 5, (1, 3, 8, 8)), TypeError, 'floating-point'),
    (lambda: SMPCausalConv1d(2, 2, 9, 4, 0.1, 0.1), torch.randn(1, 2, 3, 9), ValueError, '3-d input'),
    (lambda: SMPLargeKernelConv2d(4, 9), torch.randn(1, 5, 8, 8), ValueError, 'channels'),
])
def test_bad_input(make, x, err, match):
    with pytest.raises(err, match=match):
        make()(x)


@pytest.mark.parametrize('make,match', [
    (lambda: SMPDepthwiseConv2d(4, 8), 'odd'),
    (lambda: SMPConv(3, 4, 6, 6, 0.3, 0.1), 'odd'),
    (lambda: SMPLargeKernelConv2d(4, 9, small_kernel_size=4), 'odd'),
    (lambda: SMPConv(3, 4, 5, 6, 0.0, 0.1), 'radius must be positive'),
    (lambda: SMPCausalConv1d(2, 2, 9, 4, -0.1, 0.1), 'radius must be positive'),
    (lambda: SMPConv(3, 4, 5, 0, 0.3, 0.1), 'n_points'),
    (lambda: SMPConv(3, 4, 5, 6, 0.3, 0.1, ndim=4), 'ndim'),
])
def test_bad_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize('make,x', [
    (lambda: SMPParallelConv(3, 5, 9, 6, 0.3, 0.1, small_kernel_size=3, small_bias=True), torch.randn(2, 3, 12, 12)),
    (lambda: SMPParallelConv(3, 5, 7, 6, 0.3, 0.1, ndim=1, bias=True), torch.randn(2, 3, 20)),
    (lambda: SMPParallelConv(2, 3, 5, 4, 0.4, 0.2, ndim=3), torch.randn(1, 2, 6, 6, 6)),
    (lambda: SMPParallelCausalConv1d(3, 4, 40, 8, 0.05, 0.1, bias=True), torch.randn(2, 3, 40)),
    (lambda: SMPParallelCausalConv1d(3, 4, 33, 8, 0.05, 0.1, fft=True), torch.randn(2, 3, 50)),
])
def test_parallel_branches_reparameterize(make, x):
    block = make()
    randomize_bn_(block)
    for p in block.small_conv.conv.parameters():
        nn.init.normal_(p, std=0.3)
    if block.smp.conv.bias is not None:
        nn.init.normal_(block.smp.conv.bias)
    block.eval()
    ref = block(x).detach()
    with torch.no_grad():
        deployed = timm.utils.reparameterize_model(nn.Sequential(block))[0]  # it converts children of its argument
        out = deployed(x)
    assert deployed.smp is None and not any(isinstance(m, SMPConvBase) for m in deployed.modules())
    assert rel_err(out, ref) <= 1e-5
    # the same deploy module built directly loads the folded weights
    assert set(deployed.state_dict()) == {'reparam_conv.weight', 'reparam_conv.bias'}


def test_causal_branch_small_kernel_aligns_with_now():
    block = SMPParallelCausalConv1d(1, 1, 16, 4, 0.05, 0.1, small_kernel_size=3).eval()
    w, _ = block.fused_kernel_bias()
    with torch.no_grad():
        smp_w, _ = fuse_bn(block.smp.conv.generate_kernel(), None, block.smp.bn)
        small_w, _ = fuse_bn(block.small_conv.conv.weight, None, block.small_conv.bn)
    torch.testing.assert_close(w[..., -3:] - smp_w[..., -3:], small_w)
    torch.testing.assert_close(w[..., :-3], smp_w[..., :-3])


def test_fold_bn_into_next_pointwise_conv():
    bn, conv = nn.BatchNorm2d(4), nn.Conv2d(4, 6, 1)
    randomize_bn_(bn)
    bn.eval()
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        ref = conv(bn(x))
    fold_bn_into_next_conv(bn, conv)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match='pointwise'):
        fold_bn_into_next_conv(bn, nn.Conv2d(6, 6, 3))
