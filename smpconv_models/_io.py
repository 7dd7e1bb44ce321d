"""Atomic file writes: a sibling temporary file renamed over the target, so a crash never leaves half a file."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ['write_text_atomic', 'write_json_atomic']


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
