"""Linear CKA (biased and debiased), mean CCA, SVCCA and Procrustes from second moments.

All five statistics are functions of the two within-space scatter matrices and the cross
scatter, so they are computed in feature space: O(N D^2) time and O(D^2) memory, exact at any N.
With centred data Xc (N, Dx), Yc (N, Dy), eigendecompositions Xc'Xc = Vx diag(wx) Vx' (and
likewise for Y) and the rotated cross scatter T = Vx' Xc'Yc Vy:

* linear CKA (Kornblith et al. 2019):  ||Xc'Yc||_F^2 / (||Xc'Xc||_F ||Yc'Yc||_F)
                                        = ||T||_F^2 / (||wx||_2 ||wy||_2)
* debiased CKA (Song et al. 2012 unbiased HSIC; Nguyen et al. 2021): HSIC_u(K, L) /
  sqrt(HSIC_u(K, K) HSIC_u(L, L)) with K = X X', L = Y Y', evaluated from feature-space sums
  (``hsic_u``). It is translation invariant, so the bootstrap may use fixed-centred rows.
* mean CCA: with ``cca_reg = 0`` (the default) classical CCA inside each space's numerical
  column space (principal directions with eigenvalue > RANK_TOL x the largest; constant or
  collinear features carry no direction), i.e. singular values of
  diag(wx)^-1/2 T diag(wy)^-1/2 restricted to those directions, averaged over the top
  ``n_components`` (default min(rank_x, rank_y)); an exact rotated copy scores 1. With
  ``cca_reg = r > 0``, ridge CCA (Vinod 1976) over all directions: diag(wx + r mean(wx))^-1/2
  T diag(wy + r mean(wy))^-1/2 and min(Dx, Dy) components; a rotated copy then scores
  mean_j w_j / (w_j + r mean(w)) < 1 (0.9955 for reg 1e-4 on a 64-d Gaussian cloud), which is why
  ridge is not the default. In-sample CCA is biased upwards when D is not << N; the permutation
  null mean shows by how much (report the excess over it).
* SVCCA (Raghu et al. 2017): keep the leading principal directions that explain ``keep`` of the
  variance in each space, then unregularised CCA between them; mean over min(kx, ky) correlations.
* Procrustes (orthogonal, after centring and scaling each space to unit Frobenius norm; the
  lower-dimensional space is zero-padded, i.e. R ranges over partial isometries): similarity
  s = ||Xc'Yc||_* / (||Xc||_F ||Yc||_F) = sum(svd(T)) / sqrt(sum wx sum wy) in [0, 1];
  distance d = min_R ||X~ R - Y~||_F = sqrt(2 - 2 s) in [0, sqrt 2] (Williams et al. 2021 use
  arccos(s) as the angular form).

``PreparedPair`` precomputes the per-space quantities once, so a permutation of the pairing costs
one N x Dx x Dy product plus O(D^3) work. Observed values use SVDs; null draws take singular
values as square roots of eigenvalues of M M' (3x faster, accurate to ~1e-12 relative for the
sums used here).
"""

from __future__ import annotations

import numpy as np

from analysis._threads import single_thread_blas

STAT_NAMES = ("linear_cka", "linear_cka_debiased", "mean_cca", "svcca", "procrustes_similarity",
              "procrustes_distance")
# Permuted cross products above this many multiply-adds use float32 (2x faster; the null draws
# then carry ~1e-6 relative rounding, irrelevant for a p-value; observed values stay float64).
FLOAT32_PERMUTATION_FLOPS = 2**30
# Principal directions with eigenvalue <= RANK_TOL x the largest are numerically absent (constant or
# collinear features; float32 inputs leave ~1e-14 relative noise there), so unregularised CCA skips them.
RANK_TOL = 1e-10
SNAP_TO_ONE = 1e-9


def hsic_u(frob2: float, sq_diag: float, ss_x: float, ss_y: float, sa: float, sb: float, t3: float,
           n: float) -> float:
    """Unbiased HSIC (Song et al. 2012, eq. 5) for linear kernels, from feature-space sums.

    HSIC_u = [tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)), K~ = K with
    zero diagonal. For K = X X', L = Y Y' with a_i = |x_i|^2, b_i = |y_i|^2:
    tr(K~L~) = ||X'Y||_F^2 - sum a_i b_i (``frob2``, ``sq_diag``), 1'K~1 = |sum x|^2 - sum a
    (``ss_x``, ``sa``), and 1'K~L~1 = ``t3`` (= sum a_i b_i for centred data).
    """
    t1 = frob2 - sq_diag
    t2 = (ss_x - sa) * (ss_y - sb) / ((n - 1.0) * (n - 2.0))
    return (t1 + t2 - 2.0 * t3 / (n - 2.0)) / (n * (n - 3.0))


