"""Local paths and remote URIs behind one small API, so every job reads and writes either.

A location is a local path (``data``, ``/mnt/x``, ``file:///mnt/x``) or a remote URI
(``s3://bucket/key``, ``gs://bucket/key``, or any protocol fsspec knows, e.g. ``memory://``).
Remote URIs go through pyarrow's own filesystems where it has one (S3, GCS, HDFS, Azure), else
through fsspec wrapped as a pyarrow filesystem. Configuration comes from the environment of each
process, as in every AWS / GCP client: instance profiles or ``AWS_*`` variables for S3
(``AWS_ENDPOINT_URL`` points at MinIO or a local test server), application-default credentials
for GCS. That matters on a cluster: Ray tasks resolve URIs themselves, on their own node.

Local paths keep their old behaviour exactly (``join`` returns a ``Path``, writes are atomic by
rename). On object stores an upload becomes visible whole when it completes, which gives the same
guarantee without a rename. HDF5 cannot be written through a stream, so a remote HDF5 output is
written into a local temporary file and uploaded when it is complete (``local_output_file``).
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Union
from urllib.parse import unquote, urlsplit

from embedders.store.atomic import atomic_path, atomic_write_bytes

Location = Union[str, "os.PathLike[str]"]
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_OBJECT_STORES = ("s3", "gcs")  # pyarrow type names that need no directory markers


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


def _info(location: Location):
    fs, path = resolve(location)
    return fs, path, fs.get_file_info(path)


def exists(location: Location) -> bool:
    import pyarrow.fs as pafs

    if not is_remote(location):
        return local_path(location).exists()
    return _info(location)[2].type != pafs.FileType.NotFound


def is_file(location: Location) -> bool:
    import pyarrow.fs as pafs

    if not is_remote(location):
        return local_path(location).is_file()
    return _info(location)[2].type == pafs.FileType.File


def file_size(location: Location) -> int:
    if not is_remote(location):
        return local_path(location).stat().st_size
    _, _, info = _info(location)
    if info.size is None:
        raise FileNotFoundError(f"no file at {location}")
    return int(info.size)


def read_bytes(location: Location) -> bytes:
    """The whole file; FileNotFoundError when there is none (a folder is not a file, on any store)."""
    if not is_remote(location):
        try:
            return local_path(location).read_bytes()
        except IsADirectoryError:
            raise FileNotFoundError(f"no file at {location} (it is a directory)") from None
    fs, path, info = _info(location)
    if info.type.name != "File":
        raise FileNotFoundError(f"no file at {location}" + (" (it is a directory)" if info.type.name == "Directory" else ""))
    with fs.open_input_stream(path) as fh:
        return fh.read()


def write_bytes(location: Location, data: bytes) -> None:
    """Write a whole file: atomically by rename locally, as one upload remotely."""
    if not is_remote(location):
        atomic_write_bytes(local_path(location), data)
        return
    fs, path = resolve(location)
    _make_parent(fs, path)
    with fs.open_output_stream(path) as fh:
        fh.write(data)


def _make_parent(fs, path: str) -> None:
    if fs.type_name not in _OBJECT_STORES:  # object stores have no directories to create
        fs.create_dir(str(PurePosixPath(path).parent), recursive=True)


def remove(location: Location) -> None:
    """Delete one file; a missing one is fine."""
    if not is_remote(location):
        local_path(location).unlink(missing_ok=True)
        return
    fs, path, info = _info(location)
    if info.type.name == "File":
        fs.delete_file(path)


def _children(location: Location):
    import pyarrow.fs as pafs

    fs, path = resolve(location)
    return fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))


def glob(directory: Location, pattern: str) -> list:
    """Files directly inside ``directory`` whose name matches ``pattern``, sorted (none if it is missing)."""
    if not is_remote(directory):
        return sorted(p for p in local_path(directory).glob(pattern) if p.is_file())
    names = [PurePosixPath(i.path).name for i in _children(directory) if i.type.name == "File"]
    return sorted(join(directory, n) for n in names if fnmatch.fnmatchcase(n, pattern))


def list_dirs(directory: Location) -> list[str]:
    """Names of the folders directly inside ``directory``, sorted (none if it is missing)."""
    if not is_remote(directory):
        root = local_path(directory)
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    return sorted(PurePosixPath(i.path).name for i in _children(directory) if i.type.name == "Directory")


# ---------------------------------------------------------------------------------------------
# Parquet
# ---------------------------------------------------------------------------------------------
def write_parquet(table, location: Location) -> None:
    import pyarrow.parquet as pq

    if not is_remote(location):
        with atomic_path(local_path(location)) as tmp:
            pq.write_table(table, tmp)
        return
    fs, path = resolve(location)
    _make_parent(fs, path)
    pq.write_table(table, path, filesystem=fs)


def read_parquet(location: Location, columns=None):
    import pyarrow.parquet as pq

    if not is_remote(location):
        return pq.read_table(local_path(location), columns=None if columns is None else list(columns))
    fs, path = resolve(location)
    return pq.read_table(path, columns=None if columns is None else list(columns), filesystem=fs)


def read_parquet_schema(location: Location):
    import pyarrow.parquet as pq

    if not is_remote(location):
        return pq.read_schema(local_path(location))
    fs, path = resolve(location)
    return pq.read_schema(path, filesystem=fs)


# ---------------------------------------------------------------------------------------------
# Whole files and folders that a library must see on local disk (HDF5, tokenizers, reports)
# ---------------------------------------------------------------------------------------------
@contextmanager
def _scratch(prefix: str) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def download(location: Location, destination: Path) -> Path:
    """Copy a remote file or folder to ``destination`` (a local path); return it."""
    import pyarrow.fs as pafs

    fs, path, info = _info(location)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"nothing at {location}")
    destination.parent.mkdir(parents=True, exist_ok=True)
    if info.type == pafs.FileType.Directory:
        destination.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(destination.absolute()), source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem())
    return destination


def upload(source: Path, location: Location) -> None:
    """Copy a local file or folder (recursively) to a remote location; each file is one upload."""
    import pyarrow.fs as pafs

    fs, path = resolve(location)
    if source.is_file():
        _make_parent(fs, path)
    elif fs.type_name not in _OBJECT_STORES:
        fs.create_dir(path, recursive=True)
    pafs.copy_files(str(source.absolute()), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


@contextmanager
def local_copy(location: Location, *, missing_ok: bool = False) -> Iterator[Path]:
    """A local path holding the file or folder at ``location`` for the duration of the block.

    Local locations are yielded as they are (no copy). Remote ones are downloaded into a temporary
    folder that is removed afterwards; with ``missing_ok`` a missing remote location yields a path
    that does not exist, else FileNotFoundError.
    """
    if not is_remote(location):
        yield local_path(location)
        return
    with _scratch("avs-in-") as folder:
        target = folder / (name(location) or "root")
        if missing_ok and not exists(location):
            yield target
        else:
            yield download(location, target)


@contextmanager
def local_output_dir(location: Location) -> Iterator[Path]:
    """A local folder whose contents end up at ``location``.

    Local: the folder itself (created). Remote: a temporary folder, uploaded when the block exits
    without an exception (a failed run uploads nothing, so no half-written outputs land).
    """
    if not is_remote(location):
        path = local_path(location)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with _scratch("avs-out-") as folder:
        out = folder / "out"
        out.mkdir()
        yield out
        if any(out.iterdir()):
            upload(out, location)


def stage_root() -> Path:
    """Where remote folders are staged: $AVS_STAGE_DIR, else ~/.cache/audio-vs-symbolic/stage."""
    return Path(os.environ.get("AVS_STAGE_DIR") or Path.home() / ".cache" / "audio-vs-symbolic" / "stage")


def cached_file(location: Location) -> Path:
    """A local path holding the file at ``location``: itself when local; for a URI a copy under
    ``stage_root()/files/<hash of the URI>/<name>``, downloaded once per machine (again only when
    the remote size differs). Concurrent callers (several actors on one node) each write their
    own temporary file and rename it into place, so none ever reads a partial copy."""
    if not is_remote(location):
        return local_path(location)
    import hashlib

    target = stage_root() / "files" / hashlib.sha1(str(location).encode()).hexdigest()[:16] / (name(location) or "file")
    size = file_size(location)
    if not (target.is_file() and target.stat().st_size == size):
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            download(location, Path(tmp))
    return target


@contextmanager
def staged_dir(location: Location) -> Iterator[Path]:
    """A local working copy of a folder that a job both reads and extends (a resumable sweep).

    Local: the folder itself (created). Remote: the folder's current contents are downloaded to a
    staging folder first, and everything there is uploaded when the block exits, also after an
    exception, so what finished before a failure is kept and a rerun continues from it. The
    staging folder's path depends only on the URI (under ``stage_root()``), so absolute paths a
    job records inside it (an MLflow sqlite store's artifact locations) stay valid on every rerun
    from the same machine. Two runs on one URI at once are not supported.
    """
    if not is_remote(location):
        path = local_path(location)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    import hashlib

    work = stage_root() / hashlib.sha1(str(location).encode()).hexdigest()[:16]
    shutil.rmtree(work, ignore_errors=True)  # the remote copy is the truth; a leftover is stale
    if exists(location):
        download(location, work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        try:
            if any(work.iterdir()):
                upload(work, location)
        finally:
            shutil.rmtree(work, ignore_errors=True)


@contextmanager
def local_output_file(location: Location) -> Iterator[Path]:
    """A local file path whose file is uploaded to ``location`` when the block exits cleanly.

    Local: the path itself (its folder created); the writer stays responsible for atomicity.
    """
    if not is_remote(location):
        path = local_path(location)
        path.parent.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with _scratch("avs-out-") as folder:
        path = folder / (name(location) or "file")
        yield path
        if not path.is_file():
            raise FileNotFoundError(f"{path} was not written, so nothing was uploaded to {location}")
        upload(path, location)


def copy_tree(source: Location, destination: Location, *, exclude: tuple[str, ...] = ()) -> tuple[int, int]:
    """Copy every file under folder ``source`` to the same relative path under ``destination``.

    Either side may be local or remote. Files whose relative path matches an ``exclude`` glob are
    left out; files already at the destination with the same size are skipped, so an interrupted
    copy continues. Returns (copied, skipped).
    """
    import pyarrow.fs as pafs

    src_fs, src_path = resolve(source)
    if src_fs.get_file_info(src_path).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"no folder at {source}")
    copied = skipped = 0
    for info in src_fs.get_file_info(pafs.FileSelector(src_path, recursive=True)):
        rel = PurePosixPath(info.path).relative_to(PurePosixPath(src_path)).as_posix()
        if info.type != pafs.FileType.File or any(fnmatch.fnmatchcase(rel, pattern) for pattern in exclude):
            continue
        target = join(destination, *rel.split("/"))
        if exists(target) and file_size(target) == info.size:
            skipped += 1
            continue
        with src_fs.open_input_stream(info.path) as fh:
            write_bytes(target, fh.read())
        copied += 1
    return copied, skipped


def display(location: Location) -> str:
    """How outputs name a location: URIs as given, local paths absolute."""
    return str(location) if is_remote(location) else str(local_path(location).absolute())
