"""Reading and writing files at locations (local paths and remote URIs: ``embedders.store.locations``)
behind one small API, so every job reads and writes either.

Local paths keep their old behaviour exactly (``join`` returns a ``Path``, writes are atomic by
rename). On object stores an upload becomes visible whole when it completes, which gives the same
guarantee without a rename. HDF5 cannot be written through a stream, so a remote HDF5 output is
written into a local temporary file and uploaded when it is complete (``local_output_file``).
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from embedders.store.atomic import atomic_path
from embedders.store.locations import (
    OBJECT_STORES,
    Location,
    StorageError,
    is_remote,
    join,
    local_path,
    name,
    resolve,
    scheme,
    unsafe_relative_reason,
)

# Callers use one name for both modules (``fs.join``, ``fs.read_bytes``): the location names are re-exported.
__all__ = [
    "Location", "StorageError", "scheme", "is_remote", "local_path", "join", "name", "unsafe_relative_reason", "resolve",
    "exists", "is_file", "file_size", "read_bytes", "write_bytes", "remove", "glob", "list_dirs", "atomic_output",
    "remove_temporary_files", "TEMPORARY_GLOB", "download", "upload", "local_copy", "local_output_dir", "stage_root",
    "cached_file", "staged_dir", "local_output_file", "display",
]

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
    """Write a whole file: atomically by rename locally, as one upload remotely (``atomic_output``)."""
    with atomic_output(location) as (fs, path):
        with fs.open_output_stream(path) as fh:
            fh.write(data)


def _make_parent(fs, path: str) -> None:
    if fs.type_name not in OBJECT_STORES:  # object stores have no directories to create
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
# Whole-file writes
# ---------------------------------------------------------------------------------------------
TEMPORARY_GLOB = ".*.tmp"  # what atomic_output writes before its rename (see embedders.store.atomic)


@contextmanager
def atomic_output(location: Location) -> Iterator[tuple]:
    """(pyarrow filesystem, path) to write one whole file that appears at ``location`` only when complete.

    Local paths, and remote filesystems that can rename (HDFS, fsspec's memory://), get a temporary
    sibling ``.<name>.<hex>.tmp`` that is renamed over ``location`` when the block exits cleanly and
    removed when it raises; a writer killed inside the block leaves it behind, for
    ``remove_temporary_files`` to delete. On object stores (S3, GCS) the path is ``location`` itself:
    an upload becomes visible only once it is complete, so closing the stream is the commit.
    """
    import pyarrow.fs as pafs

    if not is_remote(location):
        with atomic_path(local_path(location)) as tmp:
            yield pafs.LocalFileSystem(), str(tmp.absolute())
        return
    fs, path = resolve(location)
    _make_parent(fs, path)
    if fs.type_name in OBJECT_STORES:
        yield fs, path
        return
    parent, file_name = str(PurePosixPath(path).parent), PurePosixPath(path).name
    tmp = f"{parent}/.{file_name}.{uuid.uuid4().hex}.tmp"
    try:
        yield fs, tmp
        fs.move(tmp, path)
    finally:
        if fs.get_file_info(tmp).type.name == "File":
            fs.delete_file(tmp)


def remove_temporary_files(directory: Location) -> int:
    """Delete the uncommitted files ``atomic_output`` leaves in ``directory`` when its writer is killed."""
    leftovers = glob(directory, TEMPORARY_GLOB)
    for path in leftovers:
        remove(path)
    return len(leftovers)


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
    elif fs.type_name not in OBJECT_STORES:
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


def display(location: Location) -> str:
    """How outputs name a location: URIs as given, local paths absolute."""
    return str(location) if is_remote(location) else str(local_path(location).absolute())
