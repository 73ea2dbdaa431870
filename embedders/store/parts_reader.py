"""A store folder read as embedding sets, straight from its Parquet parts (no embeddings.h5 needed).

Rows come back in info.csv order (``metadata.parquet``), as from the consolidated file; a row
stored twice (a part committed just before a kill, then redone) counts once, first part wins.
Averages are read without touching the sequences (Parquet reads only the columns asked for);
sequences are read a few rows at a time, and ``iter_sequences`` streams them without holding more
than one such batch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np

from embedders.store import filesystem as fs
from embedders.store.parts import (
    MEDIA,
    check_medium,
    choose_embedder,
    iter_part_batches,
    part_description,
    read_metadata,
    stored_embedders,
)

FORMAT = "audio-vs-symbolic/parquet-store"


def is_store_folder(location) -> bool:
    """True for a folder (or a URI prefix holding objects), False for a file or nothing."""
    return fs.exists(location) and not fs.is_file(location)


def list_store_embedders(store) -> dict[str, list[str]]:
    """{medium: [embedder names with committed parts]} for every medium."""
    return {medium: stored_embedders(store, medium) for medium in MEDIA}


def store_attrs(store, provenance: dict | None = None) -> dict[str, Any]:
    """The folder's self-description, keyed like the consolidated file's root attributes."""
    if provenance is None:
        provenance = read_metadata(store)[1]
    attrs: dict[str, Any] = {"format": FORMAT}
    for key, value in provenance.items():
        attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value, default=str)
    return attrs


def _first_occurrences(ids: np.ndarray, row_of: dict[str, int], seen: np.ndarray) -> tuple[list[int], list[int]]:
    """(info rows, batch rows) of the ids in this batch that are in info.csv and not seen before; marks them seen."""
    rows, picks = [], []
    for j, item_id in enumerate(ids):
        i = row_of.get(item_id)
        if i is None or seen[i]:
            continue
        seen[i] = True
        rows.append(i)
        picks.append(j)
    return rows, picks


def iter_sequences(store, medium: str, embedder: str | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """(id, (T, D) frames) of every stored row of info.csv, each once, in storage order."""
    info, _ = read_metadata(store)
    row_of = {item_id: i for i, item_id in enumerate(info["id"])}
    name = choose_embedder(stored_embedders(store, check_medium(medium)), medium, embedder, store)
    seen = np.zeros(len(info), dtype=bool)
    for batch in iter_part_batches(store, medium, name, columns=("id", "n_frames", "dim", "sequence")):
        starts = np.concatenate([[0], np.cumsum(batch["n_frames"].astype(np.int64) * batch["dim"])])
        for _, j in zip(*_first_occurrences(batch["id"], row_of, seen)):
            frames = batch["sequence"][starts[j]:starts[j + 1]].reshape(-1, int(batch["dim"][j]))
            yield str(batch["id"][j]), frames.copy()  # a copy frees the batch's buffer


def read_medium(store, medium: str, embedder: str | None, embedding_type: str) -> dict[str, Any]:
    """The valid rows of one medium as EmbeddingSet keyword arguments (see embedders.store.reader)."""
    info, provenance = read_metadata(store)
    name = choose_embedder(stored_embedders(store, check_medium(medium)), medium, embedder, store)
    n = len(info)
    row_of = {item_id: i for i, item_id in enumerate(info["id"])}
    valid = np.zeros(n, dtype=bool)
    dim = None
    if embedding_type == "average":
        averages = None
        for batch in iter_part_batches(store, medium, name, columns=("id", "dim", "average")):
            rows, picks = _first_occurrences(batch["id"], row_of, valid)
            if len(batch["dim"]):
                dim = int(batch["dim"][0])
            if averages is None and dim is not None:
                averages = np.full((n, dim), np.nan, dtype=np.float32)
            if rows:
                averages[rows] = batch["average"].reshape(-1, dim)[picks]
        index = np.flatnonzero(valid)
        embeddings: Any = averages[index] if averages is not None else np.zeros((0, 0), np.float32)
    else:
        by_row = {}
        for item_id, frames in iter_sequences(store, medium, name):
            i = row_of[item_id]
            valid[i] = True
            by_row[i] = frames
        index = np.flatnonzero(valid)
        embeddings = [by_row.pop(i) for i in index]
    description = part_description(store, medium, name)
    attrs = store_attrs(store, provenance)
    attrs.update({"group.description": json.dumps(description, default=str),
                  "group.config_hash": str(description.get("config_hash", "")), "group.n_valid": int(valid.sum())})
    return dict(
        ids=info["id"].to_numpy(dtype=object)[index], embeddings=embeddings,
        metadata=info.iloc[index].reset_index(drop=True), medium=medium, embedder=name,
        embedding_type=embedding_type, attrs=attrs, n_total=n, n_invalid=int(n - valid.sum()),
    )
