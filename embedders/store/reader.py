"""What every downstream job reads: the embeddings of one dataset, from either of the store's forms.

``location`` is the consolidated ``embeddings.h5`` (columnar or legacy layout; a local file: see
``local_input`` for URIs) or the store folder ``data/embeddings/<dataset>/`` itself (a folder or a
URI), read straight from its Parquet parts (``embedders.store.parts_reader``). Both give the same
rows in the same (info.csv) order; rows are always paired by id.

Media: ``audio_embeddings``, ``symbolic_embeddings`` (the seed's pair, ``load_pair``'s default) and
``transcribed_embeddings`` (a symbolic embedder on each audio's transcription); ``load_pair`` pairs
any two of them (``media=``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from embedders.store import filesystem as fs
from embedders.store import h5, parts_reader
from embedders.store.parts import SEED_MEDIA, StoreError, check_medium

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
    """Rows valid in both of two media, aligned by id (never by position).

    ``first`` / ``second`` are the embeddings of ``media[0]`` / ``media[1]`` (made by
    ``embedders[0]`` / ``embedders[1]``); ``get(medium)`` picks one by name. For the seed's pair
    (the default) ``audio``, ``symbolic``, ``audio_embedder`` and ``symbolic_embedder`` name them too.
    """

    ids: np.ndarray
    first: np.ndarray | list[np.ndarray]
    second: np.ndarray | list[np.ndarray]
    metadata: pd.DataFrame
    media: tuple[str, str]
    embedders: tuple[str, str]
    labels: np.ndarray | None
    counts: dict[str, int]     # rows_in_file, valid_<medium short name> per medium, missing_label, paired, dropped
    # each medium's embedder description (config, config_hash; the transcribed medium's names its transcriber)
    descriptions: tuple[dict, dict] = dataclasses.field(default_factory=lambda: ({}, {}))

    def get(self, medium: str) -> np.ndarray | list[np.ndarray]:
        if medium not in self.media:
            raise KeyError(f"this pair holds {self.media}, not {medium!r}")
        return self.first if medium == self.media[0] else self.second

    def _seed(self, k: int, what: str):
        if self.media != SEED_MEDIA:
            raise AttributeError(f"'{what}' names a medium of the seed's pair {SEED_MEDIA}; this pair holds "
                                 f"{self.media}: use .first/.second, .get(medium) or .embedders")
        return (self.first, self.second, *self.embedders)[k]

    audio = property(lambda self: self._seed(0, "audio"))
    symbolic = property(lambda self: self._seed(1, "symbolic"))
    audio_embedder = property(lambda self: self._seed(2, "audio_embedder"))
    symbolic_embedder = property(lambda self: self._seed(3, "symbolic_embedder"))


def short_name(medium: str) -> str:
    """``transcribed_embeddings`` -> ``transcribed`` (the key part of ``counts["valid_<short>"]``)."""
    return medium.removesuffix("_embeddings")


def _description(result: EmbeddingSet) -> dict:
    try:
        return json.loads(result.attrs.get("group.description") or "{}")
    except (TypeError, json.JSONDecodeError):
        return {}


def load_pair(location, audio_embedder: str | None = None, symbolic_embedder: str | None = None,
              embedding_type: str = "average", label: str | None = None, *,
              media: tuple[str, str] | list[str] = SEED_MEDIA,
              embedders: tuple[str | None, str | None] | list[str | None] | None = None) -> PairedEmbeddings:
    """The rows valid in both ``media`` (default: audio and symbolic), aligned by id, in info.csv order.

    ``embedders`` names the embedder of each medium, in ``media`` order (None: the only one
    stored). ``audio_embedder`` / ``symbolic_embedder`` are the seed pair's way of saying the same
    and apply to those media wherever they appear in ``media``; giving both forms for one medium
    raises ValueError, as do two equal media. Metadata and labels come from ``media[0]``. Raises
    what ``load`` raises (FileNotFoundError, StoreError, ValueError for an unknown medium).

    Example: the transcribed medium beside the symbolic one, same embedder (only the medium differs)::

        load_pair(path, media=("symbolic_embeddings", "transcribed_embeddings"), embedders=("clamp", "clamp"))
    """
    media = tuple(media)
    if len(media) != 2 or media[0] == media[1]:
        raise ValueError(f"media must be two different media, got {media!r}")
    for medium in media:
        check_medium(medium)
    named = {"audio_embeddings": audio_embedder, "symbolic_embeddings": symbolic_embedder}
    for medium, name in named.items():
        if name is not None and medium not in media:
            raise ValueError(f"{short_name(medium)}_embedder={name!r} given, but media are {media}")
    if embedders is None:
        embedders = tuple(named.get(m) for m in media)
    else:
        embedders = tuple(embedders)
        if len(embedders) != 2:
            raise ValueError(f"embedders must name one embedder (or None) per medium of {media}, got {embedders!r}")
        clash = [m for m, e in zip(media, embedders) if e is not None and named.get(m) is not None]
        if clash:
            raise ValueError(f"the embedder of {clash[0]} is given twice (embedders= and {short_name(clash[0])}_embedder=)")
        embedders = tuple(e if e is not None else named.get(m) for m, e in zip(media, embedders))
    one = load(location, media[0], embedders[0], embedding_type, label)
    two = load(location, media[1], embedders[1], embedding_type, label)
    row_two = {item_id: j for j, item_id in enumerate(two.ids)}
    pairs = [(i, row_two[item_id]) for i, item_id in enumerate(one.ids) if item_id in row_two]
    ai = np.array([p[0] for p in pairs], dtype=np.int64)
    bi = np.array([p[1] for p in pairs], dtype=np.int64)

    def take(emb, index):
        return emb[index] if isinstance(emb, np.ndarray) else [emb[k] for k in index]

    in_file = one.n_total
    if one.attrs.get("layout") == "legacy" and two.attrs.get("layout") == "legacy":
        in_file = len(set(one.attrs["medium_ids"]) | set(two.attrs["medium_ids"]))
    counts = {
        "rows_in_file": in_file,
        f"valid_{short_name(media[0])}": len(one.ids) + one.n_missing_label,
        f"valid_{short_name(media[1])}": len(two.ids) + two.n_missing_label,
        "missing_label": max(one.n_missing_label, two.n_missing_label),
        "paired": len(pairs),
    }
    counts["dropped"] = counts["rows_in_file"] - counts["paired"]
    return PairedEmbeddings(
        ids=one.ids[ai], first=take(one.embeddings, ai), second=take(two.embeddings, bi),
        metadata=one.metadata.iloc[ai].reset_index(drop=True), media=media, embedders=(one.embedder, two.embedder),
        labels=None if one.labels is None else one.labels[ai], counts=counts,
        descriptions=(_description(one), _description(two)),
    )
