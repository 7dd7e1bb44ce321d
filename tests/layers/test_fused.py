"""Inference fast paths: fused oneDNN conv + activation (+ residual), and eval-mode BatchNorm folding on the fly.

Each fast path is compared with the plain ops it replaces (run with autograd recording, which always takes the
plain path); caches must follow every parameter and statistic change.
"""
from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from smpconv_models.layers import ConvBN, SMPLargeKernelConv2d, SMPParallelConv, conv2d_act, fused
from smpconv_models.models.smpconv import ConvFFN, SMPBlock
from tests.helpers import randomize_bn_

onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason='PyTorch built without oneDNN')


def plain(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The module's output through its plain ops (autograd recording disables every fast path)."""
    with torch.enable_grad():
        return module(x.detach().requires_grad_()).detach()


def ops_called(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


@pytest.mark.parametrize('act', ['none', 'relu', 'gelu'])
@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('geometry', [
    dict(cin=8, cout=16, k=1, stride=1, groups=1),
    dict(cin=8, cout=8, k=3, stride=2, groups=8),
    dict(cin=6, cout=4, k=3, stride=1, groups=1),
])
def test_conv2d_act_matches_plain_ops(act, channels_last, geometry):
    g = geometry
    x = torch.randn(2, g['cin'], 11, 11)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(g['cout'], g['cin'] // g['groups'], g['k'], g['k'])
    b = torch.randn(g['cout'])
    stride, padding = [g['stride']] * 2, [g['k'] // 2] * 2
    ref = F.conv2d(x, w, b, stride, padding, 1, g['groups'])
    ref = {'none': ref, 'relu': F.relu(ref), 'gelu': F.gelu(ref)}[act]
    with torch.no_grad():
        out = conv2d_act(x, w, b, stride, padding, g['groups'], act)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    if channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize('channels_last', [False, True])
def test_conv2d_act_residual_and_no_bias(channels_last):
    x, h = torch.randn(2, 5, 9, 9), torch.randn(2, 12, 9, 9)
    if channels_last:
        h = h.contiguous(memory_format=torch.channels_last)
    w = torch.randn(5, 12, 1, 1)
    with torch.no_grad():
        out = conv2d_act(h, w, None, [1, 1], [0, 0], 1, 'none', residual=x)
        out_relu = conv2d_act(h, w, None, [1, 1], [0, 0], 1, 'relu', residual=x)
    ref = F.conv2d(h, w) + x
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_relu, F.relu(ref), rtol=1e-5, atol=1e-5)


@onednn
def test_fused_path_is_taken_only_without_autograd():
    x, w, b = torch.randn(1, 4, 8, 8), torch.randn(8, 4, 1, 1), torch.randn(8)
    with torch.no_grad():
        fused = ops_called(lambda: conv2d_act(x, w, b, [1, 1], [0, 0], 1, 'gelu'))
    assert 'mkldnn::_convolution_pointwise' in fused and 'aten::gelu' not in fused
    w.requires_grad_()
    recorded = ops_called(lambda: conv2d_act(x, w, b, [1, 1], [0, 0], 1, 'gelu'))
    assert 'mkldnn::_convolution_pointwise' not in recorded and 'aten::gelu' in recorded


def test_gradients_flow_through_conv2d_act():
    x = torch.randn(1, 3, 6, 6, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    conv2d_act(x, w, None, [1, 1], [1, 1], 1, 'gelu').sum().backward()
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    F.gelu(F.conv2d(x2, w2, padding=1)).sum().backward()
    torch.testing.assert_close(w.grad, w2.grad)
    torch.testing.assert_close(x.grad, x2.grad)


@pytest.mark.parametrize('make', [
    lambda: ConvBN(6, 10, 1, act_layer=nn.ReLU),
    lambda: ConvBN(6, 6, 3, stride=2, groups=6, act_layer=nn.ReLU),
    lambda: ConvBN(6, 10, 1),
    lambda: ConvFFN(6, 24),
    lambda: SMPBlock(6, 9),
    lambda: SMPLargeKernelConv2d(6, 13, 5),
    lambda: SMPParallelConv(3, 5, 11, 6, 0.3, 0.1, small_kernel_size=3),
])
def test_eval_folding_matches_plain_and_follows_changes(make):
    module = make()
    randomize_bn_(module)
    module.eval()
    cin = next(m for m in module.modules() if isinstance(m, (nn.Conv2d, SMPLargeKernelConv2d, SMPParallelConv)))
    x = torch.randn(2, getattr(cin, 'in_channels', 6), 14, 14)
    with torch.no_grad():
        out = module(x)
        assert torch.equal(module(x), out)  # cached
    torch.testing.assert_close(out, plain(module, x), rtol=1e-4, atol=1e-5)
    # every kind of change reaches the cached folded weights: BN statistics, conv weights, a whole new state
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_var.mul_(4.0)
    with torch.no_grad():
        changed = module(x)
    torch.testing.assert_close(changed, plain(module, x), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(changed, out)
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(1.5)
    other = make()
    randomize_bn_(other)
    module.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(module(x), plain(other.eval(), x), rtol=1e-4, atol=1e-5)
    # reparameterized: the same function
    deployed = timm.utils.reparameterize_model(copy.deepcopy(nn.Sequential(module)))
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), plain(module, x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(plain(deployed, x), plain(module, x), rtol=1e-4, atol=1e-5)


def test_train_mode_uses_batch_statistics():
    block = SMPBlock(4, 7)
    randomize_bn_(block)
    x = torch.randn(3, 4, 10, 10)
    with torch.no_grad():
        eval_out = block.eval()(x)
        train_out = block.train()(x)
    assert not torch.allclose(eval_out, train_out)
    block.eval()
    with torch.no_grad():
        torch.testing.assert_close(block(x), plain(block, x), rtol=1e-4, atol=1e-5)


def test_fvcore_trace_sees_unfolded_modules():
    fvcore = pytest.importorskip('fvcore.nn')
    module = nn.Sequential(ConvFFN(8, 32)).eval()
    with torch.no_grad():
        counts = fvcore.FlopCountAnalysis(module, torch.randn(1, 8, 4, 4)).unsupported_ops_warnings(False)
        by_op = counts.by_operator()
    assert by_op.get('batch_norm', 0) > 0 and by_op.get('conv', 0) == 2 * 8 * 32 * 16


def test_hooks_on_inner_modules_still_fire():
    block = ConvFFN(4, 16).eval()
    seen = []
    block.pw1.conv.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        block(torch.randn(1, 4, 5, 5))
    assert seen == [torch.Size([1, 16, 5, 5])]


def test_stem_micro_batches_in_cpu_inference(monkeypatch):
    model = timm.create_model('smpconv_t', depths=(1, 1, 1, 1), dims=(8, 16, 16, 16), kernel_sizes=(7, 7, 7, 7),
                              num_classes=5)
    randomize_bn_(model)
    model.eval()
    x = torch.randn(5, 3, 32, 32)
    per_image = 8 * 16 * 16 * 4
    monkeypatch.setattr(fused, "MICRO_BATCH_BYTES", 2 * per_image)  # micro-batches of 2 images
    calls = []
    stem_forward = model.stem.forward
    model.stem.forward = lambda t: calls.append(t.shape[0]) or stem_forward(t)
    with torch.no_grad():
        out = model(x)
    assert calls == [2, 2, 1]
    calls.clear()
    torch.testing.assert_close(out, plain(model, x), rtol=1e-4, atol=1e-5)
    assert calls == [5]  # with autograd recording: one call


def test_convffn_micro_batches_match(monkeypatch):
    block = ConvFFN(4, 16)
    randomize_bn_(block)
    block.eval()
    x = torch.randn(5, 4, 6, 6)
    with torch.no_grad():
        whole = block(x)
    monkeypatch.setattr(fused, 'MICRO_BATCH_BYTES', 2 * 16 * 36 * 4)  # hidden activation of 2 images
    assert fused.micro_batch_size(x, 16 * 36 * 4) == 2
    with torch.no_grad():
        torch.testing.assert_close(block(x), whole)
    torch.testing.assert_close(whole, plain(block, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('channels_last', [False, True])
def test_pointwise_conv2d_matches_conv_with_gradients(channels_last):
    conv = nn.Conv2d(6, 10, 1)
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    conv = conv.double()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    out = fused.pointwise_conv2d(conv, x)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    ref_x = x.detach().clone().requires_grad_()
    ref = F.conv2d(ref_x, conv.weight, conv.bias)
    torch.testing.assert_close(out, ref)
    gy = torch.randn_like(ref)
    grads = torch.autograd.grad((out * gy).sum(), (x, conv.weight, conv.bias))
    ref_grads = torch.autograd.grad((ref * gy).sum(), (ref_x, conv.weight, conv.bias))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


def test_stochastic_depth_residual_matches_timm_drop_path():
    block = SMPBlock(4, 7, drop_path=0.5).train()
    x = torch.randn(6, 4, 9, 9)
    torch.manual_seed(3)
    out = block(x)
    torch.manual_seed(3)
    branch = block.pw2(block.lk_nonlinear(block.large_kernel(block.pw1(block.prelkb_bn(x)))))
    ref = x + block.drop_path(branch)  # timm's DropPath, same random draw
    torch.testing.assert_close(out, ref)
    kept = [(out[i] - x[i]).abs().sum() > 0 for i in range(6)]
    assert 0 < sum(kept) < 6  # some samples dropped, some kept (seeded)


def test_hooks_fire_on_pointwise_convs_in_training():
    block = ConvFFN(4, 16).train()
    seen = []
    block.pw1.conv.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    block(torch.randn(2, 4, 5, 5).contiguous(memory_format=torch.channels_last))
    assert seen == [torch.Size([2, 16, 5, 5])]


def test_conv2d_act_rejects_unknown_activation():
    with pytest.raises(ValueError, match="act must be 'none', 'relu' or 'gelu', got 'silu'"):
        conv2d_act(torch.randn(1, 2, 3, 3), torch.randn(2, 2, 1, 1), None, [1, 1], [0, 0], 1, 'silu')
