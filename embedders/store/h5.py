"""The consolidated ``embeddings.h5``: written atomically from the Parquet shards, read by every job.

Columnar layout (one row per info.csv row, in info.csv order)::

    /ids                                   (N,) utf-8
    /metadata/<column>                     (N,) every info.csv column, numbers kept numeric
    /<medium>/<embedder>/average           (N, D) float32, NaN where not valid
    /<medium>/<embedder>/sequence          (sum T, D) float32 frames of all valid rows
    /<medium>/<embedder>/sequence_offsets  (N+1,) int64: row i is sequence[off[i]:off[i+1]]
    /<medium>/<embedder>/n_frames          (N,) int32, 0 where not valid
    /<medium>/<embedder>/valid             (N,) bool
    attrs: root (format, dataset, info.csv sha256, package versions, command), group (embedder
    description JSON: config, dim, sample rate, hop, source hash; config hash; counts)

``<medium>`` is ``audio_embeddings`` or ``symbolic_embeddings``. Files in the original project's
per-recording layout are read too (``embedders.store.legacy``); rows are always paired by id.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from embedders.store import legacy
from embedders.store.atomic import atomic_path
from embedders.store.parts import MEDIA, StoreError, check_medium, iter_shard_rows, shard_description, stored_embedders

FORMAT = "audio-vs-symbolic/columnar"
FORMAT_VERSION = 1
EMBEDDING_TYPES = ("average", "sequence")
_STR = None  # h5py string dtype, created lazily


def _str_dtype():
    import h5py

    global _STR
    if _STR is None:
        _STR = h5py.string_dtype("utf-8")
    return _STR


def write_metadata_column(group, name: str, values: pd.Series) -> None:
    """Numbers stay numbers (bpm is a float, n_parts an int); everything else is a utf-8 string."""
    if pd.api.types.is_bool_dtype(values):
        group.create_dataset(name, data=values.to_numpy(dtype=bool))
    elif pd.api.types.is_integer_dtype(values) and not values.isna().any():
        group.create_dataset(name, data=values.to_numpy(dtype=np.int64))
    elif pd.api.types.is_numeric_dtype(values):
        group.create_dataset(name, data=values.to_numpy(dtype=np.float64, na_value=np.nan))
    else:
        strings = ["" if pd.isna(v) else str(v) for v in values]
        group.create_dataset(name, data=np.array(strings, dtype=object), dtype=_str_dtype())


def read_metadata(group, index: np.ndarray | None = None) -> pd.DataFrame:
    columns = {}
    for name, ds in group.items():
        data = ds[...] if index is None else ds[...][index]
        if data.dtype == object or data.dtype.kind == "S":
            data = np.array([v.decode() if isinstance(v, bytes) else v for v in data], dtype=object)
        columns[name] = data
    return pd.DataFrame(columns)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def _write_embedder(group, emb_dir, medium: str, embedder: str, row_of: dict[str, int], n: int) -> dict:
    """Two streaming passes over the parts: sizes first, then values into their final rows."""
    chosen: dict[str, int] = {}  # id -> n_frames, first occurrence wins (resume never duplicates)
    dim = None
    orphans = 0
    for part in iter_shard_rows(emb_dir, medium, embedder, columns=("id", "n_frames", "dim")):
        for item_id, t, d in zip(part["id"], part["n_frames"], part["dim"]):
            if item_id not in row_of:
                orphans += 1
                continue
            if dim is not None and d != dim:
                raise StoreError(f"{medium}/{embedder}: row {item_id} has width {d}, others {dim}")
            dim = int(d)
            chosen.setdefault(item_id, int(t))
    if dim is None:
        return {"n_valid": 0, "n_orphan_rows": orphans}
    n_frames = np.zeros(n, dtype=np.int32)
    for item_id, t in chosen.items():
        n_frames[row_of[item_id]] = t
    offsets = np.concatenate([[0], np.cumsum(n_frames, dtype=np.int64)])
    valid = n_frames > 0
    average = group.create_dataset("average", shape=(n, dim), dtype=np.float32, fillvalue=np.nan)
    sequence = group.create_dataset(
        "sequence", shape=(int(offsets[-1]), dim), dtype=np.float32,
        chunks=(max(1, min(int(offsets[-1]), 4096)), dim) if offsets[-1] else None,
    )
    written: set[str] = set()
    for part in iter_shard_rows(emb_dir, medium, embedder):
        seq_flat = part["sequence"].reshape(-1, dim)
        starts = np.concatenate([[0], np.cumsum(part["n_frames"], dtype=np.int64)])
        rows, avgs = [], part["average"].reshape(-1, dim)
        for j, item_id in enumerate(part["id"]):
            if item_id not in row_of or item_id in written:
                continue
            written.add(item_id)
            i = row_of[item_id]
            rows.append((i, j))
            sequence[offsets[i]:offsets[i + 1]] = seq_flat[starts[j]:starts[j + 1]]
        if rows:
            rows.sort()
            average[[i for i, _ in rows]] = avgs[[j for _, j in rows]]
    group.create_dataset("sequence_offsets", data=offsets)
    group.create_dataset("n_frames", data=n_frames)
    group.create_dataset("valid", data=valid)
    return {"n_valid": int(valid.sum()), "n_orphan_rows": orphans, "dim": dim}


def consolidate(emb_dir, info: pd.DataFrame, out_path, *, provenance: dict[str, Any]) -> dict:
    """Write ``out_path`` (columnar layout) from every (medium, embedder) in the shards, atomically."""
    import h5py

    out_path = Path(out_path)
    ids = info["id"].astype(str).tolist()
    row_of = {item_id: i for i, item_id in enumerate(ids)}
    summary: dict[str, dict] = {}
    with atomic_path(out_path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            for key, value in provenance.items():
                f.attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value, default=str)
            f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=_str_dtype())
            meta = f.create_group("metadata")
            for column in info.columns:
                write_metadata_column(meta, column, info[column])
            for medium in MEDIA:
                med = f.create_group(medium)
                for embedder in stored_embedders(emb_dir, medium):
                    group = med.create_group(embedder)
                    counts = _write_embedder(group, emb_dir, medium, embedder, row_of, len(ids))
                    description = shard_description(emb_dir, medium, embedder)
                    group.attrs["description"] = json.dumps(description, default=str)
                    group.attrs["config_hash"] = str(description.get("config_hash", ""))
                    group.attrs["n_valid"] = counts["n_valid"]
                    summary[f"{medium}/{embedder}"] = counts
    return summary


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class EmbeddingSet:
    """Valid rows of one (medium, embedder), with their ids and metadata, in file order."""

    ids: np.ndarray                               # (N,) str
    embeddings: np.ndarray | list[np.ndarray]     # (N, D) for average; N arrays (T_i, D) for sequence
    metadata: pd.DataFrame                        # N rows, every info.csv column
    medium: str
    embedder: str
    embedding_type: str
    attrs: dict[str, Any]
    labels: np.ndarray | None = None              # (N,) when a label was asked for
    n_total: int = 0                              # rows in the file
    n_invalid: int = 0                            # rows not embedded in this medium (see errors.parquet)
    n_missing_label: int = 0                      # valid rows dropped because the label was empty

    @property
    def dim(self) -> int:
        first = self.embeddings if isinstance(self.embeddings, np.ndarray) else self.embeddings[0]
        return int(first.shape[-1])


def _choose_embedder(available: list[str], medium: str, embedder: str | None, path) -> str:
    if not available:
        raise StoreError(f"{path} has no embeddings for {medium}")
    if embedder is None:
        if len(available) > 1:
            raise StoreError(f"{path} holds several {medium} embedders {available}; choose one with embedder=")
        return available[0]
    if embedder not in available:
        raise StoreError(f"{path} has no {medium} embedder '{embedder}'; it has {available}")
    return embedder


def _attach_label(result: EmbeddingSet, label: str | None) -> EmbeddingSet:
    if label is None:
        return result
    if label not in result.metadata.columns:
        raise StoreError(f"no label column '{label}'; the metadata columns are {sorted(result.metadata.columns)}")
    values = result.metadata[label]
    missing = values.isna().to_numpy() | (values.astype(str).str.strip() == "").to_numpy()
    keep = ~missing
    if missing.any():
        result.ids = result.ids[keep]
        result.metadata = result.metadata[keep].reset_index(drop=True)
        result.embeddings = (result.embeddings[keep] if isinstance(result.embeddings, np.ndarray)
                             else [e for e, k in zip(result.embeddings, keep) if k])
    result.labels = result.metadata[label].to_numpy()
    result.n_missing_label = int(missing.sum())
    return result


def load(h5_path, medium: str, embedder: str | None = None, embedding_type: str = "average",
         label: str | None = None) -> EmbeddingSet:
    """Read the valid rows of one medium (columnar or legacy layout), optionally with a label.

    ``embedder`` may be omitted when the medium holds only one. Rows whose label is empty are
    dropped and counted in ``n_missing_label``.
    """
    import h5py

    check_medium(medium)
    if embedding_type not in EMBEDDING_TYPES:
        raise ValueError(f"embedding_type must be one of {EMBEDDING_TYPES}, got {embedding_type!r}")
    if not Path(h5_path).exists():
        raise FileNotFoundError(f"no embeddings file at {h5_path}; run python -m ray_jobs.generate_embeddings first")
    with h5py.File(h5_path, "r") as f:
        if "ids" not in f:
            result = legacy.read_legacy(f, medium, embedding_type, path=h5_path)
            return _attach_label(EmbeddingSet(**result), label)
        name = _choose_embedder(sorted(f[medium].keys()) if medium in f else [], medium, embedder, h5_path)
        group = f[medium][name]
        valid = group["valid"][...]
        index = np.flatnonzero(valid)
        ids = np.array([v.decode() if isinstance(v, bytes) else v for v in f["ids"][...][index]], dtype=object)
        if embedding_type == "average":
            embeddings = group["average"][...][index] if index.size else np.zeros((0, group["average"].shape[1]), np.float32)
        else:
            offsets = group["sequence_offsets"][...]
            frames = group["sequence"][...]
            embeddings = [frames[offsets[i]:offsets[i + 1]] for i in index]
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        attrs.update({f"group.{k}": v for k, v in group.attrs.items()})
        result = EmbeddingSet(
            ids=ids, embeddings=embeddings, metadata=read_metadata(f["metadata"], index),
            medium=medium, embedder=name, embedding_type=embedding_type, attrs=attrs,
            n_total=int(valid.shape[0]), n_invalid=int((~valid).sum()),
        )
    return _attach_label(result, label)


def list_embedders(h5_path) -> dict[str, list[str]]:
    """{medium: [embedder names]} present in a file (legacy files report 'legacy')."""
    import h5py

    with h5py.File(h5_path, "r") as f:
        if "ids" not in f:
            return {m: ["legacy"] for m in MEDIA if m in f}
        return {m: sorted(f[m].keys()) for m in MEDIA if m in f}


@dataclasses.dataclass
class PairedEmbeddings:
    """Rows valid in both media, aligned by id (never by position)."""

    ids: np.ndarray
    audio: np.ndarray | list[np.ndarray]
    symbolic: np.ndarray | list[np.ndarray]
    metadata: pd.DataFrame
    audio_embedder: str
    symbolic_embedder: str
    labels: np.ndarray | None
    counts: dict[str, int]     # valid per medium, paired, dropped per reason


def load_pair(h5_path, audio_embedder: str | None = None, symbolic_embedder: str | None = None,
              embedding_type: str = "average", label: str | None = None) -> PairedEmbeddings:
    audio = load(h5_path, "audio_embeddings", audio_embedder, embedding_type, label)
    symbolic = load(h5_path, "symbolic_embeddings", symbolic_embedder, embedding_type, label)
    sym_row = {item_id: j for j, item_id in enumerate(symbolic.ids)}
    pairs = [(i, sym_row[item_id]) for i, item_id in enumerate(audio.ids) if item_id in sym_row]
    ai = np.array([p[0] for p in pairs], dtype=np.int64)
    si = np.array([p[1] for p in pairs], dtype=np.int64)

    def take(emb, index):
        return emb[index] if isinstance(emb, np.ndarray) else [emb[k] for k in index]

    counts = {
        "rows_in_file": audio.n_total,
        "valid_audio": len(audio.ids) + audio.n_missing_label,
        "valid_symbolic": len(symbolic.ids) + symbolic.n_missing_label,
        "missing_label": max(audio.n_missing_label, symbolic.n_missing_label),
        "paired": len(pairs),
    }
    counts["dropped"] = counts["rows_in_file"] - counts["paired"]
    return PairedEmbeddings(
        ids=audio.ids[ai], audio=take(audio.embeddings, ai), symbolic=take(symbolic.embeddings, si),
        metadata=audio.metadata.iloc[ai].reset_index(drop=True),
        audio_embedder=audio.embedder, symbolic_embedder=symbolic.embedder,
        labels=None if audio.labels is None else audio.labels[ai], counts=counts,
    )


def export_legacy(src_h5, dst_h5, embedders: dict[str, str | None] | None = None) -> dict[str, int]:
    """Write ``dst_h5`` in the legacy layout from a columnar file, atomically.

    ``embedders`` maps medium -> embedder name; a medium holding one embedder needs no entry.
    Only rows valid in a medium are written there, numbered rec_0.. in file order, as the original did.
    """
    import h5py

    embedders = embedders or {}
    dst_h5 = Path(dst_h5)
    present = list_embedders(src_h5)
    counts = {}
    str_dtype = h5py.string_dtype("utf-8")
    with atomic_path(dst_h5) as tmp:
        with h5py.File(tmp, "w") as out:
            out.attrs["layout"] = "legacy"
            for medium in MEDIA:
                if not present.get(medium):
                    continue
                seq = load(src_h5, medium, embedders.get(medium), "sequence")
                avg = load(src_h5, medium, seq.embedder, "average")
                group = out.create_group(medium)
                group.attrs["embedder"] = seq.embedder
                for k, (sequence, average) in enumerate(zip(seq.embeddings, avg.embeddings)):
                    rec = group.create_group(f"rec_{k}")
                    rec.create_dataset("sequence", data=sequence)
                    rec.create_dataset("average", data=average)
                    for column, value in seq.metadata.iloc[k].items():
                        text = "" if pd.isna(value) else str(value)
                        rec.create_dataset(column, data=text, dtype=str_dtype)
                    if "id" not in seq.metadata.columns:
                        rec.create_dataset("id", data=str(seq.ids[k]), dtype=str_dtype)
                counts[medium] = len(seq.ids)
    return counts
