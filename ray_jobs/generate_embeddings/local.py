"""The embedding job without Ray: the CPU layout's ``MediaActor`` in this process and a local pool.

For small inputs on one machine Ray's fixed costs (importing it, starting a local instance,
starting its worker processes, shutting down: ~10 s on the 2-core build machine) exceed the work.
Here the driver embeds calls itself, one after another, while ``workers - 1`` helper processes
take the others; every process runs the same ``MediaActor`` the Ray path runs, so the store holds
the same vectors. Each process uses one BLAS/OpenMP/torch thread and sees no GPU, as Ray's one-CPU
workers do (the local executor runs only media that request no GPU).

Helpers are forked where that is safe: on Linux, with the dataset, the store and any checkpoint
on local paths. A fork costs milliseconds where a fresh interpreter re-imports numpy, pyarrow and
the embedders (seconds on a busy machine, as much as the whole work of a hundred short
recordings). The pool forks before this process builds any embedder or runs any model, with no
thread of ours running; each helper then limits its thread pools. An object-store client
(pyarrow's S3/GCS, started by reading a URI) and a Ray session in this process keep threads and
connections a fork would leave broken, so with URIs, in a process already connected to Ray, and
off Linux, helpers are spawned (their BLAS loaded single-threaded).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

import numpy as np

from ray_jobs.generate_embeddings.pipeline import MediaActor, MediumSpec, PartTarget

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_ACTOR: MediaActor | None = None  # a helper process's MediaActor
_LIMITS: Any = None  # a helper's thread limits, kept for its lifetime


def _start_worker(specs: list[MediumSpec], targets: list[PartTarget], root: str) -> None:
    global _ACTOR, _LIMITS
    _LIMITS = one_thread()
    _ACTOR = MediaActor(specs, targets, root)


def _call(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if _ACTOR is None:
        raise RuntimeError("local embedding worker used before its initializer ran")
    return _ACTOR(batch)


def one_thread() -> Any:
    """Limit BLAS, OpenMP and torch to one thread in this process; the returned threadpoolctl
    limits object restores BLAS/OpenMP (``restore_original_limits``)."""
    from threadpoolctl import threadpool_limits

    limits = threadpool_limits(1)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)
    return limits


@contextlib.contextmanager
def one_thread_here() -> Iterator[None]:
    """BLAS, OpenMP and torch on one thread in this process while the block runs."""
    torch = sys.modules.get("torch")
    saved = torch.get_num_threads() if torch is not None else None
    limits = one_thread()
    try:
        yield
    finally:
        limits.restore_original_limits()
        torch = sys.modules.get("torch")
        if torch is not None and saved is not None:
            torch.set_num_threads(saved)


@contextlib.contextmanager
def cpu_only_environment() -> Iterator[None]:
    """While the block runs, processes started in it load BLAS/OpenMP with one thread (variables
    read at import), and no process of the run sees a GPU (``CUDA_VISIBLE_DEVICES`` empty, as Ray
    gives actors without GPUs; read when CUDA is first used): the driver hashed these media for CPUs."""
    saved = {k: os.environ.get(k) for k in (*THREAD_VARIABLES, "CUDA_VISIBLE_DEVICES")}
    os.environ.update({k: "1" for k in THREAD_VARIABLES})
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def call_sizes(n_rows: int, rows_per_call: int, workers: int) -> list[int]:
    """Rows per call, shrinking toward the end (guided self-scheduling, Polychronopoulos & Kuck 1987):
    each call takes 1/(2 workers) of the rows left, at most ``rows_per_call`` and at least an eighth
    of it. With equal calls the process that draws the last one works alone while the others wait
    (at 1600 rows in 8 calls one process did 5 calls, the other 3); small last calls end together."""
    floor = max(1, rows_per_call // 8)
    sizes, left = [], n_rows
    while left > 0:
        size = min(left, rows_per_call, max(floor, -(-left // (2 * max(1, workers)))))
        sizes.append(size)
        left -= size
    return sizes


def batches(rows: list[dict[str, str]], n_media: int, rows_per_call: int, workers: int = 1) -> list[dict[str, np.ndarray]]:
    """``MediaActor`` input batches ({id, path_0, ...}) of ``call_sizes`` rows, in row order."""
    columns = ["id", *(f"path_{k}" for k in range(n_media))]
    out, start = [], 0
    for size in call_sizes(len(rows), rows_per_call, workers):
        out.append({c: np.array([r[c] for r in rows[start:start + size]], dtype=object) for c in columns})
        start += size
    return out


def start_method(remote: bool) -> str:
    """fork on Linux when nothing remote was touched (``remote``: a URI among the dataset, the store
    and the checkpoints) and this process is no Ray driver (a chain of jobs sharing one session, as
    the demo does: Ray's gRPC threads do not survive a fork either); else spawn."""
    ray = sys.modules.get("ray")
    in_ray = ray is not None and hasattr(ray, "is_initialized") and ray.is_initialized()
    return "fork" if sys.platform.startswith("linux") and not remote and not in_ray else "spawn"


def run_local(rows: list[dict[str, str]], specs: list[MediumSpec], targets: list[PartTarget], root: str, *,
              workers: int, rows_per_call: int, on_result: Callable[[dict[str, Any]], None],
              remote: bool = False) -> None:
    """Embed ``rows`` ({id, path_0, path_1, ...}, as ``MediaActor`` takes them) with ``workers``
    processes (this one included); ``on_result`` gets each call's result rows as they come.
    ``remote``: the dataset, store or a checkpoint is a URI (helpers are then spawned)."""
    calls = batches(rows, len(specs), rows_per_call, workers)
    if not calls:
        return
    helpers = max(0, min(workers, len(calls)) - 1)
    if helpers == 0:
        with cpu_only_environment(), one_thread_here():
            own = MediaActor(specs, targets, root)
            for batch in calls:
                on_result(own(batch))
        return
    queue = list(reversed(calls))
    with cpu_only_environment(), ProcessPoolExecutor(
            helpers, mp_context=mp.get_context(start_method(remote)), initializer=_start_worker,
            initargs=(list(specs), list(targets), root)) as pool:
        # the first submissions start the helpers: before this process builds its own embedders
        running = {pool.submit(_call, queue.pop()) for _ in range(min(len(queue), 2 * helpers))}
        with one_thread_here():
            _share(queue, running, MediaActor(specs, targets, root), pool, helpers, on_result)


def _share(queue: list[dict[str, np.ndarray]], running: set[Future], own: MediaActor, pool: ProcessPoolExecutor,
           helpers: int, on_result: Callable[[dict[str, Any]], None]) -> None:
    """Keep two calls queued per helper process; between its own calls this process takes the next
    call itself (from the end of ``queue``) and hands on what the helpers finished."""
    try:
        while queue or running:
            while queue and len(running) < 2 * helpers:
                running.add(pool.submit(_call, queue.pop()))
            if queue:
                on_result(own(queue.pop()))
                finished = {f for f in running if f.done()}
            else:  # nothing left for this process: wait for the helpers
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                running.discard(future)
                on_result(future.result())  # a helper's exception (not an item error) stops the job
    except BaseException:
        for future in running:
            future.cancel()
        raise
