"""Tests for analysis.stats, analysis.subsample, analysis.labels and analysis.compare.compare_labels."""

from __future__ import annotations

import numpy as np
import pytest

from analysis import labels as L
from analysis.compare import compare_labels
from analysis.similarity import linear_cka
from analysis.stats import bootstrap_ci, bootstrap_mean_ci, paired_difference_test, permutation_p_value, permutation_test
from analysis.subsample import subsample_indices


# ---------------------------------------------------------------------------------------------
# Permutation p-values
# ---------------------------------------------------------------------------------------------
def test_p_value_formula():
    null = np.array([0.1, 0.6, 0.5, 0.2])
    assert permutation_p_value(0.5, null) == (1 + 2) / (1 + 4)          # 0.6 and the tie 0.5
    assert permutation_p_value(0.5, null, "less") == (1 + 3) / (1 + 4)
    assert permutation_p_value(-0.55, null, "two-sided") == (1 + 1) / (1 + 4)
    assert permutation_p_value(9.0, null) == 1 / 5                     # never 0
    assert np.isnan(permutation_p_value(np.nan, null))


def _corr(X, Y):
    return float(np.corrcoef(X[:, 0], Y[:, 0])[0, 1])


def test_permutation_test_known_extremes():
    x = np.arange(12, dtype=float)[:, None]
    # Perfect pairing: only the identity permutation (probability 1/12!) reaches r = 1.
    res = permutation_test(_corr, x, x, n_permutations=199, seed=0)
    assert res["observed"] == pytest.approx(1.0)
    assert res["p_value"] == pytest.approx(1 / 200)
    assert res["null"].shape == (199,) and res["n_permutations"] == 199
    assert res["null_lo"] < res["null_mean"] < res["null_hi"]
    # Perfectly reversed: every null draw is >= observed -> p = 1.
    assert permutation_test(_corr, x, -x, n_permutations=99, seed=0)["p_value"] == 1.0


def test_permutation_null_has_the_known_distribution():
    # Fixed points of a uniform random permutation are ~ Poisson(1): mean 1, P(0) = 1/e.
    x = np.arange(50, dtype=float)[:, None]
    res = permutation_test(lambda a, b: float(np.sum(a[:, 0] == b[:, 0])), x, x, n_permutations=3000, seed=1)
    assert res["null_mean"] == pytest.approx(1.0, abs=0.08)
    assert np.mean(res["null"] == 0) == pytest.approx(np.exp(-1), abs=0.03)
    assert res["observed"] == 50 and res["p_value"] == 1 / 3001


def test_permutation_test_is_deterministic_for_a_seed():
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((30, 3)), rng.standard_normal((30, 2))
    a = permutation_test(_corr, X, Y, n_permutations=50, seed=7)
    b = permutation_test(_corr, X, Y, n_permutations=50, seed=7)
    np.testing.assert_array_equal(a["null"], b["null"])
    assert not np.array_equal(a["null"], permutation_test(_corr, X, Y, n_permutations=50, seed=8)["null"])


# ---------------------------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------------------------
def test_bootstrap_ci_covers_smooth_statistic_and_is_deterministic():
    rng = np.random.default_rng(1)
    Z = rng.standard_normal((150, 2))
    X = Z @ rng.standard_normal((2, 8)) + rng.standard_normal((150, 8))
    Y = Z @ rng.standard_normal((2, 5)) + rng.standard_normal((150, 5))
    stat = lambda a, b: linear_cka(a, b)["value"]  # noqa: E731
    a = bootstrap_ci(stat, X, Y, n_boot=200, seed=3)
    b = bootstrap_ci(stat, X, Y, n_boot=200, seed=3)
    assert a["ci_lo"] <= a["estimate"] <= a["ci_hi"]
    assert (a["ci_lo"], a["ci_hi"]) == (b["ci_lo"], b["ci_hi"])
    np.testing.assert_array_equal(a["replicates"], b["replicates"])
    dropped = bootstrap_ci(stat, X, Y, n_boot=20, seed=3, duplicates="drop")
    assert dropped["duplicates"] == "drop" and dropped["ci_lo"] <= dropped["ci_hi"]


