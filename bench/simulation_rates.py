"""Rates of a coverage or rejection simulation, shared by bench/interval_coverage*.py."""

from __future__ import annotations

import math

import numpy as np

ALPHA = 0.05


def rate(hits: np.ndarray) -> dict:
    r = float(np.mean(hits))
    return {"rate": round(r, 4), "mc_se": round(math.sqrt(r * (1 - r) / hits.size), 4)}


def loo_mean(values: np.ndarray) -> np.ndarray:
    """Mean over the other datasets, for each dataset (NaN-aware)."""
    ok = np.isfinite(values)
    total, count = np.where(ok, values, 0.0).sum(0), ok.sum(0)
    return (total - np.where(ok, values, 0.0)) / np.maximum(count - ok, 1)


def cover(lo, hi, truth) -> np.ndarray:
    return (lo <= truth + 1e-12) & (truth - 1e-12 <= hi)
