"""Cross-modal retrieval: fit a linear map on training recordings, retrieve on held-out ones.

Query i must find its own recording G[i] among all n gallery rows by cosine similarity. Ranks
are 1-based; a tie between the true item and t others is resolved by the expectation under
uniform random tie-breaking, so constant embeddings score exactly chance rather than perfectly:
with g rows scoring strictly higher and t tied, the rank is uniform on g+1 .. g+t+1, giving
P(rank <= k) = clip((k - g) / (t + 1), 0, 1), E[1/rank] = (H_{g+t+1} - H_g) / (t + 1) and the
mid-rank g + 1 + t/2 for the median. Chance levels for n candidates: recall@k = k/n,
median rank = (n+1)/2, MRR = H_n / n (H_n the n-th harmonic number).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import digamma

from analysis._checks import SeedLike, as_generator, as_index, as_matrix, check_choice, check_int, check_paired, check_real
from analysis.linear_maps import DEFAULT_ALPHAS, DEFAULT_CCA_REGS, CcaMap, LinearMap, fit_cca_map, fit_ridge_map
from analysis.neighbors import chunk_rows, normalize_rows

__all__ = ["CcaMap", "LinearMap", "fit_cca_map", "fit_ridge_map", "retrieval_metrics", "cross_modal_retrieval",
           "metrics_from_counts", "rank_counts", "project_for_retrieval", "fit_retrieval_maps", "RetrievalMaps",
           "random_split", "harmonic"]
DEFAULT_KS = (1, 5, 10)


def harmonic(n: np.ndarray | float) -> np.ndarray:
    """H_n = sum_{j<=n} 1/j = digamma(n + 1) + Euler's gamma (H_0 = 0)."""
    return digamma(np.asarray(n, dtype=np.float64) + 1.0) + np.euler_gamma


