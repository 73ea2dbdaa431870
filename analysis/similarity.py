"""Cross-space similarity of paired embeddings X (N, Dx) and Y (N, Dy); row i = recording i.

Every function returns a dict with at least ``value``, ``n_used`` and ``subsampled``. Which
metric is invariant to what (all to translation, since every one centres or uses distances):

=====================  ==========================  ==========================================
metric                 invariant to                cost / rows used
=====================  ==========================  ==========================================
linear_cka             rotation, isotropic scale   O(N D^2) feature space, all rows
rbf_cka                rotation (scale via sigma)  O(n^2 D), random subsample n <= max_n
mutual_knn_alignment   rotation, isotropic scale*  O(N^2 D) chunked, memory O(chunk N), all rows
rsa                    rotation, isotropic scale*  O(n^2 D), subsample n <= max_n
mean_cca / svcca       any invertible linear map   O(N D^2 + D^3), all rows
procrustes_*           rotation, isotropic scale   O(N D^2 + D^3), all rows
=====================  ==========================  ==========================================

(* with the default ``centre=True``. mean_cca is exactly invariant to invertible linear maps
only without ridge, reg = 0; svcca is not invariant to non-orthogonal maps because its PCA step
is not. RSA with the "correlation" metric is not rotation invariant in general, since it centres
each row across features.)
"""

from __future__ import annotations

import numpy as np

from analysis import linear_family as lf
from analysis._checks import SeedLike, as_matrix, check_choice, check_int, check_paired, check_real
from analysis.linear_bootstrap import debiased_cka_from_sums, row_sums
from analysis.neighbors import METRICS as KNN_METRICS
from analysis.neighbors import knn_indices
from analysis.pairwise import RDM_METRICS, KernelPair, RdmPair, rbf_gram, rdm_condensed
from analysis.subsample import subsample_indices, subsample_info


def _paired(X: np.ndarray, Y: np.ndarray, min_rows: int = 2) -> tuple[np.ndarray, np.ndarray]:
    X = as_matrix("X", X, min_rows=min_rows)
    Y = as_matrix("Y", Y, min_rows=min_rows)
    check_paired(X, Y)
    return X, Y


def _full(n: int) -> dict:
    return {"n_used": int(n), "subsampled": False}


def linear_cka(X: np.ndarray, Y: np.ndarray, debiased: bool = False, method: str = "auto") -> dict:
    """Centred linear CKA (Kornblith et al. 2019): ||Xc'Yc||_F^2 / (||Xc'Xc||_F ||Yc'Yc||_F).

    ``debiased=True`` replaces HSIC by its unbiased estimator (Song et al. 2012), removing the
    positive bias of CKA between unrelated high-dimensional spaces (Nguyen et al. 2021; Murphy
    et al. 2024); it needs N >= 4 and can be slightly negative under independence.
    When N > max(Dx, Dy) it is computed from D x D feature-space products (memory O(D^2));
    otherwise from the N x N Gram matrices (``method`` = "feature" / "gram" forces one). Both
    give the same number.
    """
    X, Y = _paired(X, Y, min_rows=4 if debiased else 2)
    check_choice("method", method, ("auto", "feature", "gram"))
    n = X.shape[0]
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    if method == "feature" or (method == "auto" and n > max(X.shape[1], Y.shape[1])):
        if debiased:
            value = debiased_cka_from_sums(row_sums(Xc, Yc))
        else:
            den = np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc)
            value = float(np.sum((Xc.T @ Yc) ** 2) / den) if den > 0 else float("nan")
        method = "feature"
    else:
        K, L = Xc @ Xc.T, Yc @ Yc.T
        if debiased:
            K, L = _unbiased_centre(K), _unbiased_centre(L)
        den = np.linalg.norm(K) * np.linalg.norm(L)
        value = float(np.vdot(K, L) / den) if den > 0 else float("nan")
        method = "gram"
    return {"value": value, "debiased": bool(debiased), "method": method, **_full(n)}


def _unbiased_centre(K: np.ndarray) -> np.ndarray:
    """Gram matrix transformed so that <U(K), U(L)> = n(n-3) HSIC_u(K, L) (Kornblith et al. code)."""
    n = K.shape[0]
    K = K.copy()
    np.fill_diagonal(K, 0.0)
    means = K.sum(0) / (n - 2)
    means -= means.sum() / (2 * (n - 1))
    K -= means[:, None] + means[None, :]
    np.fill_diagonal(K, 0.0)
    return K


