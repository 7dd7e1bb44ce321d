"""smpconv_ensemble: the mean of the members' probabilities, timm loading (Hub-layout folder, file overlay),
TorchScript, reparameterization, ONNX and torch.export, and clear errors."""
from __future__ import annotations

import math

import pytest
import timm
import torch

import smpconv_models  # noqa: F401  (registers the models)
from smpconv_models.hub import save_pretrained
from smpconv_models.models.ensemble import mean_probability_logits
from tests.helpers import randomize_bn_

ARGS = dict(member='smpconv_tcn_chartraj', n_members=3, in_chans=2, num_classes=4, seq_len=20, depth=2, width=6,
            n_points=4, radius=0.1, causal=False, global_pool='avg')


def ensemble(**kwargs):
    torch.manual_seed(0)
    model = timm.create_model('smpconv_ensemble', **{**ARGS, **kwargs}).double()
    randomize_bn_(model)
    for m in model.members:  # confident, different members (the heads start near zero)
        torch.nn.init.normal_(m.head.weight, std=2.0)
    return model.eval()


def test_output_is_log_mean_probability():
    model = ensemble()
    x = torch.randn(5, 2, 20, dtype=torch.float64)
    with torch.no_grad():
        out = model(x)
        probs = torch.stack([m(x).softmax(-1) for m in model.members]).mean(0)
    torch.testing.assert_close(out, probs.log())
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(5, dtype=torch.float64))
    assert out.shape == (5, 4) and model.num_classes == 4 and len(model.members) == 3
    # a single member: its log-softmax
    logits = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(mean_probability_logits([logits]), logits.log_softmax(-1))
    torch.testing.assert_close(mean_probability_logits([logits, logits]), logits.log_softmax(-1))
    assert math.isclose(float(mean_probability_logits([logits, -logits]).exp().sum(-1)[0]), 1.0)


def test_mask_goes_to_every_member():
    model = ensemble()
    x = torch.randn(2, 2, 20, dtype=torch.float64)
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[1, :6] = False
    x[1, :, :6] = 0
    with torch.no_grad():
        out = model(x, mask)
        ref = torch.stack([m(x, mask).softmax(-1) for m in model.members]).mean(0).log()
        short = model(x[1:, :, 6:])
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(out[1:], short)  # left padding + mask == the unpadded series


def test_timm_anatomy():
    model = ensemble()
    x = torch.randn(2, 2, 20, dtype=torch.float64)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, 18, 20) and model.num_features == 18
        torch.testing.assert_close(model.forward_head(features), model(x))
        pooled = model.forward_head(features, pre_logits=True)
        torch.testing.assert_close(pooled, torch.cat([m.forward_head(m.forward_features(x), pre_logits=True)
                                                      for m in model.members], 1))
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pooled)
        model.reset_classifier(7)
        assert model(x).shape == (2, 7)
    groups = model.group_matcher()
    assert groups['stem'].startswith(r'^members\.(\d+)\.')
    assert 'members.1.blocks.0.conv1.smp.conv.weight_coord' in model.no_weight_decay()


def test_hub_folder_and_file_overlay_load(tmp_path):
    model = ensemble()
    folder = save_pretrained(model, tmp_path / 'ens', model_args=ARGS)
    x = torch.randn(3, 2, 20, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
        loaded = timm.create_model(f'local-dir:{folder}', pretrained=True).double().eval()
        torch.testing.assert_close(loaded(x), ref)
        overlay = timm.create_model('smpconv_ensemble', pretrained=True,
                                    pretrained_cfg_overlay=dict(file=str(folder / 'model.safetensors')),
                                    **ARGS).double().eval()
        torch.testing.assert_close(overlay(x), ref)
        # input channels adapt through the member family's checkpoint filter
        assert timm.create_model(f'local-dir:{folder}', pretrained=True, in_chans=1)(x[:, :1].float()).shape == (3, 4)
    with pytest.raises((RuntimeError, ValueError), match='members'):
        timm.create_model('smpconv_ensemble', pretrained=True, pretrained_cfg_overlay=dict(
            file=str(folder / 'model.safetensors')), **{**ARGS, 'n_members': 2})


def test_torchscript_and_reparameterize_match():
    model = ensemble(global_pool='max')
    x = torch.randn(2, 2, 20, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(torch.jit.script(model)(x), ref)
        deployed = timm.utils.reparameterize_model(model, inplace=False)
        assert all(m.blocks[0].conv1.reparam_conv is not None for m in deployed.members)
        torch.testing.assert_close(deployed(x), ref)


def test_torch_export_and_onnx(tmp_path):
    pytest.importorskip('onnxruntime')
    from smpconv_models.export import export_onnx

    model = ensemble()
    x = torch.randn(2, 2, 20, dtype=torch.float64)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x))
    deployed = timm.utils.reparameterize_model(model, inplace=False).float()
    report = export_onnx(deployed, tmp_path / 'ens.onnx', x.float(), dynamic_batch=True, dynamo=True)
    assert max(report['relative_error'].values()) < 1e-5
    report = export_onnx(model.float(), tmp_path / 'ens_ts.onnx', x.float(), dynamo=False)
    assert max(report['relative_error'].values()) < 1e-5


def test_export_cli_round_trip(tmp_path):
    pytest.importorskip('onnxruntime')
    import json

    from smpconv_models.export import main

    folder = save_pretrained(ensemble().float(), tmp_path / 'ens', model_args=ARGS)
    assert main(['smpconv_ensemble', str(tmp_path / 'cli.onnx'), '--checkpoint', str(folder),
                 '--model-args', json.dumps({k: v for k, v in ARGS.items() if k == 'n_members'})]) == 0
    assert (tmp_path / 'cli.onnx').stat().st_size > 0


@pytest.mark.parametrize('kwargs,match', [
    (dict(member='smpconv_irregular_tcn'), 'single-input sequence models'),
    (dict(member='smpconv_points'), 'single-input sequence models'),
    (dict(member='smpconv_ensemble'), 'single-input sequence models'),
    (dict(member='smpconv_cifar'), 'single-input sequence models'),
    (dict(member='resnet18'), 'single-input sequence models'),
    (dict(n_members=0), 'n_members'),
    (dict(n_members=17), 'n_members'),
    (dict(drop_path_rate=0.1), 'drop_path_rate=0.1'),
])
def test_bad_members(kwargs, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model('smpconv_ensemble', **{**ARGS, **kwargs})


def test_features_only_is_refused():
    with pytest.raises(ValueError, match='features_only'):
        timm.create_model('smpconv_ensemble', features_only=True)
