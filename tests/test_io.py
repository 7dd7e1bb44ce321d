"""Atomic writes: the target holds either the old or the new content, never a partial file or a leftover temp."""
from __future__ import annotations

import json

import pytest

from smpconv_models._io import write_json_atomic, write_text_atomic


def test_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / 'report.json'
    write_json_atomic(target, {'a': 1})
    write_json_atomic(target, {'a': 2, 'b': [1.5]})
    assert json.loads(target.read_text()) == {'a': 2, 'b': [1.5]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ['report.json']


def test_failed_write_keeps_old_content(tmp_path, monkeypatch):
    target = tmp_path / 'metrics.jsonl'
    write_text_atomic(target, 'old\n')
    with pytest.raises(TypeError):
        write_json_atomic(target, {'x': object()})  # not serialisable: nothing written
    monkeypatch.setattr('os.replace', lambda *a: (_ for _ in ()).throw(OSError('disk full')))
    with pytest.raises(OSError, match='disk full'):
        write_text_atomic(target, 'new\n')
    assert target.read_text() == 'old\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['metrics.jsonl']
