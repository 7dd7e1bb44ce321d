"""Centred (non-causal) sequence kernels: the conv against its defining sum, the SMP layer, the reparameterized
branch pair, and the TCN's mask semantics and export, all in float64."""
from __future__ import annotations

import pytest
import timm
import torch

import smpconv_models  # noqa: F401  (registers the models)
from smpconv_models.layers import (
    CausalConv1d,
    SMPCausalConv1d,
    SMPParallelCausalConv1d,
    centred_conv1d,
    kernel_coords,
    smp_kernel,
)
from tests.helpers import randomize_bn_


def centred_sum(x, w, bias=None):
    """y[b, o, t] = sum_{i, k} w[o, i, k] x[b, i, t + k - (K - 1) / 2] (zeros outside), a loop over taps."""
    length, k = x.shape[-1], w.shape[-1]
    y = torch.zeros(x.shape[0], w.shape[0], length, dtype=x.dtype)
    for tap in range(k):
        offset = tap - (k - 1) // 2  # this tap reads `offset` steps ahead (negative: the past)
        lo, hi = max(0, -offset), min(length, length - offset)
        if lo < hi:
            y[..., lo:hi] += torch.einsum('oi,bil->bol', w[..., tap], x[..., lo + offset:hi + offset])
    return y if bias is None else y + bias[:, None]


@pytest.mark.parametrize('length,k', [(1, 1), (1, 5), (7, 3), (10, 5), (10, 19), (10, 21), (10, 41), (33, 65),
                                      (64, 17), (50, 99)])
