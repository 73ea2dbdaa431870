"""Identity of weight files, shared by the embedders that load them (openl3, clap, clamp).

A file version is (absolute path, size, mtime); its SHA-256 is computed once per version per
process, since hashing a multi-hundred-MB checkpoint again for every config hash would cost seconds.
"""

from __future__ import annotations

import hashlib
import os

_SHA256: dict[tuple[str, int, int], str] = {}


def file_key(path: str) -> tuple[str, int, int]:
    """(absolute path, size, mtime in ns): one version of a file. Raises OSError when it is missing."""
    st = os.stat(path)
    return os.path.abspath(path), int(st.st_size), int(st.st_mtime_ns)


def file_sha256(path: str) -> str:
    """SHA-256 of the file's bytes, cached per file version."""
    key = file_key(path)
    if key not in _SHA256:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
        _SHA256[key] = digest.hexdigest()
    return _SHA256[key]
