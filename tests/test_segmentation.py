"""smpconv_t as a segmentation encoder through segmentation_models_pytorch (``tu-`` encoders: timm's
``features_only``): Unet, FPN, DeepLabV3+ (output stride 8 and 16), UPerNet and Segformer train at two input sizes,
the encoder's features equal the plain reference, the SMP points receive gradients, nothing is downloaded; and the
families without strides are refused with a message naming the reason."""
from __future__ import annotations

import json
import math
import os
import re

import pytest
import timm
import torch

import smpconv_models  # noqa: F401

from .helpers import randomize_bn_, reference_features

try:
    import segmentation_models_pytorch as smp
except ImportError:  # the 'seg' extra (in 'all', which CI installs)
    if os.environ.get('CI', '').strip().lower() not in ('', '0', 'false', 'no'):
        raise
    pytest.skip('segmentation_models_pytorch is not installed (pip install "smpconv-models[seg]")',
                allow_module_level=True)

# encoder kwargs that smp passes through to timm.create_model: a small smpconv_t
ENCODER = dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), kernel_sizes=(13, 11, 11, 11))
CLASSES = 3

DECODERS = {
    'Unet': (smp.Unet, dict(decoder_channels=(32, 16, 16, 8, 8)), 32),
    'FPN': (smp.FPN, dict(decoder_pyramid_channels=16, decoder_segmentation_channels=32), 32),
    'DeepLabV3Plus_os16': (smp.DeepLabV3Plus, dict(encoder_output_stride=16, decoder_channels=16), 16),
    'DeepLabV3Plus_os8': (smp.DeepLabV3Plus, dict(encoder_output_stride=8, decoder_channels=16), 8),
    'UPerNet': (smp.UPerNet, dict(decoder_channels=16), 32),
    'Segformer': (smp.Segformer, dict(decoder_segmentation_channels=16), 32),
}


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch):
    """encoder_weights=None must never reach a weight download (timm's pretrained loading, torch.hub)."""
    def refuse(*args, **kwargs):
        raise AssertionError('a weight download was attempted')

    monkeypatch.setattr(timm.models._builder, 'load_pretrained', refuse)
    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url', refuse)


def _build(name: str) -> tuple[torch.nn.Module, int]:
    cls, kwargs, output_stride = DECODERS[name]
    torch.manual_seed(0)
    return cls('tu-smpconv_t', encoder_weights=None, classes=CLASSES, **kwargs, **ENCODER), output_stride


@pytest.mark.parametrize('name', list(DECODERS))
def test_decoder_trains_on_smpconv_encoder_at_two_sizes(name):
    model, output_stride = _build(name)
    encoder = model.encoder.model
    assert [f['reduction'] for f in encoder.feature_info] == [4, 8, min(16, output_stride), output_stride]
    points = {n: p for n, p in encoder.named_parameters() if n.endswith(('.weight_coord', '.radius', '.weights'))}
    assert len(points) == 3 * 4
    model.train()
    for size in ((64, 64), (96, 128)):
        model.zero_grad(set_to_none=True)
        x = torch.randn(2, 3, *size)
        out = model(x)
        assert out.shape == (2, CLASSES, *size)
        torch.nn.functional.cross_entropy(out, torch.randint(0, CLASSES, (2, *size))).backward()
        for n, p in points.items():  # the loss reaches every stage's SMP points through the decoder
            assert p.grad is not None and p.grad.abs().sum() > 0, (size, n)


