"""Resampling of the linear-family statistics (``analysis.linear_family``) from additive row sums.

``jackknife_replicates`` (what ``analysis.compare`` reports; see ``analysis.jackknife`` for why):
replicate g is the sample without row group g, whose sums are the totals minus group g's sums,
so G replicates cost G x O(D^3) after one O(N D^2) pass. ``bootstrap_replicates`` (kept for
comparison and tests) resamples row blocks, as described next.

Every statistic is a function of sums over rows (of x_i, x_i x_i', x_i y_i', |x_i|^2 ...), so the
sums of a bootstrap resample are weighted totals of per-row (or per-block) sums. Rows are split
at random into B <= 200 nearly equal blocks; resampling blocks with replacement and adding their
sums gives exactly the sums of the resampled rows, so a replicate costs O(B D^2 + D^3) instead
of O(N D^2). For N <= 200 each block is one row: the ordinary row bootstrap. For larger N it is
a bootstrap of B exchangeable blocks of rows (valid for i.i.d. recordings; the bootstrap
variance then rests on B units instead of N, so the CI endpoints carry a few % extra noise).

Rows are first rotated into the full-sample principal axes of each space (every statistic is
invariant to that rotation). Per replicate: CKA from Frobenius norms, debiased CKA exactly from
raw sums, ridge CCA via Cholesky factors, Procrustes nuclear norm via eigvalsh. SVCCA keeps the
principal subspaces of the full sample fixed, i.e. the leading kx, ky rotated coordinates
(re-estimating them would need two full eigendecompositions per replicate; at N >> D their
sampling variability is negligible, at small N the SVCCA interval is somewhat too narrow).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import LinAlgError, cholesky, solve_triangular

from analysis._threads import single_thread_blas
from analysis.linear_family import (
    STAT_NAMES,
    LinearFamily,
    PreparedPair,
    clip_correlations,
    hsic_u,
    procrustes_from_nuclear,
    singular_values,
)


@dataclass(frozen=True)
class Sums:
    """Additive row sums of paired rows x_i, y_i with a_i = |x_i|^2, b_i = |y_i|^2."""

    n: float
    sx: np.ndarray
    sy: np.ndarray
    Sxx: np.ndarray
    Syy: np.ndarray
    Sxy: np.ndarray
    sa: float
    sb: float
    saa: float
    sbb: float
    sab: float
    xa: np.ndarray
    xb: np.ndarray
    ya: np.ndarray
    yb: np.ndarray


def row_sums(X: np.ndarray, Y: np.ndarray) -> Sums:
    """``Sums`` over the rows of X and Y (paired)."""
    a = np.einsum("ij,ij->i", X, X)
    b = np.einsum("ij,ij->i", Y, Y)
    return Sums(n=float(X.shape[0]), sx=X.sum(0), sy=Y.sum(0), Sxx=X.T @ X, Syy=Y.T @ Y, Sxy=X.T @ Y,
                sa=float(a.sum()), sb=float(b.sum()), saa=float(a @ a), sbb=float(b @ b), sab=float(a @ b),
                xa=X.T @ a, xb=X.T @ b, ya=Y.T @ a, yb=Y.T @ b)


def debiased_cka_from_sums(s: Sums) -> float:
    """Debiased linear CKA from uncentred sums (exact: HSIC_u needs no centring). NaN if n < 4."""
    if s.n < 4:
        return float("nan")
    ssx, ssy = float(s.sx @ s.sx), float(s.sy @ s.sy)
    # 1'K~L~1 = sum_i (x_i.sx - a_i)(y_i.sy - b_i), expanded into the additive sums.
    t3_xy = float(s.sx @ s.Sxy @ s.sy - s.sx @ s.xb - s.sy @ s.ya + s.sab)
    t3_xx = float(s.sx @ s.Sxx @ s.sx - 2.0 * s.sx @ s.xa + s.saa)
    t3_yy = float(s.sy @ s.Syy @ s.sy - 2.0 * s.sy @ s.yb + s.sbb)
    h_xy = hsic_u(float(np.sum(s.Sxy**2)), s.sab, ssx, ssy, s.sa, s.sb, t3_xy, s.n)
    h_xx = hsic_u(float(np.sum(s.Sxx**2)), s.saa, ssx, ssx, s.sa, s.sa, t3_xx, s.n)
    h_yy = hsic_u(float(np.sum(s.Syy**2)), s.sbb, ssy, ssy, s.sb, s.sb, t3_yy, s.n)
    return float(h_xy / np.sqrt(h_xx * h_yy)) if h_xx > 0 and h_yy > 0 else float("nan")


def _cca_chol(Cxx: np.ndarray, Cyy: np.ndarray, Cxy: np.ndarray, reg: float) -> np.ndarray:
    """Ridge canonical correlations = singular values of Lx^-1 Cxy Ly^-T, Lx Lx' = Cxx + r I."""
    rx = max(reg * np.trace(Cxx) / Cxx.shape[0], 1e-12 * np.trace(Cxx) / Cxx.shape[0])
    ry = max(reg * np.trace(Cyy) / Cyy.shape[0], 1e-12 * np.trace(Cyy) / Cyy.shape[0])
    try:
        with single_thread_blas():
            Lx = cholesky(Cxx + rx * np.eye(Cxx.shape[0]), lower=True)
            Ly = cholesky(Cyy + ry * np.eye(Cyy.shape[0]), lower=True)
            M = solve_triangular(Lx, Cxy, lower=True)
            M = solve_triangular(Ly, M.T, lower=True).T
    except LinAlgError:
        return np.full(min(Cxy.shape), np.nan)
    return clip_correlations(singular_values(M, precise=False))


