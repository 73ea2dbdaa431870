"""Reference formulas written out by hand, for tests that check the project against them.

Each follows the paper's definition with explicit N x N matrices (slow, obvious, independent of
``analysis``): nothing here imports the project.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import pdist, squareform


def centring_matrix(n: int) -> np.ndarray:
    """H = I - 11'/n."""
    return np.eye(n) - np.full((n, n), 1.0 / n)


def hsic(K: np.ndarray, L: np.ndarray) -> float:
    """Biased HSIC (Gretton et al. 2005): tr(K H L H) / (n - 1)^2."""
    n = K.shape[0]
    H = centring_matrix(n)
    return float(np.trace(K @ H @ L @ H)) / (n - 1) ** 2


def cka_from_grams(K: np.ndarray, L: np.ndarray) -> float:
    """CKA (Kornblith et al. 2019, eq. 3): HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))."""
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


def linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Linear CKA from the linear kernels K = XX', L = YY' (the kernels are centred inside HSIC)."""
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    return cka_from_grams(X @ X.T, Y @ Y.T)


def median_distance(X: np.ndarray) -> float:
    """The median Euclidean distance over distinct pairs i < j."""
    return float(np.median(pdist(np.asarray(X, np.float64))))


def rbf_kernel(X: np.ndarray, sigma: float) -> np.ndarray:
    """K_ij = exp(-|x_i - x_j|^2 / (2 sigma^2))."""
    D = squareform(pdist(np.asarray(X, np.float64)))
    return np.exp(-(D**2) / (2.0 * sigma**2))


def rbf_cka(X: np.ndarray, Y: np.ndarray, sigma_frac: float) -> tuple[float, float, float]:
    """RBF CKA with sigma = sigma_frac * median distance, per space; returns (cka, sigma_x, sigma_y)."""
    sx, sy = sigma_frac * median_distance(X), sigma_frac * median_distance(Y)
    return cka_from_grams(rbf_kernel(X, sx), rbf_kernel(Y, sy)), sx, sy


def zscore(X: np.ndarray) -> np.ndarray:
    """Each column minus its mean over its population sd (constant columns only centred)."""
    X = np.asarray(X, np.float64)
    sd = X.std(axis=0)
    return (X - X.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def expected_linear_cka_independent(n: int, dx: int, dy: int) -> float:
    """E[linear CKA] of two independent isotropic Gaussian spaces, to first order (ratio of expectations).

    With m = n - 1 degrees of freedom after centring: E||X'Y||_F^2 = m dx dy and, for a Wishart
    X'X, E||X'X||_F^2 = m dx (m + dx + 1), so CKA ~ sqrt(dx dy / ((m + dx + 1)(m + dy + 1))).
    """
    m = n - 1
    return float(np.sqrt(dx * dy / ((m + dx + 1) * (m + dy + 1))))
