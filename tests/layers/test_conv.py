"""The FFT 'same' convolution against PyTorch's direct one: dense and depthwise, values and gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from smpconv_models.layers import same_conv
from smpconv_models.layers.conv import (
    _DepthwiseSameConv,
    conv_path,
    fft_depthwise_weight_grad,
    fft_same_conv,
    mix_channels_fft,
    use_fft_conv,
)


@pytest.mark.parametrize('nd,spatial,k,groups', [
    (1, (20,), 7, 1), (1, (5,), 9, 1), (2, (9, 12), 5, 1), (2, (7, 7), 9, 1), (3, (5, 6, 4), 3, 1),
    (2, (9, 11), 7, 4), (2, (6, 6), 13, 4), (1, (17,), 5, 4),
    # kernels larger than the map: cropped to the reachable offsets, transforms smaller than H + K - 1
    (2, (3, 14), 27, 4), (2, (1, 2), 9, 1), (1, (4,), 31, 1), (3, (2, 3, 5), 7, 4),
])
def test_fft_same_conv_matches_direct(nd, spatial, k, groups):
    cin = 4
    x = torch.randn(2, cin, *spatial, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, cin // groups, *(k,) * nd, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64)
    conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    ref = conv(x, w, b, padding=k // 2, groups=groups)
    out = fft_same_conv(x, w, b, groups)
    torch.testing.assert_close(out, ref)
    gy = torch.randn_like(ref)
    for a, r in zip(torch.autograd.grad((out * gy).sum(), (x, w)), torch.autograd.grad((ref * gy).sum(), (x, w))):
        torch.testing.assert_close(a, r)


@pytest.mark.parametrize('fshape', [(7,), (5, 3)])
def test_mix_channels_fft_is_per_frequency_matmul(fshape):
    xf = torch.randn(3, 4, *fshape, dtype=torch.complex128, requires_grad=True)
    wf = torch.randn(5, 4, *fshape, dtype=torch.complex128, requires_grad=True)
    out = mix_channels_fft(xf, wf)
    ref = torch.einsum('bi...,oi...->bo...', xf, wf)
    torch.testing.assert_close(out, ref)
    gy = torch.randn_like(ref)
    grads = torch.autograd.grad((out * gy).real.sum(), (xf, wf))
    for a, r in zip(grads, torch.autograd.grad((ref * gy).real.sum(), (xf, wf))):
        torch.testing.assert_close(a, r)


def test_path_choice():
    x = torch.randn(1, 8, 20, 20)
    dense, depthwise = torch.randn(8, 8, 11, 11), torch.randn(8, 1, 31, 31, requires_grad=True)
    assert conv_path(x, dense, 1) == 'fft' and conv_path(x, torch.randn(8, 8, 5, 5), 1) == 'direct'
    # training: the direct depthwise kernel gradient is slow; small maps keep a direct forward
    assert conv_path(x, depthwise, 8) == 'hybrid'
    assert conv_path(torch.randn(1, 8, 56, 56), depthwise, 8) == 'fft' and use_fft_conv(x, dense, 1)
    with torch.no_grad():
        assert conv_path(x, depthwise, 8) == 'direct'  # inference: oneDNN's direct channels_last path
    torch.testing.assert_close(same_conv(x, depthwise, groups=8),
                               F.conv2d(x, depthwise, padding=15, groups=8), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('spatial,k', [
    ((5, 6), 9), ((7, 7), 5), ((14, 14), 27), ((3, 20), 7), ((4,), 9), ((3, 4, 5), 5), ((9,), 3),
])
def test_hybrid_depthwise_conv_gradients(spatial, k):
    """Direct forward and input gradient, FFT kernel gradient: all equal to the direct convolution's."""
    nd = len(spatial)
    x = torch.randn(2, 3, *spatial, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 1, *(k,) * nd, dtype=torch.float64, requires_grad=True)
    out = _DepthwiseSameConv.apply(x, w)
    ref = (F.conv1d, F.conv2d, F.conv3d)[nd - 1](x, w, padding=k // 2, groups=3)
    torch.testing.assert_close(out, ref)
    gy = torch.randn_like(ref)
    ref_grads = torch.autograd.grad((ref * gy).sum(), (x, w))
    for a, r in zip(torch.autograd.grad((out * gy).sum(), (x, w)), ref_grads):
        torch.testing.assert_close(a, r)
    torch.testing.assert_close(fft_depthwise_weight_grad(x, gy, (k,) * nd), ref_grads[1])


def test_same_conv_takes_the_hybrid_path_with_bias():
    x = torch.randn(2, 3, 14, 14, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 1, 27, 27, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert conv_path(x, w, 3) == 'hybrid'
    out = same_conv(x, w, b, groups=3)
    assert out.grad_fn.next_functions[0][0].name().endswith('_DepthwiseSameConvBackward')
    ref = F.conv2d(x, w, b, padding=13, groups=3)
    torch.testing.assert_close(out, ref)
    for a, r in zip(torch.autograd.grad(out.sum(), (x, w, b)), torch.autograd.grad(ref.sum(), (x, w, b))):
        torch.testing.assert_close(a, r)


def test_fft_same_conv_keeps_channels_last():
    x = torch.randn(2, 4, 10, 10).contiguous(memory_format=torch.channels_last)
    w = torch.randn(4, 1, 15, 15)
    out = fft_same_conv(x, w, None, 4)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, F.conv2d(x, w, padding=7, groups=4), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('shape, kernel', [((2, 16, 256), (17,)), ((2, 16, 32, 32), (17, 17))])
def test_fp16_large_depthwise_conv_computes_in_fp32(shape, kernel):
    """PyTorch 2.14's fp16 CPU depthwise conv does not return for these sizes: same_conv runs it in fp32, rounding
    only the result (equal to the fp32 conv rounded to fp16), under fp16 autocast too."""
    from smpconv_models.layers.conv import direct_same_conv, fp16_grouped_conv_in_fp32

    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g).half().float()  # values exact in fp16
    w = torch.randn(shape[1], 1, *kernel, generator=g).half().float()
    expected = direct_same_conv(x, w, None, shape[1]).half()
    assert fp16_grouped_conv_in_fp32(x.half(), w.half())
    assert torch.equal(same_conv(x.half(), w.half(), groups=shape[1]), expected)
    with torch.autocast('cpu', dtype=torch.float16):
        assert fp16_grouped_conv_in_fp32(x, w)
        assert torch.equal(same_conv(x, w, groups=shape[1]), expected)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert not fp16_grouped_conv_in_fp32(x, w)
    assert not fp16_grouped_conv_in_fp32(x.half(), w[(...,) + (slice(1, -1),) * len(kernel)].half())  # 15 taps
