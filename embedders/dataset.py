"""A paired dataset on disk: ``<data_root>/raw/<dataset>/info.csv`` plus the files it names.

info.csv needs ``id,audio_filename,midi_filename``; every other column is kept with its type.
Paths are relative to the dataset folder and must stay inside it. An empty path means the recording
lacks that medium (e.g. MIDI-only rows of the Groove MIDI Dataset): it is returned as "" and the
other medium is still used; a row with neither path is refused. Validation collects every
problem before any work starts, naming the offending rows (1-based line numbers of the file).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pandas as pd

from embedders.store import filesystem as fs

REQUIRED_COLUMNS = ("id", "audio_filename", "midi_filename")
PATH_COLUMNS = ("audio_filename", "midi_filename")
MAX_LISTED = 10


class InfoCsvError(ValueError):
    """info.csv is unusable; the message lists every problem found."""


def dataset_dir(data_root, dataset: str) -> Path | str:
    """``<data_root>/raw/<dataset>``: a Path, or a URI string when data_root is remote (s3://, gs://)."""
    return fs.join(data_root, "raw", dataset)


def embeddings_dir(data_root, dataset: str) -> Path | str:
    return fs.join(data_root, "embeddings", dataset)


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _line_list(lines) -> str:
    lines = list(lines)
    shown = ", ".join(str(n) for n in lines[:MAX_LISTED])
    return shown + (f" and {len(lines) - MAX_LISTED} more" if len(lines) > MAX_LISTED else "")


def unsafe_path_reason(root: Path | str, relative: str) -> str | None:
    """Why ``relative`` may not be used under ``root`` (absolute, escapes with .., a URI, or via a link), else None.

    Remote roots (object stores) have no links, so the lexical checks are the whole check there.
    """
    reason = fs.unsafe_relative_reason(relative)
    if reason or fs.is_remote(root):
        return reason
    root = fs.local_path(root)
    resolved = (root / relative).resolve()
    if not resolved.is_relative_to(root.resolve()):
        return "resolves outside the dataset folder (symbolic link)"
    return None


def resolve_item_path(root: Path | str, relative: str) -> Path | str:
    reason = unsafe_path_reason(root, relative)
    if reason:
        raise InfoCsvError(f"path {relative!r} {reason}; paths in info.csv must stay inside {root}")
    return fs.join(root, relative)


def read_info_csv(root) -> pd.DataFrame:
    """Load and validate ``root/info.csv`` (root: a folder or a URI); raise InfoCsvError listing every problem."""
    root = root if fs.is_remote(root) else fs.local_path(root)
    path = fs.join(root, "info.csv")
    if not fs.is_file(path):
        raise InfoCsvError(f"{path} not found; a dataset folder needs an info.csv with columns {', '.join(REQUIRED_COLUMNS)}")
    source = io.BytesIO(fs.read_bytes(path)) if fs.is_remote(path) else path
    try:
        info = pd.read_csv(source, dtype={c: "string" for c in REQUIRED_COLUMNS}, keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InfoCsvError(f"{path} cannot be parsed as CSV: {str(exc).splitlines()[0]}") from None
    problems: list[str] = []
    missing = [c for c in REQUIRED_COLUMNS if c not in info.columns]
    if missing:
        raise InfoCsvError(f"{path} lacks required column(s) {missing}; it has {list(info.columns)}")
    line = pd.Series(range(2, len(info) + 2), index=info.index)  # header is line 1
    for column in REQUIRED_COLUMNS:
        info[column] = info[column].str.strip()
    empty_id = info["id"].isna() | (info["id"] == "")
    if empty_id.any():
        problems.append(f"empty id on line(s) {_line_list(line[empty_id])}")
    for column in PATH_COLUMNS:  # an empty path: the recording has no such medium
        info[column] = info[column].fillna("")
    neither = (info["audio_filename"] == "") & (info["midi_filename"] == "")
    if neither.any():
        problems.append(f"neither audio_filename nor midi_filename on line(s) {_line_list(line[neither])}")
    dup = info["id"].notna() & info["id"].duplicated(keep=False)
    if dup.any():
        groups = info[dup].groupby("id").apply(lambda g: _line_list(line[g.index]), include_groups=False)
        problems.append("duplicate id(s): " + "; ".join(f"{i!r} on lines {ls}" for i, ls in list(groups.items())[:MAX_LISTED]))
    for column in PATH_COLUMNS:
        bad = []
        for idx, value in info[column].items():
            if isinstance(value, str) and value:
                reason = unsafe_path_reason(root, value)
                if reason:
                    bad.append(f"line {line[idx]} (id {info.at[idx, 'id']!r}): {value!r} {reason}")
        if bad:
            problems.append(f"{column} must stay inside {root}: " + "; ".join(bad[:MAX_LISTED])
                            + (f"; and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""))
    if len(info) == 0:
        problems.append("no rows")
    if problems:
        raise InfoCsvError(f"{path} is invalid; nothing was processed:\n  - " + "\n  - ".join(problems))
    return info.astype({c: object for c in REQUIRED_COLUMNS}).reset_index(drop=True)


def info_hash(root) -> str:
    path = fs.join(root, "info.csv")
    return hashlib.sha256(fs.read_bytes(path)).hexdigest() if fs.is_remote(path) else file_sha256(path)


def package_versions(names=("numpy", "pandas", "pyarrow", "h5py", "soundfile", "soxr", "symusic",
                            "torch", "ray", "miditok", "music21")) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out
