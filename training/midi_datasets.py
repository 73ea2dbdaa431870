"""Token datasets for the MIDI transformer (the seed's MIDIDatasetDynamic / MIDIDatasetPresaved), and splits.

An item is one CHUNK of one file. A file longer than ``max_seq_len`` becomes several chunks, each
``[BOS, context..., tokens..., EOS]`` with at most ``max_seq_len`` ids. Context preservation: REMI
writes a TimeSig_ token after every Bar but a Tempo_ token only where the tempo changes, so a chunk
cut from the middle of a piece would not know its tempo (nor, mid-bar, its metre). Walking the ids
in order, ``chunk_ids`` tracks the last Tempo_ and TimeSig_ base tokens seen (looked up per id in
``tokenizer.context_table``, since a BPE id can contain several base tokens) and prefixes every chunk
after the first with ``TimeSig_x Tempo_y`` in force at its start, right after BOS (REMI's order).
A prefix token is left out when the chunk's first id carries that kind itself. Cuts prefer a bar
line in the second half of the window, so chunks mostly hold whole bars.

Both datasets index the same items: ``chunks="all"`` (every chunk of every file) or ``"first"``
(the first chunk per file: the seed's truncation; cheap for quick validation and visualisation).
Items are dicts ``{"input_ids": LongTensor (L,), "file_index": int, "chunk_index": int}``;
``file_index`` indexes the ``files`` given to the constructor. ``collate`` pads them into a batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from embedders.base import ItemError
from embedders.dataset import resolve_item_path
from embedders.store.atomic import atomic_path
from embedders.symbolic.midi_transformer import tokenizer as tk
from embedders.symbolic.midi_transformer.chunking import tokenize_to_chunks

SPLITS = ("train", "validation", "test")
CHUNK_MODES = ("all", "first")
CACHE_FORMAT = 1


# ---------------------------------------------------------------------------------------------
# Presaved token cache: <cache_dir>/<tokenizer_hash>-L<max_seq_len>/shards/<key>.{npy,json}
# + index.json. The tokenizer hash in the folder name invalidates everything when it changes;
# a file's size and mtime invalidate its own entry. Shards are written npy first, json last, both
# atomically, so a reader that sees a shard's json sees the whole shard; shard keys are derived
# from the files, so concurrent builders of the same batch write identical content.
# ---------------------------------------------------------------------------------------------
def cache_root(cache_dir: str | os.PathLike[str], tokenizer, max_seq_len: int) -> Path:
    return Path(cache_dir) / f"{tk.tokenizer_hash(tokenizer)}-L{int(max_seq_len)}"


def _file_key(path: str | os.PathLike[str]) -> str:
    return os.path.abspath(os.fspath(path))


def _stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
        return int(st.st_size), int(st.st_mtime_ns)
    except OSError:
        return None


def _atomic_write(path: Path, write) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        write(fh)


def build_cache(tokenizer, files: Sequence[str | os.PathLike[str]], max_seq_len: int,
                cache_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Tokenize ``files`` into one shard of the cache (callable per batch from a Ray task).

    A file that fails (unreadable, no notes) is recorded with its error and yields no chunks.
    Returns a summary: shard key, files, chunks, errors.
    """
    root = cache_root(cache_dir, tokenizer, max_seq_len)
    (root / "shards").mkdir(parents=True, exist_ok=True)
    keys = sorted({_file_key(f) for f in files})
    stats = {k: _stat(k) for k in keys}
    shard = hashlib.sha256(json.dumps([[k, stats[k]] for k in keys]).encode()).hexdigest()[:20]
    entries, arrays, offset = {}, [], 0
    for key in keys:
        entry: dict[str, Any] = {"size": None, "mtime_ns": None, "chunks": [], "error": None}
        if stats[key] is not None:
            entry["size"], entry["mtime_ns"] = stats[key]
        try:
            for chunk in tokenize_to_chunks(tokenizer, key, max_seq_len):
                entry["chunks"].append([offset, len(chunk)])
                arrays.append(chunk)
                offset += len(chunk)
        except ItemError as exc:
            entry["error"] = f"{type(exc).__name__}: {exc.reason}"
        if not entry["chunks"] and entry["error"] is None:
            entry["error"] = "EmptyInputError: no tokens"
        entries[key] = entry
    data = np.concatenate(arrays).astype(np.int32) if arrays else np.zeros(0, dtype=np.int32)
    _atomic_write(root / "shards" / f"{shard}.npy", lambda fh: np.save(fh, data))
    meta = {"format": CACHE_FORMAT, "tokenizer_hash": tk.tokenizer_hash(tokenizer),
            "max_seq_len": int(max_seq_len), "files": entries}
    _atomic_write(root / "shards" / f"{shard}.json", lambda fh: fh.write(json.dumps(meta).encode()))
    if not (root / "tokenizer.json").exists():  # for people inspecting the cache
        _atomic_write(root / "tokenizer.json", lambda fh: fh.write(tk.tokenizer_params(tokenizer).encode()))
    return {"shard": shard, "files": len(keys), "chunks": len(arrays),
            "errors": {k: e["error"] for k, e in entries.items() if e["error"]}}