def singular_values(M: np.ndarray, precise: bool = True) -> np.ndarray:
    """Singular values, descending: SVD if ``precise``, else sqrt(eigvalsh(M M')) on the smaller side."""
    with single_thread_blas():
        if precise:
            return np.linalg.svd(M, compute_uv=False)
        G = M @ M.T if M.shape[0] <= M.shape[1] else M.T @ M
        return np.sqrt(np.clip(np.linalg.eigvalsh(G), 0.0, None))[::-1]


def eig_desc(S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (clipped at 0) and eigenvectors of a symmetric matrix, largest first."""
    with single_thread_blas():
        w, V = np.linalg.eigh(S)
    return np.clip(w[::-1], 0.0, None), V[:, ::-1]


def n_keep(w: np.ndarray, keep: float) -> int:
    """Smallest k whose leading eigenvalues explain at least ``keep`` of the total variance."""
    total = w.sum()
    if total <= 0:
        return 1
    return int(min(w.size, np.searchsorted(np.cumsum(w) / total, keep - 1e-12) + 1))


def clip_correlations(rho: np.ndarray) -> np.ndarray:
    """Canonical correlations clipped to [0, 1], and values within SNAP_TO_ONE of 1 set to exactly 1.

    When rank_x + rank_y >= N - 1 some correlations are 1 by construction (in-sample overfit); their
    rounding noise (~1e-15) must not make a permutation null look variable (a histogram of draws
    that differ by 1e-16 cannot be binned).
    """
    rho = np.clip(rho, 0.0, 1.0)
    return np.where(rho > 1.0 - SNAP_TO_ONE, 1.0, rho)


def canon_corr(T: np.ndarray, wx: np.ndarray, wy: np.ndarray, rx: float, ry: float, precise: bool = True) -> np.ndarray:
    """Canonical correlations from the rotated cross scatter and (ridge-shifted) eigenvalues."""
    with np.errstate(divide="ignore"):
        dx = np.where(wx + rx > 0, 1.0 / np.sqrt(wx + rx), 0.0)
        dy = np.where(wy + ry > 0, 1.0 / np.sqrt(wy + ry), 0.0)
    return clip_correlations(singular_values(dx[:, None] * T * dy[None, :], precise))


def numerical_rank(w: np.ndarray) -> int:
    """Number of eigenvalues (descending, >= 0) above RANK_TOL x the largest; at least 1."""
    return max(1, int(np.count_nonzero(w > RANK_TOL * w[0]))) if w.size and w[0] > 0 else 1


def procrustes_from_nuclear(nuc: float, tr_x: float, tr_y: float) -> tuple[float, float]:
    """(similarity, distance) from ||Xc'Yc||_* and the traces of the two scatter matrices."""
    tot = tr_x * tr_y
    sim = min(1.0, nuc / np.sqrt(tot)) if tot > 0 else 0.0
    return sim, float(np.sqrt(max(0.0, 2.0 - 2.0 * sim)))


class LinearFamily:
    """Per-space eigen-summaries; ``stats_from_cross(T, sab)`` evaluates the statistics.

    T = Vx' Xc' Yc' Vy is the rotated cross scatter (Y's rows possibly permuted) and
    sab = sum_i a_i b'_i the matching sum of squared row norms (for debiased CKA).
    """

    def __init__(self, Sxx: np.ndarray, Syy: np.ndarray, n: float, row_sq: tuple[np.ndarray, np.ndarray] | None = None,
                 *, cca_reg: float, cca_components: int | None, svcca_keep: float):
        self.n = float(n)
        self.wx, self.Vx = eig_desc(Sxx)
        self.wy, self.Vy = eig_desc(Syy)
        self.cca_reg, self.svcca_keep = cca_reg, svcca_keep
        self.rank_x, self.rank_y = numerical_rank(self.wx), numerical_rank(self.wy)
        # unregularised CCA lives in the numerical column spaces (see module docstring)
        n_max = min(self.wx.size, self.wy.size) if cca_reg > 0 else min(self.rank_x, self.rank_y)
        self.cca_components = n_max if cca_components is None else min(cca_components, n_max)
        self.kx, self.ky = n_keep(self.wx, svcca_keep), n_keep(self.wy, svcca_keep)
        self.h_xx = self.h_yy = float("nan")
        if row_sq is not None and n >= 4:
            a, b = row_sq
            self.sa, self.sb = float(a.sum()), float(b.sum())
            # Centred data: ||Sxx||_F^2 = sum w^2, 1'K~1 = -sum a, 1'K~K~1 = sum a^2.
            self.h_xx = hsic_u(float(self.wx @ self.wx), float(a @ a), 0.0, 0.0, self.sa, self.sa, float(a @ a), self.n)
            self.h_yy = hsic_u(float(self.wy @ self.wy), float(b @ b), 0.0, 0.0, self.sb, self.sb, float(b @ b), self.n)

    def stats_from_cross(self, T: np.ndarray, sab: float | None = None, which: tuple[str, ...] = STAT_NAMES,
                         precise: bool = True) -> dict[str, float]:
        """Statistics named in ``which``; ``precise=False`` uses the faster singular values."""
        wx, wy = self.wx, self.wy
        out: dict[str, float] = {}
        with single_thread_blas():
            frob2 = float(np.einsum("ij,ij->", T, T))
            if "linear_cka" in which:
                den = np.sqrt(float(wx @ wx) * float(wy @ wy))
                out["linear_cka"] = frob2 / den if den > 0 else float("nan")
            if "linear_cka_debiased" in which:
                out["linear_cka_debiased"] = float("nan")
                if sab is not None and self.h_xx > 0 and self.h_yy > 0:
                    h_xy = hsic_u(frob2, sab, 0.0, 0.0, self.sa, self.sb, sab, self.n)
                    out["linear_cka_debiased"] = h_xy / np.sqrt(self.h_xx * self.h_yy)
            if "mean_cca" in which:
                if self.cca_reg > 0:
                    rho = canon_corr(T, wx, wy, self.cca_reg * wx.mean(), self.cca_reg * wy.mean(), precise)
                else:
                    rx, ry = self.rank_x, self.rank_y
                    rho = canon_corr(T[:rx, :ry], wx[:rx], wy[:ry], 0.0, 0.0, precise)
                out["mean_cca"] = float(rho[: self.cca_components].mean())
            if "svcca" in which:
                # Plain CCA inside the kept principal subspaces (all kept eigenvalues are > 0).
                kx, ky = self.kx, self.ky
                out["svcca"] = float(canon_corr(T[:kx, :ky], wx[:kx], wy[:ky], 0.0, 0.0, precise).mean())
            if "procrustes_similarity" in which or "procrustes_distance" in which:
                nuc = float(singular_values(T, precise).sum())
                out["procrustes_similarity"], out["procrustes_distance"] = procrustes_from_nuclear(
                    nuc, float(wx.sum()), float(wy.sum()))
        return {k: float(v) for k, v in out.items() if k in which}


class PreparedPair:
    """Centred, eigen-rotated copies of X and Y, so any row pairing costs one (Dx, N) @ (N, Dy).

    ``stats(perm)`` evaluates the statistics with Y's rows permuted (``perm=None``: the observed
    pairing). Permuting rows leaves each space's scatter unchanged, which is why the per-space
    eigendecompositions are computed once.
    """

    def __init__(self, X: np.ndarray, Y: np.ndarray, *, cca_reg: float, cca_components: int | None,
                 svcca_keep: float):
        Xc = X - X.mean(axis=0)
        Yc = Y - Y.mean(axis=0)
        self.a = np.einsum("ij,ij->i", Xc, Xc)
        self.b = np.einsum("ij,ij->i", Yc, Yc)
        self.family = LinearFamily(Xc.T @ Xc, Yc.T @ Yc, X.shape[0], (self.a, self.b), cca_reg=cca_reg,
                                   cca_components=cca_components, svcca_keep=svcca_keep)
        self.Xr = Xc @ self.family.Vx
        self.Yr = Yc @ self.family.Vy
        fast = X.shape[0] * X.shape[1] * Y.shape[1] >= FLOAT32_PERMUTATION_FLOPS
        self._Xp = self.Xr.astype(np.float32) if fast else self.Xr
        self._Yp = self.Yr.astype(np.float32) if fast else self.Yr

    def stats(self, perm: np.ndarray | None = None, which: tuple[str, ...] = STAT_NAMES) -> dict[str, float]:
        if perm is None:
            return self.family.stats_from_cross(self.Xr.T @ self.Yr, float(self.a @ self.b), which)
        T = (self._Xp.T @ self._Yp[perm]).astype(np.float64)
        return self.family.stats_from_cross(T, float(self.a @ self.b[perm]), which, precise=False)
