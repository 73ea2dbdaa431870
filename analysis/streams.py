"""Named, independent random streams, so adding or removing one component does not change the others."""

from __future__ import annotations

import zlib

import numpy as np

from analysis._checks import SeedLike


def stream(seed: SeedLike, name: str) -> np.random.Generator:
    """Independent, reproducible generator per component: SeedSequence([seed, crc32(name)])."""
    base = int(seed) if not isinstance(seed, np.random.Generator) else int(seed.integers(2**31 - 1))
    return np.random.default_rng(np.random.SeedSequence([base, zlib.crc32(name.encode())]))
