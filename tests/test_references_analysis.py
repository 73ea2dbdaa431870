"""analysis' similarity and neighbour metrics against independent references.

scipy (pdist + spearmanr) for RSA, kernels and HSIC written out by hand for RBF and linear CKA,
scikit-learn (NearestNeighbors, KNeighborsClassifier/Regressor, PCA) for neighbour lists, kNN label
scores, retrieval recall and SVCCA's PCA step. Only public functions whose names exist before and
after the statistics rework are called (rsa, rbf_cka, linear_cka, svcca, mutual_knn_alignment,
knn_indices, knn_cv_accuracy, retrieval_metrics). The project's own fast paths are compared with its
slow ones in test_analysis_similarity.py; here nothing of the project computes the expected value.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import qr, svd
from scipy.spatial.distance import pdist
from scipy.stats import spearmanr
from sklearn.decomposition import PCA
from sklearn.metrics import r2_score
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor, NearestNeighbors

from analysis import similarity as S
from analysis.labels import knn_cv_accuracy
from analysis.neighbors import knn_indices
from analysis.retrieval import retrieval_metrics
from tests import references as ref


def related_pair(seed: int, n: int = 45, dx: int = 7, dy: int = 5, shift: float = 3.0):
    """X, Y sharing a 2-D latent plus noise, both off-centre (so a missing centring shows)."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, 2))
    X = Z @ rng.standard_normal((2, dx)) + 0.7 * rng.standard_normal((n, dx)) + shift
    Y = np.tanh(Z @ rng.standard_normal((2, dy))) + 0.5 * rng.standard_normal((n, dy)) - shift
    return X, Y


# ------------------------------------------------------------------------------------------ RSA
@pytest.mark.parametrize("metric", ["cosine", "correlation", "euclidean"])
@pytest.mark.parametrize("centre", [True, False])
def test_rsa_is_spearman_of_scipy_pdist(metric, centre):
    X, Y = related_pair(0)
    Xr, Yr = (X - X.mean(0), Y - Y.mean(0)) if centre else (X, Y)
    expected = spearmanr(pdist(Xr, metric=metric), pdist(Yr, metric=metric)).statistic
    out = S.rsa(X, Y, metric=metric, centre=centre)
    assert out["value"] == pytest.approx(expected, rel=1e-10)
    assert out["n_used"] == 45 and not out["subsampled"]


def test_rsa_ties_use_average_ranks_like_scipy():
    # Integer points on a line: many equal distances, so the tie rule matters.
    rng = np.random.default_rng(1)
    X = rng.integers(0, 5, (30, 1)).astype(float)
    Y = X + rng.integers(0, 3, (30, 1))
    expected = spearmanr(pdist(X), pdist(Y)).statistic
    assert S.rsa(X, Y, metric="euclidean")["value"] == pytest.approx(expected, rel=1e-10)


# ------------------------------------------------------------------------------------- RBF CKA
@pytest.mark.parametrize("sigma_frac", [0.8, 0.3])
def test_rbf_cka_is_hsic_with_median_bandwidth(sigma_frac):
    # n = 30: 435 pairs, an odd count, so "the median distance" has one meaning (see the report:
    # with an even count the project takes sqrt of the median SQUARED distance, which differs in
    # the last digits from the median of the distances).
    X, Y = related_pair(2, n=30)
    expected, sx, sy = ref.rbf_cka(X, Y, sigma_frac)
    out = S.rbf_cka(X, Y, sigma_frac=sigma_frac)
    assert out["sigma_x"] == pytest.approx(sx, rel=1e-9) and out["sigma_y"] == pytest.approx(sy, rel=1e-9)
    assert out["value"] == pytest.approx(expected, rel=1e-9)


def test_rbf_cka_bandwidth_is_per_space():
    # Y is X scaled by 10: with one bandwidth per space the kernels are identical, CKA exactly 1.
    X, _ = related_pair(3, n=30)
    out = S.rbf_cka(X, 10.0 * X, sigma_frac=0.5)
    assert out["sigma_y"] == pytest.approx(10.0 * out["sigma_x"], rel=1e-9)
    assert out["value"] == pytest.approx(1.0, abs=1e-12)


# ---------------------------------------------------------------------------------- linear CKA
@pytest.mark.parametrize("n, dx, dy", [(40, 6, 4), (12, 30, 20)])   # feature-space and Gram-space paths
def test_linear_cka_is_kornblith_hsic_formula(n, dx, dy):
    X, Y = related_pair(4, n=n, dx=dx, dy=dy)
    expected = ref.linear_cka(X, Y)
    for method in ("auto", "feature", "gram"):
        assert S.linear_cka(X, Y, method=method)["value"] == pytest.approx(expected, rel=1e-9)