def load_index(root: Path) -> dict[str, Any]:
    """Merge index.json and every shard json not yet absorbed into it: {"files": {path: entry}, "shards": [...]}.

    ``index["absorbed"]`` counts the shards merged now (0: index.json was up to date).
    """
    index: dict[str, Any] = {"format": CACHE_FORMAT, "files": {}, "shards": []}
    if (root / "index.json").is_file():
        loaded = json.loads((root / "index.json").read_text())
        if loaded.get("format") == CACHE_FORMAT:
            index = loaded
    absorbed = set(index["shards"])
    for path in sorted((root / "shards").glob("*.json")) if (root / "shards").is_dir() else []:
        if path.stem in absorbed or not (path.with_suffix(".npy")).is_file():
            continue
        meta = json.loads(path.read_text())
        for key, entry in meta["files"].items():
            # a file re-tokenized after it changed is in two shards: the newer version wins
            old = index["files"].get(key)
            if old is None or (entry["mtime_ns"] or -1) >= (old["mtime_ns"] or -1):
                index["files"][key] = {**entry, "shard": path.stem}
        index["shards"].append(path.stem)
    index["absorbed"] = len(index["shards"]) - len(absorbed)
    return index


def _write_index(root: Path, index: dict[str, Any]) -> None:
    _atomic_write(root / "index.json", lambda fh: fh.write(json.dumps(index).encode()))


def _stale(index: dict[str, Any], keys: Sequence[str]) -> list[str]:
    def fresh(key: str) -> bool:
        entry = index["files"].get(key)
        return entry is not None and (entry["size"], entry["mtime_ns"]) == (_stat(key) or (None, None))

    return sorted({k for k in keys if not fresh(k)})


def stale_files(files: Sequence[str | os.PathLike[str]], tokenizer, max_seq_len: int,
                cache_dir: str | os.PathLike[str]) -> list[str]:
    """Absolute paths of ``files`` that the cache lacks or holds for an older version of the file."""
    return _stale(load_index(cache_root(cache_dir, tokenizer, max_seq_len)), [_file_key(f) for f in files])


def _items(n_chunks: Sequence[int], chunks: str) -> list[tuple[int, int]]:
    if chunks not in CHUNK_MODES:
        raise ValueError(f"chunks must be one of {CHUNK_MODES}, got {chunks!r}")
    return [(f, c) for f, n in enumerate(n_chunks) for c in range(n if chunks == "all" else min(n, 1))]


def _item(ids: np.ndarray, file_index: int, chunk_index: int) -> dict[str, Any]:
    return {"input_ids": torch.from_numpy(np.asarray(ids, dtype=np.int64)), "file_index": int(file_index),
            "chunk_index": int(chunk_index)}


