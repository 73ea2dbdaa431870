"""Restricted (within-stratum) permutation nulls: the permuter, and the two questions they separate.

Done-when of issue 16: spaces that share only label centroids are related under the free null
(p < 0.01) but not under the within-label null (p > 0.05); a shared recording-level latent is
found by both (p < 0.01).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis import nulls
from analysis.compare import PRIMARY_SPACES, compare_spaces


def test_strata_permuter_moves_rows_only_within_their_stratum_and_uniformly():
    codes = np.array([0, 1, 0, 2, 1, 0, 3])
    perm_of = nulls.StrataPermuter(codes)
    assert perm_of.describe() == {"n_strata": 4, "n_movable": 5, "n_rows": 7}
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(600):
        p = perm_of(rng)
        np.testing.assert_array_equal(codes[p], codes)          # every row keeps its stratum
        assert sorted(p) == list(range(7)) and p[6] == 6 and p[3] == 3   # singletons stay put
        seen.add(tuple(p[[0, 2, 5]]))
    assert len(seen) == 6                                        # all 3! orders of stratum 0 occur
    with pytest.raises(ValueError, match="single row"):
        nulls.StrataPermuter(np.arange(5))


def test_strata_codes():
    np.testing.assert_array_equal(nulls.strata_codes(np.array(["b", "a", "b"])), [1, 0, 1])
    binned = nulls.strata_codes(np.arange(100.0), numeric=True, n_bins=4)
    np.testing.assert_array_equal(np.bincount(binned), [25, 25, 25, 25])
    assert np.all(np.diff(binned) >= 0)
    with pytest.raises(ValueError, match="NaN"):
        nulls.strata_codes(np.array([1.0, np.nan]), numeric=True)
    with pytest.raises(ValueError, match="missing labels"):
        nulls.strata_codes(np.array(["a", None], dtype=object))


def _label_only(seed: int, n: int = 240):
    """Both spaces know the composer (shared centroids); within a composer they are independent."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    X = 1.5 * rng.standard_normal((4, 16))[y] + rng.standard_normal((n, 16))
    Y = 1.5 * rng.standard_normal((4, 12))[y] + rng.standard_normal((n, 12))
    return X, Y, y


def _shared_latent(seed: int, n: int = 240):
    """The same composers, plus a recording-level latent shared by both spaces."""
    X, Y, y = _label_only(seed, n)
    rng = np.random.default_rng(seed + 100)
    Z = rng.standard_normal((n, 3))
    return X + Z @ rng.standard_normal((3, 16)), Y + Z @ rng.standard_normal((3, 12)), y


@pytest.fixture(scope="module")
def label_only_result():
    X, Y, y = _label_only(0)
    return compare_spaces(X, Y, strata=y, seed=0, n_permutations=199, retrieval_methods=("ridge",))


@pytest.fixture(scope="module")
def shared_latent_result():
    X, Y, y = _shared_latent(0)
    return compare_spaces(X, Y, strata=y, seed=0, n_permutations=199, retrieval_methods=("ridge",))


def test_shared_labels_only_are_related_but_not_recording_by_recording(label_only_result):
    res = label_only_result
    p = res["primary"]
    assert p["metric"] == PRIMARY_SPACES == "linear_cka_debiased"
    assert p["p_value"] < 0.01 and p["p_within"] > 0.05
    within = res["metrics"][PRIMARY_SPACES]["null_within"]
    assert within["excess_ci_lo"] <= 0.0 <= within["excess_ci_hi"]   # nothing beyond the label
    assert res["metrics"][PRIMARY_SPACES]["excess_ci_lo"] > 0          # but the spaces are related
    # no metric finds recording-level structure after Holm over the within family
    assert all(e["null_within"]["p_holm"] > 0.05 for e in res["metrics"].values())
    for name in ("linear_cka", "rsa", "mutual_knn", "rbf_cka"):
        assert res["metrics"][name]["p_value"] < 0.01, name
    assert res["settings"]["strata"]["n_strata"] == 4 and res["multiplicity"][1]["family"] == "spaces.within"


def test_shared_recording_latent_is_found_by_both_nulls(shared_latent_result):
    res = shared_latent_result
    assert res["primary"]["p_value"] < 0.01 and res["primary"]["p_within"] < 0.01
    for name in ("linear_cka_debiased", "rsa", "mutual_knn", "retrieval_ridge_x_to_y_mrr"):
        e = res["metrics"][name]
        assert e["p_value"] < 0.01 and e["null_within"]["p_value"] < 0.01, name
        assert e["null_within"]["excess_ci_lo"] > 0, name


def test_without_strata_there_is_no_within_null():
    X, Y, _ = _label_only(1, n=80)
    res = compare_spaces(X, Y, seed=0, n_permutations=19, retrieval_methods=("ridge",))
    assert all(e["null_within"] is None for e in res["metrics"].values())
    assert res["primary"]["p_within"] is None and res["settings"]["strata"] is None
    assert [f["family"] for f in res["multiplicity"]] == ["spaces"]
    assert not math.isnan(res["metrics"]["linear_cka"]["p_holm"])
