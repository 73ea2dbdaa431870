"""Permutation tests, bootstrap confidence intervals and paired comparisons.

* Permutation test of pairing (``permutation_test``): under H0 "the two spaces share no
  information about which recording is which", the row pairing of X and Y is exchangeable, so
  permuting the rows of Y gives draws from the null distribution of any paired statistic.
  p = (1 + #{null >= observed}) / (1 + n_permutations)  (Phipson & Smyth 2010), which is never 0
  and is a valid (slightly conservative) p-value for Monte Carlo permutations.
* Bootstrap (``bootstrap_ci``): resample recordings (the same row indices in X and Y) with
  replacement and take the percentile interval of the replicates (Efron & Tibshirani 1993, ch. 13).
  Valid for smooth statistics of i.i.d. rows whose value does not care that a row appears twice
  (a mean of per-row scores). It is NOT valid for pairing or neighbour statistics: a duplicated
  pair is a perfectly matched pair (CKA, CCA, Procrustes rise in every replicate, even for
  independent spaces), a duplicated row is its own nearest neighbour at distance 0 (kNN, RDMs),
  and ``duplicates="drop"`` does not repair that: the replicate then has ~63% of the rows, and
  neighbour statistics among fewer rows are larger too (chance level k/(m-1) grows), so the
  interval is shifted upwards as well. For those statistics use the delete-a-group jackknife
  (``analysis.jackknife.jackknife_ci``, which recomputes the statistic, neighbour lists
  included, on the rows outside each group), as ``analysis.compare`` does.
* ``paired_difference_test``: two media scored on the same units (folds or recordings);
  ``sign_flip_test``: its randomisation p-value on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import stats as sps

from analysis._checks import SeedLike, as_generator, as_matrix, check_choice, check_int, check_paired, check_real

ALTERNATIVES = ("greater", "less", "two-sided")


def scalar(result: Any) -> float:
    """A metric result as a float: metric dicts carry their value under ``"value"``."""
    return float(result["value"]) if isinstance(result, dict) else float(result)


def permutation_p_value(observed: float, null: np.ndarray, alternative: str = "greater") -> float:
    """(1 + #{null at least as extreme as observed}) / (1 + n_null); NaN null draws are dropped.

    "greater": extreme = null >= observed; "less": null <= observed; "two-sided": |null| >= |obs|
    (for statistics whose null is centred at 0, such as a mean paired difference).
    A relative tolerance of 1e-12 counts ties computed by different floating-point paths as ties.
    """
    check_choice("alternative", alternative, ALTERNATIVES)
    null = np.asarray(null, dtype=np.float64)
    null = null[np.isfinite(null)]
    if not np.isfinite(observed) or null.size == 0:
        return float("nan")
    tol = 1e-12 * max(1.0, abs(observed))
    if alternative == "greater":
        hits = np.count_nonzero(null >= observed - tol)
    elif alternative == "less":
        hits = np.count_nonzero(null <= observed + tol)
    else:
        hits = np.count_nonzero(np.abs(null) >= abs(observed) - tol)
    return float((1 + hits) / (1 + null.size))


def null_summary(observed: float, null: np.ndarray, alternative: str = "greater", level: float = 0.95) -> dict:
    """Observed value, p-value and the null's mean and central ``level`` range (2.5/97.5 % default)."""
    null = np.asarray(null, dtype=np.float64)
    finite = null[np.isfinite(null)]
    q = (1.0 - level) / 2.0
    lo, hi = (np.quantile(finite, [q, 1.0 - q]) if finite.size else (np.nan, np.nan))
    return {"observed": float(observed), "p_value": permutation_p_value(observed, null, alternative),
            "null_mean": float(finite.mean()) if finite.size else float("nan"), "null_lo": float(lo),
            "null_hi": float(hi), "null": null, "n_permutations": int(null.size), "alternative": alternative}


def permutation_null(stat_of_perm: Callable[[np.ndarray], float], n: int, n_permutations: int,
                     seed: SeedLike) -> np.ndarray:
    """Null draws ``stat_of_perm(perm)`` for ``n_permutations`` uniform random permutations of n rows."""
    n_permutations = check_int("n_permutations", n_permutations, minimum=1)
    rng = as_generator(seed)
    return np.array([stat_of_perm(rng.permutation(n)) for _ in range(n_permutations)], dtype=np.float64)


def permutation_test(stat_fn: Callable[[np.ndarray, np.ndarray], Any], X: np.ndarray, Y: np.ndarray,
                     n_permutations: int = 200, seed: SeedLike = 0, alternative: str = "greater",
                     level: float = 0.95) -> dict:
    """Permutation test of the X-Y row pairing for ``stat_fn(X, Y)`` (float or metric dict).

    Returns ``observed``, ``p_value`` = (1 + #{null >= observed}) / (1 + n_permutations),
    ``null_mean``, ``null_lo``/``null_hi`` (central ``level`` range: 2.5 and 97.5 percentiles by
    default), the ``null`` draws (for plots) and ``n_permutations``. Deterministic for a fixed seed.
    Cost: n_permutations + 1 calls of stat_fn; the default 200 gives a smallest p of 1/201.
    """
    X = as_matrix("X", X)
    Y = as_matrix("Y", Y)
    check_paired(X, Y)
    check_real("level", level, 0.0, 1.0, low_open=True, high_open=True)
    observed = scalar(stat_fn(X, Y))
    null = permutation_null(lambda p: scalar(stat_fn(X, Y[p])), X.shape[0], n_permutations, seed)
    return null_summary(observed, null, alternative, level)


def percentile_ci(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval (lo, hi) of bootstrap replicates; NaN replicates are dropped."""
    check_real("level", level, 0.0, 1.0, low_open=True, high_open=True)
    r = np.asarray(replicates, dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return float("nan"), float("nan")
    q = (1.0 - level) / 2.0
    lo, hi = np.quantile(r, [q, 1.0 - q])
    return float(lo), float(hi)


def bootstrap_index_sets(n: int, n_boot: int, seed: SeedLike, duplicates: str = "keep") -> list[np.ndarray]:
    """``n_boot`` resamples of n row indices with replacement (sorted distinct rows if "drop")."""
    check_choice("duplicates", duplicates, ("keep", "drop"))
    n_boot = check_int("n_boot", n_boot, minimum=1)
    rng = as_generator(seed)
    sets = [rng.integers(0, n, size=n) for _ in range(n_boot)]
    return [np.unique(s) for s in sets] if duplicates == "drop" else sets


def bootstrap_weights(n: int, n_boot: int, seed: SeedLike) -> np.ndarray:
    """(n, n_boot) multiplicities of each row in ``n_boot`` resamples of n rows with replacement.

    Column b is the bincount of a resample's indices, so statistics written as weighted sums
    (quadratic forms for kernel/RDM statistics) evaluate all replicates with matrix products.
    """
    n_boot = check_int("n_boot", n_boot, minimum=1)
    rng = as_generator(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).T.astype(np.float64)


def bootstrap_replicates(stat_of_idx: Callable[[np.ndarray], float], n: int, n_boot: int, seed: SeedLike,
                         duplicates: str = "keep") -> np.ndarray:
    """``stat_of_idx(idx)`` for each bootstrap index set (see ``bootstrap_index_sets``)."""
    return np.array([stat_of_idx(idx) for idx in bootstrap_index_sets(n, n_boot, seed, duplicates)])


def bootstrap_ci(stat_fn: Callable[[np.ndarray, np.ndarray], Any], X: np.ndarray, Y: np.ndarray,
                 n_boot: int = 200, seed: SeedLike = 0, level: float = 0.95, duplicates: str = "keep") -> dict:
    """Percentile bootstrap CI for ``stat_fn(X, Y)``, resampling recordings (rows of both together).

    Returns ``estimate`` (full sample), ``ci_lo``, ``ci_hi``, ``replicates``, ``n_boot``, ``level``,
    ``duplicates``. Not for pairing or neighbour statistics, with either ``duplicates`` setting (see
    the module docstring; use ``analysis.jackknife.jackknife_ci``).
    200 replicates give percentile endpoints with Monte Carlo error of roughly 0.1 SE at 95 %.
    """
    X = as_matrix("X", X)
    Y = as_matrix("Y", Y)
    check_paired(X, Y)
    estimate = scalar(stat_fn(X, Y))
    reps = bootstrap_replicates(lambda idx: scalar(stat_fn(X[idx], Y[idx])), X.shape[0], n_boot, seed, duplicates)
    lo, hi = percentile_ci(reps, level)
    return {"estimate": estimate, "ci_lo": lo, "ci_hi": hi, "replicates": reps, "n_boot": int(n_boot),
            "level": float(level), "duplicates": duplicates}


def bootstrap_mean_ci(values: np.ndarray, n_boot: int = 1000, seed: SeedLike = 0, level: float = 0.95,
                      statistic: Callable[[np.ndarray], float] = np.mean) -> dict:
    """Percentile bootstrap CI of ``statistic`` (default mean) of per-unit values (e.g. per query).

    Used for neighbour and retrieval metrics, which are means of per-recording scores computed
    against a fixed gallery: the interval reflects which recordings were queried, conditional on
    the gallery. Vectorised in batches so 1000 replicates of 50,000 values take well under a second.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size < 2:
        raise ValueError(f"values: expected a 1-D array with at least 2 entries, got shape {v.shape}")
    n_boot = check_int("n_boot", n_boot, minimum=1)
    rng = as_generator(seed)
    reps = np.empty(n_boot)
    batch = max(1, 2**22 // v.size)
    for start in range(0, n_boot, batch):
        m = min(batch, n_boot - start)
        idx = rng.integers(0, v.size, size=(m, v.size))
        reps[start:start + m] = [statistic(row) for row in v[idx]]
    lo, hi = percentile_ci(reps, level)
    return {"estimate": float(statistic(v)), "ci_lo": lo, "ci_hi": hi, "replicates": reps,
            "n_boot": n_boot, "level": float(level)}


def sign_flip_test(d: np.ndarray, n_permutations: int = 10000, seed: SeedLike = 0) -> tuple[float, bool]:
    """Two-sided sign-flip randomisation p-value of mean(d) against 0; returns (p, exact).

    H0: each d_i is symmetric about 0 (e.g. the two media's scores on unit i are exchangeable).
    When 2^n <= n_permutations (n <= 20) all sign vectors are enumerated: p = #{|null| >= |obs|} / 2^n,
    exact, smallest 2 / 2^n. Otherwise Monte Carlo with the +1 correction (never 0). All-zero d: p = 1.
    """
    d = np.asarray(d, dtype=np.float64)
    if d.ndim != 1 or d.size < 1 or not np.all(np.isfinite(d)):
        raise ValueError(f"d: expected a non-empty 1-D array of finite differences, got shape {d.shape}")
    n_permutations = check_int("n_permutations", n_permutations, minimum=1)
    n = d.size
    obs = float(d.mean())
    if not np.any(d):
        return 1.0, n <= 20 and 2**n <= n_permutations
    if n <= 20 and 2**n <= n_permutations:
        signs = 1.0 - 2.0 * ((np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1)
        null = signs @ d / n
        tol = 1e-12 * max(1.0, abs(obs))
        return float(np.mean(np.abs(null) >= abs(obs) - tol)), True
    rng = as_generator(seed)
    null = np.empty(n_permutations)
    batch = max(1, 2**22 // n)
    for start in range(0, n_permutations, batch):
        m = min(batch, n_permutations - start)
        signs = 1.0 - 2.0 * rng.integers(0, 2, size=(m, n))
        null[start:start + m] = signs @ d / n
    return permutation_p_value(obs, null, "two-sided"), False


def paired_difference_test(a_scores: np.ndarray, b_scores: np.ndarray, seed: SeedLike = 0,
                           n_permutations: int = 10000, level: float = 0.95) -> dict:
    """Compare two media scored on the same units (CV folds or recordings): d_i = a_i - b_i.

    * sign-flip permutation test of H0 "d_i symmetric about 0": statistic mean(d), two-sided.
      When 2^n <= n_permutations all sign vectors are enumerated (exact p, smallest 2/2^n, e.g.
      0.0625 for 5 folds); otherwise Monte Carlo with the +1 correction.
    * Wilcoxon signed-rank test (scipy; zero differences dropped, exact null for small n).
    * CI for the mean difference: Student t interval mean +/- t_{n-1} * sd / sqrt(n) (better than a
      percentile bootstrap for a handful of folds). Fold scores share training data, so their
      variance is underestimated (Nadeau & Bengio 2003); treat fold-level p-values as optimistic.
    """
    a = np.asarray(a_scores, dtype=np.float64)
    b = np.asarray(b_scores, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.size < 2:
        raise ValueError("a_scores, b_scores: expected two 1-D arrays of equal length >= 2, "
                         f"got shapes {a.shape} and {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("a_scores, b_scores: expected finite values, got NaN/inf")
    d = a - b
    n = d.size
    obs = float(d.mean())
    p_perm, exact = sign_flip_test(d, n_permutations, seed)
    sd = float(d.std(ddof=1))
    half = float(sps.t.ppf(0.5 + level / 2.0, n - 1) * sd / np.sqrt(n))
    if np.any(d != 0):
        w = sps.wilcoxon(d, zero_method="wilcox")
        w_stat, w_p = float(w.statistic), float(w.pvalue)
    else:
        w_stat, w_p = 0.0, 1.0
    return {"mean_a": float(a.mean()), "mean_b": float(b.mean()), "mean_difference": obs,
            "ci_lo": obs - half, "ci_hi": obs + half, "level": float(level), "p_value": p_perm,
            "p_exact": exact, "wilcoxon_statistic": w_stat, "wilcoxon_p": w_p, "n_units": int(n)}