def test_bootstrap_mean_ci_matches_normal_theory():
    v = np.random.default_rng(2).standard_normal(2000)
    ci = bootstrap_mean_ci(v, n_boot=2000, seed=0)
    se = v.std(ddof=1) / np.sqrt(v.size)
    assert ci["ci_lo"] == pytest.approx(v.mean() - 1.96 * se, abs=0.3 * se)
    assert ci["ci_hi"] == pytest.approx(v.mean() + 1.96 * se, abs=0.3 * se)


# ---------------------------------------------------------------------------------------------
# Paired comparison of two media
# ---------------------------------------------------------------------------------------------
def test_paired_difference_test_exact_sign_flip():
    a = np.array([0.80, 0.82, 0.79, 0.85, 0.81])
    res = paired_difference_test(a, a - 0.05, seed=0)
    assert res["mean_difference"] == pytest.approx(0.05)
    assert res["p_exact"] and res["p_value"] == pytest.approx(2 / 32)  # all-plus and all-minus of 2^5
    assert res["ci_lo"] == pytest.approx(0.05) and res["ci_hi"] == pytest.approx(0.05)
    assert res["wilcoxon_p"] == pytest.approx(0.0625)
    same = paired_difference_test(a, a, seed=0)
    assert same["p_value"] == 1.0 and same["wilcoxon_p"] == 1.0


def test_paired_difference_test_monte_carlo_and_calibration():
    rng = np.random.default_rng(3)
    shifted = paired_difference_test(rng.normal(0.3, 1, 400), rng.normal(0.0, 1, 400), seed=1)
    assert not shifted["p_exact"] and shifted["p_value"] < 0.01 and shifted["wilcoxon_p"] < 0.01
    assert shifted["ci_lo"] < 0.3 < shifted["ci_hi"]
    null_ps = [paired_difference_test(rng.normal(size=30), rng.normal(size=30), seed=s, n_permutations=999)["p_value"]
               for s in range(60)]
    assert np.mean(np.asarray(null_ps) <= 0.05) <= 0.15
    with pytest.raises(ValueError, match="a_scores, b_scores: expected two 1-D arrays of equal length"):
        paired_difference_test(np.zeros(3), np.zeros(4))


# ---------------------------------------------------------------------------------------------
# Subsampling
# ---------------------------------------------------------------------------------------------
def test_subsample_indices():
    idx = subsample_indices(1000, 100, seed=4)
    assert idx.size == 100 and np.unique(idx).size == 100 and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(idx, subsample_indices(1000, 100, seed=4))
    np.testing.assert_array_equal(subsample_indices(50, 100, seed=4), np.arange(50))
    np.testing.assert_array_equal(subsample_indices(50, None, seed=4), np.arange(50))
    with pytest.raises(ValueError, match="max_n: expected an integer >= 2"):
        subsample_indices(1000, 1, seed=0)
    with pytest.raises(ValueError, match="seed: expected a non-negative int"):
        subsample_indices(1000, 10, seed=-1)


# ---------------------------------------------------------------------------------------------
# Label structure
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clusters():
    """Three well-separated Gaussian clusters in 16 dims, 60 points each, plus random labels."""
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((3, 16)) * 6.0
    y = np.repeat(np.arange(3), 60)
    X = centres[y] + rng.standard_normal((180, 16))
    return X, y, rng.permutation(y)


def test_separated_clusters_have_strong_label_structure(clusters):
    X, y, _ = clusters
    knn = L.knn_cv_accuracy(X, y, k=5, seed=0)
    assert knn["value"] > 0.95 and knn["chance"] == pytest.approx(1 / 3)
    assert knn["per_fold"].shape == (5,) and knn["per_sample"].shape == (180,)
    assert L.silhouette(X, y, seed=0)["value"] > 0.5
    rdm = L.label_rdm_correlation(X, y, n_permutations=200, seed=0)
    assert rdm["value"] > 0.5 and rdm["p_value"] < 0.01


