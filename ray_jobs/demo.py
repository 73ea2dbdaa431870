"""The whole chain on the bundled default dataset (what `make demo` runs).

    python -m ray_jobs.demo [--data_root data] [--dataset music21] [--limit N] [--num_cpus N]

Stages run in order; each is skipped when its output already exists, so a rerun continues where
the last one stopped. Stage wall times are printed at the end and written to demo_timings.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from embedders.dataset import dataset_dir, embeddings_dir


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.demo", description=__doc__.split("\n")[0])
    p.add_argument("--data_root", default="data")
    p.add_argument("--dataset", default="music21")
    p.add_argument("--limit", type=int, default=None, help="build only N works (quick runs, tests)")
    p.add_argument("--num_cpus", type=int, default=None, help="CPUs for the local Ray instance")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ray_jobs import generate_embeddings, prepare_dataset
    from ray_jobs._ray import ensure_ray

    ensure_ray(args.num_cpus)
    common = ["--dataset", args.dataset, "--data_root", args.data_root]
    timings: dict[str, float] = {}

    def stage(name: str, done: bool, fn, argv_: list[str]) -> None:
        if done:
            print(f"== {name}: output present, skipped")
            timings[name] = 0.0
            return
        print(f"== {name}: python -m ray_jobs.{fn.__module__.rsplit('.', 1)[-1]} {' '.join(argv_)}")
        started = time.perf_counter()
        status = fn(argv_)
        timings[name] = round(time.perf_counter() - started, 1)
        if status != 0:
            raise SystemExit(f"demo: stage {name} failed with exit status {status}")

    info_csv = dataset_dir(args.data_root, args.dataset) / "info.csv"
    limit = ["--limit", str(args.limit)] if args.limit else []
    stage("prepare_dataset", info_csv.exists(), prepare_dataset.main, ["--source", "music21", *common, *limit])
    h5 = embeddings_dir(args.data_root, args.dataset) / "embeddings.h5"
    stage("generate_embeddings", h5.exists(), generate_embeddings.main, common)

    out = embeddings_dir(args.data_root, args.dataset) / "demo_timings.json"
    out.write_text(json.dumps(timings, indent=2))
    print("\nstage timings (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()))
    print(f"embeddings: {h5}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
