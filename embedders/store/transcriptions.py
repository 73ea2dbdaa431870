"""The transcriptions kept beside an embedding store, for the ``transcribed_embeddings`` medium.

Layout inside ``data/embeddings/<dataset>/`` (a folder or a URI)::

    transcriptions/<transcriber>/<safe id>.mid           one Standard MIDI File per recording
    parquet/transcriptions/<transcriber>/part-*.parquet  the index: what made each file, and its quality
    transcription_quality.parquet                        one row per info.csv row (``QUALITY_COLUMNS``)

A MIDI file is written atomically; its index row is committed (atomically, in a part of several
rows) only after the file, so a row in the index always names a complete file. A killed run leaves
at most files without an index row, and those are transcribed again. An index row records the
transcriber's config hash and the bpm the file was written at: a later run reuses the file only
when both match. Several rows for one id (the config or the bpm changed) are resolved by taking the
newest (``created``).

Ids may contain ``/`` (``drummer1/session1/1``): each ``/``-separated segment becomes one folder
level, percent-encoded (``safe_relative_path``) so that no id can leave the folder, name a hidden
or temporary file, or collide with another id.
"""

from __future__ import annotations

import fnmatch
import hashlib
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

from embedders.store import filesystem as fs
from embedders.store.parts import PART_GLOB, StoreError, _read_each, read_parquet, write_parquet

TRANSCRIBED = "transcribed_embeddings"
FOLDER = "transcriptions"
QUALITY_TABLE = "transcription_quality.parquet"
MAX_SEGMENT = 200  # bytes of one encoded path segment (file systems allow 255)
#: Columns of an index row (one per transcription written).
INDEX_SCHEMA = pa.schema([
    ("id", pa.string()), ("midi_file", pa.string()), ("config_hash", pa.string()), ("bpm", pa.float64()),
    ("audio_seconds", pa.float64()), ("n_notes", pa.int64()), ("has_reference", pa.bool_()),
    ("precision", pa.float64()), ("recall", pa.float64()), ("f1", pa.float64()), ("n_reference", pa.int64()),
    ("n_estimate", pa.int64()), ("reference_error", pa.string()), ("seconds", pa.float64()), ("created", pa.float64()),
])
#: Columns of transcription_quality.parquet. ``status``: ``transcribed`` (a file of the current
#: config exists), ``failed`` (this run could not transcribe it: ``error_type``, ``message``),
#: ``absent`` (no audio), ``missing`` (embedded earlier, but its transcription is gone). The scores
#: are ``note_onset_scores`` of the written file against the paired MIDI (0.0 where a side has no
#: notes, mir_eval's convention); ``scored`` marks the rows a summary averages: a readable
#: reference with at least one pitched note (a drum-only reference has none).
QUALITY_COLUMNS = ("id", "status", "transcriber", "config_hash", "midi_file", "bpm", "audio_seconds", "n_notes",
                   "has_reference", "precision", "recall", "f1", "n_reference", "n_estimate", "reference_error",
                   "scored", "error_type", "message")


def _safe_segment(segment: str) -> str:
    """One id segment as a file name: percent-encoded except letters, digits and ``-_.~``; a leading
    dot encoded (no hidden, ``.``/``..`` or temporary names); an empty segment becomes ``%2F`` (what
    ``/`` would encode to, which no segment contains). Injective: ``%`` itself is encoded."""
    if not segment:
        return "%2F"
    encoded = quote(segment, safe="-_.~")
    if encoded.startswith("."):
        encoded = "%2E" + encoded[1:]
    if len(encoded.encode()) > MAX_SEGMENT:
        # "%~" never appears in quote()'s output, so a shortened name cannot equal an unshortened one
        encoded = f"{encoded[:MAX_SEGMENT - 20]}%~{hashlib.sha1(segment.encode()).hexdigest()[:16]}"
    return encoded


def safe_relative_path(item_id: str) -> str:
    """``item_id`` as a ``/``-separated relative path that stays inside its folder (see module doc)."""
    return "/".join(_safe_segment(s) for s in str(item_id).split("/"))


def midi_relpath(transcriber: str, item_id: str) -> str:
    """Where the transcription of ``item_id`` lives, relative to the store folder."""
    return f"{FOLDER}/{transcriber}/{safe_relative_path(item_id)}.mid"


def transcriptions_dir(store, transcriber: str):
    return fs.join(store, FOLDER, transcriber)


def index_dir(store, transcriber: str):
    return fs.join(store, "parquet", FOLDER, transcriber)


def quality_path(store):
    return fs.join(store, QUALITY_TABLE)


