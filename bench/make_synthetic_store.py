"""Write a synthetic paired embeddings.h5 of N recordings (both media D-dimensional) for scale runs.

    python bench/make_synthetic_store.py --n 50000 --dim 512 --out /tmp/synth50k
    python -m ray_jobs.compare_embeddings --h5_path /tmp/synth50k/embeddings.h5 --output_dir /tmp/cmp50k --label style

The two media share a rank-8 latent structure plus independent noise, with a 10-class label and a
70/15/15 split, so every metric has something to find. Prints JSON with the write time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from embedders.store.h5 import consolidate
from embedders.store.parts import ShardWriter


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    style = rng.integers(0, 10, args.n)
    centres = rng.standard_normal((10, 8)) * 2
    latent = centres[style] + rng.standard_normal((args.n, 8))
    mix_a, mix_s = rng.standard_normal((8, args.dim)), rng.standard_normal((8, args.dim))
    info = pd.DataFrame({"id": [f"r{i}" for i in range(args.n)], "audio_filename": "a.wav", "midi_filename": "m.mid",
                         "style": [f"s{k}" for k in style], "bpm": rng.uniform(60, 160, args.n).round(1),
                         "split": rng.choice(["train", "validation", "test"], args.n, p=[0.7, 0.15, 0.15])})
    for medium, mix in (("audio_embeddings", mix_a), ("symbolic_embeddings", mix_s)):
        writer = ShardWriter(out, medium, "synthetic", "synthetic", {"embedder": "synthetic"}, rows_per_part=5000)
        for start in range(0, args.n, 5000):
            block = latent[start:start + 5000] @ mix + rng.standard_normal((min(5000, args.n - start), args.dim)) * 3
            for i, row in enumerate(block.astype(np.float32)):
                writer.add(f"r{start + i}", row[None, :])
        writer.flush()
    consolidate(out, info, out / "embeddings.h5", provenance={"dataset": "synthetic"})
    print(json.dumps({"n": args.n, "dim": args.dim, "seconds": round(time.perf_counter() - started, 1),
                      "h5": str(out / "embeddings.h5")}))


if __name__ == "__main__":
    main()
