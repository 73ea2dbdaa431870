"""Exact k-nearest-neighbour search, chunked over queries so memory is O(chunk * N_gallery).

Used by mutual-kNN alignment, kNN classification and retrieval. Similarities are computed in
float32 by default: 2x faster matrix products and half the memory, and float32 cosine
similarities (relative error ~1e-7) only reorder neighbours that are tied to that precision.
Pass ``precision="float64"`` for bit-stable rankings.

Metrics (larger score = nearer):
  * ``"cosine"``:    s(q, g) = <q, g> / (|q| |g|)          (rows with zero norm score 0)
  * ``"euclidean"``: s(q, g) = 2 <q, g> - |g|^2, which for a fixed query orders the gallery
                     exactly as -|q - g|^2 = s(q, g) - |q|^2 does.
"""

from __future__ import annotations

import numpy as np

from analysis._checks import as_matrix, check_choice, check_int
from analysis.topk import top_k_rows

METRICS = ("cosine", "euclidean")
# Cap on the float32 similarity block (chunk x gallery) in elements: 2**26 * 4 bytes = 256 MB.
_BLOCK_ELEMENTS = 2**26


def _dtype(precision: str) -> type:
    return {"float32": np.float32, "float64": np.float64}[check_choice("precision", precision, ("float32", "float64"))]


def normalize_rows(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; zero rows stay zero (their cosine with anything is 0)."""
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


def prepare_gallery(G: np.ndarray, metric: str, precision: str = "float32") -> tuple[np.ndarray, np.ndarray | None]:
    """Gallery in the form ``score_block`` needs: unit rows (cosine) or rows plus |g|^2 (euclidean)."""
    dt = _dtype(precision)
    if metric == "cosine":
        return normalize_rows(G).astype(dt, copy=False), None
    G = G.astype(dt, copy=False)
    return G, np.einsum("ij,ij->i", G, G)


def prepare_queries(Q: np.ndarray, metric: str, precision: str = "float32") -> np.ndarray:
    """Queries in score form: unit rows for cosine; ``2 q`` for euclidean (see module docstring)."""
    dt = _dtype(precision)
    if metric == "cosine":
        return normalize_rows(Q).astype(dt, copy=False)
    return (2.0 * Q).astype(dt, copy=False)


def score_block(Qp: np.ndarray, Gp: np.ndarray, g_sq: np.ndarray | None, out: np.ndarray | None = None) -> np.ndarray:
    """Scores of prepared queries against the prepared gallery (larger = nearer).

    ``out``: a C-contiguous buffer of at least (len(Qp), len(Gp)) elements of the scores' dtype to
    write into (reusing one buffer across chunks saves the kernel mapping fresh pages of a
    256 MB block every chunk: ~15% of the time of a 50,000-row search went to page faults).
    """
    if out is not None:
        out = out.ravel()[: Qp.shape[0] * Gp.shape[0]].reshape(Qp.shape[0], Gp.shape[0])
    S = np.matmul(Qp, Gp.T, out=out)
    if g_sq is not None:
        S -= g_sq[None, :]
    return S


def chunk_rows(n_gallery: int) -> int:
    """Queries per chunk so that one similarity block stays under ~256 MB (float32)."""
    return max(1, _BLOCK_ELEMENTS // max(1, n_gallery))


def knn_indices(
    gallery: np.ndarray,
    k: int,
    *,
    queries: np.ndarray | None = None,
    metric: str = "cosine",
    precision: str = "float32",
    chunk_size: int | None = None,
) -> np.ndarray:
    """Indices of the k nearest gallery rows for each query, nearest first.

    With ``queries=None`` the gallery queries itself and each row's own index is excluded
    (self-similarity is always maximal, so including it would count a trivial neighbour).
    Exact search: every query is scored against the whole gallery, ``chunk_size`` queries at a
    time, so peak extra memory is ``chunk_size * n_gallery`` scores plus the (n_queries, k) output.

    Neighbours come nearest first, equally near ones by index ascending (``analysis.topk``:
    exact selection from each score block; with float32 scores "equally near" means equal to
    float32 precision).

    Returns int64 array of shape (n_queries, k).
    """
    metric = check_choice("metric", metric, METRICS)
    G = as_matrix("gallery", gallery, min_rows=1)
    self_query = queries is None
    Q = G if self_query else as_matrix("queries", queries, min_rows=1)
    if Q.shape[1] != G.shape[1]:
        raise ValueError(f"queries: expected {G.shape[1]} columns like gallery, got {Q.shape[1]}")
    n_g = G.shape[0]
    max_k = n_g - 1 if self_query else n_g
    k = check_int("k", k, minimum=1, maximum=max_k)
    chunk = chunk_rows(n_g) if chunk_size is None else check_int("chunk_size", chunk_size)

    Gp, g_sq = prepare_gallery(G, metric, precision)
    out = np.empty((Q.shape[0], k), dtype=np.int64)
    buffer = np.empty(min(chunk, Q.shape[0]) * n_g, dtype=Gp.dtype)  # reused by every chunk
    mask = np.empty(buffer.size, dtype=bool)
    for start in range(0, Q.shape[0], chunk):
        stop = min(start + chunk, Q.shape[0])
        S = score_block(prepare_queries(Q[start:stop], metric, precision), Gp, g_sq, out=buffer)
        if self_query:
            rows = np.arange(stop - start)
            S[rows, start + rows] = -np.inf
        out[start:stop] = top_k_rows(S, k, mask)
    return out
