"""Acceptance tests for analysis.similarity, analysis.linear_family, analysis.pairwise, analysis.compare.

Invariances (a rotated, scaled, translated copy scores as identical), behaviour under the null
(independent spaces are not significant; p-values are calibrated), power (a planted shared
low-rank structure is detected by every metric) and hand-computed answers.
"""

from __future__ import annotations

import numpy as np
import pytest

from analysis import linear_bootstrap as lb
from analysis import linear_family as lf
from analysis import similarity as S
from analysis.compare import compare_spaces
from analysis.pairwise import KernelPair, RdmPair, rbf_gram, rdm_condensed
from analysis.stats import permutation_test


def _orthonormal_rows(rng: np.random.Generator, d_in: int, d_out: int) -> np.ndarray:
    Q, _ = np.linalg.qr(rng.standard_normal((d_out, d_out)))
    return Q[:d_in]  # (d_in, d_out) with orthonormal rows: an isometry into a larger space


@pytest.fixture(scope="module")
def rotated_pair():
    """X (200, 64) and Y = 3.7 X Q + t with Q an isometry into 80 dims (so dims differ)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 64))
    Y = 3.7 * X @ _orthonormal_rows(rng, 64, 80) + rng.standard_normal(80) * 5
    return X, Y


def planted(seed: int, n: int = 200, r: int = 3, dx: int = 64, dy: int = 32):
    """Shared latent Z (n, r): X = Z A + noise (dx dims), Y = Z B + noise (dy dims)."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, r))
    X = Z @ rng.standard_normal((r, dx)) + rng.standard_normal((n, dx))
    Y = Z @ rng.standard_normal((r, dy)) + rng.standard_normal((n, dy))
    return X, Y


def independent(seed: int, n: int = 200, dx: int = 64, dy: int = 32):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, dx)), rng.standard_normal((n, dy))


# ---------------------------------------------------------------------------------------------
# Invariance: a rotated + isotropically scaled + translated copy is "the same space"
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("method", ["feature", "gram"])
def test_linear_cka_is_one_for_rotated_copy(rotated_pair, debiased, method):
    X, Y = rotated_pair
    assert S.linear_cka(X, Y, debiased=debiased, method=method)["value"] == pytest.approx(1.0, abs=1e-6)


def test_other_metrics_score_rotated_copy_as_identical(rotated_pair):
    X, Y = rotated_pair
    assert S.rbf_cka(X, Y)["value"] == pytest.approx(1.0, abs=1e-6)
    assert S.mutual_knn_alignment(X, Y, k=10)["value"] == 1.0
    assert S.mutual_knn_alignment(X, Y, k=10, metric="euclidean")["value"] == 1.0
    assert S.rsa(X, Y, metric="cosine")["value"] == pytest.approx(1.0, abs=1e-9)
    assert S.rsa(X, Y, metric="euclidean")["value"] == pytest.approx(1.0, abs=1e-9)
    assert S.procrustes_distance(X, Y)["value"] == pytest.approx(0.0, abs=1e-6)
    assert S.procrustes_similarity(X, Y)["value"] == pytest.approx(1.0, abs=1e-9)
    assert S.mean_cca(X, Y)["value"] == pytest.approx(1.0, abs=1e-8)  # the default: no ridge (issue 16: was 0.9955)
    assert S.mean_cca(X, Y, reg=1e-4)["value"] < 0.9999  # ridge shrinks every correlation: w / (w + r)
    assert S.svcca(X, Y)["value"] == pytest.approx(1.0, abs=1e-8)


def test_mean_cca_of_a_rotated_copy_is_one_with_constant_and_collinear_columns():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((150, 10)) * np.geomspace(1.0, 0.01, 10)  # eigenvalues spread over 4 decades
    X = np.hstack([X, np.full((150, 1), 3.0), X[:, :1] - X[:, 1:2]])    # a constant and a collinear column
    Y = X @ np.linalg.qr(rng.standard_normal((12, 12)))[0]
    out = S.mean_cca(X, Y)
    assert out["value"] == pytest.approx(1.0, abs=1e-8) and out["n_components"] == 10
    assert S.mean_cca(X, Y, reg=1e-4)["value"] < 0.99  # ridge over all 12 directions: the old default's bias