def test_random_labels_are_at_chance(clusters):
    X, _, y_random = clusters
    knn = L.knn_cv_accuracy(X, y_random, k=5, seed=0)
    assert abs(knn["value"] - knn["chance"]) < 0.12
    assert L.label_rdm_correlation(X, y_random, n_permutations=200, seed=0)["p_value"] > 0.05
    assert abs(L.silhouette(X, y_random, seed=0)["value"]) < 0.1


def test_numeric_labels_regression_and_rdm():
    rng = np.random.default_rng(6)
    t = rng.uniform(0, 10, 200)  # e.g. year / tempo
    X = np.column_stack([t, rng.standard_normal((200, 5))])
    res = L.knn_cv_accuracy(X, t, k=5, task="regression", metric="euclidean", seed=0)
    assert res["value"] > 0.8 and res["chance"] == 0.0
    rdm = L.label_rdm_correlation(X, t, numeric=True, n_permutations=100, seed=0, metric="euclidean")
    assert rdm["p_value"] < 0.01


def test_knn_standardisation_is_fitted_on_each_training_fold():
    rng = np.random.default_rng(9)
    y = np.repeat([0, 1], 40)
    X = np.column_stack([y * 0.5 + rng.normal(0, 0.3, 80), rng.normal(0, 20.0, 80)])  # label in the small feature
    raw = L.knn_cv_accuracy(X, y, k=5, seed=0, metric="euclidean")
    scaled = L.knn_cv_accuracy(X, y, k=5, seed=0, metric="euclidean", standardize=True)
    assert scaled["value"] > raw["value"] + 0.15                 # the wide noise feature no longer dominates
    # test rows far out in the noise feature: scaling fitted on all rows would shrink that feature
    Xtr, ytr = X[::2], y[::2]
    Xte = np.column_stack([np.full(10, 0.5), np.linspace(-400, 400, 10)])
    mu, sd = Xtr.mean(0), Xtr.std(0)
    ref = L.knn_predict((Xtr - mu) / sd, ytr, (Xte - mu) / sd, 5, metric="euclidean")   # by hand, train rows only
    leaky_sd = np.vstack([Xtr, Xte]).std(0)
    leaky = L.knn_predict((Xtr - mu) / leaky_sd, ytr, (Xte - mu) / leaky_sd, 5, metric="euclidean")
    assert not np.array_equal(ref, leaky)                                   # the check has teeth
    np.testing.assert_array_equal(L.knn_predict(Xtr, ytr, Xte, 5, metric="euclidean", standardize=True), ref)


def test_group_aware_splits_never_share_a_group():
    rng = np.random.default_rng(7)
    groups = rng.integers(0, 40, 300)        # e.g. piece ids: several recordings per piece
    y = groups % 3                           # label constant within a group, as for composer
    for tr, te in L.cv_splits(y, n_splits=5, groups=groups, seed=0):
        assert np.intersect1d(groups[tr], groups[te]).size == 0
        assert np.intersect1d(tr, te).size == 0
    folds = L.cv_splits(y, n_splits=5, groups=groups, seed=0)
    assert np.array_equal(np.sort(np.concatenate([te for _, te in folds])), np.arange(300))
    with pytest.raises(ValueError, match="groups: expected at least n_splits=5 distinct groups"):
        L.cv_splits(y, n_splits=5, groups=groups % 4, seed=0)


def test_subsampled_label_rdm_reports_n_used(clusters):
    X, y, _ = clusters
    res = L.label_rdm_correlation(X, y, n_permutations=20, seed=0, max_n=50)
    assert res["n_used"] == 50 and res["subsampled"]
    with pytest.raises(ValueError, match="y: expected a 1-D array of length 180"):
        L.label_rdm_correlation(X, y[:10])


