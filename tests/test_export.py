"""Deployment: the export forms of the FFT convolutions, ONNX export of every family (both exporters, timm's helper,
our CLI) checked in onnxruntime, torch.export, and pretrained weights adapted to other input channels; the point-set
and irregular-series families (several inputs, data-dependent paths) included."""
from __future__ import annotations

import json

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models import adapt_input_conv

import smpconv_models  # noqa: F401
from smpconv_models import export as export_cli
from smpconv_models.layers.causal_conv import causal_conv1d
from smpconv_models.layers.conv import direct_same_conv
from smpconv_models.layers.export_conv import (
    export_causal_conv1d,
    export_fft_method,
    export_same_conv,
    resolve_export_method,
)
from smpconv_models.models._checkpoint import adapt_input_weight

from .helpers import irregular_series, point_sets, randomize_bn_

onnx = pytest.importorskip('onnx')
ort = pytest.importorskip('onnxruntime')

# Small configurations of every registered family (the export paths do not depend on the size; the FFT lengths,
# channel mixing and kernel crops do, and these cover 'same' 2-d, causal with L = K, L < K and L > K).
FAMILIES = {
    'smpconv_t': dict(depths=(1, 1), dims=(8, 16), kernel_sizes=(13, 7), num_classes=5),
    'smpconv_b': dict(depths=(1, 1), dims=(8, 16), kernel_sizes=(13, 7), num_classes=5),
    'smpconv_cifar': dict(stem_width=6, widths=(8,), kernel_size=17),
    'smpconv_tcn_mnist': dict(depth=1, width=8, seq_len=64),
    'smpconv_tcn_scifar10': dict(depth=1, width=8, seq_len=64),
    'smpconv_tcn_chartraj': dict(depth=1, width=8, seq_len=50),
    'smpconv_tcn_speech': dict(depth=1, width=8, seq_len=49),
    'smpconv_tcn_speech_raw': dict(depth=1, width=8, seq_len=64),
    'smpconv_points': dict(stem_width=8, widths=(8,), depths=(1,), stage_points=(10,), radii=(0.8,), k=8),
    'smpconv_points_3d': dict(stem_width=8, widths=(8,), depths=(1,), stage_points=(10,), radii=(0.8,), k=8),
    'smpconv_irregular_tcn': dict(depth=1, width=6, n_points=4, seq_len=16, radius=0.15),
    'smpconv_irregular_tcn_chartraj': dict(depth=1, width=6, n_points=4, seq_len=20),
}
INPUTS = {'smpconv_t': (3, 32, 32), 'smpconv_b': (3, 32, 32), 'smpconv_cifar': (3, 16, 16)}


def _model(name: str, reparam: bool, dtype=torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, **FAMILIES[name]).to(dtype)
    with torch.no_grad():  # trained-like BatchNorm statistics and small-branch weights (not the init's)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    model.eval()
    return timm.utils.reparameterize_model(model) if reparam else model


def _input(name: str, batch: int, length: int | None = None) -> torch.Tensor:
    torch.manual_seed(1)
    if name in INPUTS:
        return torch.randn(batch, *INPUTS[name])
    cfg = FAMILIES[name]
    chans = timm.create_model(name, **cfg).in_chans
    return torch.randn(batch, chans, length or cfg['seq_len'])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _ort_rel(path, model, x) -> float:
    """Relative error of the ONNX file against ``model`` on ``x`` (a tensor or a tuple of positional inputs)."""
    inputs = x if isinstance(x, tuple) else (x,)
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    out = torch.from_numpy(session.run(None, feed)[0])
    with torch.no_grad():
        return _rel(out, model(*inputs))


# --------------------------------------------------------------------------------------- export forms (float64)

