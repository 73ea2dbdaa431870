"""Tests for analysis.retrieval, analysis.linear_maps and analysis.retrieval_null."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.linear_maps import fit_cca_map, fit_ridge_map
from analysis.retrieval import cross_modal_retrieval, harmonic, metrics_from_counts, random_split, rank_counts, retrieval_metrics
from analysis.retrieval_null import RankNull


def _rotated(seed: int = 0, n: int = 200, d: int = 32):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return X, 2.5 * X @ Q + 1.0


# ---------------------------------------------------------------------------------------------
# Hand-made rankings with known answers
# ---------------------------------------------------------------------------------------------
def test_metrics_on_hand_made_ranking():
    # True item on the diagonal. Row ranks: 1, 2, 1, 4 (no ties).
    S = np.array([[0.9, 0.1, 0.2, 0.3],
                  [0.8, 0.7, 0.1, 0.0],
                  [0.1, 0.2, 0.9, 0.3],
                  [0.5, 0.6, 0.7, 0.1]])
    g, t = rank_counts(S, np.arange(4))
    np.testing.assert_array_equal(g, [0, 1, 0, 3])
    np.testing.assert_array_equal(t, [0, 0, 0, 0])
    m = metrics_from_counts(g, t, 4, ks=(1, 2))
    assert m["recall@1"] == 0.5
    assert m["recall@2"] == 0.75
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 + 1 / 4) / 4)
    assert m["median_rank"] == 1.5
    assert m["chance_recall@1"] == 0.25 and m["chance_median_rank"] == 2.5
    assert m["chance_mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)


def test_ties_are_scored_by_expected_rank_under_random_tie_breaking():
    # Row 2 is constant: the true item ties with 2 others -> rank uniform on {1, 2, 3}.
    S = np.array([[0.9, 0.5, 0.1], [0.8, 0.7, 0.2], [0.3, 0.3, 0.3]])
    m = metrics_from_counts(*rank_counts(S, np.arange(3)), 3, ks=(1,))
    assert m["recall@1"] == pytest.approx((1 + 0 + 1 / 3) / 3)
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + (1 + 1 / 2 + 1 / 3) / 3) / 3)
    # Constant embeddings score exactly chance, not perfectly.
    const = retrieval_metrics(np.ones((5, 3)), np.ones((5, 3)), ks=(1,))
    assert const["recall@1"] == pytest.approx(1 / 5)
    assert const["mrr"] == pytest.approx(const["chance_mrr"])
    assert const["median_rank"] == 3.0


def test_harmonic_numbers():
    np.testing.assert_allclose(harmonic(np.array([0, 1, 2, 4])), [0, 1, 1.5, 25 / 12])


def test_retrieval_metrics_chunking_and_cosine():
    rng = np.random.default_rng(1)
    Q = rng.standard_normal((57, 6))
    G = Q + 0.8 * rng.standard_normal((57, 6))
    a, b = retrieval_metrics(Q, G, chunk_size=5), retrieval_metrics(Q, G)
    assert a["mrr"] == b["mrr"] and a["recall@5"] == b["recall@5"]
    # Brute force ranks from the full cosine matrix.
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    Gn = G / np.linalg.norm(G, axis=1, keepdims=True)
    C = Qn @ Gn.T
    ranks = 1 + (C > np.diag(C)[:, None]).sum(1)
    assert b["recall@1"] == pytest.approx(np.mean(ranks == 1))
    assert b["mrr"] == pytest.approx(np.mean(1 / ranks))
    assert b["median_rank"] == pytest.approx(np.median(ranks))


# ---------------------------------------------------------------------------------------------
# Maps
# ---------------------------------------------------------------------------------------------
def test_ridge_map_matches_sklearn_and_loo_selection():
    from sklearn.linear_model import Ridge, RidgeCV
    rng = np.random.default_rng(2)
    X = rng.standard_normal((120, 10))
    Y = X @ rng.standard_normal((10, 4)) + 2.0 * rng.standard_normal((120, 4))
    m = fit_ridge_map(X, Y, alpha=0.3)
    sk = Ridge(alpha=m.alpha).fit(X, Y)
    np.testing.assert_allclose(m.weights, sk.coef_.T, atol=1e-10)
    np.testing.assert_allclose(m.bias, sk.intercept_, atol=1e-10)
    grid = (1e-3, 1e-1, 1.0, 10.0, 100.0)
    auto = fit_ridge_map(X, Y, alpha=grid)
    scale = auto.alpha / auto.alpha_rel
    ref = RidgeCV(alphas=np.array(grid) * scale).fit(X, Y)  # efficient LOO, squared error
    assert auto.alpha == pytest.approx(ref.alpha_)


def test_cca_map_recovers_canonical_correlations():
    rng = np.random.default_rng(3)
    Z = rng.standard_normal((2000, 2))
    X = np.hstack([Z, rng.standard_normal((2000, 3))])
    Y = np.hstack([Z[:, :1] + 0.5 * rng.standard_normal((2000, 1)), rng.standard_normal((2000, 2))])
    cca = fit_cca_map(X, Y, reg=0.0)
    # Population canonical correlation of Z1 with Z1 + 0.5 e: 1 / sqrt(1.25) = 0.894.
    assert cca.correlations[0] == pytest.approx(1 / np.sqrt(1.25), abs=0.02)
    Px, Py = cca.transform_x(X), cca.transform_y(Y)
    assert np.corrcoef(Px[:, 0], Py[:, 0])[0, 1] == pytest.approx(cca.correlations[0], abs=1e-8)
    # The CV-selected penalty is one of the grid values and deterministic for a seed.
    a, b = fit_cca_map(X[:300], Y[:300], seed=5), fit_cca_map(X[:300], Y[:300], seed=5)
    assert a.reg == b.reg and a.reg in a.cv_score


# ---------------------------------------------------------------------------------------------
# Cross-modal retrieval end to end
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["ridge", "cca"])
def test_rotated_copy_retrieves_perfectly(method):
    X, Y = _rotated()
    train, test = np.arange(100), np.arange(100, 200)
    out = cross_modal_retrieval(X, Y, train, test, method=method, alpha=1e-6, reg=1e-6)
    for direction in ("audio_to_symbolic", "symbolic_to_audio"):
        assert out[direction]["recall@1"] == 1.0
        assert out[direction]["mrr"] == 1.0 and out[direction]["median_rank"] == 1.0
    assert out["n_train"] == 100 and out["n_test"] == 100


def test_independent_spaces_retrieve_at_chance():
    rng = np.random.default_rng(4)
    X, Y = rng.standard_normal((400, 16)), rng.standard_normal((400, 8))
    out = cross_modal_retrieval(X, Y, seed=0)
    m = out["audio_to_symbolic"]
    assert out["n_test"] == 200
    assert abs(m["mrr"] - m["chance_mrr"]) < 0.03
    assert abs(m["median_rank"] - m["chance_median_rank"]) < 30


def test_random_split_and_index_checks():
    tr, te = random_split(10, 0.3, seed=1)
    assert np.intersect1d(tr, te).size == 0 and tr.size + te.size == 10 and te.size == 3
    np.testing.assert_array_equal(random_split(10, 0.3, seed=1)[1], te)
    X = np.random.default_rng(0).standard_normal((10, 3))
    with pytest.raises(ValueError, match="train_idx, test_idx: expected disjoint sets"):
        cross_modal_retrieval(X, X, np.arange(6), np.arange(5, 10))
    with pytest.raises(ValueError, match="train_idx, test_idx: expected both or neither"):
        cross_modal_retrieval(X, X, np.arange(5), None)
    with pytest.raises(ValueError, match="method: expected one of"):
        cross_modal_retrieval(X, X, method="pls")
    with pytest.raises(ValueError, match="alpha: expected a value in"):
        fit_ridge_map(X, X, alpha=-1.0)


# ---------------------------------------------------------------------------------------------
# Retrieval permutation null
# ---------------------------------------------------------------------------------------------
def test_rank_null_matches_direct_metrics_and_centres_on_chance():
    rng = np.random.default_rng(5)
    Q = rng.standard_normal((300, 8))
    G = Q + 2.0 * rng.standard_normal((300, 8))
    rn = RankNull(Q, G, max_n=None, seed=0)
    direct = retrieval_metrics(Q, G)
    for k, v in rn.metrics().items():
        assert v == pytest.approx(direct[k]), k
    null = rn.null(300, seed=1)
    assert null["recall@10"].mean() == pytest.approx(10 / 300, abs=0.005)
    assert null["mrr"].mean() == pytest.approx(direct["chance_mrr"], abs=0.003)
    assert null["median_rank"].mean() == pytest.approx(150.5, abs=5)
    # Query subsample: observed metrics are those of the chosen queries.
    sub = RankNull(Q, G, max_n=50, seed=2)
    assert sub.q_idx.size == 50
    per_q = direct["per_query"]["mrr"][sub.q_idx]
    assert sub.metrics()["mrr"] == pytest.approx(per_q.mean())


# ---------------------------------------------------------------------------------------------
# Standardisation is a fitted step: training rows only
# ---------------------------------------------------------------------------------------------
def test_zscore_fitted_uses_only_the_fit_rows():
    from analysis.pooling import zscore_fitted

    rng = np.random.default_rng(6)
    X = rng.normal(3.0, 2.0, (50, 4))
    X[:, 3] = 7.0
    fit = np.arange(30)
    Z = zscore_fitted(X, fit)
    mu, sd = X[:30].mean(0), X[:30].std(0)
    np.testing.assert_allclose(Z[:, :3], (X[:, :3] - mu[:3]) / sd[:3])
    np.testing.assert_allclose(Z[:, 3], 0.0)                  # constant on the fit rows: only centred
    moved = X.copy()
    moved[30:] *= 100.0                                        # held-out rows do not change the scaling
    np.testing.assert_allclose(zscore_fitted(moved, fit)[:30], Z[:30])


@pytest.mark.parametrize("method", ["ridge", "cca"])
def test_retrieval_standardisation_is_fitted_on_training_rows(method):
    from analysis.pooling import zscore_fitted
    from analysis.retrieval import project_for_retrieval

    rng = np.random.default_rng(7)
    X = rng.normal(0, [1.0, 50.0, 0.01, 3.0], (120, 4)) + 10.0
    Y = X[:, :3] @ rng.standard_normal((3, 5)) + rng.standard_normal((120, 5))
    train, test = np.arange(80), np.arange(80, 120)
    got = project_for_retrieval(X, Y, train, test, method, standardize=True)
    want = project_for_retrieval(zscore_fitted(X, train), zscore_fitted(Y, train), train, test, method)
    for direction in ("audio_to_symbolic", "symbolic_to_audio"):
        for a, b in zip(got[direction], want[direction]):
            np.testing.assert_allclose(a, b, atol=1e-9)
    everywhere = project_for_retrieval(zscore_fitted(X), zscore_fitted(Y), train, test, method)
    assert not np.allclose(got["audio_to_symbolic"][0], everywhere["audio_to_symbolic"][0])
    assert cross_modal_retrieval(X, Y, train, test, method=method, standardize=True)["n_test"] == 40
