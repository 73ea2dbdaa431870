"""One metric entry of ``analysis.compare.compare_spaces``: value, intervals, nulls (fields documented there).

Which interval a metric gets depends on what its value estimates:

* ``population``: a consistent, nearly unbiased estimate of a population quantity (debiased
  CKA, RSA): ``ci_lo``/``ci_hi`` = value +/- t se, the target is that population value.
* ``at_n``: a quantity defined at this sample size (mutual kNN overlap, held-out retrieval
  scores; their chance level depends on N): the interval targets the expected value at this N.
* ``biased``: biased upwards even for unrelated spaces, by an amount that depends on N and the
  dimensions (plain CKA, RBF CKA: V-statistic HSIC; mean CCA, SVCCA, Procrustes: in-sample fits).
  No interval on the value (``ci_lo``/``ci_hi`` NaN): a percentile interval re-centred on a biased
  value excludes the truth under independence (issue 16). Read ``excess`` instead.

Proportions over test queries (retrieval recall@k) are counts that are often 0 or n at small N,
where every jackknife replicate agrees and se = 0; their se is floored at the Agresti-Coull
binomial standard error sqrt(p~ (1 - p~) / (n + z^2)), p~ = (x + z^2 / 2) / (n + z^2)
(``proportion_se``), so a recall of 0 of 100 still gets an interval that admits chance level.

A median (median retrieval rank) is not smooth enough for a jackknife with few rows per group,
and per-query ranks are not independent (they share the gallery): its interval is the wider of
the distribution-free order-statistic interval of a median, [x_(l), x_(n+1-l)] with l from
Binomial(n, 1/2) (``median_interval``, over the per-query ranks), and the jackknife t interval.

Every metric also gets ``excess`` = value - null_mean (the free permutation null's mean: what
unrelated spaces with these marginals score at this N) with ``excess_ci_lo``/``excess_ci_hi`` =
excess +/- t se, clipped to the range excess can take. Under independence its expectation is
exactly 0 (the observed pairing is then one draw of the permutation distribution).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

from analysis import jackknife as jk
from analysis.stats import null_summary

LOWER_IS_BETTER = ("procrustes_distance", "median_rank")
KIND_POPULATION, KIND_AT_N, KIND_BIASED = "population", "at_n", "biased"
TARGETS = {KIND_POPULATION: "population value", KIND_AT_N: "expected value at this N", KIND_BIASED: None}


def proportion_se(p: float, n: int, level: float = 0.95) -> float:
    """Agresti-Coull standard error of a proportion p observed over n units (never 0)."""
    z2 = float(sps.norm.ppf(0.5 + level / 2)) ** 2
    pt = (p * n + z2 / 2) / (n + z2)
    return float(np.sqrt(pt * (1 - pt) / (n + z2)))


def median_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """[x_(l), x_(n+1-l)] (1-based order statistics), l the largest with 2 P(Bin(n, 1/2) <= l - 1) <= 1 - level.

    Covers the population median with probability >= level for i.i.d. values (any distribution);
    with n too small for that (n <= 5 at 95%) the full range.
    """
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = x.size
    tail = (1.0 - level) / 2.0
    k = int(sps.binom.ppf(tail, n, 0.5))
    if sps.binom.cdf(k, n, 0.5) > tail:
        k -= 1
    l_ = max(1, k + 1)
    return float(x[l_ - 1]), float(x[n - l_])


def lower_is_better(name: str) -> bool:
    return any(name.endswith(s) for s in LOWER_IS_BETTER)


def _null_block(observed: float, draws: np.ndarray, lower: bool, level: float) -> dict:
    nul = null_summary(observed, draws, "less" if lower else "greater", level)
    return {"null_mean": nul["null_mean"], "null_lo": nul["null_lo"], "null_hi": nul["null_hi"],
            "p_value": nul["p_value"], "n_permutations": nul["n_permutations"], "null": nul["null"]}


def _excess(value: float, null_mean: float, se: float, n_blocks: int, level: float,
            bounds: tuple[float, float], interval: tuple[float, float] | None = None) -> dict:
    excess = value - null_mean
    if interval is not None:
        lo, hi = interval[0] - null_mean, interval[1] - null_mean
    else:
        lo, hi = jk.t_interval(excess, se, n_blocks, level, (bounds[0] - null_mean, bounds[1] - null_mean))
    return {"excess": float(excess), "excess_ci_lo": lo, "excess_ci_hi": hi}


def metric_entry(name: str, value: float, *, kind: str, replicates: np.ndarray, n_blocks: int, null: np.ndarray,
                 null_within: np.ndarray | None = None, observed_for_null: float | None = None, bounds=(0.0, 1.0),
                 n_used: int, subsampled: bool, level: float, chance: float | None = None,
                 null_n_used: int | None = None, se_floor: float = 0.0, interval: tuple[float, float] | None = None,
                 note: str = "") -> dict:
    """Build the entry; ``replicates``: the G leave-one-group-out values; ``se_floor``: smallest se used;
    ``interval``: an interval for the value computed otherwise (a median's); the entry reports the wider of it
    and value +/- t se."""
    lower = lower_is_better(name)
    se = max(jk.standard_error(replicates), se_floor)
    obs = value if observed_for_null is None else observed_for_null
    if interval is not None:  # the wider of the given interval and the jackknife's
        t_lo, t_hi = jk.t_interval(value, se, n_blocks, level, bounds)
        interval = (min(interval[0], t_lo), max(interval[1], t_hi))
    free = _null_block(obs, null, lower, level)
    if kind == KIND_BIASED:
        ci, method = (math.nan, math.nan), "none: biased statistic, read excess and its interval"
    elif interval is not None:
        ci, method = interval, ("the wider of the order-statistic interval of a median (Binomial(n, 1/2)) and the "
                                f"delete-a-group jackknife t interval ({n_blocks} groups)")
    else:
        ci = jk.t_interval(value, se, n_blocks, level, bounds)
        method = f"delete-a-group jackknife, t interval ({n_blocks} groups)"
    entry = {"value": float(value), "kind": kind, "target": TARGETS[kind], "ci_lo": ci[0], "ci_hi": ci[1],
             "ci_method": method, "se": se, "n_blocks": int(n_blocks), "level": float(level),
             "bounds": [float(bounds[0]), float(bounds[1])],
             **_excess(value, free["null_mean"], se, n_blocks, level, bounds, interval), **free,
             "alternative": "less" if lower else "greater", "null_within": None,
             "n_used": int(n_used), "subsampled": bool(subsampled), "chance": chance,
             "null_n_used": int(n_used if null_n_used is None else null_n_used), "note": note}
    if null_within is not None:
        within = _null_block(obs, null_within, lower, level)
        entry["null_within"] = {**within, **_excess(value, within["null_mean"], se, n_blocks, level, bounds, interval)}
    return entry