@pytest.mark.parametrize('name', ['Unet', 'DeepLabV3Plus_os16', 'DeepLabV3Plus_os8'])
def test_encoder_features_equal_the_plain_reference(name):
    """What the decoder receives from smp's encoder (eval, float64) is the plain F.conv2d reference's stage outputs
    at the decoder's output stride (dilated stages included)."""
    model, output_stride = _build(name)
    model = model.double().eval()
    randomize_bn_(model)
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    # the same weights in an unwrapped smpconv_t (timm's FeatureListNet flattens stem.0 -> stem_0, stages.0 -> ...)
    plain = timm.create_model('smpconv_t', output_stride=output_stride, **ENCODER).double().eval()
    state = {re.sub(r'^(stem|stages)_(\d+)\.', r'\1.\2.', k): v for k, v in model.encoder.model.state_dict().items()}
    missing, unexpected = plain.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith(('norm.', 'head.')) for k in missing)
    with torch.no_grad():
        feats = model.encoder(x)[2:]  # smp prepends the input and an empty 1/2-scale map
        ref = reference_features(plain, x, output_stride)
    assert len(feats) == len(ref) == 4
    for f, r in zip(feats, ref):
        torch.testing.assert_close(f, r, rtol=1e-10, atol=1e-10)


def test_channels_last_and_bf16_autocast_encoder():
    """The README's recipe: a channels_last model under CPU bf16 autocast trains and stays close to fp32."""
    model, _ = _build('FPN')
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    model = model.to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(x.contiguous(memory_format=torch.channels_last))
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    assert float((out.float() - ref).norm() / ref.norm()) < 0.05
    # a training step under autocast: float32 point gradients, finite and non-zero in every stage
    model.train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        logits = model(x.contiguous(memory_format=torch.channels_last))
    torch.nn.functional.cross_entropy(logits.float(), torch.randint(0, CLASSES, (2, 64, 64))).backward()
    grads = [p.grad for n, p in model.named_parameters() if n.endswith('.weight_coord')]
    assert len(grads) == 4
    assert all(g.dtype == torch.float32 and g.isfinite().all() and g.abs().sum() > 0 for g in grads)


# ---------------------------------------------------------------------------------------------- refusals

@pytest.mark.parametrize('name', ['smpconv_cifar', 'smpconv_tcn_mnist'])
def test_full_resolution_families_say_why_smp_refuses_them(name):
    with pytest.warns(UserWarning, match=rf'{name} .*full-resolution maps.*smpconv_t / smpconv_b'), \
            pytest.raises(ValueError, match='Unsupported model downsampling pattern'):
        smp.Unet(f'tu-{name}', encoder_weights=None)


@pytest.mark.parametrize('name', ['smpconv_points', 'smpconv_irregular_tcn'])
def test_multi_input_families_are_refused_by_us(name):
    with pytest.raises(ValueError, match=rf'{name} does not take features_only=True: it takes .*cannot serve as a '
                                         r'segmentation / detection encoder'):
        smp.DeepLabV3Plus(f'tu-{name}', encoder_weights=None)


def test_output_stride_on_a_family_without_strides():
    with pytest.raises(ValueError, match='smpconv_cifar does not take output_stride=8: it has no strided stages'):
        timm.create_model('smpconv_cifar', features_only=True, output_stride=8)


# --------------------------------------------------------------- the README's recipe: converted weights, example

def _official_checkpoint(path, model: torch.nn.Module) -> None:
    """``model``'s weights in the official SMPConvNet layout (``transitions.{i}``, ``head.*``), as ``torch.save``d
    official checkpoints hold them (``model`` and ``model_ema``)."""
    state = {}
    for k, v in model.state_dict().items():
        k = re.sub(r'^stages\.(\d+)\.downsample\.', lambda m: f'transitions.{int(m.group(1)) - 1}.', k)
        state[re.sub(r'^head\.fc\.', 'head.', k)] = v
    torch.save({'model': {k: v * 0 for k, v in state.items()}, 'model_ema': state, 'epoch': 1}, path)