def stats_from_sums(s: Sums, base: LinearFamily) -> dict[str, float]:
    """All statistics for the sample summarised by ``s`` (re-centred at its own mean).

    ``s`` must be sums of rows rotated into ``base``'s principal axes (``base.Vx``, ``base.Vy``),
    so the fixed SVCCA subspaces are the leading ``base.kx`` / ``base.ky`` coordinates;
    ``base`` (the full-sample ``LinearFamily``) also supplies the options.
    """
    n = s.n
    mx, my = s.sx / n, s.sy / n
    Cxx = s.Sxx - n * np.outer(mx, mx)
    Cyy = s.Syy - n * np.outer(my, my)
    Cxy = s.Sxy - n * np.outer(mx, my)
    out = {"linear_cka": float(np.sum(Cxy**2) / np.sqrt(np.sum(Cxx**2) * np.sum(Cyy**2))),
           "linear_cka_debiased": debiased_cka_from_sums(s)}
    if base.cca_reg > 0:
        rho = _cca_chol(Cxx, Cyy, Cxy, base.cca_reg)
    else:  # classical CCA in the full sample's numerical column spaces (leading rotated coordinates)
        rx, ry = base.rank_x, base.rank_y
        rho = _cca_chol(Cxx[:rx, :rx], Cyy[:ry, :ry], Cxy[:rx, :ry], 0.0)
    out["mean_cca"] = float(rho[: base.cca_components].mean())
    kx, ky = base.kx, base.ky
    out["svcca"] = float(_cca_chol(Cxx[:kx, :kx], Cyy[:ky, :ky], Cxy[:kx, :ky], 0.0).mean())
    nuc = float(singular_values(Cxy, precise=False).sum())
    out["procrustes_similarity"], out["procrustes_distance"] = procrustes_from_nuclear(
        nuc, float(np.trace(Cxx)), float(np.trace(Cyy)))
    return out


