"""Input validation shared by the analysis modules.

Every public function validates its inputs with these helpers so that bad input fails with a
ValueError naming the parameter, what was expected and what was received (never ``assert``,
which disappears under ``python -O``).
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any

import numpy as np

SeedLike = int | np.random.Generator


def as_matrix(name: str, X: Any, *, min_rows: int = 2, dtype: type = np.float64) -> np.ndarray:
    """Return ``X`` as a finite 2-D float array (no copy when it already is one).

    Raises ValueError when ``X`` is not 2-D, has fewer than ``min_rows`` rows, no columns, or
    contains NaN/inf (a NaN silently poisons every downstream similarity).
    """
    try:
        arr = np.asarray(X, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected a numeric 2-D array, got {type(X).__name__} ({exc})") from None
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (n_rows, n_features), got shape {arr.shape}")
    if arr.shape[0] < min_rows:
        raise ValueError(f"{name}: expected at least {min_rows} rows, got {arr.shape[0]}")
    if arr.shape[1] < 1:
        raise ValueError(f"{name}: expected at least 1 column, got {arr.shape[1]}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise ValueError(f"{name}: expected finite values, got {bad} NaN/inf entries")
    return arr


def check_paired(X: np.ndarray, Y: np.ndarray, names: tuple[str, str] = ("X", "Y")) -> None:
    """Rows of X and Y describe the same recordings, so the row counts must match."""
    if X.shape[0] != Y.shape[0]:
        raise ValueError(
            f"{names[0]} and {names[1]}: expected the same number of rows (paired recordings), "
            f"got {X.shape[0]} and {Y.shape[0]}"
        )


def as_labels(name: str, y: Any, n: int) -> np.ndarray:
    """Return ``y`` as a 1-D array of length ``n``."""
    arr = np.asarray(y)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name}: expected a 1-D array of length {n}, got shape {arr.shape}")
    return arr


def as_index(name: str, idx: Any, n: int) -> np.ndarray:
    """Return ``idx`` as a 1-D int64 array of unique row indices in [0, n)."""
    arr = np.asarray(idx)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D index array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name}: expected integer indices, got dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() >= n:
        raise ValueError(f"{name}: expected indices in [0, {n}), got range [{arr.min()}, {arr.max()}]")
    if np.unique(arr).size != arr.size:
        raise ValueError(f"{name}: expected unique indices, got {arr.size - np.unique(arr).size} duplicates")
    return arr.astype(np.int64, copy=False)


def check_int(name: str, value: Any, minimum: int = 1, maximum: int | None = None) -> int:
    """Return ``value`` as int after checking ``minimum <= value (<= maximum)``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name}: expected an integer, got {value!r} ({type(value).__name__})")
    if value < minimum or (maximum is not None and value > maximum):
        upper = "" if maximum is None else f" and <= {maximum}"
        raise ValueError(f"{name}: expected an integer >= {minimum}{upper}, got {value}")
    return int(value)


def check_real(name: str, value: Any, low: float, high: float, *, low_open: bool = False,
               high_open: bool = False) -> float:
    """Return ``value`` as float after checking it lies in the interval (bounds open or closed)."""
    if isinstance(value, bool) or not isinstance(value, Real) or not np.isfinite(value):
        raise ValueError(f"{name}: expected a finite real number, got {value!r}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        lb = "(" if low_open else "["
        hb = ")" if high_open else "]"
        raise ValueError(f"{name}: expected a value in {lb}{low}, {high}{hb}, got {value}")
    return float(value)


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """Return ``value`` after checking it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
    return value


def as_generator(seed: SeedLike, name: str = "seed") -> np.random.Generator:
    """Turn an int seed (or an existing Generator, used as is) into a numpy Generator.

    An int gives a fresh PCG64 stream, so results are reproducible for a fixed seed.
    """
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"{name}: expected a non-negative int or np.random.Generator, got {seed!r}")
    return np.random.default_rng(int(seed))
