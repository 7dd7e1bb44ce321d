"""pytest plugin that runs timm's own ``tests/test_models.py`` against this package's models only.

Loaded with ``-p tests.timm_conformance.plugin`` in the subprocess started by ``tests/models/test_timm_conformance.py``
(see there). Plugins given with ``-p`` are imported before any test module, so the patches below are in place when
timm's file builds its parametrizations at import time:

* ``import smpconv_models`` registers our models in timm's registry;
* ``timm.list_models`` / ``timm.list_pretrained`` only return models whose entrypoints live in ``smpconv_models``;
* a ``module=`` selection (timm's ``FEAT_INTER_FILTERS``, used by the ``forward_intermediates`` tests and the prune
  contract test: models "with forward_intermediates() and support for the FeatureGetterNet wrapper") also includes
  our registry module names, i.e. our modules are treated as listed in ``FEAT_INTER_FILTERS``;
* after collection, every item whose ``model_name`` parameter is not one of our models is deselected (timm's
  file also holds many tests of fixed timm models, e.g. ``test_swin_*``), as are the ``(test, model)``
  combinations in ``EXCLUDED`` (``selection.py``).

Outcomes of every test phase are written as JSON to ``$SMPCONV_TIMM_REPORT`` for the outer test to check.
``$SMPCONV_TIMM_MODELS`` (comma-separated fnmatch patterns) narrows the models, for local debugging.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import timm
import timm.models
from timm.models import _registry

from tests.timm_conformance.selection import excluded_reason, our_models, registry_module

_ORIG_LIST_MODELS = _registry.list_models
_ORIG_LIST_PRETRAINED = _registry.list_pretrained

OUR_MODELS: list[str] = our_models(_ORIG_LIST_MODELS)
OUR_MODULES: list[str] = sorted({registry_module(n) for n in OUR_MODELS})


def _base_name(name: str) -> str:
    return name.split('.', 1)[0]


def _ours(names) -> list[str]:
    return [n for n in names if _base_name(n) in OUR_MODELS]


def list_models(filter='', module='', pretrained=False, exclude_filters='', name_matches_cfg=False,
                include_tags=None):
    """``timm.list_models`` restricted to our models; a ``module`` selection also covers our modules."""
    if module:
        module = [module] if isinstance(module, str) else list(module)
        module = module + [m for m in OUR_MODULES if m not in module]
    return _ours(_ORIG_LIST_MODELS(filter, module, pretrained, exclude_filters, name_matches_cfg, include_tags))


def list_pretrained(filter='', exclude_filters=''):
    return _ours(_ORIG_LIST_PRETRAINED(filter, exclude_filters))


for _mod in (timm, timm.models, _registry):
    _mod.list_models = list_models
    _mod.list_pretrained = list_pretrained

_MARKERS = ('base', 'cfg', 'cfg_nonstd', 'forward', 'backward', 'torchscript', 'features', 'fxforward', 'fxbackward',
            'timeout(seconds): per-test timeout (needs pytest-timeout; ignored otherwise)')


# what the outer test reads: our models and modules, the selection, and per test id its outcome, duration and
# failure / skip messages
REPORT: dict = {'models': OUR_MODELS, 'modules': OUR_MODULES, 'timm': timm.__version__, 'collected': [],
                'deselected': 0, 'excluded': {}, 'results': {}}


def pytest_configure(config):
    for marker in _MARKERS:
        config.addinivalue_line('markers', marker)


def _model_param(item) -> str | None:
    callspec = getattr(item, 'callspec', None)
    value = callspec.params.get('model_name') if callspec is not None else None
    return value if isinstance(value, str) else None


def pytest_collection_modifyitems(config, items):
    report = REPORT
    keep, drop = [], []
    for item in items:
        name = _model_param(item)
        if name is None or _base_name(name) not in OUR_MODELS:
            drop.append(item)
            continue
        reason = excluded_reason(item.originalname, name)
        if reason is not None:
            report['excluded'][item.nodeid] = reason
            drop.append(item)
            continue
        keep.append(item)
    report['collected'] = [i.nodeid for i in keep]
    report['deselected'] = len(drop)
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep


def pytest_runtest_logreport(report):
    entry = REPORT['results'].setdefault(report.nodeid, {'outcome': 'passed', 'duration': 0.0})
    entry['duration'] += report.duration
    if report.when == 'call' or report.outcome != 'passed':
        if entry['outcome'] == 'passed':
            entry['outcome'] = report.outcome
        if report.outcome != 'passed':
            entry.setdefault('messages', []).append(f'{report.when}: {_short_repr(report)}')


def _short_repr(report) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2])
    text = str(report.longrepr)
    return text[-3000:]


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get('SMPCONV_TIMM_REPORT')
    if path and not hasattr(session.config, 'workerinput'):  # xdist workers report through the controller
        Path(path).write_text(json.dumps(dict(REPORT, exitstatus=int(exitstatus)), indent=1))
