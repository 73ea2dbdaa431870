"""N x N machinery shared by RBF CKA, RSA and label-RDM correlation (run on a subsample).

Both kinds of statistic compare two n x n matrices whose rows/columns are the same recordings:

* ``KernelPair``: kernel CKA  <HKH, HLH>_F / (||HKH||_F ||HLH||_F)  (Kornblith et al. 2019,
  eq. 3 with the biased HSIC), H = I - 11'/n.
* ``RdmPair``:  Spearman correlation of the upper triangles of two dissimilarity matrices
  (Kriegeskorte et al. 2008), computed as the Pearson correlation of their ranks.

Permuting the pairing of recordings permutes rows *and* columns of one matrix together (a Mantel
test, Mantel 1967); centring commutes with that permutation and ranks are only relabelled, so the
precomputed matrices serve every permutation at O(n^2) each, without recomputing kernels or ranks.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import pdist, squareform
from scipy.stats import rankdata

from analysis._threads import single_thread_blas

RDM_METRICS = ("correlation", "cosine", "euclidean")


def sq_distances(X: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance matrix, clipped at 0 (the Gram expansion can go slightly negative)."""
    sq = np.einsum("ij,ij->i", X, X)
    D2 = sq[:, None] + sq[None, :] - 2.0 * (X @ X.T)
    np.fill_diagonal(D2, 0.0)
    return np.clip(D2, 0.0, None)


def rbf_gram(X: np.ndarray, sigma_frac: float) -> tuple[np.ndarray, float]:
    """RBF kernel K_ij = exp(-|x_i - x_j|^2 / (2 sigma^2)), sigma = sigma_frac * median distance.

    The median is over distinct pairs (i < j), as in Kornblith et al. (2019), who report
    bandwidths as a fraction of the median distance. Returns (K, sigma).
    """
    D2 = sq_distances(X)
    iu = np.triu_indices(X.shape[0], 1)
    med = float(np.sqrt(np.median(D2[iu])))
    sigma = sigma_frac * med
    if sigma <= 0:
        # All points identical: the kernel is constant and carries no information.
        return np.ones_like(D2), 0.0
    return np.exp(-D2 / (2.0 * sigma * sigma)), sigma


def double_centre(K: np.ndarray) -> np.ndarray:
    """HKH with H = I - 11'/n."""
    row = K.mean(axis=0)
    return K - row[None, :] - row[:, None] + row.mean()


def permute_square(M: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """M[perm][:, perm] (two ``take`` calls: ~4x faster than fancy indexing with np.ix_)."""
    return M.take(perm, axis=0).take(perm, axis=1)


def quad_forms(M: np.ndarray, W: np.ndarray) -> np.ndarray:
    """w_b' M w_b for every column w_b of W (n, B): one matrix product for B replicates."""
    return np.einsum("ib,ib->b", W, M @ W)


class KernelPair:
    """Kernels of paired samples; CKA for a permuted pairing or a weighted (bootstrap) resample.

    A bootstrap resample repeating recording i w_i times has, with the biased (V-statistic)
    HSIC and m = sum w:  sum_ab K_ab L_ab = w'(K o L)w,  sum_a (K1)_a (L1)_a = sum_i w_i (Kw)_i (Lw)_i,
    1'K1 = w'Kw, so HSIC(K, L) = w'(KoL)w - 2/m sum_i w_i (Kw)_i (Lw)_i + w'Kw w'Lw / m^2 for
    all replicates at once by matrix products (duplicates kept: the standard bootstrap of a
    V-statistic, with an O(1/n) upward bias from duplicated pairs).
    """

    def __init__(self, K: np.ndarray, L: np.ndarray):
        self.K, self.L = K, L
        self.Kc, self.Lc = double_centre(K), double_centre(L)
        self.norm = float(np.linalg.norm(self.Kc) * np.linalg.norm(self.Lc))

    def stat(self, perm: np.ndarray | None = None) -> float:
        """CKA with the recordings of the second space permuted (None = observed pairing)."""
        if self.norm <= 0:
            return float("nan")
        Lc = self.Lc if perm is None else permute_square(self.Lc, perm)
        with single_thread_blas():
            return float(np.vdot(self.Kc, Lc) / self.norm)

    def stat_weights(self, W: np.ndarray) -> np.ndarray:
        """CKA of the resamples whose multiplicities are the columns of W (n, B)."""
        m = W.sum(axis=0)

        def hsic(A: np.ndarray, B: np.ndarray, Aw: np.ndarray, Bw: np.ndarray) -> np.ndarray:
            return (quad_forms(A * B, W) - 2.0 / m * np.einsum("ib,ib,ib->b", W, Aw, Bw)
                    + np.einsum("ib,ib->b", W, Aw) * np.einsum("ib,ib->b", W, Bw) / m**2)

        Kw, Lw = self.K @ W, self.L @ W
        den = np.sqrt(hsic(self.K, self.K, Kw, Kw) * hsic(self.L, self.L, Lw, Lw))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, hsic(self.K, self.L, Kw, Lw) / den, np.nan)


