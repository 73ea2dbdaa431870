"""Item-level paired tests of two media scored on the SAME test items over several training seeds.

Inputs are per-item test predictions, shape (S seeds, n items), for medium a and medium b, with
column j of both the same test recording (``test_ids_sha256`` guards that upstream) and row s of
both trained with the same seed. Targets are (n,). What each function answers:

* ``paired_classification_test``: accuracy_a - accuracy_b, where an accuracy is the mean over
  seeds and items of 1[prediction == target].
* ``paired_regression_test``: R^2_a - R^2_b (R^2 per seed, 1 - SSE / SST on the items, averaged
  over seeds) and MAE_a - MAE_b.

Inference (``crossed_t``), the same for every score: the test items are a sample of recordings
and the seeds a sample of training runs, crossed. Per (seed, item) cell a value z_si whose mean is
the score (correctness; absolute error; for R^2 its linearisation, the influence value
R^2_s - (e_si^2 - MSE_s) / s_y^2 + (1 - R^2_s) ((y_i - ybar)^2 - s_y^2) / s_y^2, which carries the
variability of SST too); for a difference, z_a - z_b. Then, from the two-way ANOVA mean squares,

    Var(mean) = sigma_seed^2 / S + sigma_item^2 / n + sigma_res^2 / (n S)
              ~ (MS_seed + MS_item - MS_res) / (n S)          (floored at max(MS_seed, MS_item) / (n S))

with Satterthwaite's (1946) degrees of freedom; interval mean +/- t_df se, two-sided t p-value
(``p_value``, what verdicts use). With one seed this is the paired t-test over items. Why not a
bootstrap over seeds: with 3 seeds it has 10 distinct resamples and understates the seed variance
by (S - 1) / S; in bench/interval_coverage.py-style simulations with a seed effect of sd 0.4 (probit scale)
a two-level bootstrap test rejected 10% of true nulls at alpha 0.05, this test 5%.

Also reported, conditional on the trained models (these seeds), so not used for verdicts:
* ``p_items``: sign-flip randomisation test over items of d_i = mean over seeds of
  (loss_a - loss_b), two-sided, statistic sum d_i (exact enumeration up to 2^n <= n_permutations).
  H0 "on each item the two sets of trained models' losses are exchangeable"; a seed that trained
  well shifts all of its items at once, which this test reads as a difference between media.
* classification: McNemar's exact test on the seed-majority vote (an item counts as correct for a
  medium when more than half of its seeds are; exact binomial on the discordant items).

Per-medium intervals: accuracy: the crossed t interval clipped to [0, 1] and Wilson's interval
over the n items at the seed-mean accuracy (``*_wilson_lo/hi``), with ``lo``/``hi`` the wider of
the two (Wilson still moves when every item is always right; the t interval counts seeds);
R^2: the crossed t interval of its influence values, clipped at 1.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

from analysis._checks import SeedLike, check_int, check_real
from analysis.stats import sign_flip_test


class PairingError(ValueError):
    """The two media's per-item predictions cannot be paired (shapes, seeds or items differ)."""


def _grid(name: str, values, n_items: int | None = None) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise PairingError(f"{name}: expected (n_seeds, n_items) per-item predictions with at least 2 items, "
                           f"got shape {arr.shape}")
    if n_items is not None and arr.shape[1] != n_items:
        raise PairingError(f"{name}: expected {n_items} items (one column per test item), got {arr.shape[1]}")
    return arr