def test_in_sample_cca_with_fewer_rows_than_dimensions_is_exactly_one_in_every_draw():
    # N - 1 <= rank: every canonical correlation is 1 by construction; rounding noise of 1e-16 between
    # permutation draws once made the null's histogram fail ("too many bins for data range")
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((24, 40)), rng.standard_normal((24, 30))
    pair = lf.PreparedPair(X, Y, cca_reg=0.0, cca_components=None, svcca_keep=0.99)
    draws = np.array([pair.stats(rng.permutation(24))["mean_cca"] for _ in range(19)])
    assert pair.stats()["mean_cca"] == 1.0 and np.all(draws == 1.0)
    assert np.histogram(draws, bins=30)[0].sum() == 19


def test_rsa_correlation_metric_invariant_to_row_affine_maps():
    # The correlation distance centres each row across features, so it is invariant to x -> a x + c 1
    # (not to rotations: see the similarity module docstring).
    rng = np.random.default_rng(1)
    X = rng.standard_normal((100, 20))
    assert S.rsa(X, 2.5 * X + 3.0, metric="correlation", centre=False)["value"] == pytest.approx(1.0, abs=1e-9)


# ---------------------------------------------------------------------------------------------
# Known answers
# ---------------------------------------------------------------------------------------------
def test_linear_cka_hand_computed_toy():
    # X: corners of the unit square; Y = x1 + x2. Centred: Xc'Xc = I_2 (||.||_F = sqrt 2),
    # Yc = (-1, 0, 0, 1): Yc'Yc = 2, Xc'Yc = (1, 1) -> ||.||_F^2 = 2. CKA = 2 / (sqrt 2 * 2) = 1/sqrt 2.
    X = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    Y = X.sum(axis=1, keepdims=True)
    for method in ("feature", "gram"):
        assert S.linear_cka(X, Y, method=method)["value"] == pytest.approx(1 / np.sqrt(2), abs=1e-12)
    # Same value from the HSIC formula tr(KHLH) with explicit 4 x 4 Gram matrices.
    H = np.eye(4) - 1 / 4
    K, L = H @ X @ X.T @ H, H @ Y @ Y.T @ H
    assert np.trace(K @ L) / np.sqrt(np.trace(K @ K) * np.trace(L @ L)) == pytest.approx(1 / np.sqrt(2))