def rbf_cka(X: np.ndarray, Y: np.ndarray, sigma_frac: float = 0.8, max_n: int | None = 2000,
            seed: SeedLike = 0) -> dict:
    """Kernel CKA with RBF kernels, bandwidth sigma = sigma_frac * median pairwise distance.

    The bandwidth is set per space (Kornblith et al. 2019 use 0.2-0.8 of the median distance;
    0.8 is close to linear CKA behaviour on global structure, smaller values emphasise local
    neighbourhoods). Needs N x N kernels, so above ``max_n`` rows a uniform random subsample
    (``subsample_indices``) is used; ``n_used`` / ``subsampled`` report it.
    """
    X, Y = _paired(X, Y)
    check_real("sigma_frac", sigma_frac, 0.0, np.inf, low_open=True, high_open=True)
    idx = subsample_indices(X.shape[0], max_n, seed)
    K, sx = rbf_gram(X[idx], sigma_frac)
    L, sy = rbf_gram(Y[idx], sigma_frac)
    return {"value": KernelPair(K, L).stat(), "sigma_x": sx, "sigma_y": sy, "sigma_frac": float(sigma_frac),
            **subsample_info(X.shape[0], idx)}


class OverlapCounter:
    """Per-row |N_X(i) & N_Y(i)| for neighbour lists (N, k), with Y's rows permuted at O(N k^2) per call.

    With Y'_i = Y_perm[i], the neighbours of i in Y' are perm^-1(N_Y(perm[i])), so a permutation
    null needs no new neighbour search. The lists are stored once in the narrowest integer type
    that holds N (uint16 up to 65,536 rows: 4x less memory traffic per draw than int64), and a
    draw compares all k x k pairs of a row at once.
    """

    def __init__(self, nx: np.ndarray, ny: np.ndarray):
        n = max(nx.shape[0], int(nx.max(initial=0)) + 1, int(ny.max(initial=0)) + 1)
        self.dtype = np.uint16 if n <= 2**16 else np.int32 if n < 2**31 else np.int64
        self.nx, self.ny, self.k = nx.astype(self.dtype), ny.astype(self.dtype), nx.shape[1]

    def _matches(self, perm: np.ndarray | None) -> np.ndarray:
        ny = self.ny
        if perm is not None:
            inv = np.empty(perm.size, dtype=self.dtype)
            inv[perm] = np.arange(perm.size, dtype=self.dtype)
            ny = inv[ny[perm]]
        # (N, k, k): entry a of N_X(i) equals entry b of N_Y(i); each list holds distinct indices (as
        # ``knn_indices`` returns them), so every shared neighbour is one True
        return self.nx[:, :, None] == ny[:, None, :]

    def hits(self, perm: np.ndarray | None = None) -> np.ndarray:
        """(N,) number of X-neighbours of each row that are also its (permuted) Y-neighbours."""
        return self._matches(perm).reshape(self.nx.shape[0], -1).sum(axis=1)

    def mean(self, perm: np.ndarray | None = None) -> float:
        """Mutual kNN alignment: mean over rows of hits / k."""
        return float(np.count_nonzero(self._matches(perm)) / (self.k * self.nx.shape[0]))


def knn_overlap(nx: np.ndarray, ny: np.ndarray, perm: np.ndarray | None = None) -> np.ndarray:
    """Per-row |N_X(i) & N_Y(i)| / k from neighbour lists (N, k) of distinct indices per row;
    optionally Y's rows permuted.

    With Y'_i = Y_perm[i], the neighbours of i in Y' are perm^-1(N_Y(perm[i])), so a permutation
    null needs no new neighbour search (``OverlapCounter`` keeps the lists for many draws).
    """
    return OverlapCounter(nx, ny).hits(perm) / nx.shape[1]


def mutual_knn_alignment(X: np.ndarray, Y: np.ndarray, k: int = 10, metric: str = "cosine",
                         centre: bool = True, precision: str = "float32") -> dict:
    """Mutual k-NN alignment (Huh et al. 2024): mean_i |N_X(i) & N_Y(i)| / k.

    N_X(i) are the k nearest other rows of X (cosine similarity by default, as in Huh et al.,
    who normalise features; "euclidean" available). ``centre=True`` subtracts each space's mean
    row first, which makes cosine neighbours translation invariant (embeddings often share a large
    common direction that otherwise dominates every cosine); Huh et al. do not centre.
    Exact search chunked over queries: memory
    O(chunk * N), so it runs on all rows at N = 50,000. Chance level under random pairing is
    k / (N - 1). Returns ``per_row`` scores too (for a per-query bootstrap) and the neighbour lists.
    """
    X, Y = _paired(X, Y, min_rows=3)
    check_choice("metric", metric, KNN_METRICS)
    n = X.shape[0]
    k = check_int("k", k, minimum=1, maximum=n - 2)
    if centre:
        X, Y = X - X.mean(0), Y - Y.mean(0)
    nx = knn_indices(X, k, metric=metric, precision=precision)
    ny = knn_indices(Y, k, metric=metric, precision=precision)
    per_row = knn_overlap(nx, ny)
    return {"value": float(per_row.mean()), "per_row": per_row, "chance": k / (n - 1), "k": k, "metric": metric,
            "centre": bool(centre), "neighbors_x": nx, "neighbors_y": ny, **_full(n)}


