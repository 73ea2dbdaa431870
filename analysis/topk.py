"""Exact top-k of every row of a score block: a sampled threshold, then a sort of the few candidates.

``top_k_rows(S, k)`` returns, for every row of a (rows, n) score block, the columns of its k
largest scores, ordered by score descending and, among equal scores, by column ascending (the
order of a stable sort of -S; ``tests/test_analysis_topk.py`` checks it against that sort and
against scikit-learn). It is exact for any data, ties included; only its speed depends on the data:

1. a lower bound on each row's k-th largest score: with m = max(SAMPLE_COLUMNS, 16 k), the
   k-th largest among about m evenly spaced columns (a subset cannot have a larger k-th value
   than the whole row), or the exact k-th largest (``np.partition``) for blocks of <= 4 m columns;
2. candidates: the entries >= that bound (one vectorised comparison over the block), which hold
   every top-k entry and, for data without massive ties, about k n / m per row;
3. a stable sort of each row's candidates (kept in column order, so ties stay by column).

Rows with more than max(64 k, 8 k n / m) candidates (many exact ties: duplicated or constant
rows) are sorted whole instead, which is slower but exact. Against
``np.argpartition`` of the whole block (what ``analysis.neighbors`` did before) this is ~1.5x
faster at n = 50,000 (110 vs 165 ms for a 1342 x 50,000 float32 block whose product took 740 ms)
and gives a defined order among ties.

Why blocked BLAS top-k rather than an index library (FAISS, hnswlib, annoy, pynndescent): the
statistics need *exact* neighbour lists (mutual kNN and its jackknife replicates rebuild lists
from the first K of each; an approximate index returns a few wrong neighbours per row, which
moves mutual kNN by about the recall error, and the permutation null and jackknife would then
describe the index rather than the data); graph indexes are approximate by design, and an exact
flat index (FAISS IndexFlat) runs the same matrix products, so it would add a dependency without
changing the cost, which here is the O(n^2 D) product at BLAS speed. The cost grows as n^2, which
is fine up to a few 10^5 rows per call; beyond that see docs/scale.md.
"""

from __future__ import annotations

import numpy as np

SAMPLE_COLUMNS = 2048


def _sorted_rows(S: np.ndarray, k: int) -> np.ndarray:
    """Columns of the k largest entries per row, by a full stable sort (the reference rule)."""
    return np.argsort(-S, axis=1, kind="stable")[:, :k]


def _bound(S: np.ndarray, k: int) -> np.ndarray:
    """Per row, a value <= its k-th largest entry: exact for narrow blocks, from a column sample otherwise."""
    n = S.shape[1]
    m = max(SAMPLE_COLUMNS, 16 * k)
    if n <= 4 * m:
        return np.partition(S, n - k, axis=1)[:, n - k]
    sample = S[:, :: n // m]
    return np.partition(sample, sample.shape[1] - k, axis=1)[:, sample.shape[1] - k]


def _compact(values: np.ndarray, cols: np.ndarray | None, flat: np.ndarray, counts: np.ndarray,
             pad_col: int) -> tuple[np.ndarray, np.ndarray]:
    """Entries at row-major positions ``flat`` of ``values`` (rows, w), packed to the front of their rows in order.

    ``counts``: entries per row. Columns come from ``cols`` (or the position itself when None);
    padding is -inf with column ``pad_col``, so it sorts after every real entry.
    """
    w = values.shape[1]
    row_of = flat // w
    pos = np.arange(flat.size) - (np.cumsum(counts) - counts)[row_of]
    v = np.full((values.shape[0], int(counts.max())), -np.inf, dtype=values.dtype)
    c = np.full(v.shape, pad_col, dtype=np.int64)
    v[row_of, pos] = values.ravel()[flat]
    c[row_of, pos] = flat - row_of * w if cols is None else cols.ravel()[flat]
    return v, c


def top_k_rows(S: np.ndarray, k: int, mask_buffer: np.ndarray | None = None) -> np.ndarray:
    """(rows, k) int64 columns of the k largest entries of each row of S (rows, n), largest first.

    Ties are ordered by column ascending. S must hold no NaN (a NaN would compare False
    everywhere); entries set to -inf (e.g. a query's own column) are chosen last.
    ``mask_buffer``: a bool array of at least S.size elements to reuse for the candidate mask
    (callers looping over blocks save mapping fresh pages each time).
    """
    rows, n = S.shape
    if not 1 <= k <= n:
        raise ValueError(f"k: expected 1 <= k <= {n} (columns of the score block), got {k}")
    if rows == 0:
        return np.empty((0, k), dtype=np.int64)
    cap = max(64 * k, (8 * k * n) // max(SAMPLE_COLUMNS, 16 * k))
    mask = None if mask_buffer is None else mask_buffer.ravel()[: S.size].reshape(S.shape)
    mask = np.greater_equal(S, _bound(S, k)[:, None], out=mask)
    if np.count_nonzero(mask) > rows * cap // 4:  # many exact ties somewhere: find those rows first
        heavy = np.count_nonzero(mask, axis=1) > cap
        if np.any(heavy):  # duplicated or constant rows: sort those rows whole
            out = np.empty((rows, k), dtype=np.int64)
            out[heavy] = _sorted_rows(S[heavy], k)
            light = ~heavy
            out[light] = top_k_rows(S[light], k) if np.any(light) else out[light]
            return out
    flat = np.flatnonzero(mask)  # row-major: each row's candidates in column order
    values, cols = _compact(S, None, flat, np.bincount(flat // n, minlength=rows), n)
    if values.shape[1] > k:
        # the exact k-th largest candidate is the row's k-th largest: keep what reaches it (ties included)
        top = values >= np.partition(values, values.shape[1] - k, axis=1)[:, values.shape[1] - k][:, None]
        flat = np.flatnonzero(top)
        values, cols = _compact(values, cols, flat, np.bincount(flat // top.shape[1], minlength=rows), n)
    order = np.argsort(-values, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(cols, order, axis=1)