class BlockSums:
    """``Sums`` of ``n_blocks`` nearly equal blocks of rows (random, or given by ``blocks``), stacked."""

    def __init__(self, X: np.ndarray, Y: np.ndarray, n_blocks: int, rng: np.random.Generator | None = None,
                 blocks: np.ndarray | None = None):
        if blocks is None:
            groups = np.array_split(rng.permutation(X.shape[0]), n_blocks)
        else:
            groups = [np.flatnonzero(blocks == b) for b in range(n_blocks)]
        self._fields: dict[str, np.ndarray] = {}
        # Filled block by block into preallocated stacks (no list of copies: half the peak memory);
        # the per-block products are small, so one thread is faster (see analysis._threads).
        with single_thread_blas():
            for i, rows in enumerate(groups):
                for name, value in row_sums(X[rows], Y[rows]).__dict__.items():
                    value = np.asarray(value, dtype=np.float64)
                    if name not in self._fields:
                        self._fields[name] = np.empty((n_blocks, *value.shape))
                    self._fields[name][i] = value
        self.n_blocks = n_blocks

    def combine(self, counts: np.ndarray) -> list[Sums]:
        """Sums of the samples that repeat block b ``counts[r, b]`` times, one per row r of counts."""
        counts = np.atleast_2d(counts).astype(np.float64)
        tot = {name: np.tensordot(counts, arr, axes=1) for name, arr in self._fields.items()}
        return [Sums(**{name: (float(v[r]) if v.ndim == 1 else v[r]) for name, v in tot.items()})
                for r in range(counts.shape[0])]

    def leave_one_out(self, block: int) -> Sums:
        """Sums of every row outside ``block`` (totals minus that block's sums)."""
        if not hasattr(self, "_totals"):
            self._totals = {name: arr.sum(axis=0) for name, arr in self._fields.items()}
        out = {}
        for name, arr in self._fields.items():
            v = self._totals[name] - arr[block]
            out[name] = float(v) if arr.ndim == 1 else v
        return Sums(**out)


def jackknife_replicates(prepared: PreparedPair, blocks: np.ndarray, n_blocks: int) -> dict[str, np.ndarray]:
    """Leave-one-group-out replicates of every statistic (``blocks``: (N,) group of each row).

    Uses the centred, rotated rows of ``prepared``; each replicate is re-centred at its own mean,
    SVCCA keeps the full sample's principal subspaces and unregularised CCA its numerical ranks.
    """
    sums = BlockSums(prepared.Xr, prepared.Yr, n_blocks, blocks=blocks)
    reps: dict[str, list[float]] = {name: [] for name in STAT_NAMES}
    for b in range(n_blocks):
        for k, v in stats_from_sums(sums.leave_one_out(b), prepared.family).items():
            reps[k].append(v)
    return {k: np.asarray(v) for k, v in reps.items()}


def n_bootstrap_blocks(n: int, dx: int, dy: int, max_blocks: int = 200, max_bytes: float = 1.5e9) -> int:
    """Blocks for ``BlockSums``: one row per block up to ``max_blocks`` rows, capped by memory."""
    per_block = 8.0 * (dx * dx + dy * dy + dx * dy + 3 * (dx + dy))
    return int(max(2, min(n, max_blocks, max_bytes // per_block)))


def bootstrap_replicates(X: np.ndarray, Y: np.ndarray, n_boot: int, rng: np.random.Generator, *,
                         cca_reg: float, cca_components: int | None, svcca_keep: float,
                         max_blocks: int = 200, batch: int = 16,
                         prepared: PreparedPair | None = None) -> tuple[dict[str, np.ndarray], int]:
    """Bootstrap replicates of every statistic by resampling row blocks with replacement.

    Rows are centred at the full-sample mean and rotated into its principal axes first; each
    replicate is re-centred at its own mean. ``prepared``: a ``PreparedPair`` of the same X, Y and
    options, if already built (saves two eigendecompositions and the rotation).
    Returns (name -> replicates, n_blocks).
    """
    if prepared is None:
        prepared = PreparedPair(X, Y, cca_reg=cca_reg, cca_components=cca_components, svcca_keep=svcca_keep)
    base = prepared.family
    n_blocks = n_bootstrap_blocks(X.shape[0], X.shape[1], Y.shape[1], max_blocks)
    blocks = BlockSums(prepared.Xr, prepared.Yr, n_blocks, rng)
    counts = rng.multinomial(blocks.n_blocks, np.full(blocks.n_blocks, 1.0 / blocks.n_blocks), size=n_boot)
    reps: dict[str, list[float]] = {name: [] for name in STAT_NAMES}
    for start in range(0, n_boot, batch):
        for sums in blocks.combine(counts[start:start + batch]):
            for k, v in stats_from_sums(sums, base).items():
                reps[k].append(v)
    return {k: np.asarray(v) for k, v in reps.items()}, blocks.n_blocks
