"""A fake Hugging Face Hub on 127.0.0.1 for push tests: just enough of the Hub API for ``huggingface_hub``'s
``create_repo`` + ``upload_folder`` (checked against huggingface_hub 2.4).

The client talks to it through ``HF_ENDPOINT``. Endpoints (model repos only):

- ``POST /api/repos/create``: creates the repo (409 when it exists, which ``exist_ok=True`` accepts).
- ``POST /api/validate-yaml``: accepts any model card metadata.
- ``POST /api/models/{repo}/preupload/{rev}``: upload mode per file, ``lfs`` for paths matching ``lfs_patterns``
  and ``regular`` otherwise. Xet is never advertised; huggingface_hub decides Xet on the client side when
  ``hf_xet`` is installed, so LFS uploads need ``HF_HUB_DISABLE_XET=1`` in the client (with Xet enabled,
  ``lfs_patterns=()`` makes every file a regular git blob, which needs no Xet server).
- ``POST /{repo}.git/info/lfs/objects/batch``: LFS batch API, ``basic`` transfer; an upload (PUT) and a verify
  href on this server for every object not stored yet.
- ``PUT /lfs-upload/{oid}?signature=...``: LFS object upload (sha256 checked); like an S3 pre-signed URL it takes no
  Authorization header, only the signature the batch answer put in the href.
- ``POST /lfs-verify/{oid}``: LFS verify (oid and size checked).
- ``POST /api/models/{repo}/commit/{rev}``: the ndjson commit (``file`` base64, ``lfsFile`` by oid,
  ``deletedFile``); stores the bytes per path and answers ``commitUrl`` / ``commitOid``.

Anything else answers 404 and is recorded in ``unhandled``. With ``token`` set, an API request whose
``Authorization: Bearer`` differs answers 401 (recorded in ``auth_failures``). The server stops itself after
``max_lifetime_s``.
"""
from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ['Commit', 'FakeHub']

_REPO = r'(?P<repo>[\w.-]+/[\w.-]+)'


@dataclass
class Commit:
    repo_id: str
    revision: str
    summary: str
    oid: str
    regular: list[str] = field(default_factory=list)
    lfs: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


