"""Wall time and peak memory of the compare job's analysis at scale, on synthetic paired embeddings.

Not a test. Usage:
    .venv/bin/python bench/compare_scale.py --n 5000
    nice -n 5 .venv/bin/python bench/compare_scale.py --n 50000 --dim 512     # the issue-18 figure
    .venv/bin/python bench/compare_scale.py --sizes 1000,10000,50000 --dim 512   # one process per size

What runs is what ``python -m ray_jobs.compare_embeddings --label label --group_column piece`` runs
(defaults: 1000 permutations, max_n_kernel 2000, z-scored features): ``compare_spaces`` with the
label as strata (free and within-label nulls) and a split of whole pieces, then ``compare_labels``
on the z-scored rows with the pieces as groups. ``--no-label`` measures the job without ``--label``
(free nulls only, no ``compare_labels``).

Data: a shared latent Z (N, 16) drives both spaces, X = Z A + noise and Y = Z B + noise (both D
dims), and a 10-class label that depends on Z, so every metric has something to find. Prints
one JSON object: seconds per component, totals, peak resident memory (ru_maxrss) and the
headline values. Baselines, timed in the same process on the same z-scored rows: linear CKA and
its permutation null done plainly in numpy (centre, one D x D product per draw), the cheapest
single metric of the battery. ``baseline_plain_cka`` draws ``n_permutations`` free permutations;
``baseline_plain_cka_within`` the same number of within-label permutations (what the plain way
pays for the job's second null). ``suite_vs_plain_cka`` = battery seconds / the free baseline;
``suite_vs_plain_cka_same_nulls`` = battery seconds / (free + within baselines), i.e. against the
plain CKA drawing the same nulls as the job (equal to the first without labels). Seconds are CPU
seconds of this process by default (``--clock cpu``: BLAS runs one thread, so on an idle machine
they equal wall seconds, and on a shared one they do not count time spent waiting for a core);
``totals_s`` and ``ratios`` give both clocks.
With ``--sizes`` every size runs in its own process (so each peak is its own) and the result adds
how time and memory grow with N.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis._threads import blas_threads  # noqa: E402
from analysis.compare import compare_labels, compare_spaces  # noqa: E402
from analysis.pooling import zscore_features  # noqa: E402
from bench.common import finish, machine  # noqa: E402
from ray_jobs.compare_embeddings.rows import grouped_half  # noqa: E402  (the job's own split)


def synthetic(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, 16))
    X = (Z @ rng.standard_normal((16, dim)) + 2.0 * rng.standard_normal((n, dim))).astype(np.float32)
    Y = (Z @ rng.standard_normal((16, dim)) + 2.0 * rng.standard_normal((n, dim))).astype(np.float32)
    y = np.argmax(Z[:, :10] + 0.5 * rng.standard_normal((n, 10)), axis=1)
    groups = rng.integers(0, max(10, n // 5), n)  # ~5 recordings per "piece"
    return X, Y, y, groups


def within_permutation(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniform permutation that moves rows only among rows of the same label, the plain way."""
    perm = np.arange(y.size)
    for label in np.unique(y):
        rows = np.flatnonzero(y == label)
        perm[rows] = rows[rng.permutation(rows.size)]
    return perm


def plain_cka_null(X: np.ndarray, Y: np.ndarray, n_permutations: int, seed: int, labels: np.ndarray | None = None) -> dict:
    """Linear CKA and its permutation p-value, the straightforward way (the baseline); ``labels``:
    permute within labels instead of freely."""
    t0 = time.perf_counter()
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    norm = np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc)
    value = float(np.linalg.norm(Xc.T @ Yc) ** 2 / norm)
    rng = np.random.default_rng(seed)
    null = []
    for _ in range(n_permutations):
        perm = rng.permutation(len(Yc)) if labels is None else within_permutation(labels, rng)
        null.append(np.linalg.norm(Xc.T @ Yc[perm]) ** 2 / norm)
    p = float((1 + np.sum(np.asarray(null) >= value)) / (1 + n_permutations))
    return {"value": value, "p_value": p, "seconds": round(time.perf_counter() - t0, 4)}


