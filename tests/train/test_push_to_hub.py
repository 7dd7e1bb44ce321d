"""Push to the Hub against a fake Hub on 127.0.0.1 (``fake_hub.py``): the real ``huggingface_hub`` client, pointed
at it through ``HF_ENDPOINT`` in a subprocess, creates the repo and uploads; the bytes the server received equal the
local files. Covers ``smpconv_models.hub.push_to_hub``, ``train.py --push-to-hub`` and the failure path of both.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import timm

import smpconv_models  # noqa: F401
from smpconv_models.hub import save_pretrained

from .fake_hub import FakeHub

REPO_ROOT = Path(__file__).resolve().parents[2]
REPO_ID = 'user/smpconv-test'
TOKEN = 'hf_fake_token_for_tests'
HUB_FILES = ('config.json', 'model.safetensors', 'README.md')
PUSH = 'import sys; from smpconv_models.hub import push_to_hub; print(push_to_hub(sys.argv[1], sys.argv[2]))'
TINY_TRAIN = ['--epochs', '1', '--batch-size', '64', '--limit-train-batches', '2', '--plot', 'false',
              '--model-args', json.dumps({'depth': 2, 'width': 8, 'n_points': 6})]


def hub_env(endpoint: str, tmp_path: Path, *, xet: bool = False) -> dict[str, str]:
    """The environment of a pushing subprocess: HF_ENDPOINT is read when huggingface_hub is imported."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(('HF_', 'HUGGING_FACE_')) and k not in ('TRANSFORMERS_OFFLINE',)}
    env.update(HF_ENDPOINT=endpoint, HF_TOKEN=TOKEN, HF_HUB_DISABLE_TELEMETRY='1', HF_HOME=str(tmp_path / 'hf_home'),
               HF_HUB_DISABLE_PROGRESS_BARS='1', OMP_NUM_THREADS='1', TQDM_DISABLE='1',
               NO_PROXY='127.0.0.1,localhost', no_proxy='127.0.0.1,localhost')
    if not xet:
        # with hf_xet installed, huggingface_hub sends LFS-mode files over the Xet protocol (decided client-side,
        # whatever the server says); this switch gives the plain LFS batch API + PUT path
        env['HF_HUB_DISABLE_XET'] = '1'
    return env


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=180)


def assert_pushed_equal(hub: FakeHub, folder: Path) -> None:
    assert not hub.unhandled and not hub.errors and not hub.auth_failures, (hub.unhandled, hub.errors)
    pushed = hub.files[REPO_ID]
    assert sorted(pushed) == sorted(HUB_FILES) == sorted(p.name for p in folder.iterdir())
    for name in HUB_FILES:
        assert pushed[name] == (folder / name).read_bytes(), f'{name} differs from {folder / name}'


@pytest.fixture
def fake_hub(request):
    hub = FakeHub(token=getattr(request, 'param', {}).get('token', TOKEN),
                  lfs_patterns=getattr(request, 'param', {}).get('lfs_patterns', ('*.safetensors',)),
                  max_lifetime_s=240).start()
    request.addfinalizer(hub.stop)
    return hub


@pytest.fixture
def hub_folder(tmp_path) -> Path:
    model = timm.create_model('smpconv_tcn_mnist', seq_len=16, depth=1, width=4, n_points=3)
    return save_pretrained(model, tmp_path / 'model', metrics={'top1': 12.5})


@pytest.fixture
def refused_endpoint():
    """An HF_ENDPOINT where connections are refused: a port bound, but not listening, for the test's duration."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(('127.0.0.1', 0))
    yield f'http://127.0.0.1:{sock.getsockname()[1]}'
    sock.close()


@pytest.mark.parametrize('fake_hub, xet', [
    pytest.param({'lfs_patterns': ('*.safetensors',)}, False, id='lfs-batch-api'),
    pytest.param({'lfs_patterns': ()}, True, id='xet-client-regular-blobs'),
], indirect=['fake_hub'])
def test_push_folder_uploads_identical_bytes(fake_hub, hub_folder, tmp_path, xet):
    proc = run(['-c', PUSH, str(hub_folder), REPO_ID], hub_env(fake_hub.url, tmp_path, xet=xet))
    assert proc.returncode == 0, proc.stderr
    assert_pushed_equal(fake_hub, hub_folder)
    assert REPO_ID in fake_hub.repos and fake_hub.repos[REPO_ID]['visibility'] != 'private'
    [commit] = fake_hub.commits
    assert commit.summary == 'Add SMPConv model' and commit.revision == 'main'
    assert proc.stdout.strip() == f'{fake_hub.url}/{REPO_ID}/commit/{commit.oid}'
    if xet:  # every file a regular git blob: the Xet client path needs no Xet server
        assert sorted(commit.regular) == sorted(HUB_FILES) and not fake_hub.lfs_objects
    else:  # safetensors through the LFS batch API, PUT and verify on this server; the rest inline as base64
        assert commit.lfs == ['model.safetensors'] and sorted(commit.regular) == ['README.md', 'config.json']
        assert list(fake_hub.lfs_objects.values()) == [(hub_folder / 'model.safetensors').read_bytes()]
        assert any(m == 'PUT' and p.startswith('/lfs-upload/') for m, p in fake_hub.requests)


@pytest.mark.parametrize('fake_hub', [{'token': 'hf_the_right_token'}], indirect=True)
def test_push_with_rejected_token_raises_clear_error(fake_hub, hub_folder, tmp_path):
    proc = run(['-c', PUSH, str(hub_folder), REPO_ID], hub_env(fake_hub.url, tmp_path))
    assert proc.returncode == 1
    assert f"RuntimeError: push to the Hub repo '{REPO_ID}' failed" in proc.stderr
    assert '401' in proc.stderr
    assert fake_hub.auth_failures and not fake_hub.repos and not fake_hub.commits


def test_train_push_to_hub_uploads_best(fake_hub, tmp_path):
    out = tmp_path / 'out'
    proc = run(['train.py', '--output-dir', str(out), *TINY_TRAIN, '--push-to-hub', REPO_ID],
               hub_env(fake_hub.url, tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_pushed_equal(fake_hub, out / 'best')
    [commit] = fake_hub.commits
    commit_url = f'{fake_hub.url}/{REPO_ID}/commit/{commit.oid}'
    assert f'pushed to the Hub: {commit_url}' in proc.stdout
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['hub_commit'] == commit_url and 'hub_error' not in summary


def test_train_push_failure_exits_3_and_keeps_local_files(refused_endpoint, tmp_path):
    out = tmp_path / 'out'
    proc = run(['train.py', '--output-dir', str(out), *TINY_TRAIN, '--push-to-hub', REPO_ID],
               hub_env(refused_endpoint, tmp_path))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert 'push to the Hub failed' in proc.stderr and REPO_ID in proc.stderr
    assert 'Hub push FAILED' in proc.stdout
    for name in HUB_FILES:
        assert (out / 'best' / name).is_file() and (out / 'last' / name).is_file()
    summary = json.loads((out / 'summary.json').read_text())
    assert REPO_ID in summary['hub_error'] and 'hub_commit' not in summary
    timm.create_model(f'local-dir:{out / "best"}', pretrained=True)  # the kept checkpoint loads
