"""timm conformance: timm's own ``tests/test_models.py`` run against this package's models.

The file comes from the timm sdist of the *installed* timm version (``pip download --no-deps --no-binary :all:
timm==<version>``), cached under the pytest cache (``.pytest_cache/d/timm_conformance/timm-<version>/``) or
``$SMPCONV_TIMM_CACHE``. It runs in a pytest subprocess with the plugin ``tests/timm_conformance/plugin.py``, which
imports ``smpconv_models`` before timm's file builds its parametrizations, restricts ``timm.list_models`` to our
models, adds our registry modules to timm's ``module=`` selections (``FEAT_INTER_FILTERS``, used by the
``forward_intermediates`` tests) and deselects every other test. This module then checks, family by family, that
each test ran for exactly the models (and pretrained tags) it should have and passed, so an empty or partial
selection cannot pass silently.

Input sizes are timm's own reduced test sizes (``TARGET_*_SIZE`` / ``MAX_*_SIZE`` in timm's file: e.g. 128 px for
backward / torchscript / fx, 96 px for features); the sequence TCNs' ``(C, 1, L)`` cfgs are cut to the same lengths.

Environment:

* no network and ``CI`` unset: the tests skip with a message; with ``CI`` set they fail;
* ``SMPCONV_TIMM_SDIST`` (a ``timm-<version>.tar.gz``) or ``SMPCONV_TIMM_TEST_MODELS`` (a ``test_models.py``):
  use these instead of downloading;
* ``SMPCONV_TIMM_CONFORMANCE_FULL=1``: also run ``test_prune_intermediate_layers_contract``, which timm's own CI
  leaves out as slow (no marker; it prunes every model at every feature index: about as long again as the default run);
* ``SMPCONV_TIMM_MODELS=pattern,...``: only these models (local debugging; the coverage checks follow).
* ``SMPCONV_TIMM_WORKERS=N``: run the subprocess with pytest-xdist (``-n N``).
"""
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest
import timm

from tests.timm_conformance.selection import excluded_reason, our_models, registry_module

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMM_VERSION = timm.__version__

# timm test function -> which of our model names it must run for: 'models' (every registered model), 'tags'
# (every pretrained tag, ``list_models(include_tags=True)``), 'pretrained' (tags with weights,
# ``list_models(pretrained=True)``).
FAMILIES = {
    'test_model_forward': 'models',
    'test_model_backward': 'models',
    'test_model_default_cfgs': 'tags',
    'test_model_forward_torchscript': 'models',
    'test_model_forward_features': 'models',
    'test_model_forward_intermediates_features': 'models',
    'test_model_forward_intermediates': 'models',
    'test_model_forward_fx': 'models',
    'test_model_backward_fx': 'models',
    'test_model_forward_fx_torchscript': 'models',
    'test_model_load_pretrained': 'pretrained',
    'test_model_features_pretrained': 'pretrained',
}
SLOW_FAMILIES = {'test_prune_intermediate_layers_contract': 'models'}
FULL = os.environ.get('SMPCONV_TIMM_CONFORMANCE_FULL', '') not in ('', '0', 'false', 'False')
if FULL:
    FAMILIES.update(SLOW_FAMILIES)


def _in_ci() -> bool:
    return os.environ.get('CI', '').strip().lower() not in ('', '0', 'false', 'no')


def _unavailable(msg: str):
    if _in_ci():
        pytest.fail(f'timm conformance: {msg} (CI is set, so this fails instead of skipping)', pytrace=False)
    pytest.skip(f'timm conformance: {msg}; set CI=1 to make this an error, or SMPCONV_TIMM_SDIST / '
                f'SMPCONV_TIMM_TEST_MODELS to a local timm-{TIMM_VERSION} sdist / tests/test_models.py')


def _download_sdist(dest: Path) -> Path:
    cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--no-binary', ':all:', '--disable-pip-version-check',
           '-d', str(dest), f'timm=={TIMM_VERSION}']
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        _unavailable(f'could not download the timm {TIMM_VERSION} sdist ({e})')
    sdists = sorted(dest.glob('timm-*.tar.gz'))
    if proc.returncode != 0 or not sdists:
        _unavailable(f'could not download the timm {TIMM_VERSION} sdist: {(proc.stderr or proc.stdout)[-1500:]}')
    return sdists[0]


