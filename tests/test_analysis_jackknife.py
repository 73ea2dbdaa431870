"""analysis.jackknife and the fast leave-one-group-out replicates of every metric family.

Each fast path (linear family from row sums, mutual kNN with rebuilt neighbour lists, retrieval
with the group removed from queries and gallery, silhouette from per-group distance sums) is
checked against recomputing the metric from scratch on the rows outside the group, with the
public metric functions (and sklearn's silhouette as an independent reference).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import silhouette_score

from analysis import jackknife as jk
from analysis import linear_bootstrap as lb
from analysis import linear_family as lf
from analysis import similarity as S
from analysis.knn_jackknife import mutual_knn_jackknife
from analysis.label_differences import label_rdm_with_replicates, paired_difference, silhouette_with_replicates
from analysis.labels import label_rdm
from analysis.pairwise import rank_square, rdm_condensed
from analysis.retrieval import retrieval_metrics
from analysis.retrieval_jackknife import BlockRanks
from analysis.stats import bootstrap_ci


def planted(seed: int, n: int = 120, r: int = 2, dx: int = 8, dy: int = 5):
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, r))
    return (Z @ rng.standard_normal((r, dx)) + rng.standard_normal((n, dx)),
            Z @ rng.standard_normal((r, dy)) + rng.standard_normal((n, dy)))


def test_blocks_and_standard_error_of_a_mean_by_hand():
    assert [jk.n_blocks_for(n) for n in (5, 50, 400, 10**6)] == [5, 10, 20, 100]
    blocks = jk.block_ids(103, 10, seed=0)
    sizes = np.bincount(blocks)
    assert sizes.size == 10 and sizes.max() - sizes.min() <= 1
    np.testing.assert_array_equal(blocks, jk.block_ids(103, 10, seed=0))
    # grouped jackknife of a mean over G equal groups: se^2 = var(group means) / G, by algebra
    x = np.random.default_rng(1).normal(size=100)
    b = np.arange(100) % 10
    reps = np.array([x[b != g].mean() for g in range(10)])
    group_means = np.array([x[b == g].mean() for g in range(10)])
    assert jk.standard_error(reps) == pytest.approx(group_means.std(ddof=1) / np.sqrt(10))
    lo, hi = jk.t_interval(0.5, 0.1, 10, 0.95, bounds=(0.0, 0.6))
    assert lo == pytest.approx(0.5 - sps.t.ppf(0.975, 9) * 0.1) and hi == 0.6  # clipped to the range
    assert jk.bias_corrected(2.0, np.array([1.0, 1.0])) == pytest.approx(3.0)


def test_linear_family_replicates_equal_recomputation():
    X, Y = planted(0)
    pair = lf.PreparedPair(X, Y, cca_reg=0.0, cca_components=None, svcca_keep=0.99)
    blocks = jk.block_ids(120, 10, seed=3)
    reps = lb.jackknife_replicates(pair, blocks, 10)
    for g in (0, 7):
        keep = blocks != g
        Xk, Yk = X[keep], Y[keep]
        assert reps["linear_cka"][g] == pytest.approx(S.linear_cka(Xk, Yk)["value"], rel=1e-9)
        assert reps["linear_cka_debiased"][g] == pytest.approx(S.linear_cka(Xk, Yk, debiased=True)["value"], rel=1e-8)
        assert reps["mean_cca"][g] == pytest.approx(S.mean_cca(Xk, Yk)["value"], rel=1e-8)
        assert reps["procrustes_distance"][g] == pytest.approx(S.procrustes_distance(Xk, Yk)["value"], rel=1e-8)


def test_mutual_knn_replicates_rebuild_neighbour_lists():
    X, Y = planted(1, n=90)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    blocks = jk.block_ids(90, 10, seed=2)
    brute = [S.mutual_knn_alignment(Xc[blocks != g], Yc[blocks != g], k=6, centre=False, precision="float64")["value"]
             for g in range(10)]
    fast = mutual_knn_jackknife(Xc, Yc, 6, blocks, 10, precision="float64")
    np.testing.assert_allclose(fast["replicates"], brute, atol=1e-12)
    assert fast["n_exact_searches"] == 0
    # lists of exactly k: every affected row must be searched again, with the same answer
    exact = mutual_knn_jackknife(Xc, Yc, 6, blocks, 10, precision="float64", list_len=6)
    np.testing.assert_allclose(exact["replicates"], brute, atol=1e-12)
    assert exact["n_exact_searches"] > 0
    # the old per-row bootstrap held the graph fixed: its replicates ignore the rebuilt neighbours
    fixed = [fast["per_row"][blocks != g].mean() for g in range(10)]
    assert not np.allclose(fixed, brute)


def test_retrieval_replicates_remove_queries_and_gallery():
    rng = np.random.default_rng(4)
    Q = rng.standard_normal((70, 5))
    G = Q + 1.5 * rng.standard_normal((70, 5))
    G[3] = G[4]  # a tie in the gallery
    blocks = jk.block_ids(70, 10, seed=1)
    ranks = BlockRanks(Q, G, blocks, 10, chunk_size=16)
    full = retrieval_metrics(Q, G)
    for name in ("recall@1", "recall@5", "mrr", "median_rank"):
        assert ranks.metrics()[name] == pytest.approx(full[name])
    reps = ranks.replicates()
    for g in range(10):
        keep = blocks != g
        direct = retrieval_metrics(Q[keep], G[keep])
        for name in ("recall@1", "recall@10", "mrr", "median_rank"):
            assert reps[name][g] == pytest.approx(direct[name]), (g, name)


def test_silhouette_replicates_match_sklearn():
    rng = np.random.default_rng(5)
    y = np.repeat(np.arange(4), 15)
    X = rng.standard_normal((4, 6))[y] * 1.5 + rng.standard_normal((60, 6))
    blocks = jk.block_ids(60, 10, seed=0)
    value, reps = silhouette_with_replicates(X, y, blocks, 10)
    Xc = X - X.mean(0)
    assert value == pytest.approx(silhouette_score(Xc, y, metric="cosine"), abs=1e-10)
    for g in (0, 5):
        keep = blocks != g
        # the replicate keeps the full sample's centring; sklearn on the same centred rows
        assert reps[g] == pytest.approx(silhouette_score(Xc[keep], y[keep], metric="cosine"), abs=1e-10)


def test_label_rdm_replicates_are_pearson_of_fixed_ranks():
    rng = np.random.default_rng(6)
    y = rng.integers(0, 3, 40)
    X = rng.standard_normal((3, 4))[y] + rng.standard_normal((40, 4))
    blocks = jk.block_ids(40, 10, seed=0)
    value, reps = label_rdm_with_replicates(X, y, False, blocks, 10)
    Ra, Rb = rank_square(rdm_condensed(X - X.mean(0), "cosine")), rank_square(label_rdm(y, False))
    keep = np.flatnonzero(blocks != 2)
    iu = np.triu_indices(keep.size, 1)
    a, b = Ra[np.ix_(keep, keep)][iu], Rb[np.ix_(keep, keep)][iu]
    assert reps[2] == pytest.approx(np.corrcoef(a, b)[0, 1], rel=1e-9)
    out = paired_difference(value, reps, value - 0.1, reps - 0.1, 10)
    assert out["difference"] == pytest.approx(0.1) and out["se"] == pytest.approx(0.0, abs=1e-12)


def test_generic_jackknife_ci_recomputes_a_knn_statistic():
    X, Y = planted(2, n=100)

    def stat(a, b):
        return S.mutual_knn_alignment(a, b, k=5)["value"]

    out = jk.jackknife_ci(stat, X, Y, n_blocks=10, seed=0, bounds=(0.0, 1.0))
    assert out["ci_lo"] < out["estimate"] < out["ci_hi"] and out["replicates"].shape == (10,)
    # bootstrap replicates with duplicates inflate it (a copy is its own nearest neighbour):
    boot = bootstrap_ci(stat, X, Y, n_boot=20, seed=0)["replicates"]
    assert boot.mean() > out["replicates"].max()


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_knn_cv_replicates_rebuild_predictions(task):
    from analysis import labels as L
    from analysis.knn_cv_jackknife import knn_cv_with_replicates

    rng = np.random.default_rng(8)
    y = rng.integers(0, 3, 90) if task == "classification" else rng.normal(size=90)
    centre = rng.standard_normal((3, 4))[y] if task == "classification" else np.outer(y, rng.standard_normal(4))
    X = centre + rng.standard_normal((90, 4))
    splits = L.cv_splits(y, 5, seed=0, stratify=task == "classification")
    blocks = jk.block_ids(90, 10, seed=1)
    # euclidean: centring with the full fold's mean (what the replicates keep) changes nothing
    out = knn_cv_with_replicates(X, y, 5, splits, blocks, 10, metric="euclidean", task=task)
    full = L.knn_cv_accuracy(X, y, k=5, metric="euclidean", task=task, splits=splits)
    assert out["value"] == pytest.approx(full["value"])
    np.testing.assert_allclose(out["per_sample"], full["per_sample"])
    for g in (0, 3, 9):
        keep = np.flatnonzero(blocks != g)
        where = -np.ones(90, int)
        where[keep] = np.arange(keep.size)
        sub = [(where[tr[blocks[tr] != g]], where[te[blocks[te] != g]]) for tr, te in splits]
        ref = L.knn_cv_accuracy(X[keep], y[keep], k=5, metric="euclidean", task=task, splits=sub)
        assert out["replicates"][g] == pytest.approx(ref["value"]), g
        assert out["pooled_replicates"][g] == pytest.approx(np.nanmean(ref["per_sample"])), g


def test_blocks_by_group_keep_groups_together():
    groups = np.repeat(np.arange(25), 4)
    blocks, g = jk.block_ids_by_group(groups, 10, seed=0)
    assert g == 10 and all(np.unique(blocks[groups == j]).size == 1 for j in range(25))
    assert jk.block_ids_by_group(np.repeat([0, 1, 2], 5), 10, seed=0)[1] == 3
    by_group, g2 = jk.blocks_for(100, groups, seed=0)
    assert g2 == 10 and all(np.unique(by_group[groups == j]).size == 1 for j in range(25))
    by_row, g3 = jk.blocks_for(100, None, seed=0)
    assert g3 == 10 and any(np.unique(by_row[groups == j]).size > 1 for j in range(25))
    with pytest.raises(ValueError, match="at least 2 distinct groups"):
        jk.block_ids_by_group(np.zeros(10), 10, seed=0)


def test_median_interval_order_statistics_by_hand():
    from analysis.entries import median_interval

    x = np.arange(1.0, 101.0)[::-1]                       # order statistics x_(i) = i
    # n = 100: P(B <= 39) = 0.0176 <= 0.025 < P(B <= 40) = 0.0284, so [x_(40), x_(61)]
    assert sps.binom.cdf(39, 100, 0.5) <= 0.025 < sps.binom.cdf(40, 100, 0.5)
    assert median_interval(x) == (40.0, 61.0)
    assert median_interval(np.array([3.0, 1.0, 2.0, 5.0, 4.0])) == (1.0, 5.0)   # n = 5: the full range


def test_a_recall_of_zero_still_gets_an_interval_that_admits_chance():
    from analysis.entries import metric_entry, proportion_se

    se_floor = proportion_se(0.0, 100)
    z2 = 1.959963984540054**2
    p_tilde = (z2 / 2) / (100 + z2)
    assert se_floor == pytest.approx(np.sqrt(p_tilde * (1 - p_tilde) / (100 + z2)))
    e = metric_entry("retrieval_ridge_x_to_y_recall@1", 0.0, kind="at_n", replicates=np.zeros(10), n_blocks=10,
                     null=np.full(50, 0.01), n_used=100, subsampled=False, level=0.95, se_floor=se_floor)
    assert e["ci_lo"] == 0.0 and e["ci_hi"] > 0.01 and e["excess_ci_lo"] < 0 < e["excess_ci_hi"]


def test_a_median_reports_the_wider_of_its_two_intervals():
    from analysis.entries import metric_entry

    reps = 50.0 + np.linspace(-3, 3, 10)
    se = jk.standard_error(reps)
    t_lo, t_hi = jk.t_interval(50.0, se, 10)
    kw = dict(kind="at_n", replicates=reps, n_blocks=10, null=np.full(20, 50.5), bounds=(1.0, 100.0), n_used=100,
              subsampled=False, level=0.95)
    narrow = metric_entry("retrieval_ridge_x_to_y_median_rank", 50.0, interval=(49.0, 51.0), **kw)
    assert (narrow["ci_lo"], narrow["ci_hi"]) == pytest.approx((t_lo, t_hi))
    wide = metric_entry("retrieval_ridge_x_to_y_median_rank", 50.0, interval=(10.0, 90.0), **kw)
    assert (wide["ci_lo"], wide["ci_hi"]) == (10.0, 90.0)
    assert (wide["excess_ci_lo"], wide["excess_ci_hi"]) == pytest.approx((10.0 - 50.5, 90.0 - 50.5))
