"""smpconv_t / smpconv_b as dense-prediction backbones: ``output_stride`` 8 / 16 / 32 against a plain F.conv2d
reference with explicit strides and dilations, the subsampled-grid equivalence with the ``output_stride=32``
network, reparameterization, torch.compile / torch.export / ONNX / TorchScript with dilation, timm's
``features_only`` and ``forward_intermediates``, and the clear refusals of the families without strides."""
from __future__ import annotations

import re

import pytest
import timm
import torch
import torch.nn as nn

import smpconv_models  # noqa: F401
from smpconv_models.layers import conv as conv_module
from smpconv_models.models import family_of

from ..helpers import PLANS, randomize_bn_, reference_features

SMALL = dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), kernel_sizes=(13, 11, 11, 11), num_classes=5,
             drop_path_rate=0.0)

def _model(output_stride: int, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model('smpconv_t', output_stride=output_stride, **dict(SMALL, **kwargs)).double()
    with torch.no_grad():
        randomize_bn_(model)
        for m in model.modules():  # the small branches and BN-ed pointwise convs away from their init
            if isinstance(m, nn.Conv2d):
                m.weight.normal_(0, 0.3)
    return model


# --------------------------------------------------------------------------------------------- structure

@pytest.mark.parametrize(('output_stride', 'reductions'), [(32, [4, 8, 16, 32]), (16, [4, 8, 16, 16]),
                                                           (8, [4, 8, 8, 8])])
def test_feature_info_and_state_dict_follow_output_stride(output_stride, reductions):
    model = timm.create_model('smpconv_t', output_stride=output_stride)
    assert [f['reduction'] for f in model.feature_info] == reductions
    default = timm.create_model('smpconv_t', pretrained=False)
    # the same parameters at every output stride: official / ImageNet checkpoints load into any of them
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in default.state_dict().items()}
    plan = PLANS[output_stride]
    for stage, (stride, first, d) in zip(model.stages[1:], plan):
        assert stage.downsample[1].conv.stride == (stride, stride)
        assert stage.downsample[1].conv.dilation == (first, first)
        lk = stage.blocks[0].large_kernel
        assert lk.smp.conv.dilation == d and lk.small_conv.conv.dilation == (d, d)
        assert lk.smp.conv.kernel_size == (lk.kernel_size[0],) * 2  # the same K taps, applied d pixels apart


def test_output_stride_is_checked():
    with pytest.raises(ValueError, match='output_stride must be 8, 16 or 32'):
        timm.create_model('smpconv_t', output_stride=4)


def test_output_stride_32_is_the_default_model_bit_for_bit():
    a, b = _model(32), _model(32)
    torch.manual_seed(0)
    c = timm.create_model('smpconv_t', **SMALL).double()
    assert list(a.state_dict()) == list(c.state_dict())
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    a.eval()
    b.eval()
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


# ---------------------------------------------------------------------------------------- values (float64)

@pytest.mark.parametrize('output_stride', [32, 16, 8])
def test_eval_matches_plain_reference_and_reparameterized(output_stride):
    model = _model(output_stride).eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        ref = reference_features(model, x, output_stride)
        feats = model.forward_intermediates(x, intermediates_only=True)
        for a, r in zip(feats, ref):
            torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)
        deployed = timm.utils.reparameterize_model(model)
        for a, r in zip(deployed.forward_intermediates(x, intermediates_only=True), ref):
            torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('output_stride', [16, 8])