class FakeHub:
    """A threaded fake Hub. ``files[repo_id][path]`` holds the committed bytes; ``requests`` the
    ``(method, path)`` of every request; ``commits`` the commits in order."""

    def __init__(self, *, lfs_patterns: tuple[str, ...] = ('*.safetensors', '*.bin', '*.pt'),
                 token: str | None = None, max_lifetime_s: float = 300.0) -> None:
        self.lfs_patterns = lfs_patterns
        self.token = token
        self.max_lifetime_s = max_lifetime_s
        self.repos: dict[str, dict[str, Any]] = {}
        self.files: dict[str, dict[str, bytes]] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.commits: list[Commit] = []
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self.auth_failures: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self._secret = secrets.token_hex(16)  # signs the LFS upload hrefs
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None

    # -- lifecycle ------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, 'server not started'
        host, port = self._server.server_address[:2]
        return f'http://{host}:{port}'

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake_hub = hub

        self._server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={'poll_interval': 0.1},
                                        name='fake-hub', daemon=True)
        self._thread.start()
        self._timer = threading.Timer(self.max_lifetime_s, self._server.shutdown)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- API logic (called by the handler; returns status, JSON body) ---------------------------------

    def is_lfs(self, path: str) -> bool:
        return any(fnmatch.fnmatch(path, p) for p in self.lfs_patterns)

    def handle(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            self.requests.append((method, path))
        route, _, query = path.partition('?')
        presigned = route.startswith('/lfs-upload/')  # like an S3 pre-signed URL: no Authorization header
        if not presigned and self.token is not None and headers.get('Authorization') != f'Bearer {self.token}':
            with self._lock:
                self.auth_failures.append((method, path))
            return 401, {'error': 'Invalid credentials in Authorization header'}, {'X-Error-Message': 'Invalid token'}
        for pattern, verb, fn in self._routes():
            m = re.fullmatch(pattern, route)
            if m and verb == method:
                kwargs = {'query': query} if presigned else {}
                return fn(body=body, **m.groupdict(), **kwargs)
        with self._lock:
            self.unhandled.append((method, path))
        return 404, {'error': f'fake hub: no route for {method} {route}'}, {}

    def _routes(self):
        return [
            (r'/api/repos/create', 'POST', self._create_repo),
            (r'/api/validate-yaml', 'POST', self._validate_yaml),
            (rf'/api/models/{_REPO}/preupload/(?P<rev>[^/]+)', 'POST', self._preupload),
            (rf'/{_REPO}\.git/info/lfs/objects/batch', 'POST', self._lfs_batch),
            (r'/lfs-upload/(?P<oid>[0-9a-f]{64})', 'PUT', self._lfs_upload),
            (r'/lfs-verify/(?P<oid>[0-9a-f]{64})', 'POST', self._lfs_verify),
            (rf'/api/models/{_REPO}/commit/(?P<rev>[^/]+)', 'POST', self._commit),
        ]

    def _create_repo(self, body: bytes):
        payload = json.loads(body)
        if payload.get('type', 'model') != 'model':
            return 400, {'error': 'fake hub: model repos only'}, {}
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get('organization') else payload['name']
        url = f'{self.url}/{repo_id}'
        with self._lock:
            if repo_id in self.repos:
                return 409, {'error': 'You already created this model repo', 'url': url}, {}
            self.repos[repo_id] = {'visibility': payload.get('visibility'), 'head': None}
            self.files[repo_id] = {}
        return 200, {'url': url, 'name': repo_id, 'id': hashlib.sha1(repo_id.encode()).hexdigest()[:24]}, {}

    def _validate_yaml(self, body: bytes):
        return 200, {'errors': [], 'warnings': []}, {}

    def _repo_or_404(self, repo: str):
        if repo not in self.repos:
            return 404, {'error': 'Repository not found'}, {'X-Error-Code': 'RepoNotFound'}
        return None

    def _preupload(self, body: bytes, repo: str, rev: str):
        if (err := self._repo_or_404(repo)) is not None:
            return err
        files = [{'path': f['path'], 'uploadMode': 'lfs' if self.is_lfs(f['path']) else 'regular',
                  'shouldIgnore': False, 'oid': None} for f in json.loads(body)['files']]
        return 200, {'files': files, 'commitOid': self.repos[repo]['head']}, {}

    def _lfs_batch(self, body: bytes, repo: str):
        if (err := self._repo_or_404(repo)) is not None:
            return err
        payload = json.loads(body)
        if payload.get('operation') != 'upload' or 'basic' not in payload.get('transfers', ['basic']):
            return 422, {'message': 'fake hub: only basic uploads'}, {}
        objects = []
        for obj in payload['objects']:
            oid, size = obj['oid'], obj['size']
            entry: dict[str, Any] = {'oid': oid, 'size': size, 'authenticated': True}
            if oid not in self.lfs_objects:
                signature = self._signature(oid)
                entry['actions'] = {'upload': {'href': f'{self.url}/lfs-upload/{oid}?signature={signature}'},
                                    'verify': {'href': f'{self.url}/lfs-verify/{oid}'}}
            objects.append(entry)
        return 200, {'transfer': 'basic', 'objects': objects, 'hash_algo': 'sha256'}, {
            'Content-Type': 'application/vnd.git-lfs+json'}

    def _signature(self, oid: str) -> str:
        return hashlib.sha256(f'{self._secret}:{oid}'.encode()).hexdigest()

    def _lfs_upload(self, body: bytes, oid: str, query: str):
        if query != f'signature={self._signature(oid)}':
            return 403, {'error': 'bad or missing upload signature'}, {}
        if hashlib.sha256(body).hexdigest() != oid:
            return 400, {'error': 'sha256 mismatch'}, {}
        with self._lock:
            self.lfs_objects[oid] = body
        return 200, {}, {}

    def _lfs_verify(self, body: bytes, oid: str):
        payload = json.loads(body)
        stored = self.lfs_objects.get(oid)
        if stored is None or len(stored) != payload.get('size') or payload.get('oid') != oid:
            return 404, {'error': f'LFS object {oid} not found or wrong size'}, {}
        return 200, {'success': True}, {}

    def _commit(self, body: bytes, repo: str, rev: str):
        if (err := self._repo_or_404(repo)) is not None:
            return err
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get('key') != 'header':
            return 400, {'error': 'commit payload must start with a header line'}, {}
        updates: dict[str, bytes | None] = {}
        commit = Commit(repo_id=repo, revision=rev, summary=lines[0]['value']['summary'], oid='')
        for item in lines[1:]:
            key, value = item['key'], item['value']
            if key == 'file':
                if value.get('encoding') != 'base64':
                    return 400, {'error': f"unsupported encoding {value.get('encoding')!r}"}, {}
                updates[value['path']] = base64.b64decode(value['content'])
                commit.regular.append(value['path'])
            elif key == 'lfsFile':
                data = self.lfs_objects.get(value['oid'])
                if data is None or value.get('algo', 'sha256') != 'sha256' or len(data) != value.get('size', len(data)):
                    return 422, {'error': f"LFS object {value['oid']} for {value['path']} was not uploaded"}, {}
                updates[value['path']] = data
                commit.lfs.append(value['path'])
            elif key in ('deletedFile', 'deletedFolder'):
                updates[value['path']] = None
                commit.deleted.append(value['path'])
            else:
                return 400, {'error': f'fake hub: unsupported commit operation {key!r}'}, {}
        with self._lock:
            files = self.files[repo]
            for path, data in updates.items():
                if data is None:
                    files.pop(path, None)
                else:
                    files[path] = data
            commit.oid = hashlib.sha1(f'{repo}:{len(self.commits)}:{sorted(updates)}'.encode()).hexdigest()
            self.repos[repo]['head'] = commit.oid
            self.commits.append(commit)
        return 200, {'success': True, 'commitOid': commit.oid, 'commitUrl': f'{self.url}/{repo}/commit/{commit.oid}',
                     'pullRequestUrl': None}, {}


class _Handler(BaseHTTPRequestHandler):
    fake_hub: FakeHub
    protocol_version = 'HTTP/1.1'
    timeout = 30  # an idle keep-alive connection is dropped after this long

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _read_body(self) -> bytes:
        if 'chunked' in self.headers.get('Transfer-Encoding', '').lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b';', 1)[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b'\r\n', b'\n', b''):  # trailers
                        pass
                    return b''.join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get('Content-Length') or 0))

    def _dispatch(self) -> None:
        body = self._read_body()
        try:
            status, payload, headers = self.fake_hub.handle(self.command, self.path, self.headers, body)
        except Exception as e:  # a bug in the fake shows up as a 500 with its reason, and in ``errors``
            self.fake_hub.errors.append(f'{self.command} {self.path}: {type(e).__name__}: {e}')
            status, payload, headers = 500, {'error': f'fake hub crashed: {type(e).__name__}: {e}'}, {}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header('Content-Type', headers.pop('Content-Type', 'application/json'))
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _dispatch
