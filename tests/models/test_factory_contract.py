"""One factory contract for every registered model: each documented common kwarg is honoured (checked on values) or
refused with an error that names it and says what the family takes; the family descriptions and their lookup."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
from timm.layers import DropPath

import smpconv_models  # noqa: F401
from smpconv_models.hub import save_pretrained
from smpconv_models.layers import SMPConvBase, scaled_kernel_size
from smpconv_models.models import COMMON_KWARGS, FAMILIES, build_model, family_of
from smpconv_models.models._family import DENSE_BACKBONES
from tests.helpers import randomize_bn_

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS = timm.list_models('smpconv_*')

# small configurations per family (seconds for the whole contract); image inputs at 32x32
SMALL = {
    'smpconv': dict(depths=(1, 1), dims=(8, 16), kernel_sizes=(9, 7),
                    pretrained_cfg_overlay=dict(input_size=(3, 32, 32))),
    'smpconv_cifar': dict(stem_width=4, widths=(4, 6), kernel_size=9,
                          pretrained_cfg_overlay=dict(input_size=(3, 12, 12))),
    'smpconv_tcn': dict(seq_len=16, depth=2, width=4, n_points=3),
    'smpconv_irregular_tcn': dict(seq_len=12, depth=2, width=4, n_points=3, radius=0.15),
    'smpconv_points': dict(stem_width=4, widths=(6, 8), depths=(1, 1), stage_points=(12, 6), radii=(0.8, 1.0)),
    'smpconv_ensemble': dict(member='smpconv_tcn_mnist', n_members=2, seq_len=16, depth=2, width=4, n_points=3),
}
# the value each kwarg is checked with
VALUES = dict(learn_positions=False, learn_radius=False, kernel_scale=2, deploy=True, in_chans=2, num_classes=3,
              drop_rate=0.1, global_pool='avg', drop_path_rate=0.1, output_stride=8)
# the values of the refusable kwargs that change nothing (output_stride: none but unset)
NO_OP = dict(drop_path_rate=0.0, deploy=False, kernel_scale=1.0, learn_positions=True, learn_radius=True,
             output_stride=None)


def build(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, **{**SMALL[family_of(name).name], **kwargs})


def inputs_for(model: nn.Module, batch_size: int = 2) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(1)
    return family_of(model).example_inputs(model, batch_size)


def params(model: nn.Module, suffix: str) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if n.endswith(suffix)]


def pooled_mean(model: nn.Module, x: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(the head's pre-logits, the mean of the unpooled features over the real steps / points)``."""
    kind = family_of(model).input_kind
    features = model.forward_features(*x)
    if kind == 'points':
        mask = features.mask.unsqueeze(-1).to(features.features.dtype)
        return model.forward_head(features, pre_logits=True), (features.features * mask).sum(1) / mask.sum(1)
    if kind == 'irregular':
        mask = x[2][:, None].to(features.dtype)
        return model.forward_head(features, pre_logits=True, mask=x[2]), (features * mask).sum(-1) / mask.sum(-1)
    return model.forward_head(features, pre_logits=True), features.flatten(2).mean(-1)


def stochastic(model: nn.Module, x: tuple[torch.Tensor, ...]) -> bool:
    """Whether two training-mode forwards (BatchNorm statistics frozen, their weights random: no block starts as the
    identity) of the same input differ."""
    torch.manual_seed(4)
    randomize_bn_(model)
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    with torch.no_grad():
        torch.manual_seed(2)
        a = model(*x)
        torch.manual_seed(3)
        b = model(*x)
    return not torch.equal(a, b)


