"""Exact blocked top-k (analysis.topk) and the neighbour lists built on it, against brute-force references.

The reference rule: neighbours by score descending, equal scores by index ascending, i.e. the first
k columns of a stable sort of -S. scikit-learn's NearestNeighbors (brute force) is the independent
reference on data without ties; data with exact ties (integer coordinates, duplicated rows,
constant rows) check the tie rule on every path: the exact bound (narrow blocks), the sampled
bound (blocks wider than 4 x max(SAMPLE_COLUMNS, 16k) columns) and the whole-row sort of rows
with massive ties.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from analysis.neighbors import knn_indices
from analysis.topk import SAMPLE_COLUMNS, top_k_rows

WIDE = 4 * SAMPLE_COLUMNS + 600  # wider than 4 x SAMPLE_COLUMNS: the sampled bound is used (k <= 128)


def stable_reference(S: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-S, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("n", [40, 3000, WIDE])
@pytest.mark.parametrize("k", [1, 5, 28])
def test_top_k_rows_equals_stable_sort_with_ties(n, k):
    rng = np.random.default_rng(n + k)
    S = rng.standard_normal((23, n)).astype(np.float32)
    S[:, ::3] = np.round(S[:, ::3])          # many exact ties, at and around every row's k-th value
    S[0] = 0.0                               # a constant row: every entry ties
    S[1, : n // 2] = 2.0                     # half a row tied at the top
    S[2, 5] = -np.inf                        # an excluded entry (a query's own column) comes last
    S[3] = np.round(S[3] * 2) / 2            # a coarse grid: ties straddle the k-th place
    np.testing.assert_array_equal(top_k_rows(S, k), stable_reference(S, k))


def test_top_k_rows_sampled_bound_finds_neighbours_outside_the_sample():
    # the k largest entries all sit in columns the sample skips (every (n // m)-th column is sampled)
    n, k = WIDE + 3000, 10
    S = np.zeros((4, n), dtype=np.float32)
    step = n // max(SAMPLE_COLUMNS, 16 * k)
    off_sample = np.flatnonzero(np.arange(n) % step != 0)
    S[:, off_sample[-k:]] = np.arange(1, k + 1, dtype=np.float32)
    S[:, ::step] = 0.5
    np.testing.assert_array_equal(top_k_rows(S, k), stable_reference(S, k))


def test_top_k_rows_rejects_k_outside_the_block():
    with pytest.raises(ValueError, match="k: expected 1 <= k <= 5"):
        top_k_rows(np.zeros((2, 5)), 6)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_knn_indices_match_sklearn_on_a_wide_gallery(metric):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((WIDE, 6)) @ rng.standard_normal((6, 6))
    nn = NearestNeighbors(n_neighbors=12, metric=metric, algorithm="brute").fit(X)
    expected = nn.kneighbors(X[:300], 13, return_distance=False)[:, 1:]  # first: the row itself
    got = knn_indices(X, 12, metric=metric, precision="float64", chunk_size=128)[:300]
    np.testing.assert_array_equal(got, expected)
    Q = rng.standard_normal((50, 6))
    np.testing.assert_array_equal(knn_indices(X, 7, queries=Q, metric=metric, precision="float64"),
                                  nn.kneighbors(Q, 7, return_distance=False))


def test_knn_indices_ties_go_to_the_lower_index():
    # integer points: squared distances are exact in float32, so equal distances are exact ties
    rng = np.random.default_rng(4)
    X = rng.integers(-3, 4, size=(WIDE, 3)).astype(np.float64)
    k = 9
    got = knn_indices(X, k, metric="euclidean", chunk_size=500)
    d2 = ((X[:400, None, :] - X[None, :, :]) ** 2).sum(-1)
    d2[np.arange(400), np.arange(400)] = np.inf  # the row itself is never its own neighbour
    np.testing.assert_array_equal(got[:400], np.argsort(d2, axis=1, kind="stable")[:, :k])
    # duplicated rows: cosine ties among the copies, broken by index
    Y = np.repeat(rng.standard_normal((40, 5)), 5, axis=0)
    lists = knn_indices(Y, 4, metric="cosine")
    np.testing.assert_array_equal(lists[0], [1, 2, 3, 4])
    np.testing.assert_array_equal(lists[7], [5, 6, 8, 9])
