"""Throughput and peak memory of the generate_embeddings job against the original tool's sequential loop.

    python bench/embedding_throughput.py --source data/raw/music21 --sizes 100,400,1600 [--work DIR]

For each size N (rows cut from ``--source`` by ``bench/paired_data.py``; files are read once
beforehand so no run pays for cold disk reads), in one run, one after the other:

* ``sequential``: the original tool's loop in this process: per row load audio, embed, load MIDI,
  embed (same embedders, each item through ``embed_items(..., with_average=True)`` as in the job),
  then the same outputs as the job (Parquet parts, errors.parquet, embeddings.h5). BLAS is held to
  one thread, as in the job's one-CPU workers. Seconds per stage are kept: each stage then runs
  alone, so these are the "stage alone" costs.
* ``job``: ``python -m ray_jobs.generate_embeddings`` as a subprocess, as a user runs it (default
  ``--executor auto``: the local executor below ``--local_max_rows`` pending rows, else a fresh
  local Ray instance), its process tree sampled for resident memory (RSS every 0.5 s, PSS every 2 s).
* ``job_ray`` (unless ``--no_ray_run``): the same with ``--executor ray``, to place the auto rule's
  size threshold.

With ``--repeats R`` each size runs R rounds of these, the order reversed every other round, and
reports the median of the rounds' speedups (the build machine's load drifts within minutes).
Before each round ``capacity_probe`` measures how many cores two processes get at that moment
(busy loops: two at once against one alone; 2.0 on two idle cores): the ceiling of any speedup
from parallelism on the shared machine. ``cpu_seconds`` compares the work itself (sequential
process vs the job's whole process tree).

``startup_s`` of a job run is its wall time outside the embedding and bookkeeping: interpreter and
imports, Ray's start and shutdown (``ray_start_seconds`` of its summary), the local executor's pool.
The 1-minute load average is recorded before each run (the build machine is shared).

Before the sizes, a scaling probe runs the per-row loop in one process, then in two processes at
once, and reports per stage how much two processes gain (2.0 = perfect): the bound below uses it.
Bounds at each size, from the stage costs of the sequential run (T_s) and the probe's scaling k_s:
``cpu_bound_s`` = sum_s T_s / k_s (all row work spread over the cores; writing, done by the one
driver, with k = 1) and ``slowest_stage_bound_s`` = max_s T_s / k_s. Targets (issue 19, short
clips): job >= 1.0x the loop at 100 rows, >= 1.3x at 400, >= 1.57x at 1600.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    REPO,
    CpuMeter,
    Stopwatch,
    TreeMemorySampler,
    blas_probe,
    capacity_probe,
    finish,
    load_avg,
    machine,
)
from bench.paired_data import sized_dataset, warm_page_cache  # noqa: E402

STAGES = ("decode_audio", "embed_audio", "decode_midi", "embed_midi")
TARGETS = {100: 1.0, 400: 1.3, 1600: 1.57}  # job / sequential loop, issue 19
A, S = "audio_embeddings", "symbolic_embeddings"


# ---------------------------------------------------------------------------------------------
# The original tool's loop
# ---------------------------------------------------------------------------------------------
def _embed_row(row, root: Path, audio, symbolic, sw: Stopwatch) -> dict[str, Any]:
    """One row as the original tool did it: load audio, embed, load MIDI, embed. ItemErrors are kept."""
    from embedders.base import ITEM_ERRORS, ItemError
    from embedders.io import decode_audio, decode_midi

    out: dict[str, Any] = {}
    for medium, embedder, path, decode_stage, embed_stage in (
        (A, audio, row.audio_filename, "decode_audio", "embed_audio"),
        (S, symbolic, row.midi_filename, "decode_midi", "embed_midi"),
    ):
        try:
            with sw(decode_stage):
                item = decode_audio(root / path, embedder.sample_rate, row.id) if medium == A \
                    else decode_midi(root / path, row.id)
        except ITEM_ERRORS as exc:
            out[medium] = ("decode", exc)
            continue
        with sw(embed_stage):
            (result,) = embedder.embed_items([row.id], [item], with_average=True)
        out[medium] = ("embed", result) if isinstance(result, ItemError) else result
    return out


def sequential_run(root: Path, out_dir: Path, audio_name: str, symbolic_name: str) -> dict[str, Any]:
    """The whole sequential baseline for one dataset folder, writing the job's outputs into ``out_dir``."""
    from threadpoolctl import threadpool_limits

    from embedders.base import Embedding
    from embedders.dataset import info_hash, package_versions, read_info_csv
    from embedders.registry import get_embedder
    from embedders.store.h5 import consolidate
    from embedders.store.parts import ShardWriter, write_errors

    started = time.perf_counter()
    sw = Stopwatch()
    info = read_info_csv(root)
    embedders = {A: get_embedder(audio_name), S: get_embedder(symbolic_name)}
    writers = {m: ShardWriter(out_dir, m, e.name, e.config_hash(), {**e.describe(), "config_hash": e.config_hash()})
               for m, e in embedders.items()}
    errors: list[dict] = []
    setup = time.perf_counter() - started
    with threadpool_limits(1), CpuMeter() as cpu:
        for row in info.itertuples(index=False):
            results = _embed_row(row, root, embedders[A], embedders[S], sw)
            with sw("write"):
                for medium, result in results.items():
                    if isinstance(result, Embedding):
                        writers[medium].add(row.id, result.sequence, result.average)
                    else:  # (stage, ItemError)
                        stage, exc = result
                        errors.append({"id": row.id, "medium": medium, "embedder": embedders[medium].name,
                                       "stage": stage, "error_type": type(exc).__name__, "message": exc.reason})
        with sw("write"):
            for writer in writers.values():
                writer.flush()
            write_errors(out_dir, errors)
            consolidate(out_dir, info, out_dir / "embeddings.h5",
                        provenance={"dataset": root.name, "info_csv_sha256": info_hash(root),
                                    "package_versions": package_versions(), "command": "bench sequential"})
    wall = time.perf_counter() - started
    return {"seconds": round(wall, 2), "setup_s": round(setup, 2), "cpu": cpu.result,
            "stage_seconds": {k: round(v, 3) for k, v in sw.seconds.items()},
            "rows_embedded": {m: w.rows_written for m, w in writers.items()}, "errors": len(errors)}