class Clock:
    """Wall and CPU seconds of a block (``with clock.measure(name):``); BLAS runs one thread, so on
    an idle machine the two agree and on a shared one CPU seconds are what the code itself cost."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextlib.contextmanager
    def measure(self, name: str):
        w, c = time.perf_counter(), time.process_time()
        yield
        self.wall[name] = time.perf_counter() - w
        self.cpu[name] = time.process_time() - c


@contextlib.contextmanager
def component_clock(kind: str):
    """Make compare_*'s per-component ``timings_s`` count ``kind`` seconds ("wall" leaves them alone):
    their modules read ``time.perf_counter``, which is swapped for ``time.process_time`` meanwhile."""
    import analysis.compare
    import analysis.compare_labels

    modules = (analysis.compare, analysis.compare_labels)
    if kind == "wall":
        yield
        return
    saved = [m.time for m in modules]
    proxy = type("CpuTime", (), {"perf_counter": staticmethod(time.process_time)})
    try:
        for m in modules:
            m.time = proxy
        yield
    finally:
        for m, t in zip(modules, saved, strict=True):
            m.time = t


def run_sizes(args) -> dict:
    """One subprocess per size (its own peak memory), then how time and memory grow with N."""
    import subprocess

    flags = ["--dim", str(args.dim), "--seed", str(args.seed), "--n-permutations", str(args.n_permutations),
             "--n-boot", str(args.n_boot), "--max-n-kernel", str(args.max_n_kernel), "--threads", str(args.threads),
             "--standardize", args.standardize, "--clock", args.clock] + (["--no-label"] if args.no_label else [])
    sizes = []
    for n in [int(x) for x in args.sizes.split(",") if x.strip()]:
        out = subprocess.run([sys.executable, __file__, "--n", str(n), *flags], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"compare_scale --n {n} failed:\n{out.stderr[-3000:]}")
        sizes.append(json.loads(out.stdout))
    growth = {}
    for a, b in zip(sizes, sizes[1:]):
        ratio = b["n"] / a["n"]
        growth[f"{a['n']}->{b['n']}"] = {
            "n_ratio": ratio,
            "time_ratio": round(b["seconds"]["total"] / a["seconds"]["total"], 2),
            "time_exponent": round(float(np.log(b["seconds"]["total"] / a["seconds"]["total"]) / np.log(ratio)), 2),
            "peak_rss_ratio": round(b["peak_rss_mb"]["at_end"] / a["peak_rss_mb"]["at_end"], 2),
        }
    table = [{"n": r["n"], "seconds_total": r["seconds"]["total"], "peak_rss_mb": r["peak_rss_mb"]["at_end"],
              "plain_cka_seconds": r["baseline_plain_cka"]["seconds"], "suite_vs_plain_cka": r["suite_vs_plain_cka"],
              "suite_vs_plain_cka_same_nulls": r["suite_vs_plain_cka_same_nulls"],
              "load_avg_end": r["machine"]["load_avg_end"]} for r in sizes]
    return {"benchmark": "compare_scale", "dim": args.dim, "n_permutations": args.n_permutations, "n_boot": args.n_boot,
            "label": not args.no_label, "table": table, "growth": growth, "sizes": sizes}


def peak_rss_mb() -> float:
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    scale = 1.0 if platform.system() == "Darwin" else 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--sizes", default=None, help="comma-separated N values, each in its own process (overrides --n)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-permutations", type=int, default=1000, help="as the job's --n_permutations (default 1000)")
    ap.add_argument("--n-boot", type=int, default=1000, help="as the job's --n_boot (default 1000)")
    ap.add_argument("--max-n-kernel", type=int, default=2000)
    ap.add_argument("--standardize", choices=("zscore", "none"), default="zscore", help="as the job's --standardize")
    ap.add_argument("--no-label", action="store_true", help="the job without --label: free nulls, no compare_labels")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="seconds counted per component and in the ratios: CPU seconds of this process (default; "
                         "robust to other processes on a shared machine) or wall seconds; both totals are reported")
    ap.add_argument("--threads", type=int, default=1,
                    help="BLAS threads inside compare_* (default 1 as in compare_*; 0 = library default)")
    args = ap.parse_args()
    if args.sizes:
        result = run_sizes(args)
        result["machine"] = machine()
        finish(result)
        return

    threads = None if args.threads == 0 else args.threads
    label = not args.no_label
    info = machine()
    t0 = time.perf_counter()
    X, Y, y, groups = synthetic(args.n, args.dim, args.seed)
    # as the job: compare_spaces gets the raw rows (and standardises itself), compare_labels the z-scored ones
    Za, Zs = (zscore_features(X), zscore_features(Y)) if args.standardize == "zscore" else (X, Y)
    train, test = grouped_half(groups, args.seed)
    t_data = time.perf_counter() - t0
    rss_data = peak_rss_mb()

    clock = Clock()
    with component_clock(args.clock), clock.measure("compare_spaces"):
        spaces = compare_spaces(X, Y, train_idx=train, test_idx=test, strata=y if label else None, seed=args.seed,
                                n_permutations=args.n_permutations, n_boot=args.n_boot,
                                max_n_kernel=args.max_n_kernel, standardize=args.standardize, n_threads=threads)
    rss_spaces = peak_rss_mb()
    labels = None
    with component_clock(args.clock), clock.measure("compare_labels"):
        if label:
            labels = compare_labels(Za, Zs, y, groups=groups, n_splits=5, seed=args.seed,
                                    n_permutations=args.n_permutations, n_boot=args.n_boot, max_n=args.max_n_kernel,
                                    standardize=args.standardize, n_threads=threads)
    with blas_threads(threads):
        with clock.measure("baseline_free"):
            baseline = plain_cka_null(Za, Zs, args.n_permutations, args.seed)
        within = None
        if label:
            with clock.measure("baseline_within"):
                within = plain_cka_null(Za, Zs, args.n_permutations, args.seed, labels=y)

    headline = {name: {k: m[k] for k in ("value", "ci_lo", "ci_hi", "null_mean", "p_value", "n_used")}
                for name, m in spaces["metrics"].items()
                if not name.startswith("retrieval") or name.endswith(("recall@1", "mrr"))}
    use = clock.cpu if args.clock == "cpu" else clock.wall
    battery = use["compare_spaces"] + use["compare_labels"]
    free_s = use["baseline_free"]
    same_nulls = free_s + use.get("baseline_within", 0.0)
    seconds = {"make_data": round(t_data, 2), "compare_spaces_total": round(use["compare_spaces"], 2),
               **{f"compare_spaces.{k}": round(v, 2) for k, v in spaces["timings_s"].items()},
               "compare_labels_total": round(use["compare_labels"], 2)}
    if labels:
        seconds.update({f"compare_labels.{k}": round(v, 2) for k, v in labels["timings_s"].items()})
    seconds["total"] = round(t_data + battery, 2)
    totals = {kind: {name: round(v, 2) for name, v in table.items()} for kind, table in
              (("wall", clock.wall), ("cpu", clock.cpu))}
    ratios = {kind: {"suite_vs_plain_cka": round((t["compare_spaces"] + t["compare_labels"])
                                                 / max(t["baseline_free"], 1e-9), 2),
                     "suite_vs_plain_cka_same_nulls": round((t["compare_spaces"] + t["compare_labels"])
                                                            / max(t["baseline_free"] + t.get("baseline_within", 0.0),
                                                                  1e-9), 2)}
              for kind, t in (("wall", clock.wall), ("cpu", clock.cpu))}
    finish({
        "benchmark": "compare_scale", "machine": info, "n": args.n, "dim": args.dim, "n_permutations": args.n_permutations,
        "n_boot": args.n_boot, "max_n_kernel": args.max_n_kernel, "standardize": args.standardize, "label": label,
        "blas_threads": threads, "cpu_count": os.cpu_count(), "load_avg_1m_at_end": os.getloadavg()[0],
        "clock": args.clock, "seconds": seconds, "totals_s": totals, "ratios": ratios,
        "peak_rss_mb": {"after_data": round(rss_data, 1), "after_compare_spaces": round(rss_spaces, 1),
                        "at_end": round(peak_rss_mb(), 1)},
        "values": headline, "primary": spaces["primary"],
        "labels": None if labels is None else {
            m: {"knn": labels[m]["knn"]["value"], "knn_chance": labels[m]["knn"]["chance"],
                "silhouette": labels[m]["silhouette"]["value"], "label_rdm": labels[m]["label_rdm"]["value"],
                "label_rdm_p": labels[m]["label_rdm"]["p_value"]} for m in ("audio", "symbolic")},
        "baseline_plain_cka": {**baseline, "seconds": round(free_s, 4),
                               "suite_value": spaces["metrics"]["linear_cka"]["value"]},
        "baseline_plain_cka_within": None if within is None else {**within,
                                                                  "seconds": round(use["baseline_within"], 4)},
        "suite_vs_plain_cka": round(battery / max(free_s, 1e-9), 2),
        "suite_vs_plain_cka_same_nulls": round(battery / max(same_nulls, 1e-9), 2),
    })


if __name__ == "__main__":
    main()