class MIDIDatasetPresaved(Dataset):
    """Chunks read from the token cache under ``cache_dir``; files missing from it are tokenized once now.

    Files that cannot be tokenized are skipped (``self.errors``: path -> message) with one warning.
    Build the cache once (one process, or Ray tasks calling ``build_cache`` per batch) before
    DDP workers construct this; concurrent builders only duplicate work, never corrupt the cache.
    """

    def __init__(self, files: Sequence[str | os.PathLike[str]], tokenizer, max_seq_len: int,
                 cache_dir: str | os.PathLike[str], chunks: str = "all", shard_files: int = 256):
        self.files = [os.fspath(f) for f in files]
        self.max_seq_len = int(max_seq_len)
        self.root = cache_root(cache_dir, tokenizer, max_seq_len)
        index = load_index(self.root)
        keys = [_file_key(f) for f in self.files]
        stale = _stale(index, keys)
        for i in range(0, len(stale), shard_files):
            build_cache(tokenizer, stale[i:i + shard_files], max_seq_len, cache_dir)
        if stale:
            index = load_index(self.root)
        if index["absorbed"] or not (self.root / "index.json").is_file():
            _write_index(self.root, {k: v for k, v in index.items() if k != "absorbed"})
        self.entries = [index["files"][k] for k in keys]
        self.errors = {f: e["error"] for f, e in zip(self.files, self.entries) if e["error"]}
        if self.errors:
            warnings.warn(f"{len(self.errors)} of {len(self.files)} MIDI files yield no tokens and are skipped, "
                          f"e.g. {next(iter(self.errors.items()))}", stacklevel=2)
        self.items = _items([len(e["chunks"]) for e in self.entries], chunks)
        self._shards: dict[str, np.ndarray] = {}  # opened lazily, so each DataLoader worker maps its own

    def __len__(self) -> int:
        return len(self.items)

    def lengths(self) -> list[int]:
        """Token count of every item, from the cache index (no tokens are read)."""
        return [int(self.entries[f]["chunks"][c][1]) for f, c in self.items]

    def __getitem__(self, i: int) -> dict[str, Any]:
        f, c = self.items[i]
        entry = self.entries[f]
        if entry["shard"] not in self._shards:
            self._shards[entry["shard"]] = np.load(self.root / "shards" / f"{entry['shard']}.npy", mmap_mode="r")
        offset, length = entry["chunks"][c]
        return _item(self._shards[entry["shard"]][offset:offset + length], f, c)


class MIDIDatasetDynamic(Dataset):
    """Chunks tokenized on the fly in ``__getitem__``: no disk cache, little memory.

    ``chunks="all"`` needs the number of chunks per file, so construction tokenizes every file once
    (keeping only the counts; failing files are skipped as in the presaved dataset). ``"first"``
    does no work up front; a file that cannot be tokenized then raises its ItemError when read.
    """

    def __init__(self, files: Sequence[str | os.PathLike[str]], tokenizer, max_seq_len: int, chunks: str = "all"):
        self.files = [os.fspath(f) for f in files]
        self.tokenizer, self.max_seq_len = tokenizer, int(max_seq_len)
        self.errors: dict[str, str] = {}
        self._lengths: dict[tuple[int, int], int] = {}
        if chunks == "all":
            counts = []
            for f in self.files:
                try:
                    file_chunks = tokenize_to_chunks(tokenizer, f, self.max_seq_len)
                    self._lengths.update({(len(counts), c): len(x) for c, x in enumerate(file_chunks)})
                    counts.append(len(file_chunks))
                except ItemError as exc:
                    self.errors[f] = f"{type(exc).__name__}: {exc.reason}"
                    counts.append(0)
            if self.errors:
                warnings.warn(f"{len(self.errors)} of {len(self.files)} MIDI files yield no tokens and are "
                              f"skipped, e.g. {next(iter(self.errors.items()))}", stacklevel=2)
        else:
            counts = [1] * len(self.files)
        self.items = _items(counts, chunks)
        self._last: tuple[int, list[np.ndarray]] | None = None  # consecutive chunks of one file

    def __len__(self) -> int:
        return len(self.items)

    def lengths(self) -> list[int]:
        """Token count of every item (known from construction with chunks="all", else tokenized now)."""
        missing = sorted({f for f, c in self.items if (f, c) not in self._lengths})
        for f in missing:
            self._lengths.update({(f, c): len(x) for c, x in
                                  enumerate(tokenize_to_chunks(self.tokenizer, self.files[f], self.max_seq_len))})
        return [self._lengths[item] for item in self.items]

    def __getitem__(self, i: int) -> dict[str, Any]:
        f, c = self.items[i]
        if self._last is None or self._last[0] != f:
            self._last = (f, tokenize_to_chunks(self.tokenizer, self.files[f], self.max_seq_len))
        chunks = self._last[1]
        if not chunks:
            raise ItemError(self.files[f], "MIDI file yields no tokens")
        return _item(chunks[c], f, c)