def rdm_condensed(X: np.ndarray, metric: str) -> np.ndarray:
    """Upper-triangle dissimilarities (scipy ``pdist`` order).

    "correlation": 1 - Pearson r between rows; "cosine": 1 - cosine; "euclidean": L2 distance.
    Constant rows make correlation/cosine undefined; they are set to dissimilarity 1 (= r 0).
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        d = pdist(X, metric=metric)
    return np.where(np.isfinite(d), d, 1.0)


def rank_square(condensed: np.ndarray) -> np.ndarray:
    """Square matrix of the (average-tie) ranks of a condensed RDM, centred to mean 0."""
    r = rankdata(condensed)
    r -= r.mean()
    return squareform(r, checks=False)


class RdmPair:
    """Rank-transformed RDMs of paired samples; Spearman via Pearson of ranks, permuted cheaply."""

    def __init__(self, rdm_a: np.ndarray, rdm_b: np.ndarray):
        self.Ra, self.Rb = rank_square(rdm_a), rank_square(rdm_b)
        n = self.Ra.shape[0]
        self.iu, self.ju = np.triu_indices(n, 1)
        self.ra = self.Ra[self.iu, self.ju]
        self.norm = float(np.linalg.norm(self.ra) * np.linalg.norm(self.Rb[self.iu, self.ju]))

    def stat(self, perm: np.ndarray | None = None) -> float:
        """Spearman rho with the items of the second RDM permuted (None = observed pairing).

        Permuting items only relabels which rank sits in which cell, so the centred ranks keep
        mean 0 and the same norm: rho = <ra, rb_perm> / (|ra| |rb|); on the full square matrices
        (zero diagonal) the inner product counts every pair twice.
        """
        if self.norm <= 0:
            return float("nan")
        if perm is None:
            with single_thread_blas():
                return float(self.ra @ self.Rb[self.iu, self.ju] / self.norm)
        with single_thread_blas():
            return float(np.vdot(self.Ra, permute_square(self.Rb, perm)) / (2.0 * self.norm))

    def stat_weights(self, W: np.ndarray) -> np.ndarray:
        """Rank correlation of the resamples with multiplicities in the columns of W (n, B).

        Pairs of a recording with its own copy are left out (their zero dissimilarity in both
        RDMs would inflate the correlation). With zero diagonals, the sums over the remaining
        pairs are quadratic forms: sum ra = w'Ra w / 2, sum ra rb = w'(Ra o Rb)w / 2, ..., over
        M = ((sum w)^2 - sum w^2) / 2 pairs. The ranks of the full subsample are reused rather
        than re-ranked per replicate (exactly Spearman's rho on the subsample itself, a close
        approximation on a resample), which keeps 200 replicates at a few matrix products.
        """
        M = (W.sum(axis=0) ** 2 - (W**2).sum(axis=0)) / 2.0
        sa, sb = quad_forms(self.Ra, W) / 2.0, quad_forms(self.Rb, W) / 2.0
        saa, sbb = quad_forms(self.Ra**2, W) / 2.0, quad_forms(self.Rb**2, W) / 2.0
        sab = quad_forms(self.Ra * self.Rb, W) / 2.0
        den = np.sqrt((saa - sa**2 / M) * (sbb - sb**2 / M))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, (sab - sa * sb / M) / den, np.nan)


class CodedRdmPair(RdmPair):
    """``RdmPair`` whose second RDM is a function of a code per item (a label RDM), permuted by class sums.

    If rdm_b[i, j] = g(code_i, code_j) for i != j (true of ``analysis.labels.label_rdm``, whose
    entries depend only on the two labels, and so of its ranks), then with one-hot Z of the
    permuted codes  sum_ij Ra_ij Rb_p(i)p(j) = <g, Z' Ra Z>  (Ra has a zero diagonal): one
    (n, n) x (n, C) product per draw instead of permuting an n x n matrix (4x faster at n = 2,000
    and 10 classes). With more than ``MAX_CODES`` codes, or an rdm_b that is not such a function,
    draws fall back to ``RdmPair.stat``; both give the same value up to rounding.
    """

    MAX_CODES = 32

    def __init__(self, rdm_a: np.ndarray, rdm_b: np.ndarray, codes: np.ndarray):
        super().__init__(rdm_a, rdm_b)
        self.codes = np.unique(np.asarray(codes), return_inverse=True)[1].ravel()
        n_codes = int(self.codes.max()) + 1
        self.g = None
        if n_codes > self.MAX_CODES:
            return
        order = np.argsort(self.codes, kind="stable")
        first = np.searchsorted(self.codes[order], np.arange(n_codes))
        rep = order[first]  # one item per code, and a second one where the code has two
        second = order[np.minimum(first + 1, self.codes.size - 1)]
        g = self.Rb[rep[:, None], rep[None, :]]
        has_two = self.codes[second] == np.arange(n_codes)
        g[np.diag_indices(n_codes)] = np.where(has_two, self.Rb[rep, second], 0.0)
        implied = g[self.codes[:, None], self.codes[None, :]]
        np.fill_diagonal(implied, 0.0)
        if np.array_equal(implied, self.Rb):
            self.g = g

    def stat(self, perm: np.ndarray | None = None) -> float:
        if perm is None or self.g is None or self.norm <= 0:
            return super().stat(perm)
        Z = np.zeros((self.codes.size, self.g.shape[0]))
        Z[np.arange(self.codes.size), self.codes[perm]] = 1.0
        with single_thread_blas():
            return float(np.vdot(self.g, Z.T @ (self.Ra @ Z)) / (2.0 * self.norm))

