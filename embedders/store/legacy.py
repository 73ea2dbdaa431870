"""The original project's per-recording HDF5 layout, read here (``embedders.store.h5.export_legacy`` writes it).

    /<medium>/rec_<k>/sequence   (T, D)
    /<medium>/rec_<k>/average    (D,)
    /<medium>/rec_<k>/<column>   every info.csv column, as a string (id included)

``rec_<k>`` was counted separately per medium over the recordings that succeeded there, so rec_5 of
one medium need not be rec_5 of the other: rows are always paired by their ``id`` field.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

_REC = re.compile(r"^rec_(\d+)$")


class LegacyFormatError(ValueError):
    """A file that claims the legacy layout but lacks what it needs."""


def _as_str(value) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return _as_str(value[()] if value.shape == () else value.tolist())
    return str(value)


def _typed(column: pd.Series) -> pd.Series:
    """Legacy metadata is all strings; give numeric columns (bpm, duration) their numbers back."""
    if column.name == "id":
        return column
    converted = pd.to_numeric(column.replace("", np.nan), errors="coerce")
    non_empty = column.astype(str).str.strip() != ""
    if non_empty.any() and converted[non_empty].notna().all():
        return converted
    return column


def read_legacy(f, medium: str, embedding_type: str, *, path) -> dict:
    """Rows of one medium of an open legacy file, as EmbeddingSet keyword arguments."""
    if medium not in f:
        raise LegacyFormatError(f"{path} has no group /{medium}")
    records = sorted(
        ((int(m.group(1)), name) for name in f[medium] if (m := _REC.match(name))), key=lambda r: r[0]
    )
    if not records:
        raise LegacyFormatError(f"{path}: /{medium} holds no rec_<k> groups; neither columnar nor legacy layout")
    ids, embeddings, rows = [], [], []
    for _, name in records:
        rec = f[medium][name]
        if "id" not in rec:
            raise LegacyFormatError(f"{path}: /{medium}/{name} has no 'id' field, so it cannot be paired")
        if embedding_type not in rec:
            raise LegacyFormatError(f"{path}: /{medium}/{name} has no '{embedding_type}' dataset")
        row = {key: _as_str(rec[key][()]) for key in rec if key not in ("sequence", "average")}
        ids.append(row["id"])
        data = np.asarray(rec[embedding_type][()], dtype=np.float32)
        embeddings.append(data if embedding_type == "sequence" and data.ndim == 2 else data.reshape(-1))
        rows.append(row)
    metadata = pd.DataFrame(rows)
    metadata = metadata.apply(_typed)
    if len(set(ids)) != len(ids):
        raise LegacyFormatError(f"{path}: /{medium} has duplicate ids, so rows cannot be paired")
    if embedding_type == "average":
        embeddings = np.stack(embeddings)
    return dict(
        ids=np.array(ids, dtype=object), embeddings=embeddings, metadata=metadata,
        medium=medium, embedder="legacy", embedding_type=embedding_type,
        # a legacy file has no table of all recordings: each medium lists its own, so pairing
        # counts the file's recordings as the union of the media's ids
        attrs={"layout": "legacy", "medium_ids": list(ids)}, n_total=len(ids), n_invalid=0,
    )