def rsa(X: np.ndarray, Y: np.ndarray, metric: str = "cosine", max_n: int | None = 2000,
        seed: SeedLike = 0, centre: bool = True) -> dict:
    """Representational similarity analysis (Kriegeskorte et al. 2008).

    Spearman correlation between the upper triangles of the two RDMs (``metric``: "cosine"
    (default), "correlation" = 1 - Pearson r between rows (the RSA tradition for voxel
    patterns), "euclidean"). Cosine is the default because, after centring, it is invariant to
    rotation and scale, whereas centring each embedding across its features (what "correlation"
    does) has no meaning for learned features. O(n^2) pairs, so above
    ``max_n`` rows a uniform random subsample is used (2,000 rows = 2.0 M pairs).
    ``centre=True`` subtracts each space's mean row first (on the subsample), so that "cosine"
    is translation invariant; "euclidean" is unaffected; "correlation" (which centres each row
    across features) is invariant to neither rotation nor per-feature translation.
    """
    X, Y = _paired(X, Y, min_rows=3)
    check_choice("metric", metric, RDM_METRICS)
    idx = subsample_indices(X.shape[0], max_n, seed)
    Xs, Ys = X[idx], Y[idx]
    if centre:
        Xs, Ys = Xs - Xs.mean(0), Ys - Ys.mean(0)
    value = RdmPair(rdm_condensed(Xs, metric), rdm_condensed(Ys, metric)).stat()
    return {"value": value, "metric": metric, "centre": bool(centre), **subsample_info(X.shape[0], idx)}


def _family(X: np.ndarray, Y: np.ndarray, which: tuple[str, ...], *, cca_reg: float = 0.0,
            cca_components: int | None = None, svcca_keep: float = 0.99) -> tuple[dict, lf.PreparedPair]:
    pair = lf.PreparedPair(X, Y, cca_reg=cca_reg, cca_components=cca_components, svcca_keep=svcca_keep)
    return pair.stats(which=which), pair


def mean_cca(X: np.ndarray, Y: np.ndarray, n_components: int | None = None, reg: float = 0.0) -> dict:
    """Mean of the top ``n_components`` canonical correlations.

    ``reg = 0`` (default): classical CCA inside each space's numerical column space (constant or
    collinear features add no direction), over min(rank_x, rank_y) components by default, so an
    exact rotated copy scores 1 even with constant columns. ``reg > 0``: ridge CCA, each covariance
    gets reg * mean(eigenvalues) on its diagonal, over min(Dx, Dy) components (a rotated copy then
    scores below 1). In-sample CCA overfits when D is not << N (random data gives large
    correlations, all 1 when N <= D), so read it as the excess over the permutation null.
    ``n_components`` in the result is the number averaged.
    """
    X, Y = _paired(X, Y)
    check_real("reg", reg, 0.0, np.inf, high_open=True)
    if n_components is not None:
        check_int("n_components", n_components, minimum=1)
    stats, pair = _family(X, Y, ("mean_cca",), cca_reg=reg, cca_components=n_components)
    return {"value": stats["mean_cca"], "n_components": pair.family.cca_components, "reg": float(reg),
            **_full(X.shape[0])}


def svcca(X: np.ndarray, Y: np.ndarray, keep: float = 0.99) -> dict:
    """SVCCA (Raghu et al. 2017): PCA keeping ``keep`` of the variance per space, then mean CCA."""
    X, Y = _paired(X, Y)
    check_real("keep", keep, 0.0, 1.0, low_open=True)
    stats, pair = _family(X, Y, ("svcca",), svcca_keep=keep)
    return {"value": stats["svcca"], "kept_x": pair.family.kx, "kept_y": pair.family.ky, "keep": float(keep),
            **_full(X.shape[0])}


def procrustes_distance(X: np.ndarray, Y: np.ndarray) -> dict:
    """Orthogonal Procrustes distance after centring and scaling each space to unit Frobenius norm.

    d = min_R ||X~ R - Y~||_F over R with orthonormal rows/columns (the smaller space is
    zero-padded to the larger dimension, which is the same as letting R be a partial isometry;
    no PCA truncation, so no variance is discarded). d^2 = 2 - 2 ||X~'Y~||_* in [0, 2], so
    d in [0, sqrt 2]; 0 means identical up to rotation, translation and isotropic scaling.
    Also returns ``similarity`` = 1 - d^2 / 2 = ||X~'Y~||_* in [0, 1].
    """
    X, Y = _paired(X, Y)
    stats, _ = _family(X, Y, ("procrustes_distance", "procrustes_similarity"))
    return {"value": stats["procrustes_distance"], "similarity": stats["procrustes_similarity"], **_full(X.shape[0])}


def procrustes_similarity(X: np.ndarray, Y: np.ndarray) -> dict:
    """1 - d^2 / 2 for the Procrustes distance d above: the nuclear norm ||X~'Y~||_* in [0, 1]."""
    out = procrustes_distance(X, Y)
    return {**out, "value": out["similarity"], "distance": out["value"]}
