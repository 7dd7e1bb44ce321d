"""The fused CPU loops of the irregular SMP conv (numba, the ``fast`` extra) against a plain Eq. 1 reference and the
plain-torch pairwise path, values and gradients in float64; and when the loops apply."""
from __future__ import annotations

from unittest import mock

import pytest
import torch

from smpconv_models.layers import irregular_conv
from smpconv_models.layers.irregular_conv import pairwise_small_causal_conv, pairwise_smp_causal_conv
from smpconv_models.layers.smp_conv import SMPCausalConv1d

pytest.importorskip('numba')
from smpconv_models.layers import irregular_cpu

F64 = torch.float64


def reference(conv, x, t, mask):
    """Eq. 1 over every (query, source) pair: hats averaged over the points covering the pair's kernel coordinate."""
    k = conv.kernel_size[0]
    groups, n_points = conv.weight_coord.shape[:2]
    pos, rad = conv.weight_coord[..., 0], conv.radius.reshape(groups, n_points)
    lag = t[:, :, None] - t[:, None, :]  # [B, i, j]
    pairs = (lag >= 0) & (lag <= k - 1) & mask[:, None, :]
    offset = (1 - 2 * lag / (k - 1))[..., None, None] - pos  # [B, i, j, G, P]
    covers = offset.abs() < rad
    hat = (1 - offset.abs() / rad) * covers / (covers.sum(-1, keepdim=True, dtype=x.dtype).clamp_min(1) + 1e-6)
    kernel = torch.einsum('bijgp,gcp->bijgc', hat, conv.weights) * pairs[..., None, None]
    return torch.einsum('bijgc,bcj->bgi', kernel, torch.where(mask[:, None], x, 0.0)) + conv.bias[:, None]


def case(radius: float, seed: int = 0):
    torch.manual_seed(seed)
    conv = SMPCausalConv1d(3, 4, 33, 12, radius, 0.4).to(F64)
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(2, 3, 70, dtype=F64, requires_grad=True)
    t = (torch.rand(2, 70, dtype=F64) + 0.5).cumsum(1)  # real timestamps, gaps 0.5-1.5
    mask = torch.rand(2, 70) < 0.8
    mask[1, -9:] = False  # a shorter series
    return conv, x, t, mask


def grads(out, conv, x, seed=1):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad((out * g).sum(), [x, conv.weight_coord, conv.radius, conv.weights, conv.bias])


@pytest.mark.parametrize('radius', [0.05, 0.6])  # 0.6: wide, overlapping hats (|N(x)| up to P)
def test_fused_loops_equal_plain_reference_and_torch_path(radius):
    conv, x, t, mask = case(radius)
    observed = mask[:, None]
    with mock.patch.object(irregular_cpu.SMPPairSum, 'apply', wraps=irregular_cpu.SMPPairSum.apply) as fused:
        out = pairwise_smp_causal_conv(conv, x, t, mask) * observed
    assert fused.called
    with mock.patch.object(irregular_conv, '_fused_pairs', return_value=False):
        plain = pairwise_smp_causal_conv(conv, x, t, mask) * observed
    expected = reference(conv, x, t, mask) * observed
    assert expected.abs().amax() > 0.1
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(plain, expected, rtol=1e-12, atol=1e-12)
    for a, b, c in zip(grads(out, conv, x), grads(plain, conv, x), grads(expected, conv, x)):
        assert c.abs().amax() > 0
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(b, c, rtol=1e-10, atol=1e-12)


def test_fused_loops_chunked_and_float32():
    conv, x, t, mask = case(0.1)
    whole = pairwise_smp_causal_conv(conv, x, t, mask)
    chunked = pairwise_smp_causal_conv(conv, x, t, mask, chunk_budget=1)  # one query step per chunk
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads(chunked, conv, x), grads(whole, conv, x)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    single = pairwise_smp_causal_conv(conv.float(), x.detach().float(), t, mask)
    torch.testing.assert_close(single.double(), whole, rtol=1e-5, atol=1e-5)


def test_fused_loops_apply_only_in_eager_fp32_fp64_cpu():
    x = torch.randn(1, 2, 5)
    t = torch.arange(5.0)[None]
    assert irregular_conv._fused_pairs(x, t)
    assert not irregular_conv._fused_pairs(x.to(torch.bfloat16), t)
    assert not irregular_conv._fused_pairs(x, t.requires_grad_())  # gradients to the timestamps: the torch path
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert not irregular_conv._fused_pairs(x, t.detach())
    with mock.patch.object(irregular_conv, 'is_eager', return_value=False):
        assert not irregular_conv._fused_pairs(x, t.detach())


def test_small_branch_loops_equal_torch_path():
    _, x, t, mask = case(0.1)
    weight = torch.randn(4, 3, 5, dtype=F64, requires_grad=True)
    bias = torch.randn(4, dtype=F64)
    with mock.patch.object(irregular_cpu.LagResample, 'apply', wraps=irregular_cpu.LagResample.apply) as fused:
        out = pairwise_small_causal_conv(weight, bias, x, t, mask) * mask[:, None]
    assert fused.called
    with mock.patch.object(irregular_conv, '_fused_pairs', return_value=False):
        plain = pairwise_small_causal_conv(weight, bias, x, t, mask) * mask[:, None]
    assert plain.abs().amax() > 0.1
    torch.testing.assert_close(out, plain, rtol=1e-12, atol=1e-12)
    g = torch.randn(out.shape, dtype=F64)
    grads_out, grads_plain = (torch.autograd.grad((y * g).sum(), [x, weight]) for y in (out, plain))
    for a, b in zip(grads_out, grads_plain):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