def test_dilated_features_are_the_undilated_network_on_the_subsampled_grid(output_stride):
    """Option A (module docstring): the same taps at dilation d reproduce the output_stride=32 network exactly."""
    ref_model, model = _model(32).eval(), _model(output_stride).eval()
    model.load_state_dict(ref_model.state_dict())
    x = torch.randn(2, 3, 96, 64, dtype=torch.float64)
    with torch.no_grad():
        ref = ref_model.forward_intermediates(x, intermediates_only=True)
        feats = model.forward_intermediates(x, intermediates_only=True)
    for a, r, info in zip(feats, ref, model.feature_info):
        step = r.shape[-1] and a.shape[-1] // r.shape[-1]
        assert a.shape[-2:] == (96 // info['reduction'], 64 // info['reduction'])
        torch.testing.assert_close(a[..., ::step, ::step], r, rtol=1e-10, atol=1e-10)
    assert feats[-1].shape[-1] == 64 // output_stride and ref[-1].shape[-1] == 2


@pytest.mark.parametrize('path', ['hybrid', 'fft'])
@pytest.mark.parametrize('output_stride', [16, 8])
def test_training_forward_and_point_gradients_match_reference(monkeypatch, output_stride, path):
    """Train mode (batch statistics): outputs and the SMP points' gradients through the hybrid and all-FFT paths
    of the dilated depthwise kernels equal the plain reference's."""
    taken = []
    plain = conv_module.conv_path

    def chosen(x, weight, groups):
        p = plain(x, weight, groups)
        p = 'fft' if path == 'fft' and p == 'hybrid' else p
        taken.append(p)
        return p

    monkeypatch.setattr(conv_module, 'conv_path', chosen)
    model = _model(output_stride).train()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    feats = model.forward_intermediates(x, intermediates_only=True)
    assert path in taken
    ref = reference_features(model, x, output_stride, train=True)
    points = [p for n, p in model.named_parameters() if n.endswith(('weight_coord', 'radius', '.weights'))]
    weights = [torch.randn_like(f) for f in feats]
    loss = sum((f * w).sum() for f, w in zip(feats, weights))
    ref_loss = sum((f * w).sum() for f, w in zip(ref, weights))
    for a, r in zip(feats, ref):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-9)
    grads = torch.autograd.grad(loss, points)
    ref_grads = torch.autograd.grad(ref_loss, points)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-9)
    assert all(g.abs().sum() > 0 for g in grads)


# -------------------------------------------------------------------------- compile, export, ONNX, TorchScript

def test_compile_dilated_large_kernel_matches_eager():
    """Training forward + backward and eval of torch.compile (default settings) on the last large-kernel block of an
    output-stride-8 network, float64: its SMP and small kernels at dilation 4, the SMP kernel through the hybrid path
    (the autograd Function with the dilation) in training and the unfolded branches in eval. The undilated network
    compiles in tests/test_compile.py; the dilated transitions are plain dilated convs (the export and reference
    tests here check them). Compiling only this block keeps the test short (Inductor compiles each graph's kernels)."""
    from smpconv_models.experiments.compile_check import compare_compiled, deterministic_
    from smpconv_models.layers.conv import conv_path

    large_kernel = deterministic_(_model(8).stages[3].blocks[0].large_kernel)
    assert large_kernel.dilation == 4 and large_kernel.small_conv.conv.dilation == (4, 4)
    x = torch.randn(2, 32, 8, 8, dtype=torch.float64)
    assert conv_path(x.requires_grad_(), large_kernel.smp.conv.generate_kernel(), 32) == 'hybrid'
    rows = compare_compiled(large_kernel, [(x.detach(),)])
    assert [r['mode'] for r in rows] == ['train', 'eval']
    for row in rows:
        assert row['output_rel'] < 1e-9, row
        assert row['grad_rel'] is None or row['grad_rel'] < 1e-9, row
    point_grads = [p.grad for n, p in large_kernel.named_parameters() if n.endswith(('weight_coord', '.weights'))]
    assert len(point_grads) == 2 and all(g is not None and g.abs().sum() > 0 for g in point_grads)