# ---------------------------------------------------------------------------------------------
# Scaling probe: does a second process add throughput on this machine?
# ---------------------------------------------------------------------------------------------
def _probe_worker(args: tuple[str, list[int], str, str]) -> dict[str, float]:
    from threadpoolctl import threadpool_limits

    from embedders.dataset import read_info_csv
    from embedders.registry import get_embedder

    root, rows, audio_name, symbolic_name = args
    info = read_info_csv(root).iloc[rows]
    audio, symbolic = get_embedder(audio_name), get_embedder(symbolic_name)
    sw = Stopwatch()
    with threadpool_limits(1):
        _embed_row(next(info.itertuples(index=False)), Path(root), audio, symbolic, Stopwatch())  # warm-up
        t0 = time.perf_counter()
        for row in info.itertuples(index=False):
            _embed_row(row, Path(root), audio, symbolic, sw)
    return {**sw.seconds, "total": time.perf_counter() - t0}


def scaling_probe(root: Path, n_rows: int, audio_name: str, symbolic_name: str) -> dict[str, Any]:
    """Per stage: seconds for ``n_rows`` in one process vs each of two concurrent processes."""
    rows = list(range(n_rows))
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        one = pool.map(_probe_worker, [(str(root), rows, audio_name, symbolic_name)])[0]
    with ctx.Pool(2) as pool:
        two = pool.map(_probe_worker, [(str(root), rows, audio_name, symbolic_name)] * 2)
    scaling = {}
    for key in (*STAGES, "total"):
        t2 = float(np.mean([t.get(key, 0.0) for t in two]))
        scaling[key] = round(2 * one.get(key, 0.0) / t2, 2) if t2 > 0 else None
    return {"rows_per_process": n_rows, "one_process_s": {k: round(v, 3) for k, v in one.items()},
            "two_processes_s": {k: round(float(np.mean([t.get(k, 0.0) for t in two])), 3) for k in one},
            "scaling_2_processes": scaling, "blas": blas_probe()}


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------
def job_run(data_root: Path, dataset: str, num_cpus: int, extra: list[str], repo: Path = REPO) -> dict[str, Any]:
    """Run the job as a user would (code from ``repo``), sampling the memory of its process tree."""
    shutil.rmtree(data_root / "embeddings" / dataset, ignore_errors=True)
    cmd = [sys.executable, "-m", "ray_jobs.generate_embeddings", "--dataset", dataset, "--data_root", str(data_root),
           "--num_cpus", str(num_cpus), *extra]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local run, as the targets assume
    env.update(RAY_USAGE_STATS_ENABLED="0")
    env.setdefault("RAY_AUTH_MODE", "disabled")  # local instance, loopback only
    env.setdefault("RAY_raylet_start_wait_time_s", "120")  # on a busy shared machine the default 10 s can pass
    if Path(repo).resolve() != REPO:  # Ray's workers inherit PYTHONPATH, so they import that code too
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH", "")]))
    load = load_avg()
    for attempt in (1, 2):
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        with TreeMemorySampler(proc.pid) as memory:
            log, _ = proc.communicate()
        cpu = memory.cpu_summary()
        wall = time.perf_counter() - started
        # On an overloaded machine Ray's raylet can miss its start-up deadline: that run measured nothing
        if proc.returncode == 0 or attempt == 2 or "timed out during startup" not in log:
            break
        print(f"job run {attempt}: Ray did not start in time (machine overloaded?), trying again", file=sys.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"job failed with exit status {proc.returncode}: {' '.join(cmd)}\n{log[-3000:]}")
    summary = json.loads((data_root / "embeddings" / dataset / "summary.json").read_text())
    media_s = [c["seconds"] for c in summary["media"].values()]
    # one pass for all media reports the pass's time for each; passes one after the other add up
    embedding = media_s[0] if len(set(media_s)) == 1 else sum(media_s)
    ray_start = float(summary.get("ray_start_seconds", 0.0))  # inside the summary's seconds since the local executor
    startup = wall - summary["seconds"] + ray_start
    return {"seconds": round(wall, 2), "command": " ".join(cmd[1:]), "executor": summary.get("executor", "ray"),
            "load_avg_1min_before": load[0] if load else None,
            "breakdown_s": {"startup_s": round(startup, 2), "ray_start_s": round(ray_start, 2),
                            "embedding_pipelines": round(embedding, 2),
                            "consolidate_h5_and_bookkeeping": round(summary["seconds"] - ray_start - embedding, 2)},
            "startup_share": round(startup / wall, 3),
            "done": {m: c["done"] for m, c in summary["media"].items()},
            "failed": {m: c["failed"] for m, c in summary["media"].items()},
            "cpu": cpu, "memory": memory.summary()}


