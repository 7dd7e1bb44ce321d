"""bf16 and fp16 autocast, training and eval, for every model family, against the same model in fp32.

Tolerance: the relative norm error of the logits at most 4 unit roundoffs of the autocast dtype (bf16: 4 * 2^-8 =
1.6e-2; fp16: 4 * 2^-11 = 2.0e-3). Under autocast the matmuls and convolutions round their outputs to the low
precision dtype, and the logits come out of such a matmul, so one roundoff (2^-8 = 3.9e-3 for bf16) is the floor
of the error; the FFTs, the point search and the normalisations run in fp32 (measured: 0.3-0.9 roundoffs in eval,
up to 1.8 in the training forward). A larger error means an op ran in low precision that should not (or
overflowed: fp16's range ends at 65504).

BatchNorm runs on running statistics calibrated on the inputs (an untrained network with the initial statistics
shrinks its activations stage by stage, under fp16's smallest normal 6e-5 in smpconv_t); the training forward (SMP
kernels generated with autograd, the FFT / hybrid convolution paths) is compared the same way (batch statistics would
add the initialisation's amplification of every perturbation), with dropout and drop path off: their draws depend on
the dtype of the tensor they mask (the same seed gives smpconv_cifar's dropout other masks on bf16 activations). Full
training mode, random drops included, is checked for finite outputs and gradients.

smpconv_t gets 64 roundoffs: its RepLKNet / RepVGG structure (parallel branches, each normalised to unit variance,
then summed) amplifies rounding at initialisation, stage by stage (measured 39-44 roundoffs, bf16 and fp16, train and
eval; under the same protocol timm's repvgg_a0 shows 14-44 and resnet18 2-3, the larger values on smaller inputs,
whose BatchNorm statistics come from fewer pixels). Its SMP layer alone is held to 4 roundoffs
(``test_smp_layers_under_autocast``), as is every family's.
"""
from __future__ import annotations

import pytest
import timm
import torch
from timm.layers import DropPath

import smpconv_models  # noqa: F401  (registers the models)

ROUNDOFF = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}
ROUNDOFFS = {'smpconv_t': 64}  # the logits' tolerance in roundoffs where it is not 4 (module docstring)

# family -> (small configuration, input maker); batch and sizes keep training-mode BatchNorm statistics meaningful
FAMILIES = {
    'smpconv_t': (dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), drop_path_rate=0.1),
                  lambda g: dict(x=torch.randn(4, 3, 128, 128, generator=g))),
    'smpconv_cifar': (dict(widths=(8, 8)), lambda g: dict(x=torch.randn(2, 3, 32, 32, generator=g))),
    'smpconv_tcn_mnist': (dict(seq_len=64, depth=2, width=8), lambda g: dict(x=torch.randn(2, 1, 64, generator=g))),
    'smpconv_irregular_tcn': (dict(depth=2, width=8, seq_len=32), lambda g: _irregular(g)),
    'smpconv_points': (dict(), lambda g: _points(g)),
    # 3-d, 256 points per set: the stem's search (256 x 256 pairs) takes the kd-tree path, the stages the plain one
    'smpconv_points_3d': (dict(stem_width=8, widths=(8, 16), depths=(1, 1), stage_points=(64, 16), radii=(0.5, 1.0),
                               stem_radius=0.4), lambda g: _points(g, 256, 3)),
    'smpconv_ensemble': (dict(member='smpconv_tcn_mnist', n_members=2, seq_len=64, depth=2, width=8, causal=False,
                              global_pool='avgmax'),
                         lambda g: dict(x=torch.randn(2, 1, 64, generator=g))),
}


def _irregular(g: torch.Generator) -> dict:
    t = (torch.rand(2, 32, generator=g) + 0.5).cumsum(1)  # real-valued timestamps: the pairwise path
    mask = torch.ones(2, 32, dtype=torch.bool)
    mask[1, -5:] = False
    return dict(values=torch.randn(2, 1, 32, generator=g), timestamps=t, mask=mask)


def _points(g: torch.Generator, n: int = 40, dim: int = 2) -> dict:
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, n - n // 4:] = False
    positions = torch.rand(2, n, dim, generator=g) * 2 - 1
    features = torch.randn(2, n, 1, generator=g) if dim == 2 else positions.clone()  # 3-d sets: xyz as features
    return dict(features=features, positions=positions, mask=mask)