def medium_config_hash(embedder_hash: str, transcriber_hash: str) -> str:
    """The config hash of a transcribed medium's rows: the embedder's and the transcriber's together,
    so rows made from other transcriptions are never mixed with these (``prepare_medium`` refuses them)."""
    return hashlib.sha256(f"{embedder_hash}+{transcriber_hash}".encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Writing (the transcription workers)
# ---------------------------------------------------------------------------------------------
def write_midi(store, transcriber: str, item_id: str, data: bytes) -> str:
    """Write one transcription atomically; return its path relative to the store."""
    relative = midi_relpath(transcriber, item_id)
    fs.write_bytes(fs.join(store, relative), data)
    return relative


def commit_index(store, transcriber: str, rows: list[dict]) -> None:
    """Commit index rows (``INDEX_SCHEMA`` keys; ``created`` is filled in) as one new part. Call it
    only after the rows' MIDI files are written."""
    if not rows:
        return
    now = time.time()
    columns = {f.name: [r.get(f.name, now if f.name == "created" else None) for r in rows] for f in INDEX_SCHEMA}
    table = pa.table({name: pa.array(values, INDEX_SCHEMA.field(name).type) for name, values in columns.items()})
    write_parquet(table, fs.join(index_dir(store, transcriber), f"part-{uuid.uuid4().hex}.parquet"))


# ---------------------------------------------------------------------------------------------
# Reading and resume (the driver)
# ---------------------------------------------------------------------------------------------
def read_index(store, transcriber: str, config_hash: str | None = None) -> pd.DataFrame:
    """The newest index row per id (of ``config_hash`` only, when given), in no particular order."""
    parts = fs.glob(index_dir(store, transcriber), PART_GLOB)
    tables = list(_read_each(parts, [f.name for f in INDEX_SCHEMA]))
    if not tables:
        return INDEX_SCHEMA.empty_table().to_pandas()
    frame = pa.concat_tables(tables).to_pandas()
    if config_hash is not None:
        frame = frame[frame["config_hash"] == config_hash]
    return frame.sort_values("created", kind="stable").drop_duplicates("id", keep="last").reset_index(drop=True)


def clear_index(store, transcriber: str) -> int:
    """Remove every index part of ``transcriber`` (``--overwrite``): its files are then transcribed again."""
    parts = fs.glob(index_dir(store, transcriber), PART_GLOB)
    for part in parts:
        fs.remove(part)
    return len(parts)


def remove_temporary_files(store, transcriber: str) -> int:
    """Delete the uncommitted temporaries a killed run left among the MIDI files (any depth) and index parts."""
    removed = fs.remove_temporary_files(index_dir(store, transcriber))
    filesystem, path = fs.resolve(transcriptions_dir(store, transcriber))
    infos = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=True))
    for info in infos:
        if info.type == pafs.FileType.File and fnmatch.fnmatchcase(info.base_name, fs.TEMPORARY_GLOB):
            filesystem.delete_file(info.path)
            removed += 1
    return removed


def existing_files(store, relatives: Iterable[str]) -> set[str]:
    """The relative paths among ``relatives`` that name a file in the store (remote: several checks in flight)."""
    relatives = list(relatives)
    if not fs.is_remote(store):
        return {r for r in relatives if fs.local_path(fs.join(store, r)).is_file()}
    with ThreadPoolExecutor(max_workers=16) as pool:
        found = pool.map(lambda r: fs.is_file(fs.join(store, r)), relatives)
    return {r for r, ok in zip(relatives, found) if ok}


def same_bpm(a, b) -> bool:
    """Whether two recorded bpm values (NaN: none given) write the same tempo."""
    a, b = float(a), float(b)
    return (np.isnan(a) and np.isnan(b)) or a == b


# ---------------------------------------------------------------------------------------------
# The quality table
# ---------------------------------------------------------------------------------------------
def write_quality_table(store, rows: list[dict]) -> None:
    """Write transcription_quality.parquet (``QUALITY_COLUMNS``, one row per info.csv row) atomically."""
    frame = pd.DataFrame(rows, columns=list(QUALITY_COLUMNS))
    for column in ("bpm", "audio_seconds", "precision", "recall", "f1"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    for column in ("n_notes", "n_reference", "n_estimate"):
        frame[column] = pd.array(frame[column], dtype="Int64")
    for column in ("has_reference", "scored"):
        frame[column] = frame[column].astype("boolean")
    for column in ("id", "status", "transcriber", "config_hash", "midi_file", "reference_error", "error_type", "message"):
        frame[column] = frame[column].astype("string")
    write_parquet(pa.Table.from_pandas(frame, preserve_index=False), quality_path(store))


def read_quality_table(store) -> pd.DataFrame:
    """transcription_quality.parquet of a store folder; StoreError when there is none."""
    path = quality_path(store)
    if not fs.is_file(path):
        raise StoreError(f"{store} has no {QUALITY_TABLE}; run python -m ray_jobs.generate_embeddings "
                         f"--media {TRANSCRIBED} on it")
    return read_parquet(path).to_pandas()
