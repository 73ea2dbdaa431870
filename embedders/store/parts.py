"""The embedding store of one dataset: ``data/embeddings/<dataset>/``.

- ``parquet/<medium>/<embedder>/part-*.parquet``: one row per recording (id, average, flattened
  sequence, n_frames, dim, config_hash). The job's streaming output and its resume state; every
  part file is written atomically, so a killed job leaves only whole parts behind.
- ``errors.parquet``: one row per failed (id, medium, embedder) with the stage and a one-line reason.
- ``embeddings.h5``: the consolidated file (see ``embedders.store.h5``) that every later job reads.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute.equal below needs the submodule loaded)

from embedders.store import filesystem as fs

MEDIA = ("audio_embeddings", "symbolic_embeddings")
ERROR_COLUMNS = ("id", "medium", "embedder", "stage", "error_type", "message")
PART_GLOB = "part-*.parquet"


class StoreError(Exception):
    """The store on disk is inconsistent with what was asked (e.g. written by another config)."""


def check_medium(medium: str) -> str:
    if medium not in MEDIA:
        raise ValueError(f"medium must be one of {MEDIA}, got {medium!r}")
    return medium


def shard_dir(emb_dir: str | os.PathLike, medium: str, embedder: str) -> Path | str:
    """A Path for a local store, a URI string for a remote one (s3://, gs://: see embedders.store.filesystem)."""
    return fs.join(emb_dir, "parquet", check_medium(medium), embedder)


def atomic_write_table(table: pa.Table, path: Path | str) -> None:
    """Write a Parquet file whole: locally under a temporary name then renamed over ``path``; to an
    object store as one upload (an object appears only when complete, so resume sees whole parts)."""
    fs.write_parquet(table, path)


# ---------------------------------------------------------------------------------------------
# Shards
# ---------------------------------------------------------------------------------------------
class ShardWriter:
    """Buffers embedded rows of one (medium, embedder) and writes them as atomic Parquet parts."""

    def __init__(self, emb_dir, medium: str, embedder: str, config_hash: str, description: dict,
                 rows_per_part: int = 256):
        self.dir = shard_dir(emb_dir, medium, embedder)
        self.config_hash = config_hash
        self.metadata = {b"avs.description": json.dumps(description, default=str).encode()}
        self.rows_per_part = rows_per_part
        self._ids: list[str] = []
        self._seqs: list[np.ndarray] = []
        self.rows_written = 0
        self.parts_written = 0

    def add(self, item_id: str, sequence: np.ndarray) -> None:
        self._ids.append(str(item_id))
        self._seqs.append(np.asarray(sequence, dtype=np.float32))
        if len(self._ids) >= self.rows_per_part:
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
        averages = np.stack([s.mean(axis=0) for s in self._seqs]).astype(np.float32)
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
        atomic_write_table(table, fs.join(self.dir, f"part-{uuid.uuid4().hex}.parquet"))
        self.rows_written += len(self._ids)
        self.parts_written += 1
        self._ids, self._seqs = [], []


def part_files(emb_dir, medium: str, embedder: str) -> list[Path | str]:
    return fs.glob(shard_dir(emb_dir, medium, embedder), PART_GLOB)


def stored_embedders(emb_dir, medium: str) -> list[str]:
    root = fs.join(emb_dir, "parquet", check_medium(medium))
    return [name for name in fs.list_dirs(root) if fs.glob(fs.join(root, name), PART_GLOB)]


def shard_hashes(emb_dir, medium: str, embedder: str) -> set[str]:
    hashes: set[str] = set()
    for part in part_files(emb_dir, medium, embedder):
        hashes.update(fs.read_parquet(part, columns=["config_hash"]).column(0).unique().to_pylist())
    return hashes


def check_shard_config(emb_dir, medium: str, embedder: str, config_hash: str) -> None:
    """Refuse to mix rows from two configs of one embedder in one folder."""
    other = shard_hashes(emb_dir, medium, embedder) - {config_hash}
    if other:
        raise StoreError(
            f"{shard_dir(emb_dir, medium, embedder)} holds embeddings made with another config or code "
            f"version (config hash {sorted(other)}, now {config_hash}); rerun with --overwrite to recompute them"
        )


def completed_ids(emb_dir, medium: str, embedder: str, config_hash: str) -> set[str]:
    """Ids already embedded by this exact config: what a resumed run skips."""
    done: set[str] = set()
    for part in part_files(emb_dir, medium, embedder):
        table = fs.read_parquet(part, columns=["id", "config_hash"])
        mask = pa.compute.equal(table.column("config_hash"), config_hash)
        done.update(table.column("id").filter(mask).to_pylist())
    return done


def remove_shards(emb_dir, medium: str, embedder: str) -> int:
    parts = part_files(emb_dir, medium, embedder)
    for part in parts:
        fs.remove(part)
    return len(parts)


def shard_description(emb_dir, medium: str, embedder: str) -> dict:
    parts = part_files(emb_dir, medium, embedder)
    if not parts:
        return {}
    meta = fs.read_parquet_schema(parts[-1]).metadata or {}
    return json.loads(meta.get(b"avs.description", b"{}"))


def iter_shard_rows(emb_dir, medium: str, embedder: str,
                    columns: Sequence[str] = ("id", "n_frames", "dim", "average", "sequence"),
                    ) -> Iterator[dict[str, np.ndarray]]:
    """Yield one dict of arrays per part file: ids, n_frames, and averages (n, D) / flat sequences."""
    for part in part_files(emb_dir, medium, embedder):
        table = fs.read_parquet(part, columns=columns)
        out: dict[str, np.ndarray] = {}
        for name in columns:
            col = table.column(name).combine_chunks()
            if name in ("average", "sequence"):
                out[name] = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
            else:
                out[name] = col.to_numpy(zero_copy_only=False)
        yield out


# ---------------------------------------------------------------------------------------------
# Errors table
# ---------------------------------------------------------------------------------------------
def errors_path(emb_dir) -> Path | str:
    return fs.join(emb_dir, "errors.parquet")


def read_errors(emb_dir) -> list[dict]:
    path = errors_path(emb_dir)
    return fs.read_parquet(path).to_pylist() if fs.exists(path) else []


def write_errors(emb_dir, new_errors: Iterable[dict], *, resolved: Iterable[tuple[str, str, str]] = (),
                 replaced_scopes: Iterable[tuple[str, str]] = ()) -> int:
    """Merge this run's errors into errors.parquet atomically.

    Rows of ``replaced_scopes`` (medium, embedder) are dropped first (``--overwrite`` recomputed
    them), as are the (id, medium, embedder) keys in ``resolved`` (they succeeded this time), then
    the new errors replace any older row with the same key. Returns the rows now in the table.
    """
    scopes = set(replaced_scopes)
    drop = set(resolved)
    rows: dict[tuple[str, str, str], dict] = {}
    for row in read_errors(emb_dir):
        key = (row["id"], row["medium"], row["embedder"])
        if (row["medium"], row["embedder"]) not in scopes and key not in drop:
            rows[key] = row
    for row in new_errors:
        rows[(row["id"], row["medium"], row["embedder"])] = {c: str(row[c]) for c in ERROR_COLUMNS}
    table = pa.table({c: pa.array([r[c] for r in rows.values()], pa.string()) for c in ERROR_COLUMNS})
    atomic_write_table(table, errors_path(emb_dir))
    return table.num_rows