@pytest.mark.parametrize('method', ['dft', 'matmul', 'direct'])
def test_export_forms_equal_the_direct_convolution(method):
    torch.manual_seed(0)
    dd = dict(dtype=torch.float64)
    with export_fft_method(method):
        for length, taps in ((40, 40), (50, 17), (12, 12)):
            x, w, b = torch.randn(3, 4, length, **dd), torch.randn(5, 4, taps, **dd), torch.randn(5, **dd)
            assert _rel(export_causal_conv1d(x, w, b), causal_conv1d(x, w, b, fft=False)) < 1e-12
        for (h, wd), k, groups in (((16, 19), 17, 1), ((12, 12), 7, 1), ((9, 9), 27, 6)):
            cin, cout = (6, 6) if groups > 1 else (4, 5)
            x = torch.randn(2, cin, h, wd, **dd)
            w, b = torch.randn(cout, cin // groups, k, k, **dd), torch.randn(cout, **dd)
            assert _rel(export_same_conv(x, w, b, groups, direct_same_conv),
                        F.conv2d(x, w, b, padding=k // 2, groups=groups)) < 1e-12
        x, w = torch.randn(2, 3, 20, **dd), torch.randn(4, 3, 9, **dd)
        assert _rel(export_same_conv(x, w, None, 1, direct_same_conv), F.conv1d(x, w, padding=4)) < 1e-12


def test_auto_method_follows_basis_size_and_unknown_method_is_an_error():
    assert resolve_export_method(1000) == 'matmul'
    assert resolve_export_method(2 * 16000 * 16000) == 'dft'
    with export_fft_method('direct'):
        assert resolve_export_method(10) == 'direct'
    with pytest.raises(ValueError, match="unknown FFT export method 'fast'"), export_fft_method('fast'):
        pass


# ------------------------------------------------------------------------------------------------------- ONNX

# One model class per structure (smpconv_b is smpconv_t's class, the TCN variants differ in channels and conv bias;
# every registered name goes through test_export_cli_round_trip).
CLASSES = ['smpconv_t', 'smpconv_cifar', 'smpconv_tcn_scifar10']


@pytest.mark.parametrize('reparam', [True, False], ids=['reparam', 'train_form'])
@pytest.mark.parametrize('name', CLASSES)
def test_timm_onnx_export_both_exporters_match_pytorch(name, reparam, tmp_path):
    """timm.utils.onnx.onnx_export (dynamic batch), TorchScript and dynamo exporters, checked at two batch sizes."""
    from timm.utils.onnx import onnx_export

    model = _model(name, reparam)
    for use_dynamo in (False, True):
        path = tmp_path / f'{use_dynamo}.onnx'
        onnx_export(model, str(path), example_input=_input(name, 2), use_dynamo=use_dynamo, check=True)
        for batch in (2, 3):
            assert _ort_rel(path, model, _input(name, batch)) <= 1e-4, (use_dynamo, batch)


@pytest.mark.parametrize(('length', 'dynamo'), [(40, False), (100, True)], ids=['shorter', 'longer'])
def test_sequence_model_exports_at_another_length(length, dynamo, tmp_path):
    """The TCN accepts any length (kernels longer than the input are cropped); torch.onnx.export at 40 and 100 steps
    of a model trained at 64, with the DFT operator and the matmul form."""
    model = _model('smpconv_tcn_mnist', reparam=True)
    x = _input('smpconv_tcn_mnist', 2, length)
    for method in ('dft', 'matmul'):
        path = tmp_path / f'{method}.onnx'
        with export_fft_method(method):
            torch.onnx.export(model, (x,), str(path), dynamo=dynamo, input_names=['x'])
        assert _ort_rel(path, model, x) <= 1e-4, method


# The multi-input families: point sets (features, positions, mask) and irregular series (values, timestamps, mask).
POINTS = dict(stem_width=8, widths=(8, 16), depths=(1, 1), stage_points=(10, 5), radii=(0.6, 1.0), k=8)
MULTI = {
    'points_smp': ('smpconv_points', dict(POINTS, kernel='smp')),
    'points_mlp': ('smpconv_points', dict(POINTS, kernel='mlp')),
    'irregular': ('smpconv_irregular_tcn', dict(depth=2, width=5, n_points=4, seq_len=12, radius=0.15)),
    'irregular_mlp': ('smpconv_irregular_tcn', dict(depth=1, width=5, seq_len=12, kernel='mlp', mlp_hidden=8)),
}


def _multi_model(key: str, dtype=torch.float32) -> torch.nn.Module:
    name, kwargs = MULTI[key]
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).to(dtype)
    with torch.no_grad():
        randomize_bn_(model)  # trained-like statistics; opens the point blocks' zero-initialised residual branches
    return model.eval()


def _multi_inputs(key: str, batch: int, dtype=torch.float32, integer: bool = False) -> tuple:
    if key.startswith('points'):
        return point_sets(batch, seed=batch, dtype=dtype)
    return irregular_series(batch, integer=integer, seed=batch, dtype=dtype)


def _multi_checks(key: str, model: torch.nn.Module, dtype=torch.float32) -> list[tuple[tuple, bool]]:
    """``(inputs, eager_takes_grid_path)``: batches of 2 and 3 (padded sets / unobserved steps holding NaN); for the
    irregular TCN also integer timestamps, where eager takes the grid path and the exported graph (always the
    pairwise path) must still agree."""
    checks = [(_multi_inputs(key, b, dtype), False) for b in (2, 3)]
    if key.startswith('irregular'):
        integer = [_multi_inputs(key, b, dtype, integer=True) for b in (2, 3)]
        assert all(model._plan(*x)[0] for x in integer)  # eager: the grid path
        checks += [(x, True) for x in integer]
    return checks


def _names(key: str) -> list[str]:
    return ['features', 'positions', 'mask'] if key.startswith('points') else ['values', 'timestamps', 'mask']


@pytest.mark.parametrize(('key', 'dynamo'), [('points_smp', False), ('points_smp', True), ('points_mlp', False),
                                             ('irregular', False), ('irregular', True), ('irregular_mlp', False)])
def test_multi_input_onnx_export_matches_pytorch(key, dynamo, tmp_path):
    """torch.onnx.export (timm.utils.onnx.onnx_export takes one input tensor) with one graph input per forward
    argument and a dynamic batch, checked in onnxruntime at batch 2 and 3 (and integer timestamps)."""
    model = _multi_model(key)
    x, names, path = _multi_inputs(key, 2), _names(key), tmp_path / 'model.onnx'
    with torch.no_grad():
        if dynamo:
            program = torch.onnx.export(model, x, dynamo=True, input_names=names, output_names=['logits'],
                                        dynamic_shapes=tuple({0: 'batch'} for _ in names))
            program.save(str(path))
        else:
            torch.onnx.export(model, x, str(path), dynamo=False, input_names=names, output_names=['logits'],
                              dynamic_axes={n: {0: 'batch'} for n in [*names, 'logits']})
    onnx.checker.check_model(str(path), full_check=True)
    assert [i.name for i in ort.InferenceSession(str(path)).get_inputs()] == names
    for inputs, _ in _multi_checks(key, model):
        assert _ort_rel(path, model, inputs) <= 1e-4, tuple(inputs[0].shape)


@pytest.mark.parametrize('name', list(FAMILIES))
def test_export_cli_round_trip(name, tmp_path, capsys):
    out = tmp_path / 'model.onnx'
    args = [name, str(out), '--model-args', json.dumps(FAMILIES[name])]
    if name == 'smpconv_tcn_mnist':
        args = ['smpconv_tcn_mnist.digits', str(out), '--pretrained', '--seq-len', '50']
    # the dynamo exporter for one single-input and one multi-input model, TorchScript for the rest (faster; both
    # exporters are covered above and below)
    if name not in ('smpconv_t', 'smpconv_irregular_tcn_chartraj'):
        args += ['--exporter', 'torchscript']
    torch.manual_seed(0)  # the CLI builds the same (randomly initialised) model as build_export_model below
    assert export_cli.main([*args, '--dynamic-batch']) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report['path'] == str(out) and set(report['relative_error']) == {'batch_2', 'batch_3'}
    assert max(report['relative_error'].values()) <= 1e-4
    # the file reproduces the model the CLI built
    torch.manual_seed(0)
    model = export_cli.build_export_model(args[0], pretrained='--pretrained' in args,
                                          model_args=json.loads(args[3]) if '--model-args' in args else {})
    x = export_cli.example_inputs(model, 4, 50 if name == 'smpconv_tcn_mnist' else None)
    assert _ort_rel(out, model, x) <= 1e-4
    assert [p.name for p in tmp_path.iterdir()] == ['model.onnx']


def test_export_cli_failures_leave_no_file(tmp_path, monkeypatch, caplog):
    out = tmp_path / 'model.onnx'
    assert export_cli.main(['resnet50', str(out)]) == 2
    assert 'unknown model' in caplog.text
    # a check that fails after the file was written: nothing at OUT, no temporary left behind
    monkeypatch.setattr(export_cli, 'onnx_relative_error', lambda session, model, x: 0.5)
    args = ['smpconv_tcn_mnist', str(out), '--model-args', json.dumps(FAMILIES['smpconv_tcn_mnist']),
            '--exporter', 'torchscript']
    assert export_cli.main(args) == 2
    assert 'relative error' in caplog.text
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ torch.export

@pytest.mark.parametrize('reparam', [True, False], ids=['reparam', 'train_form'])
@pytest.mark.parametrize('name', ['smpconv_t', 'smpconv_cifar', 'smpconv_tcn_scifar10'])
def test_torch_export_matches_eager(name, reparam):
    """torch.export.export in float64 (the export forms of the FFT convolutions are traced) gives eager outputs."""
    model = _model(name, reparam, dtype=torch.float64)
    x = _input(name, 2).double()
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        assert _rel(program.module()(x), model(x)) < 1e-10


@pytest.mark.parametrize('key', list(MULTI))
def test_torch_export_multi_input_matches_eager(key):
    """torch.export.export of the point-set and irregular models in float64 with a dynamic batch: eager outputs at
    batch 2 and 3 (the irregular TCN on real and integer timestamps, padded steps holding NaN)."""
    model = _multi_model(key, torch.float64)
    batch = torch.export.Dim('batch', min=1)
    program = torch.export.export(model, _multi_inputs(key, 2, torch.float64), dynamic_shapes=({0: batch},) * 3)
    for inputs, grid in _multi_checks(key, model, torch.float64):
        with torch.no_grad():
            got = program.module()(*inputs)
            if grid:  # eager's grid path equals the pairwise path up to rounding (tests/models/test_irregular.py),
                # which the logits' cancellation amplifies about 100-fold; the pairwise path is what was exported
                assert _rel(got, model(*inputs)) < 1e-8
                pairwise = model.forward_features(*inputs, path='pairwise')
                assert _rel(got, model.forward_head(pairwise, mask=inputs[2])) < 1e-10
            else:
                assert _rel(got, model(*inputs)) < 1e-10, tuple(inputs[0].shape)


def test_irregular_compact_order_is_a_stable_sort():
    """The pairwise path's compact order (observed steps first, written with cumulative sums so that it exports) is
    the stable sort of ``~mask``."""
    from smpconv_models.layers.irregular_conv import observed_first

    g = torch.Generator().manual_seed(0)
    mask = torch.rand(4, 11, generator=g) > 0.4
    assert torch.equal(observed_first(mask), torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices)


def test_irregular_export_refuses_what_needs_a_host_read():
    """The grid path (its length is the data's span) and the folded integer-lag kernels cannot be exported."""
    model = _multi_model('irregular')
    x = _multi_inputs('irregular', 2, integer=True)

    class GridPath(torch.nn.Module):
        def forward(self, values, timestamps, mask):
            return model.forward_features(values, timestamps, mask, path='grid')

    with pytest.raises(ValueError, match="path='grid' cannot be exported"):
        torch.export.export(GridPath(), x)
    model.reparameterize()
    with pytest.raises(ValueError, match='reparameterized SMPConvIrregularTCN cannot be exported'):
        torch.export.export(model, x)


# --------------------------------------------------------------------------------------- input channel adaptation

@pytest.mark.parametrize('in_chans', [1, 2, 5])
def test_adapt_input_weight_is_timms_rule(in_chans):
    torch.manual_seed(0)
    w = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(adapt_input_weight(w, in_chans), adapt_input_conv(in_chans, w), rtol=0, atol=0)
    # other ranks (SMP weights [G, C, P], 1-d convs): the same numbers as timm's on the tensor seen as [O, I, P, 1]
    w3 = torch.randn(4, 3, 7)
    torch.testing.assert_close(adapt_input_weight(w3, in_chans),
                               adapt_input_conv(in_chans, w3[..., None])[..., 0], rtol=0, atol=0)
    # from one channel (timm: base_chans=1)
    w1 = torch.randn(4, 1, 7)
    torch.testing.assert_close(adapt_input_weight(w1, in_chans),
                               adapt_input_conv(in_chans, w1[..., None], base_chans=1)[..., 0], rtol=0, atol=0)


@pytest.mark.parametrize('name', ['smpconv_t', 'smpconv_cifar', 'smpconv_tcn_scifar10'])
@pytest.mark.parametrize('deploy', [False, True], ids=['train_form', 'deploy'])
def test_pretrained_in_chans_adapts_every_input_layer(name, deploy, tmp_path):
    """timm.create_model(pretrained=True, in_chans=N) from a checkpoint with other channels: the input layers are
    adapted, so an input with one image repeated on every channel gives the source model's output (1 channel: the
    sum)."""
    from safetensors.torch import save_file

    source = _model(name, reparam=deploy)
    path = tmp_path / 'w.safetensors'
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    src_chans = source.in_chans
    x = _input(name, 2)
    for in_chans in (1, 2 * src_chans):
        model = timm.create_model(name, pretrained=True, in_chans=in_chans, deploy=deploy,
                                  pretrained_cfg_overlay=dict(file=str(path), num_classes=source.num_classes),
                                  **FAMILIES[name]).eval()
        with torch.no_grad():
            if in_chans == 1:
                expected = source(x[:, :1].expand(-1, src_chans, *x.shape[2:]))
                got = model(x[:, :1])
            else:
                expected = source(x)
                got = model(x.repeat(1, 2, *(1,) * (x.dim() - 2)))  # the same image on both copies
            assert _rel(got, expected) < 1e-5, in_chans


def test_shipped_digits_weights_load_with_three_channels():
    """The issue's example: timm.create_model('smpconv_tcn_mnist.digits', pretrained=True, in_chans=3)."""
    one = timm.create_model('smpconv_tcn_mnist.digits', pretrained=True).eval()
    three = timm.create_model('smpconv_tcn_mnist.digits', pretrained=True, in_chans=3).eval()
    x = torch.randn(2, 1, 64)
    with torch.no_grad():
        assert _rel(three(x.repeat(1, 3, 1)), one(x)) < 1e-5
    w1, w3 = one.blocks[0].conv1.smp.conv.weights, three.blocks[0].conv1.smp.conv.weights
    torch.testing.assert_close(w3, adapt_input_conv(3, w1[..., None], base_chans=1)[..., 0])


@pytest.mark.parametrize('key', list(MULTI))
def test_pretrained_in_chans_adapts_multi_input_models(key, tmp_path):
    """The same for the point-set stem (SMP or MLP kernel weights ``[F_out, F_in, P | H]``) and the irregular TCN's
    first block (SMP or MLP kernel): a 2-channel checkpoint loaded with 1 channel (the sum) and 4 (repeats)."""
    from safetensors.torch import save_file

    name, kwargs = MULTI[key]
    torch.manual_seed(0)
    source = timm.create_model(name, **dict(kwargs, in_chans=2))
    with torch.no_grad():
        randomize_bn_(source)
    source.eval()
    path = tmp_path / 'w.safetensors'
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    chan = -1 if name == 'smpconv_points' else 1  # features [B, N, C], values [B, C, L]
    x = list(_multi_inputs(key, 2))
    x[0] = torch.cat([x[0], torch.randn_like(x[0])], chan)  # two channels
    for in_chans in (1, 4):
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                                  **dict(kwargs, in_chans=in_chans)).eval()
        with torch.no_grad():
            if in_chans == 1:
                first = x[0].narrow(chan, 0, 1)
                expected, got = source(first.expand_as(x[0]), *x[1:]), model(first, *x[1:])
            else:
                expected, got = source(*x), model(torch.cat([x[0], x[0]], chan), *x[1:])
        assert _rel(got, expected) < 1e-5, in_chans
