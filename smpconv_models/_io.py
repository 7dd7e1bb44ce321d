"""Atomic file writes (a sibling temporary file renamed over the target, so a crash never leaves half a file), and the
JSON-object arguments of the command lines."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ['write_text_atomic', 'write_json_atomic', 'parse_json_object']


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary sibling and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp')
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """:func:`write_text_atomic` of ``obj`` as indented JSON."""
    return write_text_atomic(path, json.dumps(obj, indent=1))


def parse_json_object(text: str, flag: str) -> dict[str, Any]:
    """A command line's JSON-object argument (``--model-args '{"width": 64}'``) as a dict; a ``ValueError`` naming
    ``flag`` when ``text`` is not JSON or not an object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f'{flag} is not valid JSON ({e}): {text!r}') from e
    if not isinstance(value, dict):
        raise ValueError(f'{flag} must be a JSON object, got {text!r}')
    return value