@pytest.mark.parametrize('reparam', [False, True], ids=['train_form', 'reparam'])
def test_torch_export_dilated_matches_eager(reparam):
    model = _model(8, depths=(1, 1, 1), dims=(8, 16, 24), kernel_sizes=(13, 11, 11)).eval()
    if reparam:
        model = timm.utils.reparameterize_model(model)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        ref = reference_features(_model(8, depths=(1, 1, 1), dims=(8, 16, 24), kernel_sizes=(13, 11, 11)).eval(),
                                 x, 8) if not reparam else None
        out = program.module()(x)
        torch.testing.assert_close(out, model(x), rtol=1e-10, atol=1e-10)
        if ref is not None:  # the exported graph's features are the reference's (head: norm, pool, fc)
            torch.testing.assert_close(out, model.forward_head(model.norm(ref[-1])), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(('output_stride', 'reparam', 'dynamo'), [(16, True, True), (8, False, True),
                                                                    (8, True, False)])
def test_onnx_export_dilated_checked_in_onnxruntime(tmp_path, output_stride, reparam, dynamo):
    """smpconv_models.export (both exporters, dynamic batch): the file reproduces PyTorch in onnxruntime."""
    pytest.importorskip('onnxruntime')
    from smpconv_models.export import build_export_model, export_onnx

    torch.manual_seed(0)
    model = build_export_model('smpconv_t', model_args=dict(SMALL, output_stride=output_stride),
                               reparameterize=reparam)
    randomize_bn_(model)
    x = torch.randn(2, 3, 64, 64)
    info = export_onnx(model, tmp_path / 'm.onnx', x, dynamic_batch=True, dynamo=dynamo)
    assert (tmp_path / 'm.onnx').is_file() and max(info['relative_error'].values()) < 1e-4


def test_torchscript_dilated_reparameterized_model():
    model = timm.utils.reparameterize_model(_model(16).eval())
    scripted = torch.jit.script(model)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


# ------------------------------------------------------------------------- timm features_only / intermediates

@pytest.mark.parametrize('output_stride', [32, 16, 8])
@pytest.mark.parametrize('size', [(64, 64), (96, 128)])
def test_features_only_matches_forward_intermediates(output_stride, size):
    torch.manual_seed(0)
    kwargs = dict(SMALL, output_stride=output_stride)
    kwargs.pop('num_classes')
    net = timm.create_model('smpconv_t', features_only=True, **kwargs).double()
    full = timm.create_model('smpconv_t', **kwargs).double()
    randomize_bn_(net)
    # FeatureListNet flattens stem / stages into stem_0, stages_0, ...
    missing, unexpected = full.load_state_dict(
        {re.sub(r'^(stem|stages)_(\d+)\.', r'\1.\2.', k): v for k, v in net.state_dict().items()}, strict=False)
    assert not unexpected and all(k.startswith(('norm.', 'head.')) for k in missing)
    assert net.feature_info.reduction() == [f['reduction'] for f in full.feature_info]
    assert net.feature_info.channels() == list(SMALL['dims'])
    net.eval()
    full.eval()
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    with torch.no_grad():
        feats = net(x)
        inter = full.forward_intermediates(x, intermediates_only=True)
    for f, i, r, c in zip(feats, inter, net.feature_info.reduction(), SMALL['dims']):
        assert f.shape == (2, c, size[0] // r, size[1] // r)
        assert torch.equal(f, i)
    # backward reaches every stage's SMP points
    net.train()
    sum(f.square().mean() for f in net(x)).backward()
    grads = [p.grad for n, p in net.named_parameters() if n.endswith('.weight_coord')]
    assert len(grads) == 4 and all(g is not None and g.abs().sum() > 0 for g in grads)


# ---------------------------------------------------------------------- families that are not dense backbones

@pytest.mark.parametrize('name', ['smpconv_cifar', 'smpconv_tcn_mnist', 'smpconv_points', 'smpconv_irregular_tcn'])
def test_families_without_strides_refuse_output_stride(name):
    assert family_of(name).feature_maps != 'pyramid'
    with pytest.raises(ValueError, match=rf'{name} does not take output_stride=16: it has no strided stages.*'
                                         r'smpconv_t / smpconv_b'):
        timm.create_model(name, output_stride=16)


@pytest.mark.parametrize('name', ['smpconv_points', 'smpconv_irregular_tcn'])
def test_multi_input_families_refuse_features_only(name):
    assert family_of(name).feature_maps == 'refused'
    with pytest.raises(ValueError, match=r'does not take features_only=True: it takes .*mask.* cannot serve as a '
                                         r'segmentation / detection encoder.*smpconv_t / smpconv_b'):
        timm.create_model(name, features_only=True)


@pytest.mark.parametrize('name', ['smpconv_cifar', 'smpconv_tcn_mnist'])
def test_full_resolution_families_warn_on_features_only(name):
    assert family_of(name).feature_maps == 'full_resolution'
    with pytest.warns(UserWarning, match=r'full-resolution maps .* smpconv_t / smpconv_b'):
        net = timm.create_model(name, features_only=True)
    assert set(net.feature_info.reduction()) == {1}  # still a working full-resolution feature extractor
