"""MAC counting (smpconv_models.flops): paper figures, kernel-generation and FFT formulas, CLI and errors.

Every expected number is computed here from layer shapes (or forward hooks), independently of the fvcore handles.
"""
from __future__ import annotations

import json
import logging
import math
import sys

import pytest
import timm
import torch
import torch.nn as nn
from timm.utils import reparameterize_model

pytest.importorskip('fvcore')

from smpconv_models import flops
from smpconv_models.layers import (
    SMPConv,
    SMPConvBase,
    SMPDepthwiseConv2d,
    SMPLargeKernelConv2d,
    causal_conv1d,
)

KEYS = {'model', 'input_size', 'params', 'gmacs_deploy', 'gmacs_train', 'gmacs_paper'}


def rfft_macs(n: int, rows: int) -> float:
    """The documented FFT cost: n * log2(n) real MACs per real-input / real-output transform of length n."""
    return rows * n * math.log2(n)


def fast_len(n: int) -> int:
    """Smallest 7-smooth integer >= n (the FFT length of causal_conv1d)."""
    while True:
        r = n
        for p in (2, 3, 5, 7):
            while r % p == 0:
                r //= p
        if r == 1:
            return n
        n += 1


def fft_causal_macs(batch: int, c_in: int, c_out: int, length: int, taps: int) -> float:
    """rfft of the input and the kernel, complex channel mixing (4 real MACs each), irfft of the output."""
    n = fast_len(length + min(taps, length) - 1)
    bins = n // 2 + 1
    return (rfft_macs(n, batch * c_in) + rfft_macs(n, c_out * c_in) + rfft_macs(n, batch * c_out)
            + 4 * bins * batch * c_in * c_out)


def kernel_gen_macs(model: nn.Module) -> int:
    """Sum over SMP layers of G * P * Q * (C + d + 1): the basis (d + 1 per point-query) and the point weighting."""
    total = 0
    for m in model.modules():
        if isinstance(m, SMPConvBase):
            groups, channels, n_points = m.weights.shape
            total += groups * n_points * math.prod(m.kernel_size) * (channels + len(m.kernel_size) + 1)
    return total