def check_honoured(name: str, kwarg: str) -> None:
    family = family_of(name)
    value = VALUES[kwarg]
    base = build(name).eval()
    x = inputs_for(base)
    if kwarg in ('learn_positions', 'learn_radius'):
        frozen, other = ('.weight_coord', '.radius') if kwarg == 'learn_positions' else ('.radius', '.weight_coord')
        model = build(name, **{kwarg: value})
        assert params(base, frozen) and all(p.requires_grad for p in params(base, frozen))
        assert not any(p.requires_grad for p in params(model, frozen))
        assert all(p.requires_grad for p in params(model, other))  # only the asked-for parameters freeze
    elif kwarg == 'kernel_scale':
        model = build(name, kernel_scale=value)
        layers = {n: m for n, m in base.named_modules() if isinstance(m, SMPConvBase)}
        assert layers
        for layer_name, old in layers.items():
            new = model.get_submodule(layer_name)
            assert new.kernel_size == tuple(scaled_kernel_size(k, value, old.requires_odd_kernel)
                                            for k in old.kernel_size) != old.kernel_size
            with torch.no_grad():  # the same continuous kernel, sampled twice as finely
                every_other = (..., *[slice(None, None, 2)] * len(old.kernel_size))
                torch.testing.assert_close(new.generate_kernel()[every_other], old.generate_kernel())
    elif kwarg == 'deploy':
        model = build(name, deploy=True).eval()
        assert not params(model, '.weight_coord')  # no SMP points left
        randomize_bn_(base)
        deployed = timm.utils.reparameterize_model(base)
        model.load_state_dict(deployed.state_dict())  # the deploy form of the trained model, key for key
        grid_x = x[:1] if family.input_kind == 'irregular' else x  # folded kernels serve the integer-lag grid
        with torch.no_grad():
            torch.testing.assert_close(model(*grid_x), base(*grid_x), rtol=1e-4, atol=1e-5)
    elif kwarg == 'in_chans':
        model = build(name, in_chans=value).eval()
        state = model.state_dict()
        adapted = [k for k in family.input_layers if k in state]
        assert adapted and all(state[k].shape[1] == value for k in adapted)
        x2 = inputs_for(model)
        with torch.no_grad():
            assert model(*x2).shape == (2, model.num_classes)
            with pytest.raises((ValueError, RuntimeError)):  # the default model takes other inputs
                base(*x2)
    elif kwarg == 'num_classes':
        model = build(name, num_classes=value).eval()
        with torch.no_grad():
            assert model(*x).shape == (2, value) and base(*x).shape[1] != value
    elif kwarg == 'drop_rate':
        assert stochastic(build(name, drop_rate=value, drop_path_rate=0.0), x)
        assert not stochastic(build(name, drop_rate=0.0, drop_path_rate=0.0), x)
    elif kwarg == 'drop_path_rate':
        model = build(name, drop_path_rate=value, drop_rate=0.0)
        assert max(m.drop_prob for m in model.modules() if isinstance(m, DropPath)) == pytest.approx(value)
        assert stochastic(model, x) and not stochastic(build(name, drop_path_rate=0.0, drop_rate=0.0), x)
    elif kwarg == 'output_stride':
        # a third stage, so that output stride 8 dilates it (two stages end at stride 8 anyway); float64: exact
        deeper = dict(depths=(1, 1, 1), dims=(8, 16, 24), kernel_sizes=(9, 7, 7))
        base = build(name, **deeper).double().eval()
        randomize_bn_(base)
        model = build(name, output_stride=value, **deeper).double().eval()
        model.load_state_dict(base.state_dict())  # the same parameters at every output stride
        assert [f['reduction'] for f in base.feature_info] == [4, 8, 16]
        assert [f['reduction'] for f in model.feature_info] == [4, 8, 8]
        x = torch.randn(2, base.in_chans, 64, 64, dtype=torch.float64)
        with torch.no_grad():
            dense, strided = model.forward_features(x), base.forward_features(x)
        assert dense.shape[-2:] == (8, 8) and strided.shape[-2:] == (4, 4)
        # the dilated stage on the full grid is the strided one on every other pixel
        torch.testing.assert_close(dense[..., ::2, ::2], strided, rtol=1e-10, atol=1e-10)
    elif kwarg == 'global_pool':
        model = build(name, global_pool=value).eval()
        with torch.no_grad():
            pre_logits, mean = pooled_mean(model, x)
            torch.testing.assert_close(pre_logits, mean)
            assert model(*x).shape == (2, model.num_classes)
    else:
        raise AssertionError(f'no check for {kwarg}')


@pytest.mark.parametrize('kwarg', COMMON_KWARGS)
@pytest.mark.parametrize('name', MODELS)
def test_common_kwarg_is_honoured_or_refused(name, kwarg):
    family = family_of(name)
    if kwarg in family.refused_kwargs:
        with pytest.raises(ValueError) as err:
            build(name, **{kwarg: VALUES[kwarg]})
        message = str(err.value)
        assert f'{kwarg}=' in message and family.refused_kwargs[kwarg] in message  # names it and says why
        assert all(k in message for k in family.common_kwargs + family.arch_kwargs)  # and what the family takes
        assert build(name, **{kwarg: NO_OP[kwarg]}).training  # its no-op value is accepted (e.g. train.py's)
    else:
        check_honoured(name, kwarg)


def test_every_registered_model_has_one_family():
    variants = [v for f in FAMILIES for v in f.variants]
    assert sorted(variants) == sorted(MODELS) and len(set(variants)) == len(variants)
    for family in FAMILIES:
        for variant in family.variants:
            assert type(timm.create_model(variant, **SMALL[family.name])) is family.model_cls


def test_dense_backbones_are_the_pyramid_families():
    pyramids = {v for f in FAMILIES if f.feature_maps == 'pyramid' for v in f.variants}
    assert set(re.findall(r'smpconv_\w+', DENSE_BACKBONES)) == pyramids == {'smpconv_t', 'smpconv_b'}
    for family in FAMILIES:  # output_stride: taken by the pyramids, refused with the reason by the others
        assert ('output_stride' in family.common_kwargs) == (family.feature_maps == 'pyramid')


