"""Causal convolution: FFT == direct for every length, both == the defining sum."""
from __future__ import annotations

import pytest
import torch

from smpconv_models.layers import causal_conv1d, next_fast_len, use_fft_for


def causal_sum(x, w, bias=None):
    """y[b, o, t] = sum_{i, k} w[o, i, k] x[b, i, t - (K - 1) + k], written as a loop over taps."""
    b, _, length = x.shape
    k = w.shape[-1]
    y = torch.zeros(b, w.shape[0], length, dtype=x.dtype)
    for tap in range(k):
        shift = k - 1 - tap  # this tap looks `shift` steps into the past
        if shift >= length:
            continue
        y[..., shift:] += torch.einsum('oi,bil->bol', w[..., tap], x[..., :length - shift])
    return y if bias is None else y + bias[:, None]


def test_fft_equals_direct_all_lengths():
    xs = torch.randn(2, 3, 70, dtype=torch.float64)
    ws = torch.randn(4, 3, 70, dtype=torch.float64)
    for length in range(1, 71):
        x = xs[..., :length]
        for k in range(1, 71):
            w = ws[..., :k]
            direct = causal_conv1d(x, w, fft=False)
            fft = causal_conv1d(x, w, fft=True)
            torch.testing.assert_close(fft, direct, rtol=1e-9, atol=1e-9, msg=f'L={length} K={k}')


@pytest.mark.parametrize('length,k', [(1, 1), (7, 3), (10, 10), (9, 16), (33, 32), (64, 17)])
def test_direct_matches_definition(length, k):
    x = torch.randn(2, 3, length, dtype=torch.float64)
    w = torch.randn(5, 3, k, dtype=torch.float64)
    b = torch.randn(5, dtype=torch.float64)
    ref = causal_sum(x, w, b)
    torch.testing.assert_close(causal_conv1d(x, w, b, fft=False), ref)
    torch.testing.assert_close(causal_conv1d(x, w, b, fft=True), ref)


def test_causality():
    x = torch.randn(1, 2, 40, dtype=torch.float64)
    w = torch.randn(3, 2, 25, dtype=torch.float64)
    x2 = x.clone()
    x2[..., 30:] += 1.0  # changing the future leaves the past untouched
    for fft in (False, True):
        y, y2 = causal_conv1d(x, w, fft=fft), causal_conv1d(x2, w, fft=fft)
        torch.testing.assert_close(y[..., :30], y2[..., :30], rtol=0, atol=1e-12)
        assert (y[..., 30:] - y2[..., 30:]).abs().min() > 1e-6


def test_last_tap_is_current_step():
    x = torch.randn(1, 1, 12)
    w = torch.zeros(1, 1, 5)
    w[..., -1] = 1.0
    torch.testing.assert_close(causal_conv1d(x, w), x)


def test_fft_gradients_match_direct():
    x = torch.randn(2, 3, 45, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 31, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(2, 4, 45, dtype=torch.float64)
    g_fft = torch.autograd.grad((causal_conv1d(x, w, fft=True) * gy).sum(), (x, w))
    g_dir = torch.autograd.grad((causal_conv1d(x, w, fft=False) * gy).sum(), (x, w))
    for a, b in zip(g_fft, g_dir):
        torch.testing.assert_close(a, b)


def test_half_precision_fft_runs_in_float32():
    x = torch.randn(2, 3, 100)
    w = torch.randn(4, 3, 100) * 0.1
    y = causal_conv1d(x.bfloat16(), w.bfloat16(), fft=True)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), causal_conv1d(x.bfloat16().float(), w.bfloat16().float()),
                               rtol=2e-2, atol=2e-2)


def test_next_fast_len():
    for n in [1, 2, 11, 13, 97, 127, 1567, 2 * 784 - 1, 31999]:
        m = next_fast_len(n)
        assert m >= n
        r = m
        for p in (2, 3, 5, 7):
            while r % p == 0:
                r //= p
        assert r == 1
        assert all(not _smooth(j) for j in range(n, m))
    assert next_fast_len(1567) == 1568
    assert next_fast_len(13) == 14


def _smooth(n):
    for p in (2, 3, 5, 7):
        while n % p == 0:
            n //= p
    return n == 1


def test_auto_choice_uses_reachable_taps():
    assert use_fft_for(784, 784)
    assert not use_fft_for(784, 5)
    assert not use_fft_for(8, 784)  # only 8 taps can reach the outputs


@pytest.mark.parametrize('x,w,err', [
    (torch.zeros(2, 3), torch.zeros(4, 3, 5), ValueError),
    (torch.zeros(2, 3, 10), torch.zeros(4, 5), ValueError),
    (torch.zeros(2, 3, 10), torch.zeros(4, 2, 5), ValueError),
    (torch.zeros(2, 3, 10, dtype=torch.long), torch.zeros(4, 3, 5), TypeError),
])
def test_bad_input(x, w, err):
    with pytest.raises(err):
        causal_conv1d(x, w)