def wilson_interval(successes: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion successes / n (successes may be a seed-mean count)."""
    n = check_int("n", n, minimum=1)
    p = successes / n
    if not 0 <= p <= 1:
        raise ValueError(f"successes: expected a value in [0, n={n}], got {successes}")
    check_real("level", level, 0.0, 1.0, low_open=True, high_open=True)
    z = float(sps.norm.ppf(0.5 + level / 2))
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """Exact McNemar test on the seed-majority vote of (S, n) 0/1 correctness (two-sided binomial).

    ``a_only``: items right by a's majority and wrong by b's; ``b_only`` the reverse.
    """
    va = np.asarray(correct_a, dtype=np.float64).mean(axis=0) > 0.5
    vb = np.asarray(correct_b, dtype=np.float64).mean(axis=0) > 0.5
    a_only, b_only = int(np.sum(va & ~vb)), int(np.sum(~va & vb))
    p = 1.0 if a_only + b_only == 0 else float(sps.binomtest(a_only, a_only + b_only, 0.5).pvalue)
    return {"a_only": a_only, "b_only": b_only, "p_value": p,
            "vote": "majority over seeds (ties count as wrong)"}


def crossed_t(z: np.ndarray, level: float = 0.95, bounds: tuple[float, float] = (-math.inf, math.inf)) -> dict:
    """Mean of an (S seeds, n items) table with its crossed random-effects se, df, interval and p (of 0).

    See the module docstring. Returns ``mean``, ``se``, ``df``, ``ci_lo``/``ci_hi`` (clipped to
    ``bounds``) and ``p_value`` (two-sided t test of mean 0; NaN when se = 0).
    """
    z = np.asarray(z, dtype=np.float64)
    s, n = z.shape
    mean = float(z.mean())
    if s == 1:
        num, denom = float(z[0].var(ddof=1)) * s, (z[0].var(ddof=1) ** 2 / (n - 1))
    else:
        seed_means, item_means = z.mean(axis=1), z.mean(axis=0)
        ms_seed = n * float(np.sum((seed_means - mean) ** 2)) / (s - 1)
        ms_item = s * float(np.sum((item_means - mean) ** 2)) / (n - 1)
        resid = z - seed_means[:, None] - item_means[None, :] + mean
        ms_res = float(np.sum(resid**2)) / ((s - 1) * (n - 1))
        combined = ms_seed + ms_item - ms_res
        if combined >= max(ms_seed, ms_item):
            num = combined
            denom = ms_seed**2 / (s - 1) + ms_item**2 / (n - 1) + ms_res**2 / ((s - 1) * (n - 1))
        elif ms_seed >= ms_item:  # a negative variance-component estimate: fall back on the larger mean square
            num, denom = ms_seed, ms_seed**2 / (s - 1)
        else:
            num, denom = ms_item, ms_item**2 / (n - 1)
    se = math.sqrt(max(num, 0.0) / (n * s))
    df = float(num**2 / denom) if denom > 0 else float(n - 1)
    if se > 0:
        half = float(sps.t.ppf(0.5 + level / 2, df)) * se
        p = float(2 * sps.t.sf(abs(mean) / se, df))
    else:
        half, p = 0.0, float("nan")
    lo, hi = bounds
    return {"mean": mean, "se": se, "df": df, "ci_lo": float(np.clip(mean - half, lo, hi)),
            "ci_hi": float(np.clip(mean + half, lo, hi)), "p_value": p}


def _check_common(n_permutations: int, level: float) -> None:
    check_int("n_permutations", n_permutations, minimum=1)
    check_real("level", level, 0.0, 1.0, low_open=True, high_open=True)


def _difference(za: np.ndarray, zb: np.ndarray, loss_diff: np.ndarray, n_permutations: int, seed: SeedLike,
                level: float, bounds: tuple[float, float]) -> dict:
    """Crossed t of za - zb, with the sign-flip p over items (of the per-item loss differences) beside it."""
    t = crossed_t(za - zb, level, bounds)
    p_items, exact = sign_flip_test(loss_diff.mean(axis=0), n_permutations, seed)
    # no variability at all (every item and seed differs alike): the t test is undefined, the flips are not
    p = t["p_value"] if np.isfinite(t["p_value"]) else p_items
    return {"difference": t["mean"], "ci_lo": t["ci_lo"], "ci_hi": t["ci_hi"], "se": t["se"], "df": t["df"],
            "p_value": p, "p_items": p_items, "p_exact": exact}


def paired_classification_test(pred_a, pred_b, targets, *, n_permutations: int = 9999, level: float = 0.95,
                               seed: SeedLike = 0) -> dict:
    """Accuracy of two media on the same items and seeds: difference, interval, p-values.

    ``pred_a``, ``pred_b``: (S, n) predicted classes (or a 1-D array for one seed); ``targets``:
    (n,) true classes. Returns ``difference`` (accuracy_a - accuracy_b), ``ci_lo``/``ci_hi``,
    ``se``, ``df``, ``p_value`` (crossed t), ``p_items`` (item sign flips), ``mcnemar`` (dict),
    ``accuracy_a``/``accuracy_b`` with ``a_ci_lo``... (crossed t), ``a_wilson_lo``... (Wilson) and
    ``a_lo``/``a_hi`` (the wider), ``n_items``, ``n_seeds``, ``method``. Raises PairingError when
    the shapes differ.
    """
    targets = np.asarray(targets)
    if targets.ndim != 1:
        raise PairingError(f"targets: expected one true value per item (1-D), got shape {targets.shape}")
    pa, pb = _grid("pred_a", pred_a, targets.size), _grid("pred_b", pred_b, targets.size)
    if pa.shape != pb.shape:
        raise PairingError(f"pred_a, pred_b: expected the same (n_seeds, n_items), got {pa.shape} and {pb.shape}")
    return paired_correctness_test(pa == targets[None, :], pb == targets[None, :], n_permutations=n_permutations,
                                   level=level, seed=seed)


def _accuracy_side(c: np.ndarray, level: float) -> dict:
    t = crossed_t(c, level, (0.0, 1.0))
    wlo, whi = wilson_interval(float(c.mean(axis=0).sum()), c.shape[1], level)
    return {"accuracy": float(c.mean()), "ci_lo": t["ci_lo"], "ci_hi": t["ci_hi"], "wilson_lo": wlo, "wilson_hi": whi,
            "lo": min(t["ci_lo"], wlo), "hi": max(t["ci_hi"], whi)}


def paired_correctness_test(correct_a, correct_b, *, n_permutations: int = 9999, level: float = 0.95,
                            seed: SeedLike = 0) -> dict:
    """``paired_classification_test`` from (S, n) 0/1 correctness instead of predictions."""
    ca = _grid("correct_a", correct_a).astype(np.float64)
    cb = _grid("correct_b", correct_b).astype(np.float64)
    if ca.shape != cb.shape:
        raise PairingError(f"correct_a, correct_b: expected the same (n_seeds, n_items), got {ca.shape} and {cb.shape}")
    if not (np.isin(ca, (0.0, 1.0)).all() and np.isin(cb, (0.0, 1.0)).all()):
        raise ValueError("correct_a, correct_b: expected 0/1 (or boolean) correctness per seed and item")
    _check_common(n_permutations, level)
    s, n = ca.shape
    out = {**_difference(ca, cb, cb - ca, n_permutations, seed, level, (-1.0, 1.0)), "level": float(level),
           "n_items": int(n), "n_seeds": int(s), "mcnemar": mcnemar_exact(ca, cb),
           "method": "crossed items x seeds t (Satterthwaite df): interval and p; p_items: item sign flips"}
    for side, c in (("a", ca), ("b", cb)):
        acc = _accuracy_side(c, level)
        out[f"accuracy_{side}"] = acc["accuracy"]
        for key in ("ci_lo", "ci_hi", "wilson_lo", "wilson_hi", "lo", "hi"):
            out[f"{side}_{key}"] = acc[key]
    return out


def accuracy_interval(pred, targets, *, level: float = 0.95) -> dict:
    """One medium's accuracy over (S, n) predictions: crossed t and Wilson intervals.

    Returns ``accuracy``, ``ci_lo``/``ci_hi`` (crossed t, clipped to [0, 1]), ``wilson_lo``/
    ``wilson_hi``, and ``lo``/``hi``: the wider of the two (what a table should show).
    """
    targets = np.asarray(targets)
    c = (_grid("pred", pred, targets.size) == targets[None, :]).astype(np.float64)
    check_real("level", level, 0.0, 1.0, low_open=True, high_open=True)
    return {**_accuracy_side(c, level), "n_items": int(c.shape[1]), "n_seeds": int(c.shape[0])}


def _r2_influence(pred: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(per-seed R^2 (S,), influence values (S, n)) whose item mean is each seed's R^2 (module docstring)."""
    e2 = (pred - y) ** 2
    dev2 = (y - y.mean()) ** 2
    var_y = dev2.mean()
    mse = e2.mean(axis=1, keepdims=True)
    r2 = 1.0 - mse / var_y
    z = r2 - (e2 - mse) / var_y + (1.0 - r2) * (dev2 - var_y) / var_y
    return r2.ravel(), z


def r2_interval(pred, targets, *, level: float = 0.95) -> dict:
    """One medium's R^2 (mean over seeds) over (S, n) predictions with its crossed t interval."""
    y = np.asarray(targets, dtype=np.float64)
    p = _grid("pred", pred, y.size).astype(np.float64)
    r2, z = _r2_influence(p, y)
    t = crossed_t(z, level, (-math.inf, 1.0))
    return {"r2": float(r2.mean()), "ci_lo": t["ci_lo"], "ci_hi": t["ci_hi"], "n_items": int(p.shape[1]),
            "n_seeds": int(p.shape[0])}


def paired_regression_test(pred_a, pred_b, targets, *, n_permutations: int = 9999, level: float = 0.95,
                           seed: SeedLike = 0) -> dict:
    """R^2 and MAE of two media on the same items and seeds: differences, intervals, p-values.

    ``pred_a``, ``pred_b``: (S, n) predictions; ``targets``: (n,) true values (needs a
    non-constant target). Returns ``difference`` (R^2_a - R^2_b) with ``ci_lo``/``ci_hi``, ``se``,
    ``df``, ``p_value`` and ``p_items``; ``r2_a``/``r2_b`` with ``a_ci_lo``...; and ``mae`` (a dict
    with the same fields for MAE_a - MAE_b, lower is better), ``n_items``, ``n_seeds``, ``method``.
    """
    y = np.asarray(targets, dtype=np.float64)
    if y.ndim != 1 or not np.all(np.isfinite(y)):
        raise PairingError(f"targets: expected finite true values, one per item (1-D), got shape {y.shape}")
    pa = _grid("pred_a", pred_a, y.size).astype(np.float64)
    pb = _grid("pred_b", pred_b, y.size).astype(np.float64)
    if pa.shape != pb.shape:
        raise PairingError(f"pred_a, pred_b: expected the same (n_seeds, n_items), got {pa.shape} and {pb.shape}")
    if not (np.all(np.isfinite(pa)) and np.all(np.isfinite(pb))):
        raise ValueError("pred_a, pred_b: expected finite predictions")
    if float(((y - y.mean()) ** 2).sum()) <= 0:
        raise ValueError("targets: expected a non-constant target (R^2 is undefined when every item has one value)")
    _check_common(n_permutations, level)
    s, n = pa.shape
    (r2a, za), (r2b, zb) = _r2_influence(pa, y), _r2_influence(pb, y)
    ea2, eb2 = (pa - y) ** 2, (pb - y) ** 2
    ea, eb = np.abs(pa - y), np.abs(pb - y)
    out = {**_difference(za, zb, ea2 - eb2, n_permutations, seed, level, (-math.inf, math.inf)),
           "r2_a": float(r2a.mean()), "r2_b": float(r2b.mean()), "level": float(level), "n_items": int(n),
           "n_seeds": int(s), "method": "crossed items x seeds t of R^2 influence values (Satterthwaite df); "
                                        "p_items: item sign flips of squared errors"}
    for side, z in (("a", za), ("b", zb)):
        t = crossed_t(z, level, (-math.inf, 1.0))
        out[f"{side}_ci_lo"], out[f"{side}_ci_hi"] = t["ci_lo"], t["ci_hi"]
    mae = _difference(ea, eb, ea - eb, n_permutations, seed, level, (-math.inf, math.inf))
    out["mae"] = {**mae, "mae_a": float(ea.mean()), "mae_b": float(eb.mean())}
    return out
