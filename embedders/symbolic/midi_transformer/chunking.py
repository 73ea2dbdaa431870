"""Chunking token sequences to ``max_seq_len`` without losing tempo and time-signature context.

A file longer than ``max_seq_len`` becomes several chunks, each ``[BOS, context..., tokens..., EOS]``.
REMI writes a TimeSig_ token after every Bar but a Tempo_ token only where the tempo changes, so a
chunk cut from the middle of a piece would not know its tempo (nor, mid-bar, its metre). Walking
the ids in order, ``chunk_ids`` tracks the last Tempo_ and TimeSig_ base tokens seen (looked up per
id in ``tokenizer.context_table``, since a BPE id can contain several base tokens) and prefixes every
chunk after the first with ``TimeSig_x Tempo_y`` in force at its start, right after BOS. Cuts prefer
a bar line in the second half of the window, so chunks mostly hold whole bars.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from embedders.symbolic.midi_transformer import tokenizer as tk

MIN_SEQ_LEN = 8  # BOS + 2 context tokens + EOS + at least a few real tokens


def _in_force_before(values: np.ndarray) -> np.ndarray:
    """out[i] = last values[j] >= 0 with j < i, else -1 (forward fill, shifted by one)."""
    pos = np.where(values >= 0, np.arange(len(values)), -1)
    last = np.maximum.accumulate(pos) if len(pos) else pos
    before = np.concatenate([[-1], last[:-1]]) if len(last) else last
    return np.where(before >= 0, values[np.maximum(before, 0)], -1)


def chunk_ids(ids: np.ndarray, table: tk.ContextTable, special: tk.SpecialIds, max_seq_len: int) -> list[np.ndarray]:
    """Split one file's ids into ``[BOS, context, body, EOS]`` chunks of <= max_seq_len ids (int32)."""
    if max_seq_len < MIN_SEQ_LEN:
        raise ValueError(f"max_seq_len must be >= {MIN_SEQ_LEN}, got {max_seq_len}")
    ids = np.asarray(ids, dtype=np.int32)
    n = len(ids)
    if n == 0:
        return []
    tempo, ts = table.tempo[ids], table.time_sig[ids]
    tempo_before, ts_before = _in_force_before(tempo), _in_force_before(ts)
    bars = np.flatnonzero(table.bar_start[ids])
    chunks, start = [], 0
    while start < n:
        prefix = []
        if start > 0:
            if ts_before[start] >= 0 and ts[start] < 0:
                prefix.append(int(ts_before[start]))
            if tempo_before[start] >= 0 and tempo[start] < 0:
                prefix.append(int(tempo_before[start]))
        budget = max_seq_len - 2 - len(prefix)
        end = min(n, start + budget)
        if end < n:  # cut at the last bar line inside the window if it keeps at least half of it
            k = np.searchsorted(bars, end, side="right") - 1
            if k >= 0 and bars[k] > start + budget // 2:
                end = int(bars[k])
        body = ids[start:end]
        chunks.append(np.concatenate([[special.bos], prefix, body, [special.eos]]).astype(np.int32))
        start = end
    return chunks


def tokenize_to_chunks(tokenizer, source: Any, max_seq_len: int) -> list[np.ndarray]:
    """Pure per-file step: a MIDI path (or a ``symusic.Score``) -> its chunks. Raises ItemError subclasses."""
    ids = tk.tokenize_score(tokenizer, source) if not isinstance(source, (str, os.PathLike)) \
        else tk.tokenize_file(tokenizer, source)
    return chunk_ids(ids, tk.context_table(tokenizer), tk.special_ids(tokenizer), max_seq_len)