def test_family_lookup(tmp_path):
    tcn = family_of('smpconv_tcn_mnist')
    assert family_of('smpconv_tcn_mnist.digits') is tcn and family_of('hf-hub:someone/smpconv_tcn_speech.x') is tcn
    model = build('smpconv_cifar')
    assert family_of(model).name == 'smpconv_cifar'
    model.pretrained_cfg = {}  # no architecture: the class decides
    assert family_of(model).name == 'smpconv_cifar'
    save_pretrained(build('smpconv_points'), tmp_path / 'points')
    assert family_of(f'local-dir:{tmp_path / "points"}').name == 'smpconv_points'
    with pytest.raises(ValueError, match=r"unknown model 'smpconv_tt'; did you mean smpconv_t.*smpconv models: "):
        family_of('smpconv_tt')
    with pytest.raises(ValueError, match='unknown model Linear'):
        family_of(nn.Linear(2, 2))
    with pytest.raises(TypeError):
        family_of(3)
    with pytest.raises(AttributeError):  # descriptions are frozen
        tcn.input_kind = 'image'
    with pytest.raises(TypeError):
        tcn.training.recipe['lr'] = 1.0


def test_example_inputs_and_their_size_options():
    for name, size in (('smpconv_tcn_mnist', 'length'), ('smpconv_irregular_tcn', 'length'),
                       ('smpconv_points', 'n_points'), ('smpconv_cifar', None)):
        model, family = build(name).eval(), family_of(name)
        x = family.example_inputs(model, 3)
        assert x[0].shape[0] == 3 and family.input_size_of(x) == ({size: x[0].shape[1 if size == 'n_points' else -1]}
                                                                   if size else {})
        if size:
            y = family.example_inputs(model, 2, **{size: 10})
            assert family.input_size_of(y) == {size: 10}
        for other in ('length', 'n_points'):
            if other != size:
                with pytest.raises(ValueError, match=f'{other} applies to'):
                    family.example_inputs(model, 2, **{other: 10})


def test_registered_tag_restores_its_architecture_kwargs():
    reference = timm.create_model('smpconv_tcn_mnist.digits', pretrained=True).eval()
    model = build_model('smpconv_tcn_mnist', {}, 'smpconv_tcn_mnist.digits').eval()
    assert model.seq_len == reference.seq_len == 64
    x = torch.randn(2, 1, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def test_mlp_kernels_rescale_and_refuse_point_switches():
    kwargs = dict(SMALL['smpconv_irregular_tcn'], kernel='mlp', mlp_hidden=8)
    torch.manual_seed(0)
    base = timm.create_model('smpconv_irregular_tcn', **kwargs)
    torch.manual_seed(0)
    scaled = timm.create_model('smpconv_irregular_tcn', kernel_scale=2, **kwargs)
    old, new = base.blocks[0].conv1.smp.conv, scaled.blocks[0].conv1.smp.conv
    assert new.kernel_size == (23,) and old.kernel_size == (12,)  # (12 - 1) * 2 + 1 taps: the same function, finer
    with torch.no_grad():
        torch.testing.assert_close(new.generate_kernel()[..., ::2], old.generate_kernel())
    for name, args in (('smpconv_irregular_tcn', kwargs), ('smpconv_points', dict(SMALL['smpconv_points'],
                                                                                     kernel='mlp'))):
        for switch in ('learn_positions', 'learn_radius'):
            with pytest.raises(ValueError, match="learn_positions / learn_radius freeze SMP points; kernel='mlp'"):
                timm.create_model(name, **{**args, switch: False})


def test_irregular_tcn_passes_frozen_points_to_every_block():
    model = build('smpconv_irregular_tcn', learn_positions=False, learn_radius=False)
    layers = [m for m in model.modules() if isinstance(m, SMPConvBase)]
    assert len(layers) == 4 and not any(m.weight_coord.requires_grad or m.radius.requires_grad for m in layers)


def test_readme_table_lists_what_each_family_takes():
    readme = (REPO_ROOT / 'README.md').read_text()
    table = readme[readme.index('| family | models | input | common kwargs it takes |'):].split('\n\n')[0]
    for family in FAMILIES:
        row = re.search(rf'^\| `{family.name}` \|(.*)$', table, flags=re.M)
        assert row, f'README has no row for {family.name}'
        cells = [c.strip() for c in row.group(1).strip(' |').split('|')]
        words = [set(re.findall(r'`([a-z_0-9.]+)`', c)) for c in cells]
        assert words[0] == set(family.variants)
        assert words[2] == set(family.common_kwargs) and words[3] == set(family.refused_kwargs)
        assert words[4] == set(family.arch_kwargs)