def test_linear_cka_of_independent_spaces_has_the_expected_bias():
    # Not 0: plain CKA between unrelated spaces is biased upwards by ~sqrt(dx dy / ((m+dx+1)(m+dy+1))).
    n, dx, dy = 60, 12, 8
    values = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        values.append(S.linear_cka(rng.standard_normal((n, dx)) + 5.0, rng.standard_normal((n, dy)) - 2.0)["value"])
    expected = ref.expected_linear_cka_independent(n, dx, dy)     # 0.124
    assert np.mean(values) == pytest.approx(expected, rel=0.06)
    # debiased CKA removes it: mean within 3 standard errors of 0
    debiased = [S.linear_cka(*(lambda r: (r.standard_normal((n, dx)), r.standard_normal((n, dy))))(
        np.random.default_rng(seed)), debiased=True)["value"] for seed in range(20)]
    assert abs(np.mean(debiased)) < 3 * np.std(debiased) / np.sqrt(20)


def test_linear_cka_of_a_rotated_copy_is_one_and_of_a_mixed_copy_is_not():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((50, 6)) * [4, 3, 2, 1, 0.5, 0.2]
    Q, _ = qr(rng.standard_normal((6, 6)))
    assert S.linear_cka(X, 2.0 * X @ Q + 1.0)["value"] == pytest.approx(1.0, abs=1e-12)
    M = np.diag([1.0, 1.0, 1.0, 5.0, 5.0, 5.0]) @ Q      # not orthogonal: CKA is not invariant to it
    assert S.linear_cka(X, X @ M)["value"] == pytest.approx(ref.linear_cka(X, X @ M), rel=1e-9)
    assert S.linear_cka(X, X @ M)["value"] < 0.95


# -------------------------------------------------------------------------------------- SVCCA
def test_svcca_is_sklearn_pca_then_canonical_correlations():
    rng = np.random.default_rng(6)
    n = 80
    Z = rng.standard_normal((n, 3))
    X = np.hstack([Z, rng.standard_normal((n, 5))]) * [6, 5, 4, 1, 0.5, 0.1, 0.05, 0.01]
    Y = np.hstack([Z @ rng.standard_normal((3, 3)), rng.standard_normal((n, 3))]) * [3, 3, 3, 0.2, 0.1, 0.02]
    keep = 0.99
    px, py = PCA(n_components=keep, svd_solver="full").fit(X), PCA(n_components=keep, svd_solver="full").fit(Y)
    Px, Py = px.transform(X), py.transform(Y)
    # canonical correlations = singular values of Qx'Qy for orthonormal bases of the centred spaces
    # (Bjorck & Golub 1973)
    Qx, _ = qr(Px - Px.mean(0), mode="economic")
    Qy, _ = qr(Py - Py.mean(0), mode="economic")
    rho = svd(Qx.T @ Qy, compute_uv=False)
    out = S.svcca(X, Y, keep=keep)
    assert (out["kept_x"], out["kept_y"]) == (px.n_components_, py.n_components_) and px.n_components_ < 8
    assert out["value"] == pytest.approx(rho[: min(px.n_components_, py.n_components_)].mean(), rel=1e-8)


# ------------------------------------------------------------------------------ neighbour lists
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_knn_indices_match_sklearn_leave_one_out(metric):
    X, _ = related_pair(7, n=60)
    nn = NearestNeighbors(n_neighbors=6, metric=metric, algorithm="brute").fit(X)
    expected = nn.kneighbors(return_distance=False)       # X=None: each row's own index left out
    np.testing.assert_array_equal(knn_indices(X, 6, metric=metric, precision="float64"), expected)
    np.testing.assert_array_equal(knn_indices(X, 6, metric=metric, chunk_size=7), expected)
    # a separate query set: nothing is left out
    Q = X[:9] + 0.01
    np.testing.assert_array_equal(knn_indices(X, 4, queries=Q, metric=metric),
                                  nn.kneighbors(Q, 4, return_distance=False))


def test_mutual_knn_alignment_matches_sklearn_neighbour_overlap():
    X, Y = related_pair(8, n=60)
    k = 5
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    nx = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(Xc).kneighbors(return_distance=False)
    ny = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(Yc).kneighbors(return_distance=False)
    per_row = np.array([len(set(a) & set(b)) / k for a, b in zip(nx, ny)])
    out = S.mutual_knn_alignment(X, Y, k=k, precision="float64")
    np.testing.assert_array_equal(out["per_row"], per_row)
    assert out["value"] == pytest.approx(per_row.mean()) and 0.05 < out["value"] < 0.95   # neither trivial
    assert out["chance"] == pytest.approx(k / 59)


