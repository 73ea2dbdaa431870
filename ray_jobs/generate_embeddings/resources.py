"""What each medium's embedding actors ask Ray for, and how many of them there may be.

- Only a medium whose embedder declares ``uses_accelerator`` requests GPUs (``--num_gpus`` per
  actor); melstats and pianoroll never do, whatever the flag says.
- A GPU actor reserves ``--actor_cpus`` of a CPU (default 0.25), so the cores stay with the CPU
  tasks that decode and preprocess for it; a CPU actor takes one CPU.
- A pool is sized from the cluster's potential resources: the autoscaler's maximum from the
  cluster config when Ray has one, else what the cluster has now; ``--max_actors`` overrides.
  When the pool can only reach that size once the autoscaler adds nodes, a note says so.
- GPUs that can never exist fail the job at once (exit 2) instead of waiting forever: a local run
  (no RAY_ADDRESS) asking for more GPUs than the machine has, or a cluster whose config caps GPUs
  below one actor's request. A named cluster without such a config may still gain GPU nodes (a
  note says the job waits for them).
"""

from __future__ import annotations

import dataclasses
import math

from embedders.base import ConfigError
from ray_jobs.ray_session import cluster_named


class ResourceError(ConfigError):
    """The job asks for resources that this Ray cluster can never provide."""


@dataclasses.dataclass(frozen=True)
class ClusterView:
    """The resources a job can count on: ``*_now`` present, ``*_max`` the most there can ever be."""

    named: bool                 # a cluster named by RAY_ADDRESS (False: a local instance)
    cpus_now: float
    gpus_now: float
    cpus_max: float
    gpus_max: float
    autoscaler_config: bool     # *_max come from the autoscaler's cluster config


@dataclasses.dataclass(frozen=True)
class Pool:
    """Arguments of one actor pool: ActorPoolStrategy(min_size, max_size), num_cpus, num_gpus."""

    min_size: int
    max_size: int
    num_cpus: float
    num_gpus: float
    note: str | None = None     # printed once: the pool can only grow later, or waits for GPU nodes


def cluster_view() -> ClusterView:
    """What the connected Ray cluster has now and, from the autoscaler's config, could have."""
    import ray

    now = ray.cluster_resources()
    cpus, gpus = float(now.get("CPU", 0)), float(now.get("GPU", 0))
    limits = None
    try:  # the same (private) call Ray Train and Ray Data use to plan against autoscaling clusters
        from ray._private.state import state

        limits = state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 - an older or newer Ray without it: count what is there now
        limits = None
    if not limits:
        return ClusterView(cluster_named(), cpus, gpus, cpus, gpus, False)
    return ClusterView(cluster_named(), cpus, gpus, max(cpus, float(limits.get("CPU", 0))),
                       max(gpus, float(limits.get("GPU", 0))), True)


def uses_gpu(embedder_cls, num_gpus: float) -> bool:
    """Whether a medium embedded by ``embedder_cls`` requests GPUs when the job is given ``num_gpus``."""
    return num_gpus > 0 and bool(getattr(embedder_cls, "uses_accelerator", False))


def gpu_pool(label: str, num_gpus: float, actor_cpus: float, max_actors: int | None, view: ClusterView) -> Pool:
    """The pool of a GPU medium; ResourceError when ``num_gpus`` per actor can never be had."""
    where = "this machine" if not view.named else "the cluster"
    if view.gpus_max < num_gpus:
        if not view.named:
            raise ResourceError(
                f"{label}: --num_gpus {num_gpus:g} per embedding actor, but {where} has {view.gpus_now:g} GPU(s) Ray "
                "can use (a local run: RAY_ADDRESS is not set); drop --num_gpus or run on a cluster with GPUs")
        if view.autoscaler_config:
            raise ResourceError(
                f"{label}: --num_gpus {num_gpus:g} per embedding actor, but the cluster's autoscaler config allows "
                f"at most {view.gpus_max:g} GPU(s)")
    fits_now = math.floor(view.gpus_now / num_gpus + 1e-9)
    fits_max = math.floor(view.gpus_max / num_gpus + 1e-9)
    size = max(1, max_actors or fits_max)
    note = None
    if fits_now == 0:
        note = (f"{label}: no GPU in the cluster now; the job waits until GPU nodes join "
                f"(up to {size} actor(s) of {num_gpus:g} GPU)")
    elif size > fits_now:
        note = (f"{label}: {fits_now} GPU actor(s) fit now; the pool grows to {size} only as the autoscaler adds "
                "GPU nodes")
    return Pool(1, size, actor_cpus, num_gpus, note)


def cpu_pool(label: str, max_actors: int | None, n_calls: int, view: ClusterView) -> Pool:
    """The pool of the CPU layout: one actor per CPU (potential CPUs), never more than there are calls.
    It starts with what fits now (growing from one actor would leave cores idle for seconds)."""
    size = max(1, min(max_actors or int(view.cpus_max), n_calls))
    if not view.named:  # a local instance never grows: more actors than CPUs would wait forever
        size = max(1, min(size, int(view.cpus_max)))
    now = max(1, min(int(view.cpus_now), size))
    note = None
    if size > now:
        note = f"{label}: {now} CPU actor(s) fit now; the pool grows to {size} only as the autoscaler adds nodes"
    return Pool(now, size, 1.0, 0.0, note)
