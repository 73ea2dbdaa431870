"""Scale of the embedding job's write path: workers write the parts vs the driver writing everything.

    python bench/scale_write.py [--sizes 1000,5000,20000] [--frames 100] [--dim 6144] [--baseline_ref arch]

A synthetic audio embedder made for this benchmark (registered here only, in the driver and, by a
Ray worker setup hook, in every worker; never in the user-facing registry) returns ``frames`` x
``dim`` float32 frames drawn from a generator seeded by the row's id, so the embedding costs almost
nothing and the write path is what is measured. Every row names the same 0.05 s WAV file (decoding
it is negligible). For each size and path, in one run, a fresh child process runs the job's
``main()`` in-process on a fresh local Ray instance:

* ``new``: this checkout, ``--h5 none`` (the workers commit the Parquet parts; no consolidation);
* ``old``: the code of ``--baseline_ref`` (``git archive`` of it, default ``arch``: the driver
  receives every embedding and writes the parts), its consolidation into embeddings.h5 stubbed out
  so both paths do the same work: embed and write the parts.

Per size and path it reports ``embedding_bytes_written`` (rows x (frames + 1) x dim x 4: the
sequences and averages committed), ``parquet_bytes`` (on disk), ``driver_embedding_bytes`` (bytes
of float arrays in the batches the driver process received from Ray Data, counted by wrapping
``Dataset.iter_batches`` in the child), ``driver_peak_rss_mb`` (the child's peak RSS) and
``rows_per_s`` (rows / seconds of ``main()``). Each store is deleted before the next run; the script
refuses to start a run that would not fit on the scratch disk. Prints one JSON object.
Targets: driver bytes <= 1% of bytes written; driver peak RSS(largest) / RSS(smallest) <= 1.3;
new rows/s >= old rows/s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULT = "SCALE_WRITE_RESULT "
SAMPLE_RATE = 16000


# ---------------------------------------------------------------------------------------------
# The synthetic embedder (defined here, registered only in the benchmark's processes)
# ---------------------------------------------------------------------------------------------
def register_synthetic() -> None:
    """Register ``scale_synthetic``; a Ray worker setup hook, so it is pickled by value with the
    class below (this file is ``__main__`` in the child) and runs in every worker of the job.
    Everything it uses is imported or written inside: module globals do not travel with it."""
    import dataclasses
    import hashlib
    from typing import ClassVar

    import numpy as np

    from embedders.base import Embedder, EmbedderConfig
    from embedders.registry import _REGISTRY, register

    if "scale_synthetic" in _REGISTRY:
        return

    @dataclasses.dataclass(frozen=True)
    class SyntheticConfig(EmbedderConfig):
        frames: int = 100
        dim: int = 6144

    class SyntheticScale(Embedder):
        """(frames, dim) float32 uniform noise seeded by the id; the audio itself is ignored."""

        name = "scale_synthetic"
        modality = "audio"
        dim = 6144
        sample_rate = 16000  # SAMPLE_RATE: the tone is written at this rate, so it is never resampled
        Config = SyntheticConfig
        default_batch_size: ClassVar[int] = 16

        @classmethod
        def output_dim(cls, config) -> int:
            return int(config.dim)

        def embed(self, items):
            raise TypeError("scale_synthetic embeds ids: call embed_items")

        def embed_items(self, ids, items, *, prepared=False, with_average=False):
            # the signature of Embedder.embed_items (the old path of the baseline calls it without keywords)
            out = []
            for item_id in ids:
                seed = int.from_bytes(hashlib.sha1(str(item_id).encode()).digest()[:8], "little")
                seq = np.random.default_rng(seed).random((self.config.frames, self.config.dim), dtype=np.float32)
                out.append(seq)
            if with_average:  # only the new path asks; the baseline's tree has no Embedding
                from embedders.base import Embedding

                out = [Embedding(seq, seq.mean(axis=0)) for seq in out]
            return out

    register(SyntheticScale)


def make_dataset(root: Path, rows: int) -> None:
    import soundfile as sf

    root.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(0.05 * SAMPLE_RATE)) / SAMPLE_RATE
    sf.write(root / "tone.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
    with open(root / "info.csv", "w") as fh:
        fh.write("id,audio_filename,midi_filename\n")
        for k in range(rows):
            fh.write(f"row{k:07d},tone.wav,none.mid\n")  # the MIDI column is never read (--media audio only)


# ---------------------------------------------------------------------------------------------
# Child: one job run, measured from inside the driver process
# ---------------------------------------------------------------------------------------------
def float_bytes(batch: dict[str, Any]) -> int:
    """Bytes of float arrays in a batch, including arrays held in object columns (sequences)."""
    total = 0
    for value in batch.values():
        arr = np.asarray(value) if not isinstance(value, np.ndarray) else value
        if arr.dtype.kind == "f":
            total += arr.nbytes
        elif arr.dtype == object:
            total += sum(v.nbytes for v in arr.ravel() if isinstance(v, np.ndarray) and v.dtype.kind == "f")
    return total


def child(args) -> None:
    import ray
    import ray.data

    received = {"bytes": 0, "batches": 0}
    real_iter = ray.data.Dataset.iter_batches

    def counting_iter(self, *a, **kw):
        for batch in real_iter(self, *a, **kw):
            received["bytes"] += float_bytes(batch)
            received["batches"] += 1
            yield batch

    ray.data.Dataset.iter_batches = counting_iter
    register_synthetic()
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": register_synthetic})
    from ray_jobs.generate_embeddings import job

    argv = ["--dataset", "scale", "--data_root", str(args.data_root), "--media", "audio_embeddings",
            "--audio_embedder", "scale_synthetic", "--audio_option", f"frames={args.frames}",
            "--audio_option", f"dim={args.dim}"]
    if args.path == "new":
        # Ray Data at every size, as at the large ones: what is measured is the workers' write on Ray
        # (below --local_max_rows the job would embed in spawned local processes, which never see
        # the synthetic embedder registered here)
        argv += ["--h5", "none", "--executor", "ray"]
    else:
        job.consolidate = lambda *a, **kw: {}  # the old path's write is the parts; its h5 step is left out
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    status = job.main(argv)
    seconds = time.perf_counter() - started
    summary = json.loads((Path(args.data_root) / "embeddings" / "scale" / "summary.json").read_text())
    ray.shutdown()
    print(RESULT + json.dumps({
        "status": status, "seconds": seconds, "rows_done": summary["media"]["audio_embeddings"]["done"],
        "driver_embedding_bytes": received["bytes"], "driver_batches": received["batches"],
        "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "driver_rss_after_start_mb": rss_before}), flush=True)


# ---------------------------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------------------------
def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run_one(path: str, repo: Path, rows: int, args, work: Path) -> dict[str, Any]:
    data_root = work / f"{path}-{rows}"
    make_dataset(data_root / "raw" / "scale", rows)
    need = rows * (args.frames + 1) * args.dim * 4
    free = shutil.disk_usage(work).free
    if free < 1.15 * need:
        raise SystemExit(f"error: {rows} rows need ~{need / 1e9:.1f} GB on {work}; {free / 1e9:.1f} GB free. "
                         "Use fewer --frames or smaller --sizes")
    env = {**os.environ, "PYTHONPATH": str(repo), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", path, "--data_root", str(data_root),
               "--frames", str(args.frames), "--dim", str(args.dim), "--num_cpus", str(args.num_cpus)]
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=args.timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"error: the {path} run at {rows} rows failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1][len(RESULT):])
    store = data_root / "embeddings" / "scale"
    result["parquet_bytes"] = folder_bytes(store / "parquet")
    result["embedding_bytes_written"] = result["rows_done"] * (args.frames + 1) * args.dim * 4
    result["rows_per_s"] = round(rows / result["seconds"], 1)
    result["driver_fraction_of_written"] = result["driver_embedding_bytes"] / max(1, result["embedding_bytes_written"])
    shutil.rmtree(data_root)
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,5000,20000", help="comma-separated row counts")
    p.add_argument("--frames", type=int, default=100, help="frames per row (default 100)")
    p.add_argument("--dim", type=int, default=6144, help="embedding width (default 6144)")
    p.add_argument("--num_cpus", type=int, default=os.cpu_count(), help="CPUs of each run's local Ray instance")
    p.add_argument("--paths", default="old,new", help="which paths to run, in this order")
    p.add_argument("--baseline_ref", default="arch", help="git ref of the old path (git archive of it)")
    p.add_argument("--baseline_repo", default=None, help="a checkout of the old path instead of --baseline_ref")
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed at the end)")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per run")
    p.add_argument("--child", choices=("old", "new"), help=argparse.SUPPRESS)
    p.add_argument("--data_root", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.path = args.child
        child(args)
        return

    sys.path.insert(0, str(REPO))
    from bench.common import finish, machine

    info = machine()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    paths = [s.strip() for s in args.paths.split(",") if s.strip()]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="avs-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    old_repo = Path(args.baseline_repo) if args.baseline_repo else work / "old"
    try:
        if "old" in paths and not args.baseline_repo:
            old_repo.mkdir()
            archive = subprocess.run(["git", "-C", str(REPO), "archive", args.baseline_ref], capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", str(old_repo)], input=archive.stdout, check=True)
        table = {path: {} for path in paths}
        for rows in sizes:
            for path in paths:
                table[path][rows] = run_one(path, REPO if path == "new" else old_repo, rows, args, work)
                print(f"{path} {rows}: {json.dumps(table[path][rows])}", file=sys.stderr, flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    lo, hi = str(sizes[0]), str(sizes[-1])
    table = {path: {str(k): v for k, v in by_size.items()} for path, by_size in table.items()}
    checks = {}
    if "new" in table:
        new = table["new"]
        checks["driver_bytes_fraction_max"] = max(r["driver_fraction_of_written"] for r in new.values())
        checks["driver_rss_growth_smallest_to_largest"] = round(new[hi]["driver_peak_rss_mb"] / new[lo]["driver_peak_rss_mb"], 3)
        if "old" in table:
            checks["rows_per_s_new_over_old"] = {k: round(new[k]["rows_per_s"] / table["old"][k]["rows_per_s"], 2)
                                                 for k in new}
    finish({"benchmark": "scale_write", "machine": info,
            "settings": {"sizes": sizes, "frames": args.frames, "dim": args.dim, "num_cpus": args.num_cpus,
                         "baseline": args.baseline_repo or f"git archive {args.baseline_ref}",
                         "row_bytes": (args.frames + 1) * args.dim * 4},
            "paths": table, "checks": checks,
            "targets": {"driver_bytes_fraction_max": 0.01, "driver_rss_growth_smallest_to_largest": 1.3,
                        "rows_per_s_new_over_old": 1.0}})


if __name__ == "__main__":
    main()
