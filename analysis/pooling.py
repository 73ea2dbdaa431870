"""Frame sequences -> one fixed-size vector per recording, for ``--embedding_type sequence``.

Rule (``mean_std_pool``): for a recording with frames F of shape (T, D), the pooled vector is
``concat(mean_t F, std_t F)`` of length 2D, where std is the population standard deviation over
frames (ddof=0; a one-frame recording has std 0). The mean half equals the store's ``average``;
the std half adds how much each feature moves over time, which the average discards.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mean_std_pool(sequences: Sequence[np.ndarray]) -> np.ndarray:
    """(N, 2D) float32: per recording, mean over frames followed by std over frames (ddof=0)."""
    if len(sequences) == 0:
        raise ValueError("sequences: expected at least one recording, got none")
    dims = {np.asarray(s).shape[-1] if np.ndim(s) == 2 else None for s in sequences}
    if None in dims or len(dims) != 1:
        raise ValueError(f"sequences: expected 2-D (T, D) arrays of one width D, got widths {sorted(map(str, dims))}")
    out = np.empty((len(sequences), 2 * dims.pop()), dtype=np.float32)
    for i, seq in enumerate(sequences):
        frames = np.asarray(seq, dtype=np.float64)
        if frames.shape[0] == 0:
            raise ValueError(f"sequences[{i}]: expected at least one frame, got 0")
        out[i] = np.concatenate([frames.mean(axis=0), frames.std(axis=0)])
    return out


def zscore_features(X: np.ndarray) -> np.ndarray:
    """Each column to mean 0, std 1 over rows (constant columns to 0), float32.

    Hand-made features mix units (dB next to proportions), and unscaled, the widest-ranging ones
    dominate every linear and distance metric; z-scoring uses only per-feature marginals, no pairing.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X: expected a 2-D (N, D) array, got shape {X.shape}")
    std = X.std(axis=0)
    return ((X - X.mean(axis=0)) / np.where(std > 0, std, 1.0)).astype(np.float32)


def zscore_fitted(X: np.ndarray, fit_rows: np.ndarray | None = None) -> np.ndarray:
    """Each column minus the mean and over the std of the ``fit_rows`` only (all rows if None), float64.

    For held-out evaluation (retrieval test rows, CV test folds): the scaling is a fitted step and
    must not see the rows it is evaluated on. Columns constant on the fit rows are only centred.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X: expected a 2-D (N, D) array, got shape {X.shape}")
    fit = X if fit_rows is None else X[np.asarray(fit_rows)]
    if fit.shape[0] < 2:
        raise ValueError(f"fit_rows: expected at least 2 rows to fit the scaling on, got {fit.shape[0]}")
    std = fit.std(axis=0)
    return (X - fit.mean(axis=0)) / np.where(std > 0, std, 1.0)