def test_converted_official_weights_load_into_encoders(tmp_path, monkeypatch):
    """python -m smpconv_models.convert, then the three loading routes of the README: timm with
    pretrained_cfg_overlay=dict(file=...), timm 'local-dir:', and an smp encoder (build_segmenter); each encoder at
    output stride 16 gives the source network's features on the subsampled grid."""
    from smpconv_models.convert import main as convert_main
    from smpconv_models.experiments.segmentation import build_segmenter

    monkeypatch.undo()  # loading a local file is what this test is about (the fixture refuses every load)
    torch.manual_seed(0)
    source = timm.create_model('smpconv_t', **ENCODER)
    randomize_bn_(source)
    source.eval()
    _official_checkpoint(tmp_path / 'SMPConv_T.pth', source)
    out = tmp_path / 'smpconv_t'
    assert convert_main(['smpconv_t', str(tmp_path / 'SMPConv_T.pth'), str(out), '--ema',
                         '--model-args', json.dumps(ENCODER)]) == 0
    file = str(out / 'model.safetensors')
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref = source.forward_intermediates(x, intermediates_only=True)
    encoders = {
        'overlay': timm.create_model('smpconv_t', pretrained=True, features_only=True, output_stride=16,
                                     pretrained_cfg_overlay=dict(file=file), **ENCODER),
        'local-dir': timm.create_model(f'local-dir:{out}', pretrained=True, features_only=True, output_stride=16),
        'smp': build_segmenter('deeplabv3plus', output_stride=16, pretrained_file=file, encoder_args=ENCODER).encoder,
    }
    for route, encoder in encoders.items():
        encoder.eval()
        with torch.no_grad():
            feats = encoder(x)
        feats = feats[2:] if route == 'smp' else feats
        assert [f.shape[-1] for f in feats] == [24, 12, 6, 6], route
        for f, r in zip(feats, ref):
            step = f.shape[-1] // r.shape[-1]
            torch.testing.assert_close(f[..., ::step, ::step], r, msg=route)


def test_shapes_on_noise_masks_and_colours():
    from smpconv_models.train.data.shapes import SHAPE_COLOURS, shapes_on_noise

    images, masks = shapes_on_noise(32, (48, 64), noise=0.5, seed=3)
    assert images.shape == (32, 3, 48, 64) and masks.shape == (32, 48, 64) and masks.dtype == torch.int64
    again = shapes_on_noise(32, (48, 64), noise=0.5, seed=3)
    assert torch.equal(images, again[0]) and torch.equal(masks, again[1])
    for cls, colour in enumerate(SHAPE_COLOURS):
        pixels = images.permute(0, 2, 3, 1)[masks == cls]  # [n, 3]
        assert len(pixels) > 1000
        torch.testing.assert_close(pixels.mean(0), torch.tensor(colour), atol=0.05, rtol=0)  # noise averages out
    # each image holds its square whole (drawn last) and part of its disc
    assert ((masks == 2).flatten(1).any(1)).all()
    with pytest.raises(ValueError, match='at least 8x8'):
        shapes_on_noise(2, 4)


def test_segmentation_example_loss_goes_down(tmp_path, capsys):
    from smpconv_models.experiments import segmentation

    path = tmp_path / 'report.json'
    assert segmentation.main(['--quick', '--json', str(path)]) == 0
    report = json.loads(path.read_text())
    losses = report['losses']
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.6 * first, losses
    before, after = report['eval_before'], report['eval_after']
    assert after['pixel_acc'] > before['pixel_acc'] + 0.2 and after['miou'] > before['miou'] + 0.2, report
    assert after['miou'] > report['eval_after_running_stats']['miou']  # recomputed BatchNorm statistics help
    assert report['command'].startswith('python -m smpconv_models.experiments.segmentation --quick')
    assert 'loss' in capsys.readouterr().out


def test_segmentation_example_refuses_bad_settings():
    from smpconv_models.experiments import segmentation

    with pytest.raises(ValueError, match='needs the deeplabv3plus decoder'):
        segmentation.build_segmenter('fpn', output_stride=16)
    with pytest.raises(ValueError, match='unknown decoder'):
        segmentation.build_segmenter('pspnet')
    assert segmentation.main(['--quick', '--encoder-args', '[1]']) == 2


def test_upernet_bench_rows_are_registered_with_targets():
    from smpconv_models import bench

    for name in ('upernet_smpconv_t_train_vs_convnext_tiny_512', 'upernet_smpconv_t_infer_vs_convnext_tiny_512'):
        assert name in bench.ROWS and bench.TARGETS[name] > 0 and f'``{name}``' in bench.__doc__
