"""Linear maps between spaces, fitted on training rows only: ridge regression and ridge CCA.

Penalties are relative to the mean eigenvalue of the relevant scatter matrix (lambda = alpha *
tr(Xc'Xc) / D), so they do not depend on the scale of the embeddings. When a grid of penalties
is given, it is searched on the training rows only (ridge: exact leave-one-out; CCA: K-fold).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from analysis._checks import SeedLike, as_generator, as_matrix, check_int, check_paired, check_real
from analysis._threads import single_thread_blas

DEFAULT_ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)
DEFAULT_CCA_REGS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


def _grid(name: str, value: float | Sequence[float]) -> list[float]:
    vals = [value] if np.isscalar(value) else list(value)
    if not vals:
        raise ValueError(f"{name}: expected a number or a non-empty sequence, got an empty sequence")
    return [check_real(name, v, 0.0, np.inf, high_open=True) for v in vals]


def _eigh(S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with single_thread_blas():
        w, V = np.linalg.eigh(S)
    return np.clip(w, 0.0, None), V


@dataclass(frozen=True)
class LinearMap:
    """y = x @ weights + bias. ``alpha`` is the absolute ridge penalty, ``alpha_rel`` the relative one."""

    weights: np.ndarray
    bias: np.ndarray
    alpha: float
    alpha_rel: float
    loo_mse: dict

    def transform(self, X: np.ndarray) -> np.ndarray:
        return as_matrix("X", X, min_rows=1) @ self.weights + self.bias


def fit_ridge_map(X_train: np.ndarray, Y_train: np.ndarray, alpha: float | Sequence[float] = DEFAULT_ALPHAS) -> LinearMap:
    """Multi-output ridge regression Y ~ X W + b with an unpenalised intercept.

    W = (Xc'Xc + lambda I)^-1 Xc'Yc, lambda = alpha * tr(Xc'Xc) / Dx. A sequence of alphas is
    searched by exact leave-one-out error on the training rows (Allen 1974 PRESS: residual
    e_i / (1 - h_ii), h_ii = 1/n + x_i'(Xc'Xc + lambda I)^-1 x_i, squared and averaged over
    outputs), never touching test rows.
    """
    X = as_matrix("X_train", X_train)
    Y = as_matrix("Y_train", Y_train)
    check_paired(X, Y, ("X_train", "Y_train"))
    alphas = _grid("alpha", alpha)
    mx, my = X.mean(0), Y.mean(0)
    Xc, Yc = X - mx, Y - my
    w, V = _eigh(Xc.T @ Xc)
    scale = w.sum() / w.size
    Z = Xc @ V                     # rows in the eigenbasis
    B = Z.T @ Yc
    n = X.shape[0]
    loo: dict[float, float] = {}
    if len(alphas) > 1:
        Z2 = Z**2
        for a in alphas:
            inv = 1.0 / np.where(w + a * scale > 0, w + a * scale, np.inf)
            resid = Yc - (Z * inv) @ B
            h = 1.0 / n + Z2 @ inv
            loo[a] = float(np.mean((resid / np.clip(1.0 - h, 1e-12, None)[:, None]) ** 2))
        best = min(loo, key=loo.get)
    else:
        best = alphas[0]
    inv = 1.0 / np.where(w + best * scale > 0, w + best * scale, np.inf)
    W = (V * inv) @ B
    return LinearMap(weights=W, bias=my - mx @ W, alpha=float(best * scale), alpha_rel=float(best), loo_mse=loo)


@dataclass(frozen=True)
class CcaMap:
    """Projections of both spaces onto canonical directions, each scaled by rho^weight_power."""

    Wx: np.ndarray
    Wy: np.ndarray
    mean_x: np.ndarray
    mean_y: np.ndarray
    correlations: np.ndarray
    weight_power: float
    reg: float
    cv_score: dict

    def transform_x(self, X: np.ndarray) -> np.ndarray:
        return (as_matrix("X", X, min_rows=1) - self.mean_x) @ self.Wx * self.correlations**self.weight_power

    def transform_y(self, Y: np.ndarray) -> np.ndarray:
        return (as_matrix("Y", Y, min_rows=1) - self.mean_y) @ self.Wy * self.correlations**self.weight_power


def _cca_weights(Cxx: np.ndarray, Cyy: np.ndarray, Cxy: np.ndarray, regs: list[float], k: int):
    """Yield (reg, Wx, Wy, rho) of ridge CCA for each reg, sharing one eigendecomposition per space."""
    wx, Vx = _eigh(Cxx)
    wy, Vy = _eigh(Cyy)
    T = Vx.T @ Cxy @ Vy
    for reg in regs:
        dx = 1.0 / np.sqrt(np.maximum(wx + reg * wx.mean(), 1e-300))
        dy = 1.0 / np.sqrt(np.maximum(wy + reg * wy.mean(), 1e-300))
        with single_thread_blas():
            U, s, Vt = np.linalg.svd(dx[:, None] * T * dy[None, :], full_matrices=False)
        yield reg, (Vx * dx) @ U[:, :k], (Vy * dy) @ Vt[:k].T, np.clip(s[:k], 0.0, 1.0)


def _scatter(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    return Xc.T @ Xc, Yc.T @ Yc, Xc.T @ Yc


def _select_cca_reg(X: np.ndarray, Y: np.ndarray, regs: list[float], k: int, n_folds: int, power: float,
                    rng: np.random.Generator) -> dict[float, float]:
    """Per reg, the mean over folds of the weighted mean held-out canonical correlation.

    Held-out correlation of pair j: c_j = a_j'Cxy_v b_j / sqrt(a_j'Cxx_v a_j b_j'Cyy_v b_j) with
    the validation fold's covariances; it is averaged with the weights rho_j^power that the
    retrieval space gives each pair (rho_j: training correlation). Overfitted pairs have rho ~ 1
    but c ~ 0, so a too-small penalty scores low.
    """
    folds = np.array_split(rng.permutation(X.shape[0]), n_folds)
    scores = {r: 0.0 for r in regs}
    for f in folds:
        train = np.setdiff1d(np.arange(X.shape[0]), f)
        Vxx, Vyy, Vxy = _scatter(X[f], Y[f])
        for reg, A, B, rho in _cca_weights(*_scatter(X[train], Y[train]), regs, k):
            num = np.einsum("ij,ij->j", A, Vxy @ B)
            den = np.sqrt(np.einsum("ij,ij->j", A, Vxx @ A) * np.einsum("ij,ij->j", B, Vyy @ B))
            c = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
            w = rho**power
            scores[reg] += float(c @ w / w.sum()) / n_folds if w.sum() > 0 else 0.0
    return scores


def fit_cca_map(X_train: np.ndarray, Y_train: np.ndarray, n_components: int | None = None,
                reg: float | Sequence[float] = DEFAULT_CCA_REGS, weight_power: float = 4.0, seed: SeedLike = 0,
                n_folds: int = 3) -> CcaMap:
    """Ridge CCA on training rows; both spaces are projected into the shared canonical space.

    With Cxx = Vx diag(wx) Vx' (plus reg * mean(wx) on the diagonal, likewise for Y) and
    M = diag(wx+rx)^-1/2 Vx' Cxy Vy diag(wy+ry)^-1/2 = U S V', the canonical weights are
    Wx = Vx diag(wx+rx)^-1/2 U[:, :k], Wy = Vy diag(wy+ry)^-1/2 V[:, :k] (Hotelling 1936;
    ridge CCA, Vinod 1976); k = ``n_components`` (default min(Dx, Dy)). A grid of regs is
    searched by ``n_folds``-fold CV on the training rows (seeded; weighted mean held-out canonical
    correlation, see ``_select_cca_reg``), because in-sample CCA overfits badly when Dx + Dy is not << N.
    Canonical variates have unit variance, so weak pairs would weigh as much as strong ones in a
    cosine; each dimension is scaled by its training correlation to the power ``weight_power``
    (p = 4 following Gong et al. 2014, IJCV; 0 gives the unweighted space).
    """
    X = as_matrix("X_train", X_train)
    Y = as_matrix("Y_train", Y_train)
    check_paired(X, Y, ("X_train", "Y_train"))
    k_max = min(X.shape[1], Y.shape[1])
    k = k_max if n_components is None else min(check_int("n_components", n_components, minimum=1), k_max)
    regs = _grid("reg", reg)
    check_real("weight_power", weight_power, 0.0, np.inf, high_open=True)
    cv: dict[float, float] = {}
    if len(regs) > 1:
        n_folds = check_int("n_folds", n_folds, minimum=2, maximum=X.shape[0] // 2)
        cv = _select_cca_reg(X, Y, regs, k, n_folds, weight_power, as_generator(seed))
        best = max(cv, key=cv.get)
    else:
        best = regs[0]
    _, Wx, Wy, rho = next(_cca_weights(*_scatter(X, Y), [best], k))
    return CcaMap(Wx=Wx, Wy=Wy, mean_x=X.mean(0), mean_y=Y.mean(0), correlations=rho,
                  weight_power=float(weight_power), reg=float(best), cv_score=cv)
