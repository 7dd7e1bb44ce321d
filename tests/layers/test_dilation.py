"""Dilated convolutions (the dense-prediction backbones' late stages): every path of ``same_conv``, the export forms,
the reparameterizable SMP block and the fused ConvBN against PyTorch's direct dilated convolution, in float64."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from smpconv_models.layers import ConvBN, SMPLargeKernelConv2d, conv2d_act, same_conv
from smpconv_models.layers import conv as conv_module
from smpconv_models.layers.conv import _DepthwiseSameConv, conv_path, dilate_kernel
from smpconv_models.layers.export_conv import export_fft_method

from ..helpers import randomize_bn_

CONV = (F.conv1d, F.conv2d, F.conv3d)


@pytest.mark.parametrize(('nd', 'k', 'd'), [(1, 5, 3), (2, 3, 2), (2, 5, 4), (3, 3, 2)])
def test_dilate_kernel_is_the_zero_inserted_kernel(nd, k, d):
    w = torch.randn(3, 2, *(k,) * nd, dtype=torch.float64)
    dense = dilate_kernel(w, d)
    assert dense.shape[2:] == (d * (k - 1) + 1,) * nd
    taps = (slice(None), slice(None)) + (slice(None, None, d),) * nd
    assert torch.equal(dense[taps], w)
    off_taps = torch.ones_like(dense, dtype=torch.bool)
    off_taps[taps] = False
    assert not dense[off_taps].any()  # zeros everywhere else
    assert dilate_kernel(w, 1) is w
    x = torch.randn(2, 2, *(9,) * nd, dtype=torch.float64)
    torch.testing.assert_close(CONV[nd - 1](x, dense, padding=dense.shape[-1] // 2),
                               CONV[nd - 1](x, w, padding=d * (k // 2), dilation=d))


def _depthwise_case(spatial, k, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 6, *spatial, dtype=torch.float64, generator=g).requires_grad_()
    w = torch.randn(6, 1, k, k, dtype=torch.float64, generator=g).requires_grad_()
    return x, w


def _check_against_direct(out, x, w, d, groups, bias=None):
    ref = F.conv2d(x, w, bias, padding=d * (w.shape[-1] // 2), dilation=d, groups=groups)
    torch.testing.assert_close(out, ref)
    gy = torch.randn_like(ref)
    inputs = (x, w)
    for a, r in zip(torch.autograd.grad((out * gy).sum(), inputs), torch.autograd.grad((ref * gy).sum(), inputs)):
        torch.testing.assert_close(a, r)


@pytest.mark.parametrize(('spatial', 'k', 'd'), [((16, 16), 13, 2), ((12, 20), 11, 4), ((8, 8), 13, 3)])
def test_hybrid_path_dilated(spatial, k, d):
    """Direct forward / input gradient, FFT kernel gradient of the zero-inserted kernel at its taps."""
    x, w = _depthwise_case(spatial, k, d)
    assert conv_path(x, w, 6) == 'hybrid'
    _check_against_direct(same_conv(x, w, groups=6, dilation=d), x, w, d, 6)
    _check_against_direct(_DepthwiseSameConv.apply(x, w, d), x, w, d, 6)


@pytest.mark.parametrize(('spatial', 'k', 'd'), [((16, 16), 13, 2), ((10, 14), 11, 3)])
def test_fft_path_dilated_depthwise_and_dense(monkeypatch, spatial, k, d):
    plain = conv_module.conv_path
    monkeypatch.setattr(conv_module, 'conv_path',
                        lambda x, w, g: 'fft' if plain(x, w, g) == 'hybrid' else plain(x, w, g))
    x, w = _depthwise_case(spatial, k, d)
    _check_against_direct(same_conv(x, w, groups=6, dilation=d), x, w, d, 6)
    dense = torch.randn(4, 6, k, k, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64)
    assert plain(x, dense, 1) == 'fft'
    _check_against_direct(same_conv(x, dense, bias, dilation=d), x, dense, d, 1, bias)


def test_direct_path_dilated_in_inference():
    x, w = _depthwise_case((20, 20), 13, 2)
    with torch.no_grad():
        assert conv_path(x, w, 6) == 'direct'
        out = same_conv(x, w, groups=6, dilation=2)
        torch.testing.assert_close(out, F.conv2d(x, w, padding=12, dilation=2, groups=6))


class _DenseSameConv(nn.Module):
    def __init__(self, weight: torch.Tensor, dilation: int):
        super().__init__()
        self.weight, self.dilation = nn.Parameter(weight), dilation

    def forward(self, x):
        return same_conv(x, self.weight, dilation=self.dilation)


@pytest.mark.parametrize('method', ['dft', 'matmul', 'direct'])
def test_export_forms_dilated(method):
    """torch.export of a large dense dilated conv traces the export forms on the zero-inserted kernel."""
    torch.manual_seed(0)
    module = _DenseSameConv(torch.randn(3, 4, 11, 11, dtype=torch.float64), 2)
    x = torch.randn(2, 4, 13, 9, dtype=torch.float64)
    with export_fft_method(method):
        program = torch.export.export(module, (x,))
    ref = F.conv2d(x, module.weight, padding=10, dilation=2)
    torch.testing.assert_close(program.module()(x), ref.detach())


@pytest.mark.parametrize('d', [1, 2, 3])
def test_large_kernel_block_dilated_reparam_and_reference(d):
    """Train form (BN'd SMP + small branch) = reparameterized deploy conv = plain dilated F.conv2d of both branches."""
    torch.manual_seed(d)
    block = SMPLargeKernelConv2d(6, 9, 3, dilation=d).double()
    randomize_bn_(block)
    block.eval()
    x = torch.randn(2, 6, 20, 18, dtype=torch.float64)

    def bn(y, m):
        return F.batch_norm(y, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    smp_kernel = block.smp.conv.generate_kernel()
    ref = (bn(F.conv2d(x, smp_kernel, padding=4 * d, dilation=d, groups=6), block.smp.bn)
           + bn(F.conv2d(x, block.small_conv.conv.weight, padding=d, dilation=d, groups=6), block.small_conv.bn))
    with torch.no_grad():
        torch.testing.assert_close(block.smp(x) + block.small_conv(x), ref)  # the unfolded branches
        torch.testing.assert_close(block(x), ref)  # eval: folded kernel (cached)
        block.reparameterize()
        assert block.reparam_conv.dilation == (d, d) and block.reparam_conv.padding == (4 * d, 4 * d)
        torch.testing.assert_close(block(x), ref)
    assert (f'dilation={d}' in repr(block)) == (d > 1)


@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_conv_bn_dilated_fused_and_folded(dtype, channels_last):
    """The eval path (oneDNN conv with ReLU post-op in fp32, plain ops otherwise) and reparameterize() with dilation."""
    torch.manual_seed(0)
    layer = ConvBN(8, 8, 3, stride=1, groups=8, act_layer=nn.ReLU, dilation=2).to(dtype)
    randomize_bn_(layer)
    layer.eval()
    x = torch.randn(2, 8, 11, 13, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    bn = layer.bn
    ref = F.relu(F.batch_norm(F.conv2d(x, layer.conv.weight, padding=2, dilation=2, groups=8), bn.running_mean,
                              bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else {}
    with torch.no_grad():
        torch.testing.assert_close(layer(x), ref, **tol)
        layer.reparameterize()
        torch.testing.assert_close(layer(x), ref, **tol)


def test_conv2d_act_dilation_matches_plain_conv():
    x = torch.randn(2, 4, 15, 15)
    w, b, r = torch.randn(4, 4, 3, 3), torch.randn(4), torch.randn(2, 4, 15, 15)
    ref = F.conv2d(x, w, b, padding=3, dilation=3) + r
    torch.testing.assert_close(conv2d_act(x, w, b, [1, 1], [3, 3], 1, 'none', r, [3, 3]), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv2d_act(x, w, b, [1, 1], [3, 3], 1, 'gelu', None, [3, 3]),
                               F.gelu(ref - r), rtol=1e-5, atol=1e-5)


def test_smp_depthwise_rejects_bad_dilation():
    from smpconv_models.layers import SMPDepthwiseConv2d

    with pytest.raises(ValueError, match='dilation'):
        SMPDepthwiseConv2d(4, 7, dilation=0)


def test_half_precision_rules_hold_for_dilated_kernels():
    """A 17-tap dilated depthwise kernel in fp16 (own dtype or fp16 autocast) computes in fp32, the result rounded
    once (equal to the fp32 dilated conv rounded to fp16); bf16 keeps NCHW (:func:`prefers_channels_last`)."""
    from smpconv_models.layers.conv import direct_same_conv, fp16_grouped_conv_in_fp32, prefers_channels_last

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 20, 20, generator=g).half().float()  # values exact in fp16
    w = torch.randn(4, 1, 17, 17, generator=g).half().float()
    expected = F.conv2d(x, w, padding=16, dilation=2, groups=4).half()
    assert fp16_grouped_conv_in_fp32(x.half(), w.half())
    assert torch.equal(direct_same_conv(x.half(), w.half(), None, 4, dilation=2), expected)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.float16):
        assert torch.equal(same_conv(x, w, groups=4, dilation=2), expected)
    assert prefers_channels_last(x, 17) and not prefers_channels_last(x.bfloat16(), 17)
    y = direct_same_conv(x.bfloat16(), w.bfloat16(), None, 4, dilation=2)
    assert y.is_contiguous() and not y.is_contiguous(memory_format=torch.channels_last)