def test_compare_labels_side_by_side(clusters):
    X, y, _ = clusters
    rng = np.random.default_rng(8)
    X_noisy = X + 6.0 * rng.standard_normal(X.shape)  # a medium that carries less label information
    groups = np.arange(180) // 3
    res = compare_labels(X, X_noisy, y, groups=groups, seed=0, k=5, n_permutations=100, n_boot=200)
    a, s = res["audio"], res["symbolic"]
    assert a["knn"]["value"] > s["knn"]["value"]
    assert a["knn"]["ci_lo"] <= a["knn"]["value"] <= a["knn"]["ci_hi"]
    assert a["label_rdm"]["n_used"] == s["label_rdm"]["n_used"] == 180
    d = res["difference_audio_minus_symbolic"]
    assert d["knn_by_fold"]["n_units"] == 5 and d["knn_by_recording"]["n_units"] == 180
    # by recording: the sign flip given the predictions (the old p_value) is < 0.01; the reported p also
    # counts that the recordings train each other's neighbours and that groups of 3 are not independent
    rec = d["knn_by_recording"]
    assert d["knn_by_fold"]["mean_difference"] > 0 and rec["p_sign_flip"] < 0.01 and rec["p_value"] < 0.05
    assert rec["p_sign_flip"] < rec["p_value"] and 0 < rec["ci_lo"] < rec["mean_difference"] < rec["ci_hi"]
    assert d["silhouette"] > 0 and d["label_rdm"] > 0
    # issue 16: silhouette and RDM differences come with a paired interval and p, adjusted with the family
    for name in ("silhouette", "label_rdm"):
        t = d[f"{name}_test"]
        assert t["difference"] == pytest.approx(d[name]) and 0 < t["ci_lo"] <= t["difference"] <= t["ci_hi"], name
        assert t["p_value"] < 0.01 and t["p_value"] <= t["p_holm"] <= 1 and "Holm" in t["adjustment"], name
    assert res["multiplicity"] == [{"family": "labels", "method": "holm", "size": 6, "members": [
        "audio.label_rdm", "symbolic.label_rdm", "knn_by_fold", "knn_by_recording", "label_rdm_test", "silhouette_test"]}]
    assert res["primary"]["metric"] == "knn_by_recording" and a["knn"]["ci_hi"] <= 1.0
    assert "whole groups" in a["knn"]["ci_of"] and a["knn"]["n_blocks"] <= 60   # 60 groups of 3 recordings
    again = compare_labels(X, X_noisy, y, groups=groups, seed=0, k=5, n_permutations=100, n_boot=200)
    assert again["difference_audio_minus_symbolic"]["knn_by_recording"] == d["knn_by_recording"]


def test_pooled_r2_interval_is_on_r2_and_covers_the_estimate():
    from analysis.compare import pooled_r2_ci

    rng = np.random.default_rng(0)
    y = rng.normal(size=400)
    pred = y + rng.normal(scale=0.5, size=400)  # true R^2 = 1 - 0.25 / 1 = 0.75
    out = pooled_r2_ci((pred - y) ** 2, y, 500, np.random.default_rng(1), 0.95)
    assert 0.6 < out["ci_lo"] <= out["r2_pooled"] <= out["ci_hi"] < 0.9
    assert abs(out["r2_pooled"] - 0.75) < 0.05


def test_auto_task_one_rule_for_every_job():
    import pandas as pd

    from analysis.labels import AUTO_REGRESSION_MIN_UNIQUE, auto_task

    assert AUTO_REGRESSION_MIN_UNIQUE == 20
    assert auto_task(pd.Series(np.linspace(60, 180, 20))) == "regression"   # bpm-like
    assert auto_task(pd.Series(np.arange(19) % 19)) == "classification"     # few values: classes
    assert auto_task(pd.Series(["3/4", "4/4"] * 20)) == "classification"
    assert auto_task(pd.Series([True, False] * 20)) == "classification"
    assert auto_task(np.arange(40)) == "regression"                          # arrays are taken too