def test_centred_conv_matches_definition(length, k):
    x = torch.randn(2, 3, length, dtype=torch.float64)
    w = torch.randn(4, 3, k, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    ref = centred_sum(x, w, b)
    for fft in (False, True, None):
        torch.testing.assert_close(centred_conv1d(x, w, b, fft=fft), ref, rtol=1e-10, atol=1e-10)


def test_centred_conv_middle_tap_is_current_step_and_sees_both_ways():
    x = torch.randn(1, 1, 12, dtype=torch.float64)
    w = torch.zeros(1, 1, 5, dtype=torch.float64)
    w[..., 2] = 1.0
    torch.testing.assert_close(centred_conv1d(x, w), x)
    w = torch.randn(1, 1, 23, dtype=torch.float64)
    x2 = x.clone()
    x2[..., 11] += 1.0  # the last step reaches back to step 0 through a 23-tap centred kernel
    for fft in (False, True):
        assert (centred_conv1d(x2, w, fft=fft) - centred_conv1d(x, w, fft=fft)).abs().min() > 1e-9


def test_centred_conv_gradients_fft_equal_direct():
    x = torch.randn(2, 3, 30, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 59, dtype=torch.float64, requires_grad=True)
    grads = []
    for fft in (False, True):
        (centred_conv1d(x, w, fft=fft) ** 2).sum().backward()
        grads.append((x.grad.clone(), w.grad.clone()))
        x.grad = w.grad = None
    torch.testing.assert_close(grads[0], grads[1])


def test_centred_conv_refuses_even_kernels():
    with pytest.raises(ValueError, match='odd kernel length'):
        centred_conv1d(torch.randn(1, 1, 8), torch.randn(1, 1, 4))
    with pytest.raises(ValueError, match='causal=False'):
        SMPCausalConv1d(1, 2, 8, n_points=3, radius=0.1, coord_std=0.1, causal=False)
    with pytest.raises(ValueError, match='causal=False'):
        CausalConv1d(1, 2, 4, causal=False)
    with pytest.raises(ValueError, match='odd kernel sizes'):
        SMPParallelCausalConv1d(1, 2, 9, n_points=3, radius=0.1, coord_std=0.1, small_kernel_size=4, causal=False)


def test_centred_smp_layer_is_its_kernel_centred_and_points_start_around_now():
    torch.manual_seed(0)
    conv = SMPCausalConv1d(3, 40, 31, n_points=50, radius=0.1, coord_std=0.1, causal=False).double()
    coords = conv.weight_coord.detach()
    assert abs(coords.mean().item()) < 0.02 and coords.min() < -0.1 and coords.max() > 0.1  # both sides of 0
    causal = SMPCausalConv1d(3, 40, 31, n_points=50, radius=0.1, coord_std=0.1).double()
    assert causal.weight_coord.min() > 0.0  # the official causal init: near +1, on the past side of "now"
    x = torch.randn(2, 3, 20, dtype=torch.float64)
    kernel = smp_kernel(kernel_coords(31, 1, dtype=torch.float64), conv.weight_coord, conv.radius, conv.weights,
                        normalize=True)
    torch.testing.assert_close(conv(x), centred_sum(x, kernel, conv.bias))


@pytest.mark.parametrize('use_fft', [False, True])
def test_centred_branch_pair_folds_into_one_centred_kernel(use_fft):
    torch.manual_seed(0)
    pair = SMPParallelCausalConv1d(3, 4, 21, n_points=6, radius=0.1, coord_std=0.3, fft=use_fft, causal=False)
    pair = pair.double()
    randomize_bn_(pair)
    pair.eval()
    x = torch.randn(2, 3, 16, dtype=torch.float64)
    with torch.no_grad():
        train_form = pair.smp(x) + pair.small_conv(x)
        folded = pair(x)  # the eval-mode folded kernel
        pair.reparameterize()
        deployed = pair(x)
    torch.testing.assert_close(folded, train_form)
    torch.testing.assert_close(deployed, train_form)
    assert pair.reparam_conv.causal is False and pair.reparam_conv.weight.shape[-1] == 21


def test_centred_small_branch_folds_into_the_middle_taps():
    torch.manual_seed(0)
    pair = SMPParallelCausalConv1d(2, 3, 21, n_points=4, radius=0.1, coord_std=0.3, causal=False).double().eval()
    with torch.no_grad():
        pair.smp.conv.weights.zero_()  # only the 5-tap branch is left
        weight, _ = pair.fused_kernel_bias()
    nonzero = weight.abs().sum((0, 1)).nonzero().flatten().tolist()
    assert nonzero == [8, 9, 10, 11, 12]  # taps -2..2 around the middle tap 10


def _tcn(**kwargs):
    args = dict(in_chans=2, num_classes=3, seq_len=24, depth=2, width=6, n_points=5, radius=0.1, causal=False)
    model = timm.create_model('smpconv_tcn_chartraj', **{**args, **kwargs}).double()
    randomize_bn_(model)
    return model.eval()


def test_centred_tcn_kernel_length_and_reparameterization():
    torch.manual_seed(0)
    model = _tcn(global_pool='avg')
    conv = model.blocks[0].conv1
    assert conv.kernel_size == (47,) and conv.smp.conv.causal is False and conv.small_conv.conv.causal is False
    assert _tcn(kernel_size=25).blocks[1].conv2.kernel_size == (25,)
    x = torch.randn(3, 2, 24, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
        deployed = timm.utils.reparameterize_model(model, inplace=False)(x)
    torch.testing.assert_close(deployed, ref)
    with pytest.raises(ValueError, match='odd'):
        _tcn(kernel_size=24)


@pytest.mark.parametrize('pool', ['avg', 'max', 'last'])
def test_centred_tcn_left_padded_masked_equals_unpadded(pool):
    """A series padded on the left with the mask gives, on its real steps, the unpadded series' outputs."""
    torch.manual_seed(0)
    model = _tcn(global_pool=pool)
    g = torch.Generator().manual_seed(1)
    short = torch.randn(1, 2, 17, generator=g, dtype=torch.float64)
    padded = torch.cat([torch.randn(1, 2, 7, generator=g, dtype=torch.float64) * 5, short], -1)  # junk padding
    mask = torch.zeros(1, 24, dtype=torch.bool)
    mask[:, 7:] = True
    with torch.no_grad():
        torch.testing.assert_close(model(padded, mask), model(short))
        features = model.forward_features(padded, mask)
        torch.testing.assert_close(features[..., 7:], model.forward_features(short))
        assert features[..., :7].abs().max() == 0


def test_centred_tcn_torch_export_matches_eager():
    torch.manual_seed(0)
    model = _tcn(global_pool='avg')
    x = torch.randn(2, 2, 24, dtype=torch.float64)
    for m in (model, timm.utils.reparameterize_model(model, inplace=False)):
        program = torch.export.export(m, (x,))
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x), m(x))


def test_irregular_tcn_refuses_centred_kernels():
    with pytest.raises(ValueError, match='causal=False'):
        timm.create_model('smpconv_irregular_tcn', causal=False)


def test_centred_pair_refuses_the_causal_only_paths():
    pair = SMPParallelCausalConv1d(1, 2, 9, n_points=3, radius=0.1, coord_std=0.1, causal=False)
    x, t = torch.randn(1, 1, 6), torch.arange(6.0)[None] * 1.5
    with pytest.raises(ValueError, match='timestamp path evaluates causal kernels'):
        pair(x, torch.ones(1, 6, dtype=torch.bool), t)
    with pytest.raises(ValueError, match='causal=False'):
        pair.smp.conv.pairwise(x, t, torch.ones(1, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match='kernel_layer builds a causal kernel'):
        SMPParallelCausalConv1d(1, 2, 9, n_points=3, radius=0.1, coord_std=0.1, causal=False,
                                kernel_layer=lambda *a, **k: None)