def ray_startup_seconds(num_cpus: int) -> float:
    """Wall time of a bare ray.init + shutdown in a fresh interpreter (the fixed cost of every job run)."""
    code = ("import time, ray; t = time.perf_counter(); "
            f"ray.init(num_cpus={num_cpus}, dashboard_host='127.0.0.1', log_to_driver=False); "
            "print(time.perf_counter() - t); ray.shutdown()")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.setdefault("RAY_AUTH_MODE", "disabled")
    env.setdefault("RAY_raylet_start_wait_time_s", "120")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return round(float(out.stdout.strip().splitlines()[-1]), 2)


def max_abs_difference(a_path: Path, b_path: Path) -> dict[str, float]:
    """Largest |difference| per medium between two embeddings.h5 (sequences and averages), rows matched by id."""
    import h5py

    out = {}
    with h5py.File(a_path) as fa, h5py.File(b_path) as fb:
        if list(fa["ids"][...]) != list(fb["ids"][...]):
            raise RuntimeError(f"{a_path} and {b_path} hold different ids")
        for medium in (A, S):
            for name in fa[medium]:
                ga, gb = fa[medium][name], fb[medium][name]
                if not np.array_equal(ga["valid"][...], gb["valid"][...]):
                    out[f"{medium}/{name}"] = float("inf")
                    continue
                diffs = [float(np.nanmax(np.abs(ga[k][...] - gb[k][...]), initial=0.0)) for k in ("average", "sequence")]
                out[f"{medium}/{name}"] = max(diffs)
    return out


