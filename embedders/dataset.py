"""A paired dataset on disk: ``<data_root>/raw/<dataset>/info.csv`` plus the files it names.

info.csv needs ``id,audio_filename,midi_filename``; every other column is kept with its type.
Paths are relative to the dataset folder and must stay inside it. An empty path means the
recording lacks that medium (it is valid for the other one): ``has_medium``, ``row_media`` and
``absent_reason`` are what a job uses to route and record such rows. Validation collects every
problem before any work starts, naming the offending rows (1-based line numbers of the file).
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pandas as pd

from embedders.store import filesystem as fs

REQUIRED_COLUMNS = ("id", "audio_filename", "midi_filename")
PATH_COLUMNS = ("audio_filename", "midi_filename")
#: info.csv column holding each medium's file. An empty cell means the recording lacks that medium.
MEDIUM_PATH_COLUMN = {"audio_embeddings": "audio_filename", "symbolic_embeddings": "midi_filename",
                      "transcribed_embeddings": "audio_filename"}
ABSENT = ""  # the path of a medium a recording does not have, as read_info_csv returns it
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


def read_info_csv(root, id_column: str | None = None) -> pd.DataFrame:
    """Load and validate ``root/info.csv`` (root: a folder or a URI); raise InfoCsvError listing every problem.

    Returns one row per recording, in file order: ``id`` (str), ``audio_filename`` and
    ``midi_filename`` (str; ``ABSENT`` == "" when the recording lacks that medium: an empty cell,
    as the Groove MIDI Dataset has for performances without audio), and every other column with
    the type pandas infers. ``id_column`` names the column that identifies a recording when the
    file has no ``id`` column (MAESTRO's csv: ``id_column="midi_filename"``); its values become
    ``id`` and the column itself is kept.

    Refused, before any work (every problem of the file in one message, with line numbers): no
    rows, a missing column, an empty or duplicate id, a row with neither medium, a path that is
    absolute, contains ``..``, is a URI, or resolves outside the folder through a link.
    """
    root = root if fs.is_remote(root) else fs.local_path(root)
    path = fs.join(root, "info.csv")
    if not fs.is_file(path):
        raise InfoCsvError(f"{path} not found; a dataset folder needs an info.csv with columns {', '.join(REQUIRED_COLUMNS)}")
    source = io.BytesIO(fs.read_bytes(path)) if fs.is_remote(path) else path
    key = id_column or "id"
    try:
        info = pd.read_csv(source, dtype={c: "string" for c in (key, *PATH_COLUMNS)}, keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InfoCsvError(f"{path} cannot be parsed as CSV: {str(exc).splitlines()[0]}") from None
    missing = [c for c in (key, *PATH_COLUMNS) if c not in info.columns]
    if missing:
        hint = ("; name the column that identifies a recording with --id_column (MAESTRO: --id_column midi_filename)"
                if "id" in missing and id_column is None else "")
        raise InfoCsvError(f"{path} lacks required column(s) {missing}; it has {list(info.columns)}{hint}")
    if id_column not in (None, "id"):
        if "id" in info.columns:
            raise InfoCsvError(f"{path} has an 'id' column and id_column={id_column!r} was given; "
                               "use the 'id' column (drop --id_column) or rename it")
        info.insert(0, "id", info[id_column])
    problems: list[str] = []
    line = pd.Series(range(2, len(info) + 2), index=info.index)  # header is line 1
    for column in REQUIRED_COLUMNS:
        info[column] = info[column].str.strip().fillna(ABSENT)
    of_column = "" if id_column in (None, "id") else f" (column {id_column!r})"
    empty_id = info["id"] == ABSENT
    if empty_id.any():
        problems.append(f"empty id{of_column} on line(s) {_line_list(line[empty_id])}")
    neither = (info["audio_filename"] == ABSENT) & (info["midi_filename"] == ABSENT)
    if neither.any():
        problems.append(f"neither audio_filename nor midi_filename on line(s) {_line_list(line[neither])}: "
                        "a row needs at least one medium")
    dup = ~empty_id & info["id"].duplicated(keep=False)
    if dup.any():
        groups = info[dup].groupby("id").apply(lambda g: _line_list(line[g.index]), include_groups=False)
        listed = "; ".join(f"{i!r} on lines {ls}" for i, ls in list(groups.items())[:MAX_LISTED])
        problems.append(f"duplicate id(s){of_column}: {listed}")
    for column in PATH_COLUMNS:
        bad = []
        for idx, value in info[column].items():
            if value:
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


def path_column(medium: str) -> str:
    """The info.csv column holding ``medium``'s file (``audio_embeddings`` -> ``audio_filename``);
    a path column's own name is returned as is."""
    if medium in PATH_COLUMNS:
        return medium
    try:
        return MEDIUM_PATH_COLUMN[medium]
    except KeyError:
        raise ValueError(f"unknown medium {medium!r}; media are {sorted(MEDIUM_PATH_COLUMN)}") from None


def has_medium(info: pd.DataFrame, medium: str) -> pd.Series:
    """Boolean mask of the rows of a ``read_info_csv`` frame that have ``medium`` (a medium or a path column)."""
    return info[path_column(medium)] != ABSENT


def row_media(row) -> tuple[str, ...]:
    """The path columns a row (a mapping, e.g. ``info.iloc[k]``) names a file in: ``("audio_filename",
    "midi_filename")``, or one of them for a recording with a single medium."""
    return tuple(c for c in PATH_COLUMNS if isinstance(row[c], str) and row[c] != ABSENT)


def absent_reason(medium: str) -> str:
    """What to record for a row lacking ``medium``: one sentence naming the empty column."""
    column = path_column(medium)
    kind = "audio" if column == "audio_filename" else "MIDI"
    return f"empty {column} in info.csv: this recording has no {kind}"


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


def relative_to_cwd(path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)
