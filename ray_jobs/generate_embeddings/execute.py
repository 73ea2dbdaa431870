"""Running the pending rows of every medium: which executor, which layout, progress, what came back.

Executor (``--executor``):

- ``local``: the CPU layout in this process plus a local process pool (``local.py``), no Ray;
- ``ray``: Ray Data (``ray_data.py``): the CPU layout for every medium whose embedder runs on
  CPUs, in one pass, then the GPU layout for each medium that requests GPUs;
- ``auto`` (default): ``local`` when no cluster is named (RAY_ADDRESS unset or ``local``), no
  medium requests GPUs and at most ``--local_max_rows`` rows are pending; else ``ray``. Below that
  size on one machine Ray's fixed costs (start-up, worker processes, shutdown: ~10 s on the 2-core
  build machine) are a large share of the run; both executors run the same ``MediaActor`` and
  write the same vectors (bench/embedding_throughput.py measures both, see docs/benchmarks.md).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any

from embedders.store import filesystem as fs
from ray_jobs.console import Progress, ProgressGroup
from ray_jobs.generate_embeddings.pipeline import MediumSpec, PartTarget
from ray_jobs.generate_embeddings.resources import cluster_view, cpu_pool, gpu_pool
from ray_jobs.ray_session import cluster_named

#: --local_max_rows default: see docs/benchmarks.md (the local executor against Ray at 400 and 1600 rows).
LOCAL_MAX_ROWS = 2000
CALLS_PER_WORKER = 4  # calls per worker process: progress lines and load balance, at one part per medium per call


@dataclasses.dataclass
class MediumRun:
    """One medium during the job: where its parts go, its pending rows, and what the workers reported."""

    spec: MediumSpec
    target: PartTarget
    counts: dict[str, Any]
    pending: list[dict[str, str]]
    gpu: bool = False                   # its actors request GPUs (the GPU layout)
    errors: list[dict] = dataclasses.field(default_factory=list)      # absent and failed rows
    succeeded: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    hashes: set[str] = dataclasses.field(default_factory=set)          # config hashes the workers wrote
    progress: Progress | None = None

    @property
    def label(self) -> str:
        return f"{self.spec.medium}/{self.spec.embedder}"

    def error(self, item_id: str, stage: str, error_type: str, message: str) -> None:
        self.errors.append({"id": item_id, "medium": self.spec.medium, "embedder": self.spec.embedder,
                            "stage": stage, "error_type": error_type, "message": message})

    def take(self, batch: dict[str, Any]) -> None:
        """Count the result rows of this medium (a batch may carry several media)."""
        done = failed = 0
        for item_id, medium, status, etype, message, stage, n_frames, config_hash in zip(
                batch["id"], batch["medium"], batch["status"], batch["error_type"], batch["error_message"],
                batch["stage"], batch["n_frames"], batch["config_hash"]):
            if medium != self.spec.medium:
                continue
            if status == "done":
                self.succeeded.append((str(item_id), self.spec.medium, self.spec.embedder))
                self.hashes.add(str(config_hash))
                self.counts["frames"] += int(n_frames)
                done += 1
            else:
                self.error(str(item_id), str(stage), str(etype), str(message))
                failed += 1
        self.counts["done"] += done
        self.counts["failed"] += failed
        if self.progress is not None:
            self.progress.update(done=done + failed, failed=failed)


def local_workers(args) -> int:
    """Processes of the local executor: --max_actors, else --num_cpus, else this process's CPUs."""
    if args.max_actors:
        return args.max_actors
    if args.num_cpus:
        return args.num_cpus
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def choose_executor(runs: list[MediumRun], args) -> str:
    """``--executor``, or for ``auto`` the rule in this module's docstring."""
    if args.executor != "auto":
        return args.executor
    pending = len({row["id"] for run in runs for row in run.pending})
    if any(run.gpu for run in runs) or cluster_named() or pending > args.local_max_rows:
        return "ray"
    return "local"


def rows_per_call(n_rows: int, workers: int, rows_per_part: int) -> int:
    """Rows per worker call (one part per medium): a few calls per worker, at most ``rows_per_part``."""
    return max(1, min(rows_per_part, -(-n_rows // (max(1, workers) * CALLS_PER_WORKER))))


def media_rows(runs: list[MediumRun]) -> list[dict[str, str]]:
    """The CPU layout's input rows: ``{id, path_0, path_1, ...}``, ``path_k`` empty where ``runs[k]``
    has nothing to do for that id."""
    paths = [{row["id"]: row["path"] for row in run.pending} for run in runs]
    ids = dict.fromkeys(row["id"] for run in runs for row in run.pending)
    return [{"id": item_id, **{f"path_{k}": p.get(item_id, "") for k, p in enumerate(paths)}} for item_id in ids]


def embed_pending(runs: list[MediumRun], root, args, executor: str) -> None:
    """Stream every pending row through ``executor``; the workers commit parts, the driver counts
    result rows (``MediumRun.take``) and prints one progress line per medium."""
    todo = [r for r in runs if r.pending]
    if not todo:
        return
    cpu_runs, gpu_runs = [r for r in todo if not r.gpu], [r for r in todo if r.gpu]
    if cpu_runs:
        _timed_pass(cpu_runs, lambda: _cpu_pass(cpu_runs, root, args, executor))
    for run in gpu_runs:
        _timed_pass([run], lambda run=run: _gpu_pass(run, root, args))


def _timed_pass(runs: list[MediumRun], work) -> None:
    started = time.perf_counter()
    for run in runs:
        run.progress = Progress(run.label, len(run.pending), stream=sys.stdout)
    with ProgressGroup([run.progress for run in runs]):
        work()
    for run in runs:  # one pass embeds all its media: each medium's time is the pass's
        run.counts["seconds"] = round(time.perf_counter() - started, 2)


def _take_all(runs: list[MediumRun], batch: dict[str, Any]) -> None:
    for run in runs:
        run.take(batch)


def _cpu_pass(runs: list[MediumRun], root, args, executor: str) -> None:
    rows = media_rows(runs)
    specs, targets = [r.spec for r in runs], [r.target for r in runs]
    if executor == "local":
        from ray_jobs.generate_embeddings.local import run_local

        workers = local_workers(args)
        remote = any(fs.is_remote(x) for x in (root, *(t.store for t in targets),
                                               *(s.options.get("checkpoint") or "" for s in specs)))
        run_local(rows, specs, targets, str(root), workers=workers,
                  rows_per_call=rows_per_call(len(rows), workers, args.rows_per_part),
                  on_result=lambda batch: _take_all(runs, batch), remote=remote)
        return
    from ray_jobs.generate_embeddings.ray_data import build_media_dataset

    view = cluster_view()
    actors = args.max_actors or int(view.cpus_max)
    per_call = rows_per_call(len(rows), actors, args.rows_per_part)
    pool = cpu_pool("CPU embedding actors", args.max_actors, -(-len(rows) // per_call), view)
    if pool.note:
        print(f"warning: {pool.note}")
    ds = build_media_dataset(rows, specs, targets, str(root), rows_per_call=per_call, pool=pool)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        _take_all(runs, batch)


def _gpu_pass(run: MediumRun, root, args) -> None:
    from ray_jobs.generate_embeddings.ray_data import build_dataset

    pool = gpu_pool(run.label, args.num_gpus, args.actor_cpus, args.max_actors, cluster_view())
    if pool.note:
        print(f"warning: {pool.note}")
    ds = build_dataset(run.pending, run.spec, run.target, str(root), pool=pool, max_batch_bytes=args.max_batch_bytes)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        run.take(batch)
