"""The permutation nulls' shared-work shortcuts give what recomputing each draw from scratch gives.

* mutual kNN: neighbour lists permuted (``OverlapCounter``) vs lists searched again on Y[perm];
* retrieval: rank tables read at the permuted matches (``RankNull``) vs ranking G[perm] again
  (``retrieval_metrics``), with tied gallery rows;
* label RDM: class sums (``CodedRdmPair``) vs permuting the label RDM (``RdmPair``), categorical
  and few-valued numeric labels, and the fallback when the second RDM is not a label RDM;
* retrieval jackknife: per-group counts with unequal groups (padding) vs counting directly.
"""

from __future__ import annotations

import numpy as np
import pytest

from analysis import jackknife as jk
from analysis.labels import label_rdm, label_rdm_correlation
from analysis.pairwise import CodedRdmPair, RdmPair, rdm_condensed
from analysis.retrieval import retrieval_metrics
from analysis.retrieval_jackknife import BlockRanks
from analysis.retrieval_null import RankNull, rank_tables
from analysis.similarity import OverlapCounter, knn_overlap, mutual_knn_alignment


def paired(seed: int, n: int, d: int = 6, noise: float = 1.0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    return X, X @ rng.standard_normal((d, d)) + noise * rng.standard_normal((n, d)), rng


def test_overlap_counter_equals_neighbour_lists_searched_again():
    X, Y, rng = paired(0, 150)
    base = mutual_knn_alignment(X, Y, k=6)
    counter = OverlapCounter(base["neighbors_x"], base["neighbors_y"])
    assert counter.mean() == pytest.approx(base["value"], abs=1e-15)
    for _ in range(4):
        perm = rng.permutation(150)
        again = mutual_knn_alignment(X, Y[perm], k=6)
        assert counter.mean(perm) == pytest.approx(again["value"], abs=1e-15)
        np.testing.assert_array_equal(counter.hits(perm) / 6, again["per_row"])
        np.testing.assert_array_equal(knn_overlap(base["neighbors_x"], base["neighbors_y"], perm), again["per_row"])
    within = np.arange(150)
    within[:50] = rng.permutation(50)  # a within-stratum draw: rows 50.. keep their partner
    assert counter.mean(within) == pytest.approx(mutual_knn_alignment(X, Y[within], k=6)["value"], abs=1e-15)


def test_rank_tables_count_higher_and_tied_scores():
    S = np.array([[0.5, 0.1, 0.5, 0.9, 0.5], [0.0, 0.0, 0.0, 0.0, 0.0], [3.0, 2.0, 1.0, 0.0, -1.0]], np.float32)
    greater, ties = rank_tables(S, chunk=2)
    np.testing.assert_array_equal(greater, [[1, 4, 1, 0, 1], [0, 0, 0, 0, 0], [0, 1, 2, 3, 4]])
    np.testing.assert_array_equal(ties, [[2, 0, 2, 0, 2], [4, 4, 4, 4, 4], [0, 0, 0, 0, 0]])


@pytest.mark.parametrize("max_n", [None, 40])
def test_rank_null_draw_equals_ranking_the_permuted_gallery(max_n):
    Q, G, rng = paired(1, 120, noise=2.0)
    G[10] = G[11] = G[12]  # tied gallery items
    rn = RankNull(Q, G, max_n=max_n, seed=3)
    for perm in [None] + [rng.permutation(120) for _ in range(4)]:
        direct = retrieval_metrics(Q, G if perm is None else G[perm])  # query i's match: G[perm[i]]
        got = rn.metrics(perm)
        for name, value in got.items():
            per_query = direct["per_query"][name][rn.q_idx]
            want = float(np.median(per_query)) if name == "median_rank" else float(per_query.mean())
            assert value == pytest.approx(want, abs=1e-12), (name, perm is None)


@pytest.mark.parametrize("numeric", [False, True])
def test_coded_rdm_pair_equals_permuting_the_label_rdm(numeric):
    X, _, rng = paired(2, 90)
    y = rng.integers(0, 5, 90).astype(np.float64 if numeric else np.int64)
    y[7] = 9  # a class of one
    plain = RdmPair(rdm_condensed(X, "cosine"), label_rdm(y, numeric))
    coded = CodedRdmPair(rdm_condensed(X, "cosine"), label_rdm(y, numeric), y)
    assert coded.g is not None
    assert coded.stat() == plain.stat()
    for _ in range(5):
        perm = rng.permutation(90)
        assert coded.stat(perm) == pytest.approx(plain.stat(perm), abs=1e-12)


def test_coded_rdm_pair_falls_back_when_the_rdm_is_not_a_label_rdm():
    X, Y, rng = paired(3, 60)
    y = rng.integers(0, 3, 60)
    coded = CodedRdmPair(rdm_condensed(X, "cosine"), rdm_condensed(Y, "cosine"), y)
    assert coded.g is None
    perm = rng.permutation(60)
    assert coded.stat(perm) == RdmPair(rdm_condensed(X, "cosine"), rdm_condensed(Y, "cosine")).stat(perm)


def test_label_rdm_correlation_null_unchanged_by_the_class_sums():
    X, _, rng = paired(4, 70)
    y = rng.integers(0, 4, 70)
    out = label_rdm_correlation(X, y, n_permutations=30, seed=5, max_n=None)
    pair = RdmPair(rdm_condensed(X - X.mean(0), "cosine"), label_rdm(y, False))
    rng = np.random.default_rng(5)
    expected = np.array([pair.stat(rng.permutation(70)) for _ in range(30)])
    np.testing.assert_allclose(out["null"], expected, atol=1e-12)


def test_block_ranks_with_unequal_groups_counts_directly():
    Q, G, rng = paired(6, 80, noise=1.5)
    G[20] = G[21]
    groups = rng.integers(0, 17, 80)  # pieces of unequal size: groups of 0..11 rows
    blocks, g = jk.block_ids_by_group(groups, 6, seed=0)
    ranks = BlockRanks(Q, G, blocks, g, chunk_size=13)
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    Gn = G / np.linalg.norm(G, axis=1, keepdims=True)
    S = (Qn.astype(np.float32) @ Gn.astype(np.float32).T)
    v = S[np.arange(80), np.arange(80)][:, None]
    for b in range(g):
        cols = blocks == b
        np.testing.assert_array_equal(ranks.greater_by_block[:, b], (S[:, cols] > v).sum(1))
        same = (S[:, cols] == v).sum(1) - cols[np.arange(80)]
        np.testing.assert_array_equal(ranks.ties_by_block[:, b], same)
    reps = ranks.replicates()
    for b in range(g):
        keep = blocks != b
        assert reps["mrr"][b] == pytest.approx(retrieval_metrics(Q[keep], G[keep])["mrr"])