def test_every_family_is_covered():
    families = {timm.models.model_entrypoint(n).__module__ for n in timm.list_models('smpconv_*')}
    covered = {timm.models.model_entrypoint(n).__module__ for n in FAMILIES}
    assert families == covered


@torch.no_grad()
def _calibrated_norms(model: torch.nn.Module, inputs: dict) -> torch.nn.Module:
    """Running statistics = the batch statistics of ``inputs`` (one training pass, cumulative average), then every
    BatchNorm in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    mode = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()(**inputs)
    model.train(mode)
    for m in norms:
        m.eval()
    return model


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
@pytest.mark.parametrize('train', [True, False], ids=['train', 'eval'])
@pytest.mark.parametrize('name', list(FAMILIES))
def test_autocast_matches_fp32(name, train, dtype):
    config, make_inputs = FAMILIES[name]
    torch.manual_seed(0)
    model = timm.create_model(name, **config).train(train)
    for m in model.modules():  # no random drops (module docstring)
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        elif isinstance(m, DropPath):
            m.drop_prob = 0.0
    inputs = make_inputs(torch.Generator().manual_seed(0))
    _calibrated_norms(model, inputs)
    with torch.set_grad_enabled(train):
        reference = model(**inputs)
        with torch.autocast('cpu', dtype=dtype):
            out = model(**inputs)
    assert out.dtype == dtype  # the head ran in low precision: autocast took effect
    error = ((out.float() - reference).norm() / reference.norm()).item()
    assert error <= ROUNDOFFS.get(name, 4) * ROUNDOFF[dtype], f'{name}: relative error {error:.2e} under {dtype}'


def _smp_layer(kind: str):
    from smpconv_models.layers import PointConv, SMPLargeKernelConv2d, SMPParallelCausalConv1d, SMPParallelConv

    g = torch.Generator().manual_seed(0)
    if kind == 'depthwise':  # smpconv_t's layer, at a size that takes the hybrid path in training
        return SMPLargeKernelConv2d(16, 31, 5), (torch.randn(2, 16, 32, 32, generator=g),)
    if kind == 'dense':  # smpconv_cifar's
        return SMPParallelConv(8, 8, 33, 16, 0.12, 0.05), (torch.randn(2, 8, 32, 32, generator=g),)
    if kind == 'causal':  # the TCNs' (FFT at this length)
        return SMPParallelCausalConv1d(8, 8, 256, 30, 0.01, 0.1), (torch.randn(2, 8, 256, generator=g),)
    if kind == 'centred':  # the TCNs' with causal=False (a 511-tap kernel on 256 steps: the FFT 'same' conv)
        return (SMPParallelCausalConv1d(8, 8, 511, 30, 0.01, 0.1, causal=False),
                (torch.randn(2, 8, 256, generator=g),))
    if kind == 'irregular':
        values, timestamps, mask = _irregular(g).values()
        layer = SMPParallelCausalConv1d(1, 8, 32, 30, 0.03, 0.1)
        return layer, (values, mask, timestamps)
    points = _points(g)
    return PointConv(1, 8, dim=2, radius=0.6, normalize=True), (points['features'], points['positions'], None,
                                                                  points['mask'])


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
@pytest.mark.parametrize('train', [True, False], ids=['train', 'eval'])
@pytest.mark.parametrize('kind', ['depthwise', 'dense', 'causal', 'centred', 'irregular', 'points'])
def test_smp_layers_under_autocast(kind, train, dtype):
    torch.manual_seed(0)
    layer, inputs = _smp_layer(kind)
    layer.train(train)
    with torch.set_grad_enabled(train):
        reference = layer(*inputs)
        with torch.autocast('cpu', dtype=dtype):
            out = layer(*inputs)
    error = ((out.float() - reference).norm() / reference.norm()).item()
    assert error <= 4 * ROUNDOFF[dtype], f'{kind}: relative error {error:.2e} under {dtype}'
    if train:
        out.float().square().mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.requires_grad)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
@pytest.mark.parametrize('name', list(FAMILIES))
def test_autocast_training_step_is_finite(name, dtype):
    config, make_inputs = FAMILIES[name]
    torch.manual_seed(0)
    model = timm.create_model(name, **config).train()
    with torch.autocast('cpu', dtype=dtype):
        out = model(**make_inputs(torch.Generator().manual_seed(0)))
    out.float().square().mean().backward()
    assert torch.isfinite(out).all()
    for name_, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name_
