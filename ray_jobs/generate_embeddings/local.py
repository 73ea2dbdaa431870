"""The embedding job without Ray: the CPU layout's ``MediaActor`` in this process and a local pool.

For small inputs on one machine Ray's fixed costs (importing it, starting a local instance,
starting its worker processes, shutting down: ~10 s on the 2-core build machine) exceed the work.
Here the driver embeds calls itself, one after another, while ``workers - 1`` spawned processes
take the others; every process runs the same ``MediaActor`` the Ray path runs, so the store holds
the same vectors. Each process uses one BLAS/OpenMP thread, as Ray's one-CPU workers do.
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
_ACTOR: MediaActor | None = None  # a pool process's MediaActor


def _start_worker(specs: list[MediumSpec], targets: list[PartTarget], root: str) -> None:
    global _ACTOR
    _ACTOR = MediaActor(specs, targets, root)


def _call(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if _ACTOR is None:
        raise RuntimeError("local embedding worker used before its initializer ran")
    return _ACTOR(batch)


@contextlib.contextmanager
def one_thread_here() -> Iterator[None]:
    """BLAS, OpenMP and torch on one thread in this process while the block runs."""
    from threadpoolctl import threadpool_limits

    torch = sys.modules.get("torch")
    saved = torch.get_num_threads() if torch is not None else None
    with threadpool_limits(1):
        if torch is not None:
            torch.set_num_threads(1)
        try:
            yield
        finally:
            if torch is not None:
                torch.set_num_threads(saved)


@contextlib.contextmanager
def one_thread_children() -> Iterator[None]:
    """Processes started inside the block load their BLAS/OpenMP with one thread (the variables
    are read at import, before any code of ours runs there)."""
    saved = {k: os.environ.get(k) for k in THREAD_VARIABLES}
    os.environ.update({k: "1" for k in THREAD_VARIABLES})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def batches(rows: list[dict[str, str]], n_media: int, rows_per_call: int) -> list[dict[str, np.ndarray]]:
    """``MediaActor`` input batches of at most ``rows_per_call`` rows ({id, path_0, ...})."""
    columns = ["id", *(f"path_{k}" for k in range(n_media))]
    return [{c: np.array([r[c] for r in rows[i:i + rows_per_call]], dtype=object) for c in columns}
            for i in range(0, len(rows), rows_per_call)]


def run_local(rows: list[dict[str, str]], specs: list[MediumSpec], targets: list[PartTarget], root: str, *,
              workers: int, rows_per_call: int, on_result: Callable[[dict[str, Any]], None]) -> None:
    """Embed ``rows`` ({id, path_0, path_1, ...}, as ``MediaActor`` takes them) with ``workers``
    processes (this one included); ``on_result`` gets each call's result rows as they come."""
    calls = batches(rows, len(specs), rows_per_call)
    if not calls:
        return
    helpers = max(0, min(workers, len(calls)) - 1)
    with one_thread_here():
        own = MediaActor(specs, targets, root)
        if helpers == 0:
            for batch in calls:
                on_result(own(batch))
            return
        with one_thread_children(), ProcessPoolExecutor(
                helpers, mp_context=mp.get_context("spawn"), initializer=_start_worker,
                initargs=(list(specs), list(targets), root)) as pool:
            _share(calls, own, pool, helpers, on_result)


def _share(calls: list[dict[str, np.ndarray]], own: MediaActor, pool: ProcessPoolExecutor, helpers: int,
           on_result: Callable[[dict[str, Any]], None]) -> None:
    """Keep two calls queued per helper process; between its own calls this process takes the next
    call itself and hands on what the helpers finished."""
    queue = list(reversed(calls))
    running: set[Future] = set()
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
                on_result(future.result())  # a worker's exception (not an item error) stops the job
    except BaseException:
        for future in running:
            future.cancel()
        raise
