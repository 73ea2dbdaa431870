"""Multiplicity control over a reported family of p-values: Holm's step-down procedure.

Holm (1979): sort the m p-values, p_(1) <= ... <= p_(m); the adjusted value of p_(j) is
max_{i <= j} min(1, (m - i + 1) p_(i)). Rejecting every hypothesis whose adjusted p is <= alpha
keeps the family-wise error rate (probability of any false rejection) at alpha under any
dependence between the tests, which matters here: the metrics of one comparison share the data.
NaN p-values (metrics that could not be computed) are not members of the family and stay NaN.

Permutation p-values cannot go below 1 / (1 + n_permutations), so with m tests nothing can be
rejected at alpha unless n_permutations >= m / alpha - 1 (29 tests at 0.05: 579 permutations);
``min_permutations_for`` says how many are needed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

HOLM = "holm"


def holm(p_values: Iterable[float]) -> np.ndarray:
    """Holm-adjusted p-values, in the input order; NaN entries stay NaN and do not count in m."""
    p = np.asarray(list(p_values), dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p_values: expected a 1-D sequence, got shape {p.shape}")
    finite = np.isfinite(p)
    if np.any((p[finite] < 0) | (p[finite] > 1)):
        raise ValueError(f"p_values: expected values in [0, 1], got {p[finite & ((p < 0) | (p > 1))].tolist()}")
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(finite)
    m = idx.size
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(stepped)
    return out


def min_permutations_for(family_size: int, alpha: float = 0.05) -> int:
    """Smallest n_permutations whose smallest p-value 1/(1+B) survives Holm's first step m p <= alpha."""
    return max(1, math.ceil(family_size / alpha) - 1)


def adjust_family(entries: dict[str, dict], family: str, p_key: str = "p_value", out_key: str = "p_holm") -> dict:
    """Write Holm-adjusted p-values into ``entries[name][out_key]`` for every entry with a p-value.

    ``entries``: name -> dict holding ``p_key`` (NaN / None: not a member). Also writes
    ``adjustment`` (a sentence naming the method, family and its size) into each member and
    returns {"family": family, "method": "holm", "members": [...], "size": m}.
    """
    names = [k for k, e in entries.items() if e is not None and e.get(p_key) is not None
             and np.isfinite(e[p_key])]
    adjusted = holm([entries[k][p_key] for k in names])
    text = f"Holm over the {len(names)} p-values of family '{family}'"
    for name, value in zip(names, adjusted):
        entries[name][out_key] = float(value)
        entries[name]["adjustment"] = text
    for name, e in entries.items():
        if e is not None and name not in names:
            e.setdefault(out_key, float("nan"))
    return {"family": family, "method": HOLM, "members": names, "size": len(names)}
