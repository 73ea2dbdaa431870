"""Permutation null for held-out retrieval metrics, on a subsample of queries.

H0: the test-set pairing carries no information, i.e. the map fitted on the training rows is
useless for the test rows. Conditional on the fitted map, permuting which gallery row is the
true match of each query draws from that null. Recomputing all ranks per permutation would cost
a full n x n x D score pass, so ``RankNull`` scores m <= max_n queries against the whole gallery
once, sorts each row, and then finds the rank of any candidate match by binary search:
O(m log n) per permutation. Its observed value is computed on the same m queries, so the p-value
is exact for that subsample (less powerful than all n queries would be, never invalid); the null
mean equals chance, and the null range is that of an m-query mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from analysis._checks import SeedLike, as_generator, check_int
from analysis.neighbors import normalize_rows
from analysis.retrieval import DEFAULT_KS, metrics_from_counts
from analysis.subsample import subsample_indices

SCALARS = ("mrr", "median_rank")


class RankNull:
    """Sorted cosine scores of a query subsample against the full gallery (Q[i] matches G[i])."""

    def __init__(self, Q: np.ndarray, G: np.ndarray, max_n: int | None, seed: SeedLike, ks: Sequence[int] = DEFAULT_KS):
        self.n = G.shape[0]
        self.ks = tuple(ks)
        self.q_idx = subsample_indices(Q.shape[0], max_n, seed)
        S = normalize_rows(Q[self.q_idx]).astype(np.float32) @ normalize_rows(G).astype(np.float32).T
        self.S = S.astype(np.float64)
        # Each row shifted by 4 * row (cosines lie in [-1, 1]) so that one flat, globally sorted
        # array answers every row's binary search at once.
        self._offset = 4.0 * np.arange(self.q_idx.size, dtype=np.float64)
        flat = np.sort(self.S, axis=1)
        flat += self._offset[:, None]
        self._flat = flat.ravel()
        self._row_start = np.arange(self.q_idx.size) * self.n

    def metrics(self, perm: np.ndarray | None = None) -> dict[str, float]:
        """Recall@k, MRR, median rank on the query subsample, true match of query i = perm[i]."""
        true = self.q_idx if perm is None else perm[self.q_idx]
        v = self.S[np.arange(self.q_idx.size), true] + self._offset
        left = np.searchsorted(self._flat, v, side="left") - self._row_start
        right = np.searchsorted(self._flat, v, side="right") - self._row_start
        m = metrics_from_counts(self.n - right, right - left - 1, self.n, self.ks)
        return {k: v for k, v in m.items() if k.startswith("recall@") or k in SCALARS}

    def null(self, n_permutations: int, seed: SeedLike) -> dict[str, np.ndarray]:
        """Null draws of every metric for ``n_permutations`` random gallery assignments."""
        n_permutations = check_int("n_permutations", n_permutations, minimum=1)
        rng = as_generator(seed)
        draws = [self.metrics(rng.permutation(self.n)) for _ in range(n_permutations)]
        return {k: np.array([d[k] for d in draws]) for k in draws[0]}