def _hsic_unbiased_reference(K: np.ndarray, L: np.ndarray) -> float:
    """Song et al. (2012) eq. 5, written out with explicit N x N matrices."""
    n = K.shape[0]
    Kt, Lt = K - np.diag(np.diag(K)), L - np.diag(np.diag(L))
    one = np.ones(n)
    return (np.trace(Kt @ Lt) + (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ Kt @ Lt @ one) / (n * (n - 3))


@pytest.mark.parametrize("method", ["feature", "gram"])
def test_debiased_cka_matches_explicit_unbiased_hsic(method):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((30, 5)) + 4.0  # uncentred on purpose: HSIC_u is translation invariant
    Y = X[:, :2] @ rng.standard_normal((2, 3)) + rng.standard_normal((30, 3))
    K, L = X @ X.T, Y @ Y.T
    ref = _hsic_unbiased_reference(K, L) / np.sqrt(_hsic_unbiased_reference(K, K) * _hsic_unbiased_reference(L, L))
    assert S.linear_cka(X, Y, debiased=True, method=method)["value"] == pytest.approx(ref, rel=1e-9)


def test_cca_and_procrustes_match_reference_implementations():
    from scipy.linalg import orthogonal_procrustes
    X, Y = planted(3, n=120, dx=8, dy=5)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    # Classical CCA: singular values of Cxx^-1/2 Cxy Cyy^-1/2.
    wx, Vx = np.linalg.eigh(Xc.T @ Xc)
    wy, Vy = np.linalg.eigh(Yc.T @ Yc)
    M = (Vx / np.sqrt(wx)).T @ Xc.T @ Yc @ (Vy / np.sqrt(wy))
    assert S.mean_cca(X, Y, reg=0.0)["value"] == pytest.approx(np.linalg.svd(M, compute_uv=False).mean(), rel=1e-9)
    # Procrustes with the smaller space zero-padded.
    Xn = Xc / np.linalg.norm(Xc)
    Yn = np.hstack([Yc, np.zeros((120, 3))]) / np.linalg.norm(Yc)
    R, _ = orthogonal_procrustes(Xn, Yn)
    assert S.procrustes_distance(X, Y)["value"] == pytest.approx(np.linalg.norm(Xn @ R - Yn), rel=1e-9)


def test_mutual_knn_hand_example():
    # 1-D points; neighbours by Euclidean distance. X order: 0,1,2,10 ; Y swaps the roles of rows 2, 3.
    X = np.array([[0.0], [1.0], [2.2], [10.0]])
    Y = np.array([[0.0], [1.0], [10.0], [2.2]])
    out = S.mutual_knn_alignment(X, Y, k=1, metric="euclidean", centre=False)
    # 1-NN in X: 0->1, 1->0, 2->1, 3->2.   In Y: 0->1, 1->0, 2->3, 3->1.
    np.testing.assert_array_equal(out["per_row"], [1.0, 1.0, 0.0, 0.0])
    assert out["value"] == 0.5 and out["chance"] == pytest.approx(1 / 3)


# ---------------------------------------------------------------------------------------------
# Fast permutation / bootstrap paths agree with recomputing from scratch
# ---------------------------------------------------------------------------------------------
def test_fast_permutation_paths_equal_recomputation():
    X, Y = planted(4, n=80, dx=10, dy=6)
    perm = np.random.default_rng(0).permutation(80)
    pair = lf.PreparedPair(X, Y, cca_reg=1e-4, cca_components=None, svcca_keep=0.99)
    fast = pair.stats(perm)
    assert fast["linear_cka"] == pytest.approx(S.linear_cka(X, Y[perm])["value"], rel=1e-10)
    assert fast["linear_cka_debiased"] == pytest.approx(S.linear_cka(X, Y[perm], debiased=True)["value"], rel=1e-9)
    assert fast["mean_cca"] == pytest.approx(S.mean_cca(X, Y[perm], reg=1e-4)["value"], rel=1e-10)
    plain = lf.PreparedPair(X, Y, cca_reg=0.0, cca_components=None, svcca_keep=0.99).stats(perm)
    assert plain["mean_cca"] == pytest.approx(S.mean_cca(X, Y[perm])["value"], rel=1e-10)
    assert fast["svcca"] == pytest.approx(S.svcca(X, Y[perm])["value"], rel=1e-10)
    assert fast["procrustes_distance"] == pytest.approx(S.procrustes_distance(X, Y[perm])["value"], rel=1e-10)
    kp = KernelPair(rbf_gram(X, 0.8)[0], rbf_gram(Y, 0.8)[0])
    assert kp.stat(perm) == pytest.approx(S.rbf_cka(X, Y[perm])["value"], rel=1e-10)
    rp = RdmPair(rdm_condensed(X - X.mean(0), "cosine"), rdm_condensed(Y - Y.mean(0), "cosine"))
    assert rp.stat(perm) == pytest.approx(S.rsa(X, Y[perm])["value"], rel=1e-10)
    knn = S.mutual_knn_alignment(X, Y, k=5)
    np.testing.assert_allclose(S.knn_overlap(knn["neighbors_x"], knn["neighbors_y"], perm),
                               S.mutual_knn_alignment(X, Y[perm], k=5)["per_row"])


def test_block_bootstrap_replicate_equals_materialised_resample():
    X, Y = planted(5, n=60, dx=7, dy=4)
    reps, n_blocks = lb.bootstrap_replicates(X, Y, 3, np.random.default_rng(11), cca_reg=1e-4,
                                             cca_components=None, svcca_keep=0.99)
    assert n_blocks == 60  # N <= 200: one row per block, i.e. the ordinary row bootstrap
    rng = np.random.default_rng(11)  # replay the same draws
    blocks = np.array_split(rng.permutation(60), 60)
    counts = rng.multinomial(60, np.full(60, 1 / 60), size=3)
    rows = np.concatenate([np.repeat(blocks[j], counts[0, j]) for j in range(60)])
    assert reps["linear_cka"][0] == pytest.approx(S.linear_cka(X[rows], Y[rows])["value"], rel=1e-9)
    assert reps["linear_cka_debiased"][0] == pytest.approx(
        S.linear_cka(X[rows], Y[rows], debiased=True)["value"], rel=1e-8)
    assert reps["mean_cca"][0] == pytest.approx(S.mean_cca(X[rows], Y[rows], reg=1e-4)["value"], rel=1e-9)


# ---------------------------------------------------------------------------------------------
# Null behaviour and power, through the one-call API
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def independent_result():
    X, Y = independent(10)
    return compare_spaces(X, Y, seed=0, n_permutations=200, n_boot=50)


@pytest.fixture(scope="module")
def planted_result():
    X, Y = planted(0)
    return compare_spaces(X, Y, seed=0, n_permutations=200, n_boot=50)


def test_independent_spaces_fall_inside_the_null(independent_result):
    for name, m in independent_result["metrics"].items():
        assert m["p_value"] > 0.05, (name, m["value"], m["p_value"])


def test_planted_low_rank_structure_detected_by_every_metric(planted_result):
    for name, m in planted_result["metrics"].items():
        assert m["p_value"] < 0.01, (name, m["value"], m["p_value"])


def test_compare_spaces_entries_are_complete(planted_result):
    res = planted_result
    assert (res["n"], res["dim_x"], res["dim_y"]) == (200, 64, 32)
    keys = {"value", "kind", "target", "ci_lo", "ci_hi", "ci_method", "se", "n_blocks", "excess", "excess_ci_lo",
            "excess_ci_hi", "null_mean", "null_lo", "null_hi", "p_value", "p_holm", "adjustment", "null_within",
            "n_used", "subsampled", "chance", "n_permutations", "null", "null_n_used", "bounds"}
    for name, m in res["metrics"].items():
        assert keys <= set(m), name
        assert m["null"].shape == (m["n_permutations"],)
        assert m["null_lo"] <= m["null_mean"] <= m["null_hi"]
        assert m["excess"] == pytest.approx(m["value"] - m["null_mean"])
        assert m["excess_ci_lo"] <= m["excess"] <= m["excess_ci_hi"], name
        assert m["p_value"] <= m["p_holm"] <= 1.0 and "Holm" in m["adjustment"]
        lo, hi = m["bounds"]
        assert lo - m["null_mean"] <= m["excess_ci_lo"] and m["excess_ci_hi"] <= hi - m["null_mean"], name
    assert res["metrics"]["mutual_knn"]["chance"] == pytest.approx(10 / 199)
    assert res["metrics"]["retrieval_ridge_x_to_y_recall@1"]["chance"] == pytest.approx(1 / 100)
    # statistics that estimate something without bias get an interval around the value, inside their range
    for name in ("linear_cka_debiased", "rsa", "mutual_knn", "retrieval_cca_x_to_y_mrr", "retrieval_ridge_y_to_x_median_rank"):
        m = res["metrics"][name]
        assert m["kind"] in ("population", "at_n") and m["ci_lo"] <= m["value"] <= m["ci_hi"], name
        assert m["bounds"][0] <= m["ci_lo"] and m["ci_hi"] <= m["bounds"][1], name
    # biased statistics (in-sample fits, V-statistic HSIC): no interval on the value, read the excess
    for name in ("linear_cka", "rbf_cka", "mean_cca", "svcca", "procrustes_similarity", "procrustes_distance"):
        m = res["metrics"][name]
        assert m["kind"] == "biased" and np.isnan(m["ci_lo"]) and np.isnan(m["ci_hi"]), name
        assert (m["excess_ci_hi"] < 0) if name == "procrustes_distance" else (m["excess_ci_lo"] > 0), name
    assert res["primary"]["metric"] == "linear_cka_debiased" and res["primary"]["p_value"] < 0.01
    assert res["multiplicity"][0] == {"family": "spaces", "method": "holm", "members": list(res["metrics"]),
                                      "size": len(res["metrics"])}


def test_intervals_under_independence_admit_zero(independent_result):
    """Issue 16: plain CKA's old interval excluded the true 0 in 199 of 200 independent datasets."""
    m = independent_result["metrics"]
    assert m["linear_cka"]["value"] > 0.02                        # the bias is there ...
    for name in ("linear_cka", "rbf_cka", "mean_cca", "svcca", "procrustes_similarity"):
        assert m[name]["excess_ci_lo"] <= 0.0 <= m[name]["excess_ci_hi"], name  # ... and the excess removes it
    assert m["linear_cka_debiased"]["ci_lo"] <= 0.0 <= m["linear_cka_debiased"]["ci_hi"]


def test_compare_spaces_is_deterministic_and_subsamples_kernels():
    X, Y = planted(1, n=150, dx=12, dy=9)
    a = compare_spaces(X, Y, seed=3, n_permutations=20, n_boot=10, max_n_kernel=100)
    b = compare_spaces(X, Y, seed=3, n_permutations=20, n_boot=10, max_n_kernel=100)
    for name in a["metrics"]:
        for key in ("value", "ci_lo", "ci_hi", "excess_ci_lo", "p_value", "null_mean"):
            assert np.array_equal(a["metrics"][name][key], b["metrics"][name][key], equal_nan=True), (name, key)
    assert a["metrics"]["rbf_cka"]["n_used"] == 100 and a["metrics"]["rbf_cka"]["subsampled"]
    assert a["metrics"]["rsa"]["n_used"] == 100 and a["metrics"]["rsa"]["subsampled"]
    assert a["metrics"]["linear_cka"]["n_used"] == 150 and not a["metrics"]["linear_cka"]["subsampled"]


def test_linear_cka_permutation_p_values_are_calibrated():
    # Under H0 the permutation p-value is (super-)uniform: P(p <= 0.05) <= 0.05 up to Monte Carlo error.
    ps = []
    for seed in range(100):
        X, Y = independent(100 + seed, n=40, dx=6, dy=4)
        ps.append(permutation_test(lambda a, b: S.linear_cka(a, b)["value"], X, Y, n_permutations=99,
                                   seed=seed)["p_value"])
    ps = np.asarray(ps)
    assert np.mean(ps <= 0.05) <= 0.12  # binomial(100, 0.05): P(> 12) < 0.001
    assert 0.35 < np.mean(ps) < 0.65


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------
def test_input_errors_name_the_parameter():
    X = np.zeros((10, 3))
    with pytest.raises(ValueError, match="X and Y: expected the same number of rows"):
        S.linear_cka(X, np.zeros((9, 3)))
    with pytest.raises(ValueError, match="Y: expected a 2-D array"):
        S.linear_cka(X, np.zeros(10))
    with pytest.raises(ValueError, match="X: expected finite values"):
        S.linear_cka(np.full((10, 3), np.nan), X)
    with pytest.raises(ValueError, match="metric: expected one of"):
        S.rsa(X + np.arange(30).reshape(10, 3), X, metric="manhattan")
    with pytest.raises(ValueError, match="k: expected an integer >= 1 and <= 8"):
        S.mutual_knn_alignment(X, X, k=9)
    with pytest.raises(ValueError, match="keep: expected a value in"):
        S.svcca(X, X, keep=1.5)
