"""Atomic writes: the target holds either the old or the new content, never a partial file or a leftover temp; the
CLIs' JSON-object arguments."""
from __future__ import annotations

import json

import pytest

from smpconv_models._io import parse_json_object, write_json_atomic, write_text_atomic


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


def test_parse_json_object_names_the_flag():
    assert parse_json_object('{"width": 64, "depths": [1, 2]}', '--model-args') == {'width': 64, 'depths': [1, 2]}
    with pytest.raises(ValueError, match=r"--model-args must be a JSON object, got '\[1, 2\]'"):
        parse_json_object('[1, 2]', '--model-args')
    with pytest.raises(ValueError, match='--encoder-args is not valid JSON'):
        parse_json_object("{'width': 64}", '--encoder-args')
