"""Random subsampling of rows for the metrics whose cost is quadratic in N.

RBF CKA, RSA and label-RDM correlation build N x N matrices; at N = 50,000 one float64 matrix is
20 GB, so these metrics run on a uniform random subsample of ``max_n`` recordings drawn without
replacement. The subsample is a simple random sample, so the subsample statistic is a consistent
estimate of the same population quantity; it only loses precision, which the bootstrap CI (also
computed on the subsample) reports honestly. Every metric that subsamples says so in its result
(``n_used``, ``subsampled``).
"""

from __future__ import annotations

import numpy as np

from analysis._checks import SeedLike, as_generator, check_int


def subsample_indices(n: int, max_n: int | None, seed: SeedLike) -> np.ndarray:
    """Sorted indices of a uniform random subsample of ``min(n, max_n)`` rows out of ``n``.

    ``max_n=None`` or ``n <= max_n`` returns ``arange(n)`` (no randomness used). Sorting keeps the
    original row order, so the same rows of two paired matrices stay paired.
    Deterministic for a fixed int ``seed``.
    """
    n = check_int("n", n, minimum=1)
    if max_n is None or n <= max_n:
        return np.arange(n, dtype=np.int64)
    max_n = check_int("max_n", max_n, minimum=2)
    rng = as_generator(seed)
    return np.sort(rng.choice(n, size=max_n, replace=False)).astype(np.int64)


def subsample_info(n: int, idx: np.ndarray) -> dict:
    """The bookkeeping every N x N metric reports: rows used and whether that is a subsample."""
    return {"n_used": int(idx.size), "subsampled": bool(idx.size < n)}