def test_retrieval_recall_and_mrr_match_sklearn_ranking():
    rng = np.random.default_rng(9)
    G = rng.standard_normal((50, 8))
    Q = G + 0.9 * rng.standard_normal((50, 8))          # noisy queries: some find their item, some do not
    order = NearestNeighbors(n_neighbors=50, metric="cosine", algorithm="brute").fit(G).kneighbors(
        Q, return_distance=False)
    rank = 1 + np.argmax(order == np.arange(50)[:, None], axis=1)    # 1-based rank of the true item
    out = retrieval_metrics(Q, G, ks=(1, 5))
    assert out["recall@1"] == pytest.approx(np.mean(rank <= 1)) and 0 < out["recall@1"] < 1
    assert out["recall@5"] == pytest.approx(np.mean(rank <= 5))
    assert out["mrr"] == pytest.approx(np.mean(1.0 / rank))
    assert out["median_rank"] == pytest.approx(np.median(rank))


# -------------------------------------------------------------------------------- kNN on labels
def _nearer_first(k: int):
    """sklearn vote weights for the project's documented tie rule: a vote tie goes to the class whose
    neighbours rank nearer (weights 1 + 1e-6 (k - rank) never outweigh a whole vote)."""
    return lambda dist: np.tile(1.0 + 1e-6 * (k - np.arange(k)), (dist.shape[0], 1))


def three_classes(seed: int = 10, n: int = 90):
    rng = np.random.default_rng(seed)
    y = np.array(["a", "b", "c"])[np.arange(n) % 3]
    centres = {c: rng.standard_normal(6) for c in "abc"}   # close centres: many mixed neighbourhoods
    X = np.stack([centres[c] for c in y]) + rng.standard_normal((n, 6)) + 2.0
    return X, y


@pytest.mark.parametrize("k", [4, 6])   # even k with 3 classes: vote ties happen
def test_knn_cv_accuracy_matches_sklearn_classifier_on_the_same_folds(k):
    X, y = three_classes()
    splits = list(StratifiedKFold(5, shuffle=True, random_state=0).split(X, y))
    expected = np.full(len(y), np.nan)
    n_ties = 0
    for tr, te in splits:
        mu = X[tr].mean(0)           # documented: centred with the training fold's mean
        clf = KNeighborsClassifier(k, weights=_nearer_first(k), metric="cosine", algorithm="brute")
        expected[te] = clf.fit(X[tr] - mu, y[tr]).predict(X[te] - mu) == y[te]
        nb = clf.kneighbors(X[te] - mu, return_distance=False)
        votes = np.stack([(y[tr][nb] == c).sum(1) for c in "abc"], 1)
        n_ties += int(np.sum((votes == votes.max(1, keepdims=True)).sum(1) > 1))
    assert n_ties >= 5, "the data must exercise the tie rule"
    out = knn_cv_accuracy(X, y, k=k, splits=splits)
    np.testing.assert_array_equal(out["per_sample"], expected)
    assert out["per_fold"] == pytest.approx([expected[te].mean() for _, te in splits])
    assert out["value"] == pytest.approx(np.mean([expected[te].mean() for _, te in splits]))
    assert out["chance"] == pytest.approx(1 / 3)


def test_knn_cv_regression_matches_sklearn_regressor():
    rng = np.random.default_rng(11)
    X = rng.standard_normal((60, 4)) + 1.0
    target = X[:, 0] * 2 - X[:, 1] + 0.3 * rng.standard_normal(60)
    splits = list(KFold(4, shuffle=True, random_state=1).split(X))
    r2, sq = [], np.full(60, np.nan)
    for tr, te in splits:
        mu = X[tr].mean(0)
        pred = KNeighborsRegressor(5, metric="euclidean", algorithm="brute").fit(X[tr] - mu, target[tr]).predict(X[te] - mu)
        r2.append(r2_score(target[te], pred))
        sq[te] = (pred - target[te]) ** 2
    out = knn_cv_accuracy(X, target, k=5, metric="euclidean", task="regression", splits=splits)
    assert out["per_fold"] == pytest.approx(r2, rel=1e-9) and out["value"] == pytest.approx(np.mean(r2), rel=1e-9)
    np.testing.assert_allclose(out["per_sample"], sq, rtol=1e-9)
