"""The consolidated ``embeddings.h5``: streamed from the Parquet parts into one file, written atomically.

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

``<medium>`` is ``audio_embeddings`` or ``symbolic_embeddings`` (the seed's names) or
``transcribed_embeddings`` (a symbolic embedder on each audio's transcription; the group's
description names the transcriber). Files in the original project's per-recording layout are read
too (``embedders.store.legacy``) and written by ``export_legacy`` (from a consolidated file or
straight from a store folder), the transcribed medium as a third ``/<medium>/rec_<k>`` group of
the same shape; rows are always paired by id.
Jobs read through ``embedders.store.reader``, which takes this file or the store folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from embedders.store import legacy, parts_reader
from embedders.store.atomic import atomic_path
from embedders.store.parts import MEDIA, StoreError, choose_embedder, iter_part_batches, part_description, stored_embedders

FORMAT = "audio-vs-symbolic/columnar"
FORMAT_VERSION = 1
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


def read_metadata_group(group, index: np.ndarray | None = None) -> pd.DataFrame:
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
def _write_embedder(group, store, medium: str, embedder: str, row_of: dict[str, int], n: int) -> dict:
    """Two streaming passes over the parts (sizes, then values into their final rows): memory holds
    a batch of rows (and the row groups it spans) plus O(N) ids and frame counts, never N rows of embeddings."""
    chosen: dict[str, int] = {}  # id -> n_frames, first occurrence wins (resume never duplicates)
    dim = None
    orphans = 0
    for part in iter_part_batches(store, medium, embedder, columns=("id", "n_frames", "dim"), batch_rows=65536):
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
    written = np.zeros(n, dtype=bool)
    for part in iter_part_batches(store, medium, embedder):
        seq_flat = part["sequence"].reshape(-1, dim)
        starts = np.concatenate([[0], np.cumsum(part["n_frames"], dtype=np.int64)])
        rows, avgs = [], part["average"].reshape(-1, dim)
        for j, item_id in enumerate(part["id"]):
            i = row_of.get(item_id)
            if i is None or written[i]:
                continue
            written[i] = True
            rows.append((i, j))
            sequence[offsets[i]:offsets[i + 1]] = seq_flat[starts[j]:starts[j + 1]]
        if rows:
            rows.sort()
            average[[i for i, _ in rows]] = avgs[[j for _, j in rows]]
    group.create_dataset("sequence_offsets", data=offsets)
    group.create_dataset("n_frames", data=n_frames)
    group.create_dataset("valid", data=valid)
    return {"n_valid": int(valid.sum()), "n_orphan_rows": orphans, "dim": dim}


def consolidate(store, info: pd.DataFrame, out_path, *, provenance: dict[str, Any]) -> dict:
    """Write ``out_path`` (a local file, columnar layout) from every (medium, embedder) of ``store``
    (a folder or a URI: parts are streamed from where they are), atomically."""
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
                for embedder in stored_embedders(store, medium):
                    group = med.create_group(embedder)
                    counts = _write_embedder(group, store, medium, embedder, row_of, len(ids))
                    description = part_description(store, medium, embedder)
                    group.attrs["description"] = json.dumps(description, default=str)
                    group.attrs["config_hash"] = str(description.get("config_hash", ""))
                    group.attrs["n_valid"] = counts["n_valid"]
                    summary[f"{medium}/{embedder}"] = counts
    return summary


# ---------------------------------------------------------------------------------------------
# Reading (embedders.store.reader builds EmbeddingSets from these)
# ---------------------------------------------------------------------------------------------
def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def h5_attrs(h5_path) -> dict[str, Any]:
    import h5py

    with h5py.File(h5_path, "r") as f:
        return {k: _text(v) for k, v in f.attrs.items()}


def h5_embedders(h5_path) -> dict[str, list[str]]:
    """{medium: [embedder names]} for every medium (empty where a file holds none; legacy files report 'legacy')."""
    import h5py

    with h5py.File(h5_path, "r") as f:
        if "ids" not in f:
            return {m: ["legacy"] if m in f else [] for m in MEDIA}
        return {m: sorted(f[m].keys()) if m in f else [] for m in MEDIA}


def read_h5(h5_path, medium: str, embedder: str | None, embedding_type: str) -> dict[str, Any]:
    """The valid rows of one medium of a columnar or legacy file, as EmbeddingSet keyword arguments."""
    import h5py

    with h5py.File(h5_path, "r") as f:
        if "ids" not in f:
            return legacy.read_legacy(f, medium, embedding_type, path=h5_path)
        name = choose_embedder(sorted(f[medium].keys()) if medium in f else [], medium, embedder, h5_path)
        group = f[medium][name]
        valid = group["valid"][...]
        index = np.flatnonzero(valid)
        ids = np.array([_text(v) for v in f["ids"][...][index]], dtype=object)
        if embedding_type == "average":
            embeddings = group["average"][...][index] if index.size else np.zeros((0, group["average"].shape[1]), np.float32)
        else:
            offsets = group["sequence_offsets"][...]
            frames = group["sequence"][...]
            embeddings = [frames[offsets[i]:offsets[i + 1]] for i in index]
        attrs = {k: _text(v) for k, v in f.attrs.items()}
        attrs.update({f"group.{k}": v for k, v in group.attrs.items()})
        return dict(ids=ids, embeddings=embeddings, metadata=read_metadata_group(f["metadata"], index),
                    medium=medium, embedder=name, embedding_type=embedding_type, attrs=attrs,
                    n_total=int(valid.shape[0]), n_invalid=int((~valid).sum()))


# ---------------------------------------------------------------------------------------------
# Legacy export
# ---------------------------------------------------------------------------------------------
def export_legacy(source, dst_h5, embedders: dict[str, str | None] | None = None) -> dict[str, int]:
    """Write ``dst_h5`` in the legacy layout, atomically, from a columnar file or a store folder.

    ``embedders`` maps medium -> embedder name; a medium holding one embedder needs no entry.
    Only rows valid in a medium are written there, numbered rec_0.. in info.csv order, as the original did.
    """
    import h5py

    from_folder = parts_reader.is_store_folder(source)
    present = parts_reader.list_store_embedders(source) if from_folder else h5_embedders(source)
    read = parts_reader.read_medium if from_folder else read_h5
    embedders = embedders or {}
    counts = {}
    str_dtype = h5py.string_dtype("utf-8")
    with atomic_path(Path(dst_h5)) as tmp:
        with h5py.File(tmp, "w") as out:
            out.attrs["layout"] = "legacy"
            for medium in MEDIA:
                if not present.get(medium):
                    continue
                seq = read(source, medium, embedders.get(medium), "sequence")
                avg = read(source, medium, seq["embedder"], "average")
                group = out.create_group(medium)
                group.attrs["embedder"] = seq["embedder"]
                metadata = seq["metadata"]
                for k, (sequence, average) in enumerate(zip(seq["embeddings"], avg["embeddings"])):
                    rec = group.create_group(f"rec_{k}")
                    rec.create_dataset("sequence", data=sequence)
                    rec.create_dataset("average", data=average)
                    for column, value in metadata.iloc[k].items():
                        text = "" if pd.isna(value) else str(value)
                        rec.create_dataset(column, data=text, dtype=str_dtype)
                    if "id" not in metadata.columns:
                        rec.create_dataset("id", data=str(seq["ids"][k]), dtype=str_dtype)
                counts[medium] = len(seq["ids"])
    return counts