def _extract_test_models(sdist: Path, target: Path) -> None:
    member = f'timm-{TIMM_VERSION}/tests/test_models.py'
    with tarfile.open(sdist) as tar:
        try:
            data = tar.extractfile(member).read()
        except (KeyError, AttributeError):
            _unavailable(f'{sdist} has no {member}')
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix('.tmp')
    tmp.write_bytes(data)
    tmp.replace(target)


@pytest.fixture(scope='module')
def timm_test_file(request, tmp_path_factory) -> Path:
    """``tests/test_models.py`` of the installed timm version, from the cache or the sdist."""
    override = os.environ.get('SMPCONV_TIMM_TEST_MODELS')
    if override:
        return Path(override)
    if os.environ.get('SMPCONV_TIMM_CACHE'):
        cache = Path(os.environ['SMPCONV_TIMM_CACHE'])
    elif getattr(request.config, 'cache', None) is not None:
        cache = request.config.cache.mkdir('timm_conformance')
    else:
        cache = tmp_path_factory.mktemp('timm_conformance')
    # alone in its folder (no __init__.py, no conftest): pytest imports it as the top-level module ``test_models``
    target = Path(cache) / f'timm-{TIMM_VERSION}' / 'test_models.py'
    if not target.is_file():
        sdist = os.environ.get('SMPCONV_TIMM_SDIST')
        if sdist:
            _extract_test_models(Path(sdist), target)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                _extract_test_models(_download_sdist(Path(tmp)), target)
    return target


@pytest.fixture(scope='module')
def conformance(timm_test_file, tmp_path_factory) -> dict:
    """Run timm's file on our models in a subprocess; the plugin's report (outcome of every test) plus the log."""
    work = tmp_path_factory.mktemp('timm_conformance_run')
    ini, report = work / 'pytest.ini', work / 'report.json'
    ini.write_text('[pytest]\n')  # keep this repo's pytest options (testpaths, addopts) out of the run
    cmd = [sys.executable, '-m', 'pytest', str(timm_test_file), '-c', str(ini), '--rootdir', str(timm_test_file.parent),
           '-p', 'tests.timm_conformance.plugin', '-p', 'no:cacheprovider', '-q', '-rfEs', '--tb=short',
           '--durations=10', '-W', 'ignore::FutureWarning', '-W', 'ignore::UserWarning']
    if not FULL:
        cmd += ['-k', ' and '.join(f'not {name}' for name in SLOW_FAMILIES)]
    workers = int(os.environ.get('SMPCONV_TIMM_WORKERS', '0') or 0)
    if workers > 1:
        cmd += ['-n', str(workers)]
    env = dict(os.environ)
    # timm's file drops some tests on GitHub runners to fit its ~1500 models in memory; ours are few: run them all
    for key in ('GITHUB_ACTIONS', 'PYTEST_ADDOPTS', 'PYTEST_XDIST_WORKER', 'PYTEST_XDIST_WORKER_COUNT',
                'PYTEST_XDIST_TESTRUNUID', 'PYTEST_CURRENT_TEST'):
        env.pop(key, None)
    env['PYTHONPATH'] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get('PYTHONPATH')])])
    env['SMPCONV_TIMM_REPORT'] = str(report)
    timeout = int(os.environ.get('SMPCONV_TIMM_TIMEOUT', '3600'))
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    log = proc.stdout + proc.stderr
    print(log[-6000:])  # shown by pytest for failing tests (-rA / -s)
    if not report.is_file():
        pytest.fail(f'timm conformance run wrote no report (exit {proc.returncode}):\n{log[-6000:]}', pytrace=False)
    data = json.loads(report.read_text())
    data['log'] = log
    data['returncode'] = proc.returncode
    return data


def _expected(kind: str) -> set[str]:
    models = our_models()
    if kind == 'models':
        return set(models)
    if kind == 'tags':
        return set(timm.list_models(models, include_tags=True))
    return set(timm.list_models(models, pretrained=True))


def _model_of(nodeid: str) -> str:
    return nodeid.rsplit('[', 1)[1].rstrip(']').split('-')[-1]