def conv_linear_macs_by_hooks(model: nn.Module, x: torch.Tensor) -> int:
    """Conv + linear MACs of one eval forward, from forward hooks (output elements x inputs per output element);
    SMP layers count as the dense convolution they apply, their kernel generation is not included."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Linear):
            total += output.numel() * module.in_features
        elif isinstance(module, SMPDepthwiseConv2d):
            total += output.numel() * math.prod(module.kernel_size)
        elif isinstance(module, SMPConv):
            total += output.numel() * module.in_channels * math.prod(module.kernel_size)
        else:
            total += output.numel() * module.in_channels // module.groups * math.prod(module.kernel_size)

    kinds = (nn.Conv2d, nn.Linear, SMPDepthwiseConv2d, SMPConv)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return total


@pytest.fixture(scope='module')
def smpconv_t_counts():
    torch.manual_seed(0)
    model = timm.create_model('smpconv_t')
    return model, flops.count_flops(model)


def test_smpconv_t_paper_figures(smpconv_t_counts, caplog):
    model, res = smpconv_t_counts
    assert set(res) == KEYS
    assert res['model'] == 'smpconv_t'
    assert res['input_size'] == [3, 224, 224]
    assert res['params'] == 26_705_248
    assert round(res['gmacs_deploy'], 1) == 5.7
    assert res['gmacs_deploy'] * 1e9 == pytest.approx(5_667_883_776, abs=1)
    assert round(res['gmacs_paper'], 1) == 5.7  # Table 4: 5.7 G
    # the paper's count: every conv of the train form (SMP and 5x5 branches) + the classifier, from hooks
    expected = conv_linear_macs_by_hooks(model, torch.randn(1, 3, 224, 224))
    assert res['gmacs_paper'] * 1e9 == pytest.approx(expected, abs=1)


def test_smpconv_t_train_minus_deploy(smpconv_t_counts):
    model, res = smpconv_t_counts
    assert res['gmacs_train'] > res['gmacs_paper'] > res['gmacs_deploy']
    # train - paper = kernel generation: sum of P * K^2 * (C + 3) over the 14 shared-point depthwise SMP layers
    kgen = kernel_gen_macs(model)
    assert kgen == 536_260_824
    assert (res['gmacs_train'] - res['gmacs_paper']) * 1e9 == pytest.approx(kgen, abs=1)
    # paper - deploy = the parallel 5x5 depthwise branches, folded away in the deploy model
    small = 0
    for name, m in model.named_modules():
        if isinstance(m, SMPLargeKernelConv2d):
            side = 224 // (4 * 2 ** int(name.split('.')[1]))  # stages.{i}: 56, 28, 14, 7
            small += m.small_kernel_size ** 2 * m.channels * side * side
    assert (res['gmacs_paper'] - res['gmacs_deploy']) * 1e9 == pytest.approx(small, abs=1)


def test_smpconv_b_paper_figures():
    res = flops.count_flops('smpconv_b')
    assert res['params'] == 79_546_520
    assert round(res['gmacs_paper'], 1) == 16.6  # Table 4: 16.6 G
    # the folded deploy model has no separate 5x5 branch: 82.8 M MACs less than the paper's count
    assert res['gmacs_deploy'] * 1e9 == pytest.approx(16_527_442_944, abs=1)
    assert (res['gmacs_paper'] - res['gmacs_deploy']) * 1e9 == pytest.approx(82_790_400, abs=1)


@pytest.mark.parametrize(('length', 'taps'), [(100, 101), (50, 26), (60, 60)])
def test_fft_handle_matches_formula(length, taps):
    # (100, 101): n = 200 (kernel longer than the input), (50, 26): odd n = 75, (60, 60): n = 120
    class Conv(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 3, taps))

        def forward(self, x):
            return causal_conv1d(x, self.weight, fft=True)

    ops = flops.flop_count_analysis(Conv(), torch.randn(2, 3, length)).by_operator()
    n = fast_len(length + min(taps, length) - 1)
    assert ops['fft_rfft'] == pytest.approx(rfft_macs(n, 2 * 3) + rfft_macs(n, 4 * 3))
    assert ops['fft_irfft'] == pytest.approx(rfft_macs(n, 2 * 4))
    assert ops['matmul'] == 4 * (n // 2 + 1) * 2 * 3 * 4
    assert sum(ops.values()) == pytest.approx(fft_causal_macs(2, 3, 4, length, taps))


def test_fft_ops_with_default_length():
    class Spectra(nn.Module):
        def forward(self, x):
            return torch.fft.rfft(x).abs() + torch.fft.fft(x.to(torch.complex64))[..., :25].abs()

    ops = flops.flop_count_analysis(Spectra(), torch.randn(2, 3, 48)).by_operator()
    assert ops['fft_rfft'] == pytest.approx(rfft_macs(48, 6))
    assert ops['fft_fft'] == pytest.approx(2 * rfft_macs(48, 6))  # complex: twice a real transform


def test_matmul_family_and_complex_products():
    class Products(nn.Module):
        def forward(self, a, b, v):
            complex_ab = a.to(torch.complex64) @ b.to(torch.complex64)
            return torch.bmm(a, b).sum() + (a[0] @ v).sum() + torch.dot(v, v) + complex_ab.real.sum()

    ops = flops.flop_count_analysis(Products(), (torch.randn(2, 3, 4), torch.randn(2, 4, 5), torch.randn(4)))
    # bmm 2*3*5*4, matrix-vector 3*4, dot 4, complex bmm 4 real MACs per complex multiply-add
    assert dict(ops.by_operator()) == {'matmul': 120 + 12 + 4 + 4 * 120}
    assert not ops.unsupported_ops()


def test_direct_causal_conv_counts_taps():
    class Conv(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 3, 5))

        def forward(self, x):
            return causal_conv1d(x, self.weight, fft=False)

    ops = flops.flop_count_analysis(Conv(), torch.randn(2, 3, 40)).by_operator()
    assert dict(ops) == {'conv': 2 * 4 * 3 * 5 * 40}


def test_tcn_counts_match_formulas(caplog):
    seq = 100
    model = timm.create_model('smpconv_tcn_mnist', seq_len=seq)
    with caplog.at_level(logging.WARNING, logger='smpconv_models.flops'):
        res = flops.count_flops(model)
    assert not caplog.records  # every op in the trace has a handle
    assert res['input_size'] == [1, seq]
    assert res['params'] == 370_960
    widths = [(1, 30)] + [(30, 30)] * 11  # (C_in, C_out) of the 12 causal SMP pairs
    deploy = sum(fft_causal_macs(1, ci, co, seq, seq) for ci, co in widths) + 30 * seq + 30 * 10  # + shortcut, head
    small = sum(co * ci * 5 * seq for ci, co in widths)  # the direct 5-tap branches of the train form
    kgen = sum(co * 30 * seq * (ci + 2) for ci, co in widths)  # 30 points, d = 1
    assert kgen == kernel_gen_macs(model)
    assert res['gmacs_deploy'] * 1e9 == pytest.approx(deploy, rel=1e-12)
    assert res['gmacs_paper'] * 1e9 == pytest.approx(deploy + small, rel=1e-12)
    assert res['gmacs_train'] * 1e9 == pytest.approx(deploy + small + kgen, rel=1e-12)


def test_cifar_normalized_kernels(caplog):
    model = timm.create_model('smpconv_cifar', widths=(24, 36))  # 2 of the 7 blocks: 5 SMP layers, 33x33
    with caplog.at_level(logging.WARNING, logger='smpconv_models.flops'):
        res = flops.count_flops(model, img_size=8)
    assert not caplog.records
    assert res['input_size'] == [3, 8, 8]
    assert res['params'] == sum(p.numel() for p in model.parameters())
    # per-filter points with the 1/|N(x)| average: G = C_out, d = 2; the normalisation itself counts zero
    assert kernel_gen_macs(model) == sum(co * 16 * 33 * 33 * (ci + 3) for ci, co in
                                         [(3, 24), (24, 24), (24, 24), (24, 36), (36, 36)])
    assert (res['gmacs_train'] - res['gmacs_paper']) * 1e9 == pytest.approx(kernel_gen_macs(model), abs=1)
    deployed = reparameterize_model(model).eval()
    # the dense 33x33 deploy convs run through the FFT (same_conv): rfftn of input and kernel, one complex matmul
    # per frequency (4 real MACs per complex multiply-add), irfftn of the output; the rest by hooks
    from smpconv_models.layers import SMPParallelConv
    from smpconv_models.layers.conv import _fft_size

    n = _fft_size(8 + 7)  # only offsets |d| <= 7 reach an 8-pixel axis: 16-point transforms
    fft_conv = sum(flops.fft_macs(n * n, ci) + flops.fft_macs(n * n, co * ci) + 4 * n * (n // 2 + 1) * ci * co
                   + flops.fft_macs(n * n, co)
                   for ci, co in [(m.in_channels, m.out_channels) for m in deployed.modules()
                                  if isinstance(m, SMPParallelConv)])
    expected = conv_linear_macs_by_hooks(deployed, torch.randn(1, 3, 8, 8)) + fft_conv
    assert res['gmacs_deploy'] * 1e9 == pytest.approx(expected, rel=1e-9)
    assert model.stem.smp is not None  # the caller's model stays in train form


def test_cli_json(capsys):
    assert flops.main(['smpconv_tcn_chartraj', '--seq-len', '32', '--json']) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == KEYS
    assert out['model'] == 'smpconv_tcn_chartraj'
    assert out['input_size'] == [3, 32]
    assert out['params'] == 373_790
    assert out['gmacs_train'] > out['gmacs_paper'] > out['gmacs_deploy'] > 0


def test_cli_table(capsys):
    assert flops.main(['smpconv_tcn_speech', '--seq-len', '16']) == 0
    out = capsys.readouterr().out
    assert 'smpconv_tcn_speech' in out and '20x16' in out and 'GMACs deploy' in out and '391,840' in out


def test_unknown_model_lists_close_matches():
    with pytest.raises(ValueError, match=r"unknown model 'smpconv_tt'.*smpconv_t"):
        flops.count_flops('smpconv_tt')


def test_size_option_of_the_wrong_kind():
    with pytest.raises(ValueError, match=r'sequence model.*seq_len'):
        flops.count_flops('smpconv_tcn_mnist', img_size=32)
    with pytest.raises(ValueError, match=r'image model.*img_size'):
        flops.count_flops('smpconv_t', seq_len=100)
    with pytest.raises(ValueError, match='positive'):
        flops.count_flops('smpconv_tcn_mnist', seq_len=0)
    with pytest.raises(TypeError):
        flops.count_flops(42)


@pytest.mark.parametrize('argv', [
    ['smpconv_t', '--seq-len', '100'],
    ['smpconv_tcn_mnist', '--img-size', '32'],
    ['smpconv_t', '--img-size', '32', '--seq-len', '5'],
    ['resnet50'],
])
def test_cli_bad_input_exits_with_message(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        flops.main(argv)
    assert exc.value.code == 2
    assert 'error:' in capsys.readouterr().err


def test_missing_fvcore_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, 'fvcore', None)
    monkeypatch.setitem(sys.modules, 'fvcore.nn', None)
    flops._analysis_cls.cache_clear()
    try:
        with pytest.raises(ImportError, match=r'pip install .smpconv-models\[flops\]'):
            flops.count_flops('smpconv_tcn_mnist', seq_len=16)
        with pytest.raises(ImportError, match='fvcore'):
            flops.flop_count_analysis(nn.Linear(2, 2), torch.randn(1, 2))
    finally:
        flops._analysis_cls.cache_clear()


@pytest.mark.parametrize('name,kind', [('smpconv_points', 'points'), ('smpconv_irregular_tcn', 'irregular')])
def test_families_with_other_inputs_are_refused_clearly(name, kind):
    with pytest.raises(ValueError, match=f'{name}: FLOPs are counted for image and sequence models, not for {kind}'):
        flops.count_flops(name)


def test_centred_ensemble_costs_n_members_at_the_data_length(caplog):
    seq = 40
    args = dict(seq_len=seq, depth=2, width=6, n_points=4, causal=False)
    torch.manual_seed(0)
    member = timm.create_model('smpconv_tcn_mnist', **args)
    ensemble = timm.create_model('smpconv_ensemble', member='smpconv_tcn_mnist', n_members=3, **args)
    with caplog.at_level(logging.WARNING, logger='smpconv_models.flops'):
        one, three = flops.count_flops(member), flops.count_flops(ensemble)
    assert not caplog.records  # every op in the trace has a handle
    assert one['input_size'] == three['input_size'] == [1, seq]  # not the centred kernels' 2 L - 1 taps
    assert three['params'] == 3 * one['params']
    for key in ('gmacs_deploy', 'gmacs_paper', 'gmacs_train'):
        assert three[key] == pytest.approx(3 * one[key], rel=1e-9)
