"""Permutation nulls of the audio-symbolic pairing: free, and restricted to strata (label or group).

Two questions, two nulls:

* free null (pairing shuffled over all rows): "are the two spaces related at all?". Two spaces
  that share only a label (each composer's recordings sit together in both) are related, and
  this null rejects.
* within-stratum null (pairing shuffled only among rows of the same label or group): "does each
  recording's audio embedding match its own symbolic embedding beyond what the label explains?".
  Under H0 "X and Y are independent given the stratum" pairings within a stratum are
  exchangeable, so this test is exact; a shared recording-level signal rejects it, shared label
  centroids do not.

Strata with one row cannot move: those rows keep their pairing in every draw. Numeric labels are
cut into quantile bins first (``strata_codes``). Draws use the same p-value rule as everywhere
(``analysis.stats.permutation_p_value``).
"""

from __future__ import annotations

import numpy as np

from analysis._checks import SeedLike, as_generator, check_int

DEFAULT_BINS = 10


def strata_codes(values, numeric: bool = False, n_bins: int = DEFAULT_BINS) -> np.ndarray:
    """(n,) int64 stratum code per row: the distinct values, or ``n_bins`` quantile bins if ``numeric``.

    Raises ValueError for a non-1-D input or missing values (NaN / None), which would form a
    stratum of their own by accident.
    """
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"strata: expected a non-empty 1-D array, got shape {arr.shape}")
    if numeric:
        v = arr.astype(np.float64)
        if not np.all(np.isfinite(v)):
            raise ValueError(f"strata: expected finite numeric values, got {int(np.sum(~np.isfinite(v)))} NaN/inf")
        n_bins = check_int("n_bins", n_bins, minimum=1)
        edges = np.unique(np.quantile(v, np.linspace(0, 1, n_bins + 1)[1:-1]))
        return np.searchsorted(edges, v, side="right").astype(np.int64)
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ValueError("strata: expected no missing labels, got NaN")
    if arr.dtype == object and any(v is None for v in arr):
        raise ValueError("strata: expected no missing labels, got None")
    return np.unique(arr, return_inverse=True)[1].astype(np.int64).ravel()


class StrataPermuter:
    """Uniform random permutations of n rows that move rows only within their stratum.

    ``perm[i]`` is the row of Y paired with row i of X, as for a free permutation; ``perm`` maps
    every stratum onto itself. Precomputes the stratum index lists once, so a draw costs O(n).
    """

    def __init__(self, codes: np.ndarray):
        codes = np.asarray(codes)
        if codes.ndim != 1 or codes.size < 2:
            raise ValueError(f"strata: expected a 1-D array of at least 2 codes, got shape {codes.shape}")
        self.n = codes.size
        order = np.argsort(codes, kind="stable")
        bounds = np.flatnonzero(np.diff(codes[order])) + 1
        self.groups = [g for g in np.split(order, bounds) if g.size > 1]
        self.n_strata = int(np.unique(codes).size)
        self.n_movable = int(sum(g.size for g in self.groups))
        if self.n_movable < 2:
            raise ValueError(f"strata: every one of the {self.n_strata} strata holds a single row, so no pairing "
                             "can move; a within-stratum null needs strata with at least 2 rows")

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        perm = np.arange(self.n)
        for g in self.groups:
            perm[g] = g[rng.permutation(g.size)]
        return perm

    def describe(self) -> dict:
        return {"n_strata": self.n_strata, "n_movable": self.n_movable, "n_rows": self.n}


def free_permuter(n: int):
    """A permuter with the ``StrataPermuter`` call signature that shuffles all n rows."""
    n = check_int("n", n, minimum=2)
    return lambda rng: rng.permutation(n)


def draws(permuter, count: int, seed: SeedLike):
    """Generator of ``count`` permutations from ``permuter`` with a reproducible stream."""
    count = check_int("n_permutations", count, minimum=1)
    rng = as_generator(seed)
    for _ in range(count):
        yield permuter(rng)