def _family_results(data: dict, family: str) -> dict[str, dict]:
    return {_model_of(k): v for k, v in data['results'].items() if k.split('::')[-1].split('[')[0] == family}


def _excluded(family: str) -> dict[str, str]:
    """Our models the plugin deselects for ``family``, with the reasons (``EXCLUDED`` in ``selection.py``)."""
    names = _expected('tags') | _expected('models')
    return {m: r for m in names if (r := excluded_reason(family, m)) is not None}


def test_selection(conformance):
    """The run saw our models (all of them, unless narrowed for debugging) and the installed timm version."""
    assert conformance['timm'] == TIMM_VERSION
    assert conformance['models'], 'no smpconv_* models were selected'
    assert sorted(conformance['models']) == sorted(our_models())
    if not os.environ.get('SMPCONV_TIMM_MODELS'):
        registered = [n for n in timm.list_models('smpconv_*')
                      if timm.models.model_entrypoint(n).__module__.startswith('smpconv_models.')]
        assert sorted(conformance['models']) == sorted(registered)
        assert {'smpconv', 'smpconv_cifar', 'smpconv_tcn'} <= set(conformance['modules'])
    # the registry module names the plugin added to timm's module= selections (forward_intermediates tests)
    assert sorted(conformance['modules']) == sorted({registry_module(n) for n in our_models()})


@pytest.mark.parametrize('family', list(FAMILIES))
def test_timm_family(conformance, family):
    """Every model the family applies to ran it (no empty / partial parametrization) and passed."""
    expected = _expected(FAMILIES[family]) - set(_excluded(family))
    results = _family_results(conformance, family)
    if FAMILIES[family] == 'pretrained' and not expected:
        assert not results
        pytest.skip(f'no smpconv_* model has pretrained weights for {family}')
    assert expected, f'nothing to run for {family}'
    missing = sorted(expected - set(results))
    assert not missing, f'{family} did not run for {missing}; ran for {sorted(results)}\n{conformance["log"][-3000:]}'
    unexpected = sorted(set(results) - expected)
    assert not unexpected, f'{family} ran for models outside the selection: {unexpected}'
    bad = {m: r for m, r in results.items() if r['outcome'] != 'passed'}
    assert not bad, f'{family} did not pass for {sorted(bad)}:\n' + '\n\n'.join(
        f'--- {m} ({r["outcome"]}):\n' + '\n'.join(r.get('messages', [])) for m, r in sorted(bad.items()))


def test_no_other_failures(conformance):
    """Any other test of timm's file that selected one of our models (e.g. one added in a later timm) passed too."""
    bad = {k: v for k, v in conformance['results'].items() if v['outcome'] not in ('passed', 'skipped')}
    assert not bad, 'failing timm tests:\n' + '\n\n'.join(
        f'--- {k}:\n' + '\n'.join(v.get('messages', [])) for k, v in sorted(bad.items()))
    assert conformance['returncode'] == 0, conformance['log'][-6000:]


# Beyond timm's file (which scripts the training form): the deploy form that ``timm.utils.reparameterize_model``
# gives must script, save and load too (a scripted SMP model calls its kernel generation in Python and cannot be saved).
_DEPLOY_CASES = {
    'smpconv_t': dict(depths=(1, 1, 1, 1), dims=(16, 32, 48, 64)),
    'smpconv_cifar': dict(widths=(8, 12)),
    'smpconv_tcn_mnist': dict(depth=2, width=8, seq_len=64),
}


@pytest.mark.parametrize('model_name', list(_DEPLOY_CASES))
def test_reparameterized_model_scripts_and_saves(model_name):
    import io

    import torch
    from timm.utils import reparameterize_model

    model = timm.create_model(model_name, num_classes=5, **_DEPLOY_CASES[model_name]).eval()
    size = model.pretrained_cfg['input_size']
    x = torch.randn(2, *size[:-2], min(size[-2], 64), min(size[-1], 64))
    with torch.no_grad():
        expected = model(x)
        deployed = reparameterize_model(model)
        scripted = torch.jit.script(deployed)
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer)
        buffer.seek(0)
        loaded = torch.jit.load(buffer)
        torch.testing.assert_close(loaded(x), expected, rtol=1e-4, atol=1e-5)