def rank_counts(S: np.ndarray, true_cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row r of scores S: (#cols scoring > S[r, true], #other cols scoring == S[r, true])."""
    rows = np.arange(S.shape[0])
    v = S[rows, true_cols][:, None]
    return (S > v).sum(1), (S == v).sum(1) - 1


def metrics_from_counts(greater: np.ndarray, ties: np.ndarray, n_candidates: int,
                        ks: Sequence[int] = DEFAULT_KS) -> dict:
    """Recall@k, median rank, MRR (expected under random tie-breaking) and their chance levels."""
    g = np.asarray(greater, dtype=np.float64)
    t = np.asarray(ties, dtype=np.float64)
    n = int(n_candidates)
    rank = g + 1.0 + t / 2.0
    rr = (harmonic(g + t + 1.0) - harmonic(g)) / (t + 1.0)
    out: dict = {}
    per_query: dict[str, np.ndarray] = {}
    for k in ks:
        per_query[f"recall@{k}"] = np.clip((k - g) / (t + 1.0), 0.0, 1.0)
        out[f"recall@{k}"] = float(per_query[f"recall@{k}"].mean())
        out[f"chance_recall@{k}"] = min(1.0, k / n)
    per_query["median_rank"], per_query["mrr"] = rank, rr
    out.update({"median_rank": float(np.median(rank)), "chance_median_rank": (n + 1) / 2.0,
                "mrr": float(rr.mean()), "chance_mrr": float(harmonic(n) / n), "n_candidates": n,
                "n_queries": int(g.size), "per_query": per_query})
    return out


def retrieval_metrics(Q: np.ndarray, G: np.ndarray, ks: Sequence[int] = DEFAULT_KS,
                      chunk_size: int | None = None) -> dict:
    """Q[i] should retrieve G[i] among all rows of G by cosine similarity.

    Exact; scores are computed ``chunk_size`` queries at a time (float32), so memory is
    O(chunk * n). Returns recall@k, median_rank (1-based), mrr, chance levels and ``per_query``
    (name -> per-query values whose mean, or median for the rank, is the metric; for bootstraps).
    """
    Q = as_matrix("Q", Q, min_rows=1)
    G = as_matrix("G", G, min_rows=1)
    check_paired(Q, G, ("Q", "G"))
    if Q.shape[1] != G.shape[1]:
        raise ValueError(f"Q, G: expected the same number of columns, got {Q.shape[1]} and {G.shape[1]}")
    ks = [check_int("ks", k, minimum=1) for k in ks]
    n = Q.shape[0]
    Gn = normalize_rows(G).astype(np.float32)
    chunk = chunk_rows(n) if chunk_size is None else check_int("chunk_size", chunk_size)
    greater = np.empty(n, dtype=np.int64)
    ties = np.empty(n, dtype=np.int64)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        S = normalize_rows(Q[start:stop]).astype(np.float32) @ Gn.T
        greater[start:stop], ties[start:stop] = rank_counts(S, np.arange(start, stop))
    return metrics_from_counts(greater, ties, n, ks)


class RetrievalMaps:
    """Maps fitted on training rows (``fit_retrieval_maps``); ``project`` applies them to any test rows."""

    def __init__(self, method: str, scaling: tuple | None, maps: tuple, fit: dict):
        self.method, self._scaling, self._maps, self.fit = method, scaling, maps, fit

    def project(self, X_test: np.ndarray, Y_test: np.ndarray) -> dict:
        """{"audio_to_symbolic": (queries, gallery), "symbolic_to_audio": (queries, gallery), "fit": {...}}."""
        if self._scaling is not None:
            (mx, sx), (my, sy) = self._scaling
            X_test, Y_test = (X_test - mx) / sx, (Y_test - my) / sy
        if self.method == "ridge":
            a2m, m2a, my_, mx_ = self._maps
            return {"audio_to_symbolic": (a2m.transform(X_test) - my_, Y_test - my_),
                    "symbolic_to_audio": (m2a.transform(Y_test) - mx_, X_test - mx_), "fit": self.fit}
        (cca,) = self._maps
        Px, Py = cca.transform_x(X_test), cca.transform_y(Y_test)
        return {"audio_to_symbolic": (Px, Py), "symbolic_to_audio": (Py, Px), "fit": self.fit}


def _train_scaling(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sd = Z.std(0)
    return Z.mean(0), np.where(sd > 0, sd, 1.0)


def fit_retrieval_maps(X_train: np.ndarray, Y_train: np.ndarray, method: str = "ridge",
                       alpha: float | Sequence[float] = DEFAULT_ALPHAS, n_components: int | None = None,
                       reg: float | Sequence[float] = DEFAULT_CCA_REGS, seed: SeedLike = 0,
                       standardize: bool = False) -> RetrievalMaps:
    """Fit the retrieval maps on training rows only (see ``project_for_retrieval`` for what they are).

    ``standardize=True``: each feature is z-scored with the training rows' mean and std first, and
    ``project`` applies the same scaling to test rows (no test row informs it).
    """
    check_choice("method", method, ("ridge", "cca"))
    Xtr, Ytr = np.asarray(X_train, dtype=np.float64), np.asarray(Y_train, dtype=np.float64)
    scaling = None
    if standardize:
        scaling = (_train_scaling(Xtr), _train_scaling(Ytr))
        Xtr, Ytr = (Xtr - scaling[0][0]) / scaling[0][1], (Ytr - scaling[1][0]) / scaling[1][1]
    if method == "ridge":
        a2m, m2a = fit_ridge_map(Xtr, Ytr, alpha), fit_ridge_map(Ytr, Xtr, alpha)
        return RetrievalMaps(method, scaling, (a2m, m2a, Ytr.mean(0), Xtr.mean(0)),
                             {"alpha_rel_audio_to_symbolic": a2m.alpha_rel,
                              "alpha_rel_symbolic_to_audio": m2a.alpha_rel})
    cca = fit_cca_map(Xtr, Ytr, n_components, reg, seed=seed)
    return RetrievalMaps(method, scaling, (cca,), {"n_components": int(cca.correlations.size), "reg_rel": cca.reg,
                                                   "train_canonical_correlations": cca.correlations})


def project_for_retrieval(X_audio: np.ndarray, Y_midi: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray,
                          method: str = "ridge", alpha: float | Sequence[float] = DEFAULT_ALPHAS,
                          n_components: int | None = None, reg: float | Sequence[float] = DEFAULT_CCA_REGS,
                          seed: SeedLike = 0, standardize: bool = False) -> dict:
    """Fit on train rows; return (queries, gallery) per direction on test rows, centred for cosine.

    ridge: audio->MIDI queries are X_test mapped into MIDI space, the gallery is Y_test (both
    minus the training MIDI mean); a separate ridge map serves MIDI->audio. cca: both spaces are
    projected once into the shared canonical space, used in both directions.
    ``standardize=True`` z-scores each feature with the training rows' mean and std first
    (as ``analysis.pooling.zscore_fitted``), so no test row informs the scaling.
    """
    maps = fit_retrieval_maps(X_audio[train_idx], Y_midi[train_idx], method, alpha, n_components, reg, seed,
                              standardize)
    return maps.project(X_audio[test_idx], Y_midi[test_idx])


def random_split(n: int, test_fraction: float, seed: SeedLike) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) indices of a uniform random split of n rows."""
    check_real("test_fraction", test_fraction, 0.0, 1.0, low_open=True, high_open=True)
    perm = as_generator(seed).permutation(n)
    n_test = min(n - 2, max(2, int(round(test_fraction * n))))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def cross_modal_retrieval(X_audio: np.ndarray, Y_midi: np.ndarray, train_idx: np.ndarray | None = None,
                          test_idx: np.ndarray | None = None, method: str = "ridge", seed: SeedLike = 0, *,
                          alpha: float | Sequence[float] = DEFAULT_ALPHAS, n_components: int | None = None,
                          reg: float | Sequence[float] = DEFAULT_CCA_REGS, ks: Sequence[int] = DEFAULT_KS,
                          test_fraction: float = 0.5, standardize: bool = False) -> dict:
    """Audio->MIDI and MIDI->audio retrieval on held-out recordings after a linear map.

    Give ``train_idx``/``test_idx`` (disjoint; e.g. split by piece/composer so that no piece is
    on both sides) or neither, in which case a uniform random split with ``test_fraction`` is
    drawn from ``seed``; ``seed`` also sets the folds that choose the CCA penalty. ``alpha``
    (ridge) and ``reg`` (CCA) are relative penalties; grids are searched on training rows only
    (``analysis.linear_maps``). ``standardize``: z-score features with training-row statistics
    (see ``project_for_retrieval``). Returns both directions' metrics.
    """
    X = as_matrix("X_audio", X_audio)
    Y = as_matrix("Y_midi", Y_midi)
    check_paired(X, Y, ("X_audio", "Y_midi"))
    if (train_idx is None) != (test_idx is None):
        raise ValueError("train_idx, test_idx: expected both or neither, got only one")
    if train_idx is None:
        train_idx, test_idx = random_split(X.shape[0], test_fraction, seed)
    train_idx = as_index("train_idx", train_idx, X.shape[0])
    test_idx = as_index("test_idx", test_idx, X.shape[0])
    if np.intersect1d(train_idx, test_idx).size:
        shared = np.intersect1d(train_idx, test_idx).size
        raise ValueError(f"train_idx, test_idx: expected disjoint sets, got {shared} shared rows")
    proj = project_for_retrieval(X, Y, train_idx, test_idx, method, alpha, n_components, reg, seed, standardize)
    out = {"method": method, "n_train": int(train_idx.size), "n_test": int(test_idx.size), "fit": proj["fit"]}
    for direction in ("audio_to_symbolic", "symbolic_to_audio"):
        out[direction] = retrieval_metrics(*proj[direction], ks=ks)
    return out
