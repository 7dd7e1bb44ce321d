"""Which models the timm conformance run covers, and the (test, model) combinations it leaves out.

Side-effect free (unlike :mod:`tests.timm_conformance.plugin`, which patches timm), so the outer test can import it.
"""
import fnmatch
import os

import timm
import timm.models

import smpconv_models  # noqa: F401  (registers the smpconv_* models)

# (timm test function, model fnmatch pattern) -> reason. The plugin deselects these.
EXCLUDED: dict[tuple[str, str], str] = {}
# Point-set models take (features [B, N, C], positions [B, N, d], mask) instead of an image tensor: every test of
# timm's file feeds [B, C, H, W] images, so none applies (tests/models/test_smpconv_points.py covers their contract).
_POINT_SET_REASON = 'point-set model: input is (features, positions, mask), not a [B, C, H, W] image'
for _test in ('test_model_forward', 'test_model_backward', 'test_model_default_cfgs', 'test_model_forward_torchscript',
              'test_model_forward_features', 'test_model_forward_intermediates_features',
              'test_model_forward_intermediates', 'test_model_forward_fx', 'test_model_backward_fx',
              'test_model_forward_fx_torchscript', 'test_model_load_pretrained', 'test_model_features_pretrained',
              'test_prune_intermediate_layers_contract'):
    EXCLUDED[(_test, 'smpconv_points*')] = _POINT_SET_REASON

# The irregular-series TCNs take (values, timestamps, mask) and pick their path from the data (one host read):
# timm's tests feed one image-shaped tensor and trace / script the forward, which this contract does not fit. Their
# timm contract (cfgs, heads, classifier reset, no_weight_decay, grid equivalence) is tested in tests/models/.
_IRREGULAR_REASON = 'multi-input forward (values, timestamps, mask) with a data-dependent path: tested in tests/models'
EXCLUDED.update({(test, 'smpconv_irregular_tcn*'): _IRREGULAR_REASON for test in (
    'test_model_forward', 'test_model_backward', 'test_model_default_cfgs', 'test_model_forward_torchscript',
    'test_model_forward_features', 'test_model_forward_intermediates_features', 'test_model_forward_intermediates',
    'test_model_forward_fx', 'test_model_backward_fx', 'test_model_forward_fx_torchscript',
    'test_model_load_pretrained', 'test_model_features_pretrained', 'test_prune_intermediate_layers_contract')})

# An ensemble has no single feature pyramid: features_only is refused with a clear error (members have theirs).
_ENSEMBLE_REASON = 'ensemble of members: no single feature pyramid (features_only refused; members have their own)'
EXCLUDED.update({(test, 'smpconv_ensemble'): _ENSEMBLE_REASON for test in (
    'test_model_forward_features', 'test_model_forward_intermediates_features', 'test_model_forward_intermediates',
    'test_model_features_pretrained', 'test_prune_intermediate_layers_contract')})


def our_models(list_models=timm.list_models) -> list[str]:
    """Registered models whose entrypoints live in ``smpconv_models`` (narrowed by ``$SMPCONV_TIMM_MODELS``)."""
    names = [n for n in list_models() if timm.models.model_entrypoint(n).__module__.startswith('smpconv_models.')]
    patterns = [p.strip() for p in os.environ.get('SMPCONV_TIMM_MODELS', '').split(',') if p.strip()]
    if patterns:
        names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]
    return names


def registry_module(name: str) -> str:
    """The module name timm's registry files a model under (the last part of its entrypoint's module)."""
    from timm.models import _registry
    return _registry._model_to_module.get(name) or timm.models.model_entrypoint(name).__module__.split('.')[-1]


def excluded_reason(test: str, model: str) -> str | None:
    base = model.split('.', 1)[0]
    return next((r for (t, p), r in EXCLUDED.items() if t == test and fnmatch.fnmatch(base, p)), None)