def collate(batch: Sequence[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest item: input_ids (B, L) long, attention_mask (B, L) bool (True = real)."""
    lengths = [len(b["input_ids"]) for b in batch]
    ids = torch.full((len(batch), max(lengths)), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(batch), max(lengths)), dtype=torch.bool)
    for r, (b, n) in enumerate(zip(batch, lengths)):
        ids[r, :n] = b["input_ids"]
        mask[r, :n] = True
    return {"input_ids": ids, "attention_mask": mask,
            "file_index": torch.tensor([b["file_index"] for b in batch], dtype=torch.long),
            "chunk_index": torch.tensor([b.get("chunk_index", 0) for b in batch], dtype=torch.long)}


# ---------------------------------------------------------------------------------------------
# Splits from info.csv
# ---------------------------------------------------------------------------------------------
def _require(info: pd.DataFrame, column: str) -> None:
    if column not in info.columns:
        raise ValueError(f"info.csv has no '{column}' column; it has {list(info.columns)}")


def split_files(info: pd.DataFrame, root: str | os.PathLike[str], split: str) -> list[Path]:
    """MIDI paths of the rows whose ``split`` column equals ``split``, in info.csv order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    _require(info, "split")
    rows = info[info["split"].astype(str).str.strip() == split]
    return [resolve_item_path(Path(root), m) for m in rows["midi_filename"]]


def visualisation_set(info: pd.DataFrame, root: str | os.PathLike[str], n: int = 200,
                      stratify: str | None = None, splits: Sequence[str] = ("validation", "test"),
                      seed: int = 0) -> tuple[list[Path], pd.DataFrame]:
    """A deterministic subset (<= n) of held-out rows, taken round-robin over the ``stratify`` groups.

    Inside a group, rows are ordered by a hash of (seed, id), so the set does not depend on the row
    order of info.csv and a larger ``n`` extends a smaller one. Returns paths and their rows.
    """
    _require(info, "split")
    rows = info[info["split"].astype(str).str.strip().isin(list(splits))].copy()
    rows["_rank"] = [hashlib.sha256(f"{seed}:{i}".encode()).hexdigest() for i in rows["id"]]
    if stratify is not None:
        _require(info, stratify)
        rows["_group"] = rows[stratify].astype(str)
    else:
        rows["_group"] = ""
    rows = rows.sort_values(["_group", "_rank"])
    rows["_turn"] = rows.groupby("_group").cumcount()
    chosen = rows.sort_values(["_turn", "_group"]).head(int(n))
    chosen = chosen.drop(columns=["_rank", "_group", "_turn"]).reset_index(drop=True)
    return [resolve_item_path(Path(root), m) for m in chosen["midi_filename"]], chosen
