"""Audio - symbolic differences of silhouette and label-RDM correlation, with a paired interval and p.

Both media are evaluated on the same recordings (the same subsample) and the same jackknife
groups, so the difference of the two statistics has leave-one-group-out replicates
d_(-g) = T_a,(-g) - T_b,(-g), from which ``analysis.jackknife`` gives a standard error; the
interval is d +/- t_{G-1} se and the p-value two-sided from t = d / se on G - 1 degrees of freedom.
Each replicate recomputes the statistic among the remaining recordings exactly:

* silhouette (Rousseeuw 1987, cosine distance after centring, as ``analysis.labels.silhouette``):
  per recording the distance sums to each class, split by jackknife group (an (m, G, C) array
  filled in one chunked O(m^2) pass over the distances), so a replicate subtracts group g's sums;
* label-RDM correlation: ``analysis.pairwise.RdmPair.stat_weights`` with 0/1 weights (ranks of
  the full subsample kept, as in that function).
"""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

from analysis import jackknife as jk
from analysis.labels import label_rdm
from analysis.neighbors import normalize_rows
from analysis.pairwise import RdmPair, rdm_condensed

_CHUNK_ELEMENTS = 2**24


def silhouette_with_replicates(X: np.ndarray, y: np.ndarray, blocks: np.ndarray, n_blocks: int) -> tuple[float, np.ndarray]:
    """Cosine silhouette of centred X (m rows) and its G leave-one-group-out replicates.

    Matches ``sklearn.metrics.silhouette_score(Xc, y, metric="cosine")``: a_i = mean distance to
    the other members of i's class, b_i = smallest mean distance to another class,
    s_i = (b_i - a_i) / max(a_i, b_i), 0 for a class of one.
    """
    Xc = X - X.mean(0)
    Xn = normalize_rows(Xc)
    classes, codes = np.unique(y, return_inverse=True)
    m, c = Xc.shape[0], classes.size
    # distance sums per (group, class) cell: columns ordered by cell, then one reduceat per chunk (O(m^2))
    cell = blocks * c + codes
    order = np.argsort(cell, kind="stable")
    present, starts = np.unique(cell[order], return_index=True)
    by_block = np.zeros((m, n_blocks * c))
    chunk = max(1, _CHUNK_ELEMENTS // m)
    Xo = Xn[order]
    column_of = np.argsort(order)  # where each row sits among the reordered columns
    for start in range(0, m, chunk):
        D = np.clip(1.0 - Xn[start:start + chunk] @ Xo.T, 0.0, 2.0)
        D[np.arange(D.shape[0]), column_of[start:start + D.shape[0]]] = 0.0
        by_block[start:start + chunk, present] = np.add.reduceat(D, starts, axis=1)
    by_block = by_block.reshape(m, n_blocks, c)
    counts_by_block = np.bincount(blocks * c + codes, minlength=n_blocks * c).reshape(n_blocks, c)
    total_sums, total_counts = by_block.sum(axis=1), counts_by_block.sum(axis=0)
    value = _silhouette(total_sums, total_counts, codes, np.ones(m, bool))
    reps = np.array([_silhouette(total_sums - by_block[:, g], total_counts - counts_by_block[g], codes, blocks != g)
                     for g in range(n_blocks)])
    return value, reps


def _silhouette(sums: np.ndarray, counts: np.ndarray, codes: np.ndarray, rows: np.ndarray) -> float:
    sums, codes = sums[rows], codes[rows]
    own = counts[codes]
    with np.errstate(divide="ignore", invalid="ignore"):
        a = sums[np.arange(codes.size), codes] / (own - 1)
        mean_to = sums / np.where(counts > 0, counts, np.nan)[None, :]
        mean_to[np.arange(codes.size), codes] = np.inf
        b = np.nanmin(np.where(np.isnan(mean_to), np.inf, mean_to), axis=1)
        s = (b - a) / np.maximum(a, b)
    s = np.where(np.isfinite(s) & (own > 1), s, 0.0)
    return float(s.mean())


def label_rdm_with_replicates(X: np.ndarray, y: np.ndarray, numeric: bool, blocks: np.ndarray, n_blocks: int,
                              metric: str = "cosine") -> tuple[float, np.ndarray]:
    """Spearman correlation of the RDM of centred X with the label RDM, and its G replicates."""
    pair = RdmPair(rdm_condensed(X - X.mean(0), metric), label_rdm(y, numeric))
    return pair.stat(), pair.stat_weights(jk.leave_out_weights(blocks, n_blocks))


def paired_difference(value_a: float, reps_a: np.ndarray, value_b: float, reps_b: np.ndarray, n_blocks: int,
                      level: float = 0.95) -> dict:
    """a - b with jackknife se, t interval and two-sided t p-value (from replicates on shared groups)."""
    d = float(value_a - value_b)
    se = jk.standard_error(np.asarray(reps_a) - np.asarray(reps_b))
    lo, hi = jk.t_interval(d, se, n_blocks, level)
    if not np.isfinite(se):
        p = float("nan")
    elif se == 0:
        p = 1.0 if d == 0 else float("nan")
    else:
        p = float(2.0 * sps.t.sf(abs(d) / se, n_blocks - 1))
    return {"difference": d, "se": se, "ci_lo": lo, "ci_hi": hi, "p_value": p, "n_blocks": int(n_blocks),
            "level": float(level), "method": f"paired delete-a-group jackknife ({n_blocks} groups), t interval and p"}
