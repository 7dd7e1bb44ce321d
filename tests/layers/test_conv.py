"""The FFT 'same' convolution against PyTorch's direct one: dense and depthwise, values and gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from smpconv_models.layers import same_conv
from smpconv_models.layers.conv import fft_same_conv, use_fft_conv


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


def test_path_choice():
    x = torch.randn(1, 8, 20, 20)
    dense, depthwise = torch.randn(8, 8, 11, 11), torch.randn(8, 1, 31, 31, requires_grad=True)
    assert use_fft_conv(x, dense, 1) and not use_fft_conv(x, torch.randn(8, 8, 5, 5), 1)
    assert use_fft_conv(x, depthwise, 8)  # training: the FFT backward is far cheaper
    with torch.no_grad():
        assert not use_fft_conv(x, depthwise, 8)  # inference: oneDNN's direct channels_last path
    torch.testing.assert_close(same_conv(x, depthwise, groups=8),
                               F.conv2d(x, depthwise, padding=15, groups=8), rtol=1e-4, atol=1e-4)
