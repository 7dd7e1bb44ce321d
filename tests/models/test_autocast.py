"""bf16 and fp16 autocast, training and eval, for every model family, against the same model in fp32.

Tolerance: the relative norm error of the logits at most 4 unit roundoffs of the autocast dtype (bf16: 4 * 2^-8 =
1.6e-2; fp16: 4 * 2^-11 = 2.0e-3). Under autocast the matmuls and convolutions round their outputs to the low
precision dtype, and the logits come out of such a matmul, so one roundoff (2^-8 = 3.9e-3 for bf16) is the floor
of the error; the SMP kernels, FFTs, BatchNorms and the point search run in fp32 (measured: 0.3-0.7 roundoffs in
eval, up to 1.8 in training, where each BatchNorm re-normalises with batch statistics of rounded activations).
A larger error means an op ran in low precision that should not (or overflowed: fp16's range ends at 65504).
"""
from __future__ import annotations

import pytest
import timm
import torch

import smpconv_models  # noqa: F401  (registers the models)

ROUNDOFF = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}

# family -> (small configuration, input maker); batch and sizes keep training-mode BatchNorm statistics meaningful
FAMILIES = {
    'smpconv_t': (dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), drop_path_rate=0.1),
                  lambda g: dict(x=torch.randn(4, 3, 128, 128, generator=g))),
    'smpconv_cifar': (dict(widths=(8, 8)), lambda g: dict(x=torch.randn(2, 3, 32, 32, generator=g))),
    'smpconv_tcn_mnist': (dict(seq_len=64, depth=2, width=8), lambda g: dict(x=torch.randn(2, 1, 64, generator=g))),
    'smpconv_irregular_tcn': (dict(depth=2, width=8, seq_len=32), lambda g: _irregular(g)),
    'smpconv_points': (dict(), lambda g: _points(g)),
}


def _irregular(g: torch.Generator) -> dict:
    t = (torch.rand(2, 32, generator=g) + 0.5).cumsum(1)  # real-valued timestamps: the pairwise path
    mask = torch.ones(2, 32, dtype=torch.bool)
    mask[1, -5:] = False
    return dict(values=torch.randn(2, 1, 32, generator=g), timestamps=t, mask=mask)


def _points(g: torch.Generator) -> dict:
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 30:] = False
    return dict(features=torch.randn(2, 40, 1, generator=g), positions=torch.rand(2, 40, 2, generator=g) * 2 - 1,
                mask=mask)


def test_every_family_is_covered():
    families = {timm.models.model_entrypoint(n).__module__ for n in timm.list_models('smpconv_*')}
    covered = {timm.models.model_entrypoint(n).__module__ for n in FAMILIES}
    assert families == covered


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
@pytest.mark.parametrize('train', [True, False], ids=['train', 'eval'])
@pytest.mark.parametrize('name', list(FAMILIES))
def test_autocast_matches_fp32(name, train, dtype):
    config, make_inputs = FAMILIES[name]
    torch.manual_seed(0)
    model = timm.create_model(name, **config).train(train)
    inputs = make_inputs(torch.Generator().manual_seed(0))
    with torch.set_grad_enabled(train):
        torch.manual_seed(1)  # the same dropout / drop-path draws in both runs
        reference = model(**inputs)
        torch.manual_seed(1)
        with torch.autocast('cpu', dtype=dtype):
            out = model(**inputs)
    assert out.dtype == dtype  # the head ran in low precision: autocast took effect
    error = ((out.float() - reference).norm() / reference.norm()).item()
    assert error <= 4 * ROUNDOFF[dtype], f'{name}: relative error {error:.2e} under {dtype} autocast'
    if train:
        model.zero_grad()
        out.float().square().mean().backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
