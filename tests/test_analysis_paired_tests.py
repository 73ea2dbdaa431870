"""analysis.paired_tests and analysis.multiplicity: item-level paired tests of two media, Holm, on known answers.

References are computed by hand here (Wilson and Holm by formula, McNemar through
scipy.stats.binomtest on discordant counts counted here, sign-flip p by enumerating signs).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from analysis import paired_tests as pt
from analysis.multiplicity import adjust_family, holm, min_permutations_for


# --------------------------------------------------------------------------------------------- Wilson, McNemar
def _wilson_by_formula(x: int, n: int, z: float = 1.959963984540054):
    p = x / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("x, n", [(50, 100), (0, 45), (45, 45), (7, 9)])
def test_wilson_interval_by_formula_and_inside_0_1(x, n):
    lo, hi = pt.wilson_interval(x, n)
    ref = _wilson_by_formula(x, n)
    assert (lo, hi) == pytest.approx((max(0.0, ref[0]), min(1.0, ref[1])), abs=1e-12)
    assert 0.0 <= lo <= x / n <= hi <= 1.0
    with pytest.raises(ValueError, match="successes"):
        pt.wilson_interval(n + 1, n)


def test_mcnemar_on_seed_majority_vote_matches_binomtest():
    rng = np.random.default_rng(0)
    a = rng.random((3, 60)) < 0.7
    b = rng.random((3, 60)) < 0.5
    va, vb = a.sum(0) >= 2, b.sum(0) >= 2      # majority of 3 seeds, counted here
    n10, n01 = int(np.sum(va & ~vb)), int(np.sum(~va & vb))
    out = pt.mcnemar_exact(a, b)
    assert (out["a_only"], out["b_only"]) == (n10, n01)
    assert out["p_value"] == pytest.approx(sps.binomtest(n10, n10 + n01, 0.5).pvalue)
    # an even number of seeds: a tie (1 of 2) is not a majority
    two = pt.mcnemar_exact(np.array([[1, 1, 0], [0, 1, 0]]), np.array([[0, 1, 0], [0, 1, 0]]))
    assert (two["a_only"], two["b_only"], two["p_value"]) == (0, 0, 1.0)


# --------------------------------------------------------------------------------------------- classification
def test_classification_known_answer_and_exact_sign_flip():
    targets = np.arange(8) % 3
    pred_b = (targets + 1) % 3                       # b always wrong
    pred_a = pred_b.copy()
    pred_a[:6] = targets[:6]                         # a right on the first 6 items, in both seeds
    res = pt.paired_classification_test(np.stack([pred_a, pred_a]), np.stack([pred_b, pred_b]), targets, seed=1)
    assert res["difference"] == pytest.approx(6 / 8) and res["accuracy_a"] == pytest.approx(6 / 8)
    assert res["n_items"] == 8 and res["n_seeds"] == 2
    # by hand: d_i = loss_a - loss_b = -1 on 6 items, 0 on 2; |sum of signed d| >= 6 only for all-equal signs
    d = np.array([-1.0] * 6 + [0.0] * 2)
    null = [abs(np.dot(s, d)) for s in itertools.product((-1, 1), repeat=8)]
    assert res["p_exact"] and res["p_items"] == pytest.approx(np.mean(np.array(null) >= 6))
    # the verdict's p: both seeds identical, so the crossed t is the paired t over items (scipy as reference)
    ref = sps.ttest_1samp(-d, 0.0)
    assert res["p_value"] == pytest.approx(ref.pvalue) and res["df"] == pytest.approx(7)
    half = sps.t.ppf(0.975, 7) * np.std(d, ddof=1) / np.sqrt(8)
    assert (res["ci_lo"], res["ci_hi"]) == pytest.approx((0.75 - half, min(1.0, 0.75 + half)))
    assert res["ci_lo"] <= res["difference"] <= res["ci_hi"] <= 1.0
    assert res["mcnemar"]["a_only"] == 6 and res["mcnemar"]["p_value"] == pytest.approx(2 / 2**6)
    with pytest.raises(pt.PairingError, match="expected the same"):
        pt.paired_classification_test(np.stack([pred_a, pred_a]), pred_b, targets)
    with pytest.raises(pt.PairingError, match="expected 8 items"):
        pt.paired_classification_test(pred_a[:5], pred_b[:5], targets)


def test_intervals_stay_inside_0_1_and_wilson_covers_a_perfect_score():
    targets = np.zeros(30, int)
    perfect = np.zeros((3, 30), int)
    res = pt.paired_classification_test(perfect, perfect, targets, seed=0)
    assert (res["a_ci_lo"], res["a_ci_hi"]) == (1.0, 1.0)             # the bootstrap cannot move
    assert res["a_wilson_lo"] < 0.9 and res["a_wilson_hi"] == pytest.approx(1.0)  # Wilson still admits < 1
    acc = pt.accuracy_interval(perfect, targets)
    assert acc["lo"] == acc["wilson_lo"] and acc["hi"] == 1.0  # the table shows the wider of the two
    assert res["p_value"] == 1.0 and res["difference"] == 0.0


def test_seed_level_of_the_interval_counts():
    """Seed 0 gets every item right, seed 1 every item wrong: all the uncertainty is between seeds."""
    targets = np.zeros(50, int)
    a = np.stack([np.zeros(50, int), np.ones(50, int)])
    res = pt.accuracy_interval(a, targets)
    assert res["accuracy"] == 0.5
    assert res["ci_lo"] == 0.0 and res["ci_hi"] == 1.0   # one df between seeds: the whole range; items alone: 0.5
    assert res["wilson_hi"] - res["wilson_lo"] < 0.3


def _two_media(rng, n_items, seed_sd, mu=0.3):
    u = rng.normal(size=n_items)
    a = rng.random((3, n_items)) < sps.norm.cdf(mu + u + rng.normal(0, seed_sd, (3, 1)))
    b = rng.random((3, n_items)) < sps.norm.cdf(mu + u + rng.normal(0, seed_sd, (3, 1)))
    return a.astype(int), b.astype(int)


def test_p_values_are_calibrated_when_the_media_are_exchangeable():
    rng = np.random.default_rng(3)
    ps, items, covered = [], [], []
    for r in range(150):
        a, b = _two_media(rng, 40, seed_sd=0.0)
        res = pt.paired_correctness_test(a, b, n_permutations=499, seed=r)
        ps.append(res["p_value"])
        items.append(res["p_items"])
        covered.append(res["ci_lo"] <= 0.0 <= res["ci_hi"])
    assert np.mean(np.array(ps) <= 0.05) <= 0.10          # binomial(150, 0.05): P(> 15) ~ 0.001
    assert np.mean(np.array(items) <= 0.05) <= 0.10
    assert np.mean(covered) >= 0.88


def test_crossed_t_mean_squares_by_hand():
    z = np.array([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    s, n, m = 3, 4, z.mean()
    ms_seed = n * sum((z[i].mean() - m) ** 2 for i in range(s)) / (s - 1)
    ms_item = s * sum((z[:, j].mean() - m) ** 2 for j in range(n)) / (n - 1)
    ms_res = sum((z[i, j] - z[i].mean() - z[:, j].mean() + m) ** 2 for i in range(s) for j in range(n)) / 6
    v = ms_seed + ms_item - ms_res
    df = v**2 / (ms_seed**2 / 2 + ms_item**2 / 3 + ms_res**2 / 6)
    out = pt.crossed_t(z)
    assert out["se"] == pytest.approx(np.sqrt(v / 12)) and out["df"] == pytest.approx(df)
    assert out["p_value"] == pytest.approx(2 * sps.t.sf(m / np.sqrt(v / 12), df))


def test_verdict_p_counts_seed_variability():
    """Each medium's seeds shift all of its items at once: the item sign flip (given these models) then
    rejects far too often for "are the training procedures equal?"; the crossed t p does not."""
    rng = np.random.default_rng(4)
    p_boot, p_items = [], []
    for r in range(80):
        a, b = _two_media(rng, 60, seed_sd=0.4)
        res = pt.paired_correctness_test(a, b, n_permutations=499, seed=r)
        p_boot.append(res["p_value"])
        p_items.append(res["p_items"])
    assert np.mean(np.array(p_boot) <= 0.05) <= 0.1
    assert np.mean(np.array(p_items) <= 0.05) >= 0.2


# --------------------------------------------------------------------------------------------- regression
def test_regression_known_answer():
    rng = np.random.default_rng(1)
    y = rng.normal(size=40)
    pa = np.stack([y + 0.1 * rng.normal(size=40) for _ in range(3)])
    pb = np.stack([y + 0.8 * rng.normal(size=40) for _ in range(3)])
    res = pt.paired_regression_test(pa, pb, y, seed=0)
    sst = np.sum((y - y.mean()) ** 2)
    r2 = [np.mean([1 - np.sum((p[s] - y) ** 2) / sst for s in range(3)]) for p in (pa, pb)]
    assert (res["r2_a"], res["r2_b"]) == pytest.approx(r2)
    assert res["difference"] == pytest.approx(r2[0] - r2[1])
    assert res["ci_lo"] <= res["difference"] <= res["ci_hi"] and res["ci_lo"] > 0 and res["p_value"] < 0.01
    assert res["mae"]["difference"] == pytest.approx(np.abs(pa - y).mean() - np.abs(pb - y).mean())
    assert res["mae"]["ci_hi"] < 0 and res["mae"]["p_value"] < 0.01
    swapped = pt.paired_regression_test(pb, pa, y, seed=0)
    assert swapped["difference"] == pytest.approx(-res["difference"])
    assert pt.r2_interval(pa, y)["r2"] == pytest.approx(r2[0])
    with pytest.raises(ValueError, match="non-constant target"):
        pt.paired_regression_test(pa, pb, np.ones(40))


def test_r2_interval_matches_the_delete_one_jackknife_by_hand():
    """The R^2 influence values carry the variability of SST too: with one seed their se equals the
    delete-one jackknife of R^2 recomputed exactly (errors alone would give about 0.7 of it here)."""
    rng = np.random.default_rng(5)
    n = 300
    y = rng.standard_normal(n)
    pred = y + 0.3 * rng.standard_normal(n)
    out = pt.r2_interval(pred, y)
    se = (out["ci_hi"] - out["ci_lo"]) / (2 * sps.t.ppf(0.975, n - 1))
    reps = []
    for i in range(n):
        keep = np.arange(n) != i
        yy = y[keep]
        reps.append(1 - np.sum((pred[keep] - yy) ** 2) / np.sum((yy - yy.mean()) ** 2))
    reps = np.array(reps)
    se_jack = np.sqrt((n - 1) / n * np.sum((reps - reps.mean()) ** 2))
    assert se == pytest.approx(se_jack, rel=0.03)


# --------------------------------------------------------------------------------------------- Holm
def test_holm_by_hand():
    p = [0.01, 0.04, 0.03, 0.005, float("nan")]
    # sorted 0.005, 0.01, 0.03, 0.04 (m = 4): x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max
    expected = [0.03, 0.06, 0.06, 0.02, float("nan")]
    np.testing.assert_allclose(holm(p), expected)
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])
    assert holm([]).size == 0
    with pytest.raises(ValueError, match="p_values"):
        holm([1.2])
    assert min_permutations_for(29) == 579 and 1 / (1 + 579) * 29 <= 0.05 < 1 / (1 + 578) * 29


def test_adjust_family_writes_fields_and_skips_missing():
    entries = {"a": {"p_value": 0.01}, "b": {"p_value": 0.04}, "c": {"p_value": float("nan")}, "d": None}
    fam = adjust_family(entries, "spaces")
    assert fam == {"family": "spaces", "method": "holm", "members": ["a", "b"], "size": 2}
    assert entries["a"]["p_holm"] == pytest.approx(0.02) and entries["b"]["p_holm"] == pytest.approx(0.04)
    assert math.isnan(entries["c"]["p_holm"]) and "Holm over the 2" in entries["a"]["adjustment"]
