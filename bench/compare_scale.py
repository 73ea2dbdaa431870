"""Wall time and peak memory of analysis.compare at scale, on synthetic paired embeddings.

Not a test. Usage:
    .venv/bin/python bench/compare_scale.py --n 5000
    .venv/bin/python bench/compare_scale.py --n 50000 --dim 512

Data: a shared latent Z (N, 16) drives both spaces, X = Z A + noise and Y = Z B + noise (both D
dims), and a 10-class label that depends on Z, so every metric has something to find. Prints
one JSON object: seconds per component, totals, peak resident memory (ru_maxrss) and the
headline values.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.compare import compare_labels, compare_spaces  # noqa: E402


def synthetic(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, 16))
    X = (Z @ rng.standard_normal((16, dim)) + 2.0 * rng.standard_normal((n, dim))).astype(np.float32)
    Y = (Z @ rng.standard_normal((16, dim)) + 2.0 * rng.standard_normal((n, dim))).astype(np.float32)
    y = np.argmax(Z[:, :10] + 0.5 * rng.standard_normal((n, 10)), axis=1)
    groups = rng.integers(0, max(10, n // 5), n)  # ~5 recordings per "piece"
    return X, Y, y, groups


def peak_rss_mb() -> float:
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    scale = 1.0 if platform.system() == "Darwin" else 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-permutations", type=int, default=200)
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--max-n-kernel", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1,
                    help="BLAS threads inside compare_* (default 1 as in compare_*; 0 = library default)")
    args = ap.parse_args()

    threads = None if args.threads == 0 else args.threads
    t0 = time.perf_counter()
    X, Y, y, groups = synthetic(args.n, args.dim, args.seed)
    t_data = time.perf_counter() - t0
    rss_data = peak_rss_mb()

    t0 = time.perf_counter()
    spaces = compare_spaces(X, Y, seed=args.seed, n_permutations=args.n_permutations, n_boot=args.n_boot,
                            max_n_kernel=args.max_n_kernel, n_threads=threads)
    t_spaces = time.perf_counter() - t0
    rss_spaces = peak_rss_mb()

    t0 = time.perf_counter()
    labels = compare_labels(X, Y, y, groups=groups, seed=args.seed, n_permutations=args.n_permutations,
                            max_n=args.max_n_kernel, n_threads=threads)
    t_labels = time.perf_counter() - t0

    headline = {name: {k: m[k] for k in ("value", "ci_lo", "ci_hi", "null_mean", "p_value", "n_used")}
                for name, m in spaces["metrics"].items()
                if not name.startswith("retrieval") or name.endswith(("recall@1", "mrr"))}
    print(json.dumps({
        "n": args.n, "dim": args.dim, "n_permutations": args.n_permutations, "n_boot": args.n_boot,
        "max_n_kernel": args.max_n_kernel, "blas_threads": threads, "cpu_count": os.cpu_count(),
        "load_avg_1m_at_end": os.getloadavg()[0],
        "seconds": {"make_data": round(t_data, 2), "compare_spaces_total": round(t_spaces, 2),
                    **{f"compare_spaces.{k}": round(v, 2) for k, v in spaces["timings_s"].items()},
                    "compare_labels_total": round(t_labels, 2),
                    **{f"compare_labels.{k}": round(v, 2) for k, v in labels["timings_s"].items()},
                    "total": round(t_data + t_spaces + t_labels, 2)},
        "peak_rss_mb": {"after_data": round(rss_data, 1), "after_compare_spaces": round(rss_spaces, 1),
                        "at_end": round(peak_rss_mb(), 1)},
        "values": headline,
        "labels": {m: {"knn": labels[m]["knn"]["value"], "knn_chance": labels[m]["knn"]["chance"],
                       "silhouette": labels[m]["silhouette"]["value"], "label_rdm": labels[m]["label_rdm"]["value"],
                       "label_rdm_p": labels[m]["label_rdm"]["p_value"]} for m in ("audio", "symbolic")},
    }, indent=1, default=float))


if __name__ == "__main__":
    main()