# ---------------------------------------------------------------------------------------------
def bounds(stage_s: dict[str, float], scaling: dict[str, float | None]) -> dict[str, float]:
    spread = {s: stage_s.get(s, 0.0) / max(scaling.get(s) or 1.0, 1.0) for s in STAGES}
    spread["write"] = stage_s.get("write", 0.0)  # the one driver writes: no second core for it
    slowest = max(spread, key=spread.get)
    return {"cpu_bound_s": round(sum(spread.values()), 2), "slowest_stage": slowest,
            "slowest_stage_bound_s": round(spread[slowest], 2)}


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]


def run_size(n: int, args, work: Path, scaling: dict[str, float | None]) -> dict[str, Any]:
    """``--repeats`` rounds of sequential / job / job_ray, the order reversed every other round (the
    machine's load drifts); speedups are medians of each round's ratios, run records the median runs."""
    data_root = work / "data"
    name = f"bench_{n}"
    data = sized_dataset(args.source, n, data_root, name, seed=args.seed)
    warm_page_cache(Path(data["path"]))
    seq_out = work / "sequential" / name
    store = data_root / "embeddings" / name / "embeddings.h5"
    kinds = ["sequential", "job", *([] if args.no_ray_run else ["job_ray"])]
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    capacity = []
    for repeat in range(args.repeats):
        capacity.append(capacity_probe())
        for kind in (kinds if repeat % 2 == 0 else kinds[::-1]):
            if kind == "sequential":
                shutil.rmtree(seq_out, ignore_errors=True)
                load = load_avg()
                run = sequential_run(Path(data["path"]), seq_out, args.audio_embedder, args.symbolic_embedder)
                run["load_avg_1min_before"] = load[0] if load else None
            else:
                flags = [*args.job_arg, *(["--executor", "ray"] if kind == "job_ray" else [])]
                run = job_run(data_root, name, args.num_cpus, flags)
                run["store"] = work / "stores" / f"{name}_{kind}_{repeat}.h5"  # job_run empties the store folder
                run["store"].parent.mkdir(parents=True, exist_ok=True)
                store.replace(run["store"])
            runs[kind].append(run)
    for kind in kinds[1:]:
        for run in runs[kind]:
            run["max_abs_difference_vs_sequential"] = max_abs_difference(seq_out / "embeddings.h5", run.pop("store"))
    ratios = {kind: [round(s["seconds"] / j["seconds"], 2) for s, j in zip(runs["sequential"], runs[kind])]
              for kind in kinds[1:]}
    seq, job = _median_run(runs["sequential"]), _median_run(runs["job"])
    job_ray = _median_run(runs["job_ray"]) if "job_ray" in runs else None
    if job_ray:
        job_ray["speedup_vs_sequential"] = float(np.median(ratios["job_ray"]))
    others = []
    for repo in args.compare_repo:
        other = job_run(data_root, name, args.num_cpus, args.job_arg, repo=Path(repo))
        other.update(repo=repo, speedup_vs_sequential=round(seq["seconds"] / other["seconds"], 2))
        others.append(other)
    b = bounds(seq["stage_seconds"], scaling)
    rows_s = {"sequential": n / seq["seconds"], "job": n / job["seconds"], "cpu_bound": n / max(b["cpu_bound_s"], 1e-9)}
    if job_ray:
        rows_s["job_ray"] = n / job_ray["seconds"]
    speedup = float(np.median(ratios["job"]))
    return {
        "rows": n, "data": data, "repeats": args.repeats, "sequential": seq, "job": job,
        **({"job_ray": job_ray} if job_ray else {}),
        "speedups_per_round": ratios,
        "seconds_per_round": {k: [r["seconds"] for r in v] for k, v in runs.items()},
        "load_avg_1min_per_round": {k: [r["load_avg_1min_before"] for r in v] for k, v in runs.items()},
        "cores_available_per_round": capacity,  # capacity_probe() before each round
        "cpu_seconds": {"sequential": seq["cpu"].get("own_cpu_s"), "job": job["cpu"].get("tree_cpu_s"),
                        **({"job_ray": job_ray["cpu"].get("tree_cpu_s")} if job_ray else {})},
        "bounds": b,
        "recordings_per_s": {k: round(v, 2) for k, v in rows_s.items()},
        "audio_seconds_per_s": {k: round(data["audio_seconds"] * v / n, 1) for k, v in rows_s.items()},
        "speedup_job_vs_sequential": speedup,
        **({"target_speedup": TARGETS[n], "target_met": speedup >= TARGETS[n]} if n in TARGETS else {}),
        "job_fraction_of_cpu_bound": round(b["cpu_bound_s"] / job["seconds"], 2),
        "job_fraction_of_slowest_stage_bound": round(b["slowest_stage_bound_s"] / job["seconds"], 2),
        "job_seconds_without_startup": round(job["seconds"] - job["breakdown_s"]["startup_s"], 2),
        **({"jobs_from_compare_repos": others} if others else {}),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", required=True, help="paired dataset folder with info.csv (e.g. from prepare_dataset)")
    p.add_argument("--sizes", default="100,400,1600", help="comma-separated row counts")
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed at the end)")
    p.add_argument("--num_cpus", type=int, default=os.cpu_count(), help="CPUs of the job's local Ray instance")
    p.add_argument("--probe_rows", type=int, default=40, help="rows per process in the scaling probe (0: skip)")
    p.add_argument("--audio_embedder", default="melstats")
    p.add_argument("--symbolic_embedder", default="pianoroll")
    p.add_argument("--job_arg", action="append", default=[],
                   help="extra flag for the job (repeatable), e.g. --job_arg=--max_actors=2")
    p.add_argument("--compare_repo", action="append", default=[],
                   help="also time the job from this checkout (repeatable), e.g. the code before a change: "
                        "git archive HEAD | tar -x -C DIR")
    p.add_argument("--no_ray_run", action="store_true", help="skip the --executor ray run at each size")
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds per size, alternating the order of the runs; speedups are the medians of the rounds")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    info = machine()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="avs-bench-emb-"))
    try:
        probe_data = sized_dataset(args.source, max(1, args.probe_rows), work / "data", "probe", seed=args.seed)
        warm_page_cache(Path(probe_data["path"]))
        probe = scaling_probe(Path(probe_data["path"]), args.probe_rows, args.audio_embedder, args.symbolic_embedder) \
            if args.probe_rows > 0 else {"scaling_2_processes": {}}
        result: dict[str, Any] = {"benchmark": "embedding_throughput", "machine": info,
                                  "embedders": {"audio": args.audio_embedder, "symbolic": args.symbolic_embedder},
                                  "num_cpus": args.num_cpus, "job_args": args.job_arg,
                                  "ray_init_seconds": ray_startup_seconds(args.num_cpus), "scaling_probe": probe,
                                  "sizes": []}
        for n in sizes:
            result["sizes"].append(run_size(n, args, work, probe["scaling_2_processes"]))
        result["targets"] = {
            str(s["rows"]): {"speedup_vs_sequential": s["speedup_job_vs_sequential"], "target": s["target_speedup"],
                             "met": s["target_met"], "executor": s["job"]["executor"],
                             "startup_share": s["job"]["startup_share"],
                             **({"ray_speedup_vs_sequential": s["job_ray"]["speedup_vs_sequential"],
                                 "ray_startup_share": s["job_ray"]["startup_share"]} if "job_ray" in s else {})}
            for s in result["sizes"] if "target_speedup" in s}
        result["memory_by_size"] = {s["rows"]: {run: {k: s[run]["memory"].get(k) for k in
                                                      ("peak_driver_rss_mb", "peak_ray_worker_rss_mb", "peak_total_pss_mb",
                                                       "peak_largest_worker_rss_mb")}
                                                for run in ("job", "job_ray") if run in s} for s in result["sizes"]}
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    finish(result)


if __name__ == "__main__":
    main()
