"""What a location is: a local path (``data``, ``/mnt/x``, ``file:///mnt/x``) or a remote URI
(``s3://bucket/key``, ``gs://bucket/key``, or any protocol fsspec knows, e.g. ``memory://``), and
which pyarrow filesystem serves it.

Remote URIs go through pyarrow's own filesystems where it has one (S3, GCS, HDFS, Azure), else
through fsspec wrapped as a pyarrow filesystem. Configuration comes from the environment of each
process, as in every AWS / GCP client: instance profiles or ``AWS_*`` variables for S3
(``AWS_ENDPOINT_URL`` points at MinIO or a local test server), application-default credentials
for GCS. That matters on a cluster: Ray tasks resolve URIs themselves, on their own node.
Reading and writing files at locations: ``embedders.store.filesystem``.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Union
from urllib.parse import unquote, urlsplit

Location = Union[str, "os.PathLike[str]"]
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
OBJECT_STORES = ("s3", "gcs")  # pyarrow type names that need no directory markers


class StorageError(ValueError):
    """A location cannot be used: unsupported scheme, query string, missing optional package."""


def scheme(location: Location) -> str:
    """'' for a plain path, else the URI scheme in lower case ('file', 's3', 'gs', ...)."""
    if isinstance(location, os.PathLike):
        return ""
    match = _SCHEME.match(str(location))
    return match.group(1).lower() if match else ""


def is_remote(location: Location) -> bool:
    """True for URIs that are not ``file://``: they are read and written through a filesystem client."""
    return scheme(location) not in ("", "file")


def local_path(location: Location) -> Path:
    """The local path of a plain path or a ``file://`` URI."""
    if scheme(location) == "file":
        parts = urlsplit(str(location))
        if parts.netloc not in ("", "localhost"):
            raise StorageError(f"file:// URI with a host is not a local path: {location}")
        return Path(unquote(parts.path))
    if is_remote(location):
        raise StorageError(f"{location} is a remote URI, not a local path")
    return Path(location)


def join(base: Location, *parts: str) -> Path | str:
    """``base / part / ...``: a ``Path`` for local bases, a URI string (``/``-separated) for remote ones."""
    if not is_remote(base):
        return local_path(base).joinpath(*parts)
    out = str(base).rstrip("/")
    for part in parts:
        part = str(part).replace("\\", "/").strip("/")
        if part:
            out = f"{out}/{part}"
    return out


def name(location: Location) -> str:
    return PurePosixPath(str(location).rstrip("/")).name if is_remote(location) else local_path(location).name


def unsafe_relative_reason(relative: str) -> str | None:
    """Why ``relative`` may not be joined under a dataset root, judged on the text alone, else None.

    Absolute paths (POSIX, Windows, drive letters), ``..`` segments and URIs are refused: the first
    two leave the root, a URI names another location altogether. Local roots additionally refuse
    symbolic links that leave the root (``embedders.dataset.unsafe_path_reason``); object stores
    have no links, so for them this check is the whole check.
    """
    if PurePosixPath(relative).is_absolute() or PureWindowsPath(relative).is_absolute() or PureWindowsPath(relative).drive:
        return "is an absolute path"
    if _SCHEME.match(relative) or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:/", relative):
        return "is a URI, not a path relative to the dataset folder"
    if ".." in PurePosixPath(relative.replace("\\", "/")).parts:
        return "contains '..'"
    return None


# ---------------------------------------------------------------------------------------------
# Filesystems
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def _remote_filesystem(uri_scheme: str, netloc: str):
    """One filesystem per (scheme, bucket) and process: S3 resolves the bucket's region once."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    try:
        fs, _ = pafs.FileSystem.from_uri(f"{uri_scheme}://{netloc}")
        return fs, None
    except pa.ArrowInvalid as exc:
        if "Unrecognized filesystem type" not in str(exc):
            raise
    try:
        import fsspec
    except ImportError:
        raise StorageError(f"pyarrow has no filesystem for {uri_scheme}:// and fsspec is not installed "
                           "(pip install fsspec plus the protocol's package)") from None
    try:
        spec_fs = fsspec.filesystem(uri_scheme)
    except (ImportError, ValueError) as exc:
        raise StorageError(f"no filesystem for {uri_scheme}://: {exc}") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(spec_fs)), spec_fs


def resolve(location: Location):
    """(pyarrow filesystem, path inside it) for a local path or a URI."""
    import pyarrow.fs as pafs

    if not is_remote(location):
        return pafs.LocalFileSystem(), str(local_path(location).absolute())
    parts = urlsplit(str(location))
    if parts.query or parts.fragment:
        raise StorageError(f"{location}: query strings are not supported; configure the client through its "
                           "environment (e.g. AWS_ENDPOINT_URL, AWS_REGION)")
    fs, spec_fs = _remote_filesystem(parts.scheme.lower(), parts.netloc)
    path = spec_fs._strip_protocol(str(location)) if spec_fs is not None else parts.netloc + parts.path
    return fs, path.rstrip("/") or path
