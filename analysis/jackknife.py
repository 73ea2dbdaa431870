"""Delete-a-group jackknife: standard errors and intervals from replicates that hold no duplicated rows.

Rows are split at random into G nearly equal groups; replicate g recomputes the statistic on the
rows outside group g (Quenouille 1956, Tukey 1958; the grouped form, Shao & Tu 1995 ch. 2):

    se^2 = (G - 1) / G * sum_g (T_(-g) - mean_g T_(-g))^2,   interval  centre +/- t_{G-1} se

with the Student t quantile on G - 1 degrees of freedom (G replicates estimate se). Why not the
bootstrap: a bootstrap resample repeats about 37% of the rows, and for the statistics of this
project a repeated row is not harmless. A repeated (audio, symbolic) pair is a perfectly matched
pair, so every pairing statistic (CKA, CCA, Procrustes) rises in the resample even when the spaces
are independent; a repeated row is its own nearest neighbour at distance 0 (mutual kNN, RDMs,
retrieval); dropping the copies instead shrinks the sample and changes the estimand (neighbourhoods
among fewer rows). A jackknife replicate holds n (1 - 1/G) distinct rows, all different recordings.

Choice of G (``n_blocks_for``): about sqrt(n), at least 10 and at most 100 (and at most n). For
smooth statistics any G is consistent; for a median (median retrieval rank) the deleted group must
grow with n (delete-d jackknife, Shao & Wu 1989), which sqrt(n) gives. Under independence the
CKA-type statistics are degenerate U-statistics, for which the jackknife overestimates the variance
(by about 2x): intervals are then conservative, which the coverage check (bench/interval_coverage.py) shows.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

from analysis._checks import SeedLike, as_generator, check_int, check_real

MIN_BLOCKS, MAX_BLOCKS = 10, 100


def n_blocks_for(n: int, min_blocks: int = MIN_BLOCKS, max_blocks: int = MAX_BLOCKS) -> int:
    """G = clip(isqrt(n), min_blocks, max_blocks), never more than n (see module docstring)."""
    n = check_int("n", n, minimum=2)
    return int(min(n, max(min_blocks, min(max_blocks, math.isqrt(n)))))


def block_ids(n: int, n_blocks: int, seed: SeedLike) -> np.ndarray:
    """(n,) int64 group of each row: a random partition into ``n_blocks`` groups of sizes differing by <= 1."""
    n = check_int("n", n, minimum=2)
    n_blocks = check_int("n_blocks", n_blocks, minimum=2, maximum=n)
    out = np.empty(n, dtype=np.int64)
    out[as_generator(seed).permutation(n)] = np.arange(n) % n_blocks
    return out


def block_ids_by_group(groups: np.ndarray, n_blocks: int, seed: SeedLike) -> tuple[np.ndarray, int]:
    """(block of each row, G) with every group (piece, performer) inside one block.

    Recordings of one group are not independent, so a replicate removes whole groups; G is
    capped at the number of groups.
    """
    _, codes = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(codes.max()) + 1
    g = int(min(n_blocks, n_groups))
    if g < 2:
        raise ValueError(f"groups: expected at least 2 distinct groups for a grouped jackknife, got {n_groups}")
    of_group = np.empty(n_groups, dtype=np.int64)
    of_group[as_generator(seed).permutation(n_groups)] = np.arange(n_groups) % g
    return of_group[codes.ravel()], g


def blocks_for(n: int, groups: np.ndarray | None, seed: SeedLike) -> tuple[np.ndarray, int]:
    """(block of each row, G): by rows (``block_ids``), or by whole groups when ``groups`` is given."""
    g = n_blocks_for(n)
    if groups is None:
        return block_ids(n, g, seed), g
    return block_ids_by_group(groups, g, seed)


def leave_out_weights(blocks: np.ndarray, n_blocks: int) -> np.ndarray:
    """(n, G) 0/1 weights: column g keeps every row outside group g (for weighted-sum statistics)."""
    return (blocks[:, None] != np.arange(n_blocks)[None, :]).astype(np.float64)


def standard_error(replicates: np.ndarray) -> float:
    """Grouped jackknife se from the G leave-one-group-out replicates (NaN replicates make it NaN)."""
    r = np.asarray(replicates, dtype=np.float64)
    if r.ndim != 1 or r.size < 2:
        raise ValueError(f"replicates: expected a 1-D array of at least 2 jackknife replicates, got shape {r.shape}")
    if not np.all(np.isfinite(r)):
        return float("nan")
    g = r.size
    return float(np.sqrt((g - 1) / g * np.sum((r - r.mean()) ** 2)))


def t_interval(centre: float, se: float, n_blocks: int, level: float = 0.95,
               bounds: tuple[float, float] = (-np.inf, np.inf)) -> tuple[float, float]:
    """centre +/- t_{G-1, (1+level)/2} se, clipped to ``bounds`` (the range the quantity can take)."""
    check_real("level", level, 0.0, 1.0, low_open=True, high_open=True)
    if not (np.isfinite(centre) and np.isfinite(se)):
        return float("nan"), float("nan")
    half = float(sps.t.ppf(0.5 + level / 2.0, n_blocks - 1)) * se
    lo, hi = bounds
    return float(np.clip(centre - half, lo, hi)), float(np.clip(centre + half, lo, hi))


def bias_corrected(value: float, replicates: np.ndarray) -> float:
    """Quenouille's estimate G T - (G - 1) mean T_(-g): removes a bias of order 1/n (not 1/sqrt(n))."""
    r = np.asarray(replicates, dtype=np.float64)
    return float(r.size * value - (r.size - 1) * r.mean())


def jackknife_ci(stat_fn, X: np.ndarray, Y: np.ndarray, n_blocks: int | None = None, seed: SeedLike = 0,
                 level: float = 0.95, bounds: tuple[float, float] = (-np.inf, np.inf)) -> dict:
    """Grouped-jackknife interval of ``stat_fn(X, Y) -> float`` over paired rows, recomputing it per replicate.

    For any statistic, neighbour-based ones included (each replicate recomputes neighbour lists
    among the remaining rows). Returns ``estimate``, ``se``, ``ci_lo``, ``ci_hi``, ``replicates``,
    ``n_blocks``, ``level``. Cost: G + 1 calls of ``stat_fn``.
    """
    n = X.shape[0]
    if Y.shape[0] != n:
        raise ValueError(f"X and Y: expected the same number of rows (paired recordings), got {n} and {Y.shape[0]}")
    g = n_blocks_for(n) if n_blocks is None else check_int("n_blocks", n_blocks, minimum=2, maximum=n)
    blocks = block_ids(n, g, seed)
    estimate = float(stat_fn(X, Y))
    reps = np.array([float(stat_fn(X[blocks != b], Y[blocks != b])) for b in range(g)])
    se = standard_error(reps)
    lo, hi = t_interval(estimate, se, g, level, bounds)
    return {"estimate": estimate, "se": se, "ci_lo": lo, "ci_hi": hi, "replicates": reps, "n_blocks": g,
            "level": float(level)}
