"""Atomic file writes, and the one JSON writer of every result file.

Atomic: write to a temporary name in the target's folder, then rename over the target. A reader
(or a job resumed after a kill) therefore sees either the old file or the whole new one, never
half a file. The temporary name starts with a dot, so globs like ``part-*.parquet`` skip it.

JSON: :func:`write_json` (and :func:`json_bytes` for writers that go through a remote store) is
strict JSON: numpy values become plain numbers and lists, NaN and infinities become ``null``
(a one-seed interval has NaN bounds, and the token ``NaN`` is not JSON), paths become strings.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it over ``path``, on error remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def json_ready(obj: Any) -> Any:
    """``obj`` as plain JSON values: dicts (keys as strings), lists (from tuples and arrays), numbers,
    strings, booleans and None. NaN and +-inf become None; numpy scalars and arrays become Python
    numbers and lists; paths and any other unknown object become their ``str``."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, (np.ndarray, np.generic)):   # before float: np.float64 is a float subclass
        return json_ready(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    return str(obj)   # paths, timestamps, anything else


def json_bytes(obj: Any) -> bytes:
    """Strict JSON text (UTF-8, indented by 2, keys in insertion order) of ``json_ready(obj)``."""
    return json.dumps(json_ready(obj), indent=2, allow_nan=False).encode()


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` to ``path`` as strict JSON (:func:`json_bytes`), atomically; parent folders are made."""
    atomic_write_bytes(path, json_bytes(obj))
