"""What every downstream job reads: the embeddings of one dataset, from either of the store's forms.

``location`` is the consolidated ``embeddings.h5`` (columnar or legacy layout; a local file: see
``local_input`` for URIs) or the store folder ``data/embeddings/<dataset>/`` itself (a folder or a
URI), read straight from its Parquet parts (``embedders.store.parts_reader``). Both give the same
rows in the same (info.csv) order; rows are always paired by id.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from embedders.store import filesystem as fs
from embedders.store import h5, parts_reader
from embedders.store.parts import StoreError, check_medium

EMBEDDING_TYPES = ("average", "sequence")
MISSING = "no embeddings file or store folder at {}; run python -m ray_jobs.generate_embeddings first"


@dataclasses.dataclass
class EmbeddingSet:
    """Valid rows of one (medium, embedder), with their ids and metadata, in info.csv order."""

    ids: np.ndarray                               # (N,) str
    embeddings: np.ndarray | list[np.ndarray]     # (N, D) for average; N arrays (T_i, D) for sequence
    metadata: pd.DataFrame                        # N rows, every info.csv column
    medium: str
    embedder: str
    embedding_type: str
    attrs: dict[str, Any]
    labels: np.ndarray | None = None              # (N,) when a label was asked for
    n_total: int = 0                              # rows in info.csv
    n_invalid: int = 0                            # rows not embedded in this medium (see errors.parquet)
    n_missing_label: int = 0                      # valid rows dropped because the label was empty

    @property
    def dim(self) -> int:
        first = self.embeddings if isinstance(self.embeddings, np.ndarray) else self.embeddings[0]
        return int(first.shape[-1])


def is_store_folder(location) -> bool:
    return parts_reader.is_store_folder(location)


@contextmanager
def local_input(location) -> Iterator[Path | str]:
    """Something ``load`` can read: a store folder as it is (local or remote: parts are read where
    they are), a local .h5 file as it is, a remote .h5 file as a temporary local copy.
    FileNotFoundError when there is nothing at ``location``."""
    if not fs.exists(location):
        raise FileNotFoundError(MISSING.format(location))
    if is_store_folder(location):
        yield location
        return
    with fs.local_copy(location) as local:
        yield local


def _check(location) -> bool:
    """True for a store folder, False for a file; FileNotFoundError for nothing."""
    if is_store_folder(location):
        return True
    if not fs.is_file(location):
        raise FileNotFoundError(MISSING.format(location))
    return False


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


def load(location, medium: str, embedder: str | None = None, embedding_type: str = "average",
         label: str | None = None) -> EmbeddingSet:
    """Read the valid rows of one medium, optionally with a label.

    ``embedder`` may be omitted when the medium holds only one. Rows whose label is empty are
    dropped and counted in ``n_missing_label``. From a store folder, averages are read without
    the sequences. Raises FileNotFoundError, StoreError (unknown embedder, label, medium data).
    """
    check_medium(medium)
    if embedding_type not in EMBEDDING_TYPES:
        raise ValueError(f"embedding_type must be one of {EMBEDDING_TYPES}, got {embedding_type!r}")
    read = parts_reader.read_medium if _check(location) else h5.read_h5
    return _attach_label(EmbeddingSet(**read(location, medium, embedder, embedding_type)), label)


def list_embedders(location) -> dict[str, list[str]]:
    """{medium: [embedder names]} present (legacy files report 'legacy')."""
    return parts_reader.list_store_embedders(location) if _check(location) else h5.h5_embedders(location)


def describe(location) -> dict[str, Any]:
    """The root attributes (dataset, info.csv hash, package versions, command, ...)."""
    if _check(location):
        return parts_reader.store_attrs(location)
    return h5.h5_attrs(location)


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


def load_pair(location, audio_embedder: str | None = None, symbolic_embedder: str | None = None,
              embedding_type: str = "average", label: str | None = None) -> PairedEmbeddings:
    audio = load(location, "audio_embeddings", audio_embedder, embedding_type, label)
    symbolic = load(location, "symbolic_embeddings", symbolic_embedder, embedding_type, label)
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
