"""The Parquet side of the embedding store: ``data/embeddings/<dataset>/`` (a folder or a URI).

- ``parquet/<medium>/<embedder>/part-<hex>.parquet``: one row per recording: ``id``, ``average``
  (D,: the embedder's own global vector, ``Embedder.average``; the frame mean unless its authors
  define another), ``sequence`` (the (T, D) frames flattened), ``n_frames``, ``dim``,
  ``config_hash`` (of the process that embedded the row: the authoritative one); the embedder's
  description (JSON) in the schema metadata. Written by the embedding workers
  (``ShardWriter``), each part committed atomically (``commit_part``): a reader never sees half a
  part, and a killed job leaves at most uncommitted temporary files that ``prepare_medium`` removes.
- ``metadata.parquet``: the info.csv rows (every column, types kept) and the job's provenance, so
  the folder describes itself and downstream jobs can read it without embeddings.h5.
- ``errors.parquet``: one row per (id, medium, embedder) not embedded: stage, error type, reason.
- ``parquet/transcriptions/<transcriber>/``: the transcribed medium's index of its MIDI files
  (``embedders.store.transcriptions``; not a medium).

``prepare_medium`` is the one call before writing a medium: it applies ``--overwrite``, removes a
killed run's temporary files, checks the stored config hash and returns the ids already done,
reading each part file once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from embedders.store import filesystem as fs

#: Every medium a store may hold: the seed's two, and a symbolic embedder on each audio's transcription.
MEDIA = ("audio_embeddings", "symbolic_embeddings", "transcribed_embeddings")
#: The seed's pair: what pairing jobs compare unless told otherwise.
SEED_MEDIA = ("audio_embeddings", "symbolic_embeddings")
ERROR_COLUMNS = ("id", "medium", "embedder", "stage", "error_type", "message")
PART_GLOB = "part-*.parquet"
ROW_GROUP_BYTES = 64 * 2**20    # readers stream a part row group by row group
MAX_PART_BYTES = 256 * 2**20    # a writer commits a part once its frames reach this size
# Parquet options of a part: dictionaries and statistics help the id column only; on float
# columns they cost time and save nothing.
PART_OPTIONS = {"use_dictionary": ["id", "config_hash"], "write_statistics": ["id", "n_frames", "dim"]}
#: Tests only: "<k>:<marker file>" makes a process that has committed k parts write its next part,
#: touch the marker and wait there, uncommitted, until the test kills the job.
HOLD_BEFORE_COMMIT = "AVS_TEST_HOLD_BEFORE_COMMIT"


class StoreError(Exception):
    """The store is inconsistent with what was asked (e.g. written by another config)."""


def check_medium(medium: str) -> str:
    if medium not in MEDIA:
        raise ValueError(f"medium must be one of {MEDIA}, got {medium!r}")
    return medium


def choose_embedder(available: list[str], medium: str, embedder: str | None, where) -> str:
    """``embedder`` if stored, or the only one stored; StoreError naming what is there otherwise."""
    if not available:
        raise StoreError(f"{where} has no embeddings for {medium}")
    if embedder is None:
        if len(available) > 1:
            raise StoreError(f"{where} holds several {medium} embedders {available}; choose one with embedder=")
        return available[0]
    if embedder not in available:
        raise StoreError(f"{where} has no {medium} embedder '{embedder}'; it has {available}")
    return embedder


def parts_dir(store, medium: str, embedder: str) -> Path | str:
    """A Path for a local store, a URI string for a remote one (s3://, gs://: see embedders.store.filesystem)."""
    return fs.join(store, "parquet", check_medium(medium), embedder)


def part_files(store, medium: str, embedder: str) -> list[Path | str]:
    return fs.glob(parts_dir(store, medium, embedder), PART_GLOB)


def stored_embedders(store, medium: str) -> list[str]:
    root = fs.join(store, "parquet", check_medium(medium))
    return [name for name in fs.list_dirs(root) if fs.glob(fs.join(root, name), PART_GLOB)]


# ---------------------------------------------------------------------------------------------
# Parquet files at any location
# ---------------------------------------------------------------------------------------------
def write_parquet(table: pa.Table, location, **options) -> None:
    """Write ``table`` whole (``fs.atomic_output``); ``options`` go to ``pyarrow.parquet.write_table``."""
    with fs.atomic_output(location) as (filesystem, path):
        pq.write_table(table, path, filesystem=filesystem, **options)


def read_parquet(location, columns: Sequence[str] | None = None) -> pa.Table:
    filesystem, path = fs.resolve(location)
    return pq.read_table(path, columns=None if columns is None else list(columns), filesystem=filesystem)


def read_parquet_schema(location) -> pa.Schema:
    filesystem, path = fs.resolve(location)
    return pq.read_schema(path, filesystem=filesystem)


def iter_parquet_batches(location, columns: Sequence[str] | None = None, batch_rows: int = 64) -> Iterator[pa.RecordBatch]:
    """Record batches of at most ``batch_rows`` rows, read row group by row group (memory: the row
    groups a batch spans, never the whole file)."""
    filesystem, path = fs.resolve(location)
    with filesystem.open_input_file(path) as fh:
        yield from pq.ParquetFile(fh).iter_batches(batch_size=batch_rows, columns=None if columns is None else list(columns))


# ---------------------------------------------------------------------------------------------
# Writing parts
# ---------------------------------------------------------------------------------------------
_parts_committed_here = 0


def _hold_if_asked() -> None:
    spec = os.environ.get(HOLD_BEFORE_COMMIT)
    if not spec:
        return
    after, _, marker = spec.partition(":")
    if _parts_committed_here >= int(after):
        Path(marker).write_text(str(os.getpid()))
        while True:  # until the test kills this process: the part stays uncommitted
            time.sleep(1)


def commit_part(table: pa.Table, directory) -> Path | str:
    """Write ``table`` as a new part in ``directory``; it appears under its final name only when complete."""
    global _parts_committed_here
    path = fs.join(directory, f"part-{uuid.uuid4().hex}.parquet")
    row_bytes = max(1, table.nbytes // max(1, table.num_rows))
    with fs.atomic_output(path) as (filesystem, tmp):
        pq.write_table(table, tmp, filesystem=filesystem, row_group_size=max(1, ROW_GROUP_BYTES // row_bytes),
                       **PART_OPTIONS)
        _hold_if_asked()
    _parts_committed_here += 1
    return path


class ShardWriter:
    """Buffers embedded rows of one (medium, embedder) and commits them as Parquet parts.

    A part is committed when ``rows_per_part`` rows or ``max_part_bytes`` of frames are buffered,
    and by ``flush()``. Each embedding actor holds one per medium and flushes at the end of every
    call, so the rows it reports as done are committed.
    """

    def __init__(self, store, medium: str, embedder: str, config_hash: str, description: dict,
                 rows_per_part: int = 256, max_part_bytes: int = MAX_PART_BYTES):
        self.dir = parts_dir(store, medium, embedder)
        self.config_hash = config_hash
        self.metadata = {b"avs.description": json.dumps(description, default=str).encode()}
        self.rows_per_part = rows_per_part
        self.max_part_bytes = max_part_bytes
        self._ids: list[str] = []
        self._seqs: list[np.ndarray] = []
        self._avgs: list[np.ndarray] = []
        self._bytes = 0
        self.rows_written = 0
        self.parts_written = 0

    def add(self, item_id: str, sequence: np.ndarray, average: np.ndarray | None = None) -> None:
        """Buffer one row: ``sequence`` (T, D) and its ``average`` (D,): the embedder's own global
        vector (``Embedding.average``); None stores the mean over frames."""
        sequence = np.asarray(sequence, dtype=np.float32)
        if average is None:
            average = sequence.mean(axis=0, dtype=np.float64)
        average = np.asarray(average, dtype=np.float32)
        if sequence.ndim != 2 or average.shape != sequence.shape[1:]:
            raise StoreError(f"row {item_id!r} of {self.dir}: sequence {sequence.shape} and average {average.shape} "
                             "do not fit (expected (T, D) and (D,))")
        self._ids.append(str(item_id))
        self._seqs.append(sequence)
        self._avgs.append(average)
        self._bytes += sequence.nbytes
        if len(self._ids) >= self.rows_per_part or self._bytes >= self.max_part_bytes:
            self.flush()

    def flush(self) -> None:
        if not self._ids:
            return
        dims = {s.shape[1] for s in self._seqs}
        if len(dims) != 1:
            raise StoreError(f"rows of {self.dir} have different widths {sorted(dims)}")
        (dim,) = dims
        n_frames = np.array([s.shape[0] for s in self._seqs], dtype=np.int32)
        flat = np.concatenate([s.reshape(-1) for s in self._seqs])
        seq_offsets = np.concatenate([[0], np.cumsum(n_frames.astype(np.int64) * dim)])
        averages = np.stack(self._avgs)
        table = pa.table(
            {
                "id": pa.array(self._ids, pa.string()),
                "average": pa.FixedSizeListArray.from_arrays(pa.array(averages.reshape(-1)), dim),
                "sequence": pa.LargeListArray.from_arrays(pa.array(seq_offsets), pa.array(flat)),
                "n_frames": pa.array(n_frames),
                "dim": pa.array(np.full(len(self._ids), dim, dtype=np.int32)),
                "config_hash": pa.array([self.config_hash] * len(self._ids), pa.string()),
            }
        ).replace_schema_metadata(self.metadata)
        commit_part(table, self.dir)
        self.rows_written += len(self._ids)
        self.parts_written += 1
        self._ids, self._seqs, self._avgs, self._bytes = [], [], [], 0


# ---------------------------------------------------------------------------------------------
# Resume
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class MediumState:
    """What ``prepare_medium`` found for one (medium, embedder)."""

    done_ids: set[str]          # ids in committed parts of this config: a resumed run skips them
    parts: int                  # committed parts kept
    removed_parts: int          # parts removed by overwrite
    removed_temporary: int      # uncommitted files of a killed run, removed
    #: config hashes the kept rows carry: the requested one, or those the embedding processes
    #: resolved the same request to (another device or precision than the driver assumed)
    stored_hashes: set[str] = dataclasses.field(default_factory=set)


#: Key of a part's description naming the config hash the driver asked for; the rows carry the
#: hash of the process that embedded them (``config_hash``), which may differ (see prepare_medium).
REQUESTED_HASH_KEY = "requested_config_hash"


def _read_each(paths: Sequence, columns: Sequence[str]) -> Iterator[pa.Table]:
    """Each file's columns, several files in flight at once (remote stores answer slowly, not busily)."""
    if len(paths) <= 1:
        yield from (read_parquet(p, columns=columns) for p in paths)
        return
    with ThreadPoolExecutor(max_workers=8) as pool:
        yield from pool.map(lambda p: read_parquet(p, columns=columns), paths)


def _requested_hash(table: pa.Table) -> str | None:
    meta = (table.schema.metadata or {}).get(b"avs.description")
    return json.loads(meta).get(REQUESTED_HASH_KEY) if meta else None


def prepare_medium(store, medium: str, embedder: str, config_hash: str, *, overwrite: bool = False) -> MediumState:
    """Get one (medium, embedder) of ``store`` ready for writing; read each part file once.

    Removes the temporary files a killed run left; with ``overwrite`` removes every part, else
    returns the ids already committed. A part belongs to this config when its rows carry
    ``config_hash`` or its description says ``config_hash`` was requested (the embedding process
    resolved device or precision otherwise than the driver assumed, and wrote its own hash: the
    same request, so those rows are done; ``stored_hashes`` lists what the rows carry). Raises
    StoreError when parts of another config (another config or code version of the embedder)
    are stored, so two configs never mix.
    """
    directory = parts_dir(store, medium, embedder)
    removed_temporary = fs.remove_temporary_files(directory)
    parts = part_files(store, medium, embedder)
    if overwrite:
        for part in parts:
            fs.remove(part)
        return MediumState(set(), 0, len(parts), removed_temporary)
    done: set[str] = set()
    other: set[str] = set()
    stored: set[str] = set()
    for table in _read_each(parts, ("id", "config_hash")):
        hashes = set(table.column("config_hash").unique().to_pylist())
        if hashes - {config_hash} and _requested_hash(table) != config_hash:
            other.update(hashes - {config_hash})
        stored.update(hashes)
        done.update(table.column("id").to_pylist())
    if other:
        raise StoreError(
            f"{directory} holds embeddings made with another config or code version (config hash "
            f"{sorted(other)}, now {config_hash}); rerun with --overwrite to recompute them")
    return MediumState(done, len(parts), 0, removed_temporary, stored)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
def part_description(store, medium: str, embedder: str) -> dict:
    parts = part_files(store, medium, embedder)
    if not parts:
        return {}
    meta = read_parquet_schema(parts[-1]).metadata or {}
    return json.loads(meta.get(b"avs.description", b"{}"))


def iter_part_batches(store, medium: str, embedder: str,
                      columns: Sequence[str] = ("id", "n_frames", "dim", "average", "sequence"),
                      batch_rows: int = 64) -> Iterator[dict[str, np.ndarray]]:
    """Every stored row, as dicts of arrays of at most ``batch_rows`` rows: ids, n_frames, dim, and
    ``average`` / ``sequence`` flattened to float32 (reshape with ``dim``; a row's frames follow
    the previous rows' in ``sequence``). Memory: a batch and the row groups it spans."""
    for part in part_files(store, medium, embedder):
        for batch in iter_parquet_batches(part, columns=columns, batch_rows=batch_rows):
            out: dict[str, np.ndarray] = {}
            for name in columns:
                col = batch.column(name)
                if name in ("average", "sequence"):
                    out[name] = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
                else:
                    out[name] = col.to_numpy(zero_copy_only=False)
            yield out


# ---------------------------------------------------------------------------------------------
# metadata.parquet
# ---------------------------------------------------------------------------------------------
def metadata_path(store) -> Path | str:
    return fs.join(store, "metadata.parquet")


def write_metadata(store, info: pd.DataFrame, provenance: dict) -> None:
    """Record the info.csv rows (in order, types kept) and the job's provenance beside the parts."""
    table = pa.Table.from_pandas(info, preserve_index=False)
    table = table.replace_schema_metadata({b"avs.provenance": json.dumps(provenance, default=str).encode()})
    write_parquet(table, metadata_path(store))


def read_metadata(store) -> tuple[pd.DataFrame, dict]:
    """(info rows, provenance) of a store folder; StoreError when it has no metadata.parquet."""
    path = metadata_path(store)
    if not fs.is_file(path):
        raise StoreError(f"{store} has no metadata.parquet, so it is not an embedding store folder "
                         "(data/embeddings/<dataset>/) or was written before stores described themselves; "
                         "rerun python -m ray_jobs.generate_embeddings on it (it resumes) or give its embeddings.h5")
    table = read_parquet(path)
    provenance = json.loads((table.schema.metadata or {}).get(b"avs.provenance", b"{}"))
    info = table.replace_schema_metadata(None).to_pandas()
    info["id"] = info["id"].astype(str).astype(object)
    return info, provenance


# ---------------------------------------------------------------------------------------------
# errors.parquet
# ---------------------------------------------------------------------------------------------
def errors_path(store) -> Path | str:
    return fs.join(store, "errors.parquet")


def read_errors(store) -> list[dict]:
    path = errors_path(store)
    return read_parquet(path).to_pylist() if fs.exists(path) else []


def write_errors(store, new_errors: Iterable[dict], *, resolved: Iterable[tuple[str, str, str]] = (),
                 replaced_scopes: Iterable[tuple[str, str]] = ()) -> int:
    """Merge this run's errors into errors.parquet atomically.

    Rows of ``replaced_scopes`` (medium, embedder) are dropped first (``--overwrite`` recomputed
    them), as are the (id, medium, embedder) keys in ``resolved`` (they succeeded this time), then
    the new errors replace any older row with the same key. Returns the rows now in the table.
    """
    scopes = set(replaced_scopes)
    drop = set(resolved)
    rows: dict[tuple[str, str, str], dict] = {}
    for row in read_errors(store):
        key = (row["id"], row["medium"], row["embedder"])
        if (row["medium"], row["embedder"]) not in scopes and key not in drop:
            rows[key] = row
    for row in new_errors:
        rows[(row["id"], row["medium"], row["embedder"])] = {c: str(row[c]) for c in ERROR_COLUMNS}
    table = pa.table({c: pa.array([r[c] for r in rows.values()], pa.string()) for c in ERROR_COLUMNS})
    write_parquet(table, errors_path(store))
    return table.num_rows
