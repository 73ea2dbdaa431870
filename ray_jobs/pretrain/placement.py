"""Where pretraining runs on the Ray cluster, and a check, before any work, that it can run there.

**Pinned to the driver's node** (``ray.pin_to_driver_node: true``, the default). The tokenizer,
the token cache (``dataset.cache_dir``), a staged remote dataset and the run folder (``output_dir``:
Ray Train's storage path, where every checkpoint is written) are local paths on the machine that
runs ``python -m ray_jobs.pretrain``. A DDP worker on another node would not find the cache, and
would write its checkpoints to that node's disk. So every piece of the job that touches those paths
is scheduled on the driver's node: the DDP workers (``ScalingConfig(label_selector=...)`` with
Ray's built-in node label ``ray.io/node-id``), the token-cache tasks and the test-set evaluation
(``NodeAffinitySchedulingStrategy``, not soft). A multi-GPU run then uses the GPUs of that node
(``ray.num_workers`` up to its GPU count): submit the job to a GPU node, or start the driver there.
On a cluster whose nodes all mount the cache and output folders at the same path (NFS, EFS, a
mounted bucket), ``ray.pin_to_driver_node=false`` lifts the pin and the workers spread over the
cluster (Ray Train's PACK strategy).

**GPUs**: ``ray.use_gpu=true`` or ``device=cuda`` give each worker one GPU (and the test-set
evaluation one); ``device=cpu`` with ``ray.use_gpu=true`` is refused by the config check;
``device=auto`` follows ``ray.use_gpu``.

**Fail fast**: Ray Train waits without a word for resources that never come. Before a local Ray
instance starts, ``check_local_gpus`` refuses GPU workers where PyTorch sees no GPU. ``plan`` compares the
request with what can exist: the driver's node when pinned (its resources cannot grow), the whole
cluster otherwise. A shortfall raises ``PlacementError`` (one line, exit 2) when the node is pinned
or the Ray instance is local to this machine (no ``RAY_ADDRESS``); on a remote cluster without a
pin it prints a warning and waits, since an autoscaler may still add the nodes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ray_jobs.pretrain.config import PretrainConfigError

NODE_LABEL = "ray.io/node-id"  # Ray's built-in label holding each node's id


class PlacementError(PretrainConfigError):
    """The workers ask for resources that cannot exist where they must run; one line naming the keys."""


def wants_gpu(cfg) -> bool:
    """True when the workers run on GPUs: ``ray.use_gpu=true`` or ``device=cuda``."""
    return bool(cfg.ray.use_gpu) or cfg.device == "cuda"


def gpu_key(cfg) -> str:
    """The config key that asked for GPUs, as the user wrote it."""
    return "ray.use_gpu=true" if cfg.ray.use_gpu else "device=cuda"


def local_ray() -> bool:
    """The Ray instance is this machine's own (no RAY_ADDRESS): no node can join it later."""
    return os.environ.get("RAY_ADDRESS", "").strip() in ("", "local")


@dataclass(frozen=True)
class Placement:
    """Resources and node of the workers; ``node_id`` is the driver's node when pinned, else None."""

    num_workers: int
    use_gpu: bool
    node_id: str | None

    def scaling_config(self):
        import ray.train

        return ray.train.ScalingConfig(num_workers=self.num_workers, use_gpu=self.use_gpu,
                                       label_selector={NODE_LABEL: self.node_id} if self.node_id else None)

    def task_options(self, num_gpus: float = 0) -> dict[str, Any]:
        """``.options(...)`` / ``map_batches(...)`` keyword arguments for a task of this job."""
        options: dict[str, Any] = {"num_gpus": num_gpus} if num_gpus else {}
        if self.node_id:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(self.node_id, soft=False)
        return options

    def describe(self) -> str:
        where = f"on the driver's node {self.node_id[:12]}" if self.node_id else "anywhere in the cluster"
        return f"{self.num_workers} worker(s), {'1 GPU' if self.use_gpu else '1 CPU'} each, {where}"


def check_local_gpus(cfg) -> None:
    """Before a local Ray instance starts: GPU workers need a GPU that this machine's PyTorch can use.

    A local instance has the GPUs of this machine and no other, so asking for them where PyTorch
    sees none (no GPU, or a CPU build of torch) fails here, in one line, before Ray starts.
    """
    if not wants_gpu(cfg):
        return
    import torch

    if torch.cuda.device_count() == 0:
        build = f"torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}"
        fix = "set ray.use_gpu=false" if cfg.ray.use_gpu else "set device=auto or device=cpu"
        raise PlacementError(f"{gpu_key(cfg)}: this machine has no GPU that PyTorch can use ({build}) and the Ray "
                             f"instance is local (RAY_ADDRESS is not set), so no GPU can join; run it on a GPU "
                             f"machine or submit it to a cluster with GPU nodes, or {fix}")


def _node_resources(node_id: str) -> dict[str, float]:
    import ray

    for node in ray.nodes():
        if node.get("NodeID") == node_id:
            return dict(node.get("Resources", {}))
    return {}


def plan(cfg) -> Placement:
    """The placement of ``cfg``'s workers in the running Ray session; raises PlacementError (see the
    module docstring) when they could never start."""
    import ray

    n, use_gpu, pinned = int(cfg.ray.num_workers), wants_gpu(cfg), bool(cfg.ray.pin_to_driver_node)
    node_id = ray.get_runtime_context().get_node_id()
    if pinned:
        total = _node_resources(node_id)
        where = ("the driver's node (workers stay there: ray.pin_to_driver_node=true, as the token cache and "
                 "run folder are local paths)")
    else:
        total = dict(ray.cluster_resources())
        where = "the Ray cluster" + (" (a local instance)" if local_ray() else "")
    shortfalls = []
    gpus, cpus = float(total.get("GPU", 0)), float(total.get("CPU", 0))
    if use_gpu and gpus < n:
        fix = ("lower ray.num_workers" if gpus else
               ("start the driver on a GPU node (ray job submit --entrypoint-resources, docs/cluster.md)" if pinned
                else "run it where a GPU is") + ", or set "
               + ("ray.use_gpu=false" if cfg.ray.use_gpu else "device=auto or device=cpu"))
        shortfalls.append(f"{gpu_key(cfg)}: {where} has {gpus:g} GPU(s), and each of the ray.num_workers={n} "
                          f"worker(s) needs one; {fix}")
    if cpus < n:  # each Ray Train worker takes one CPU, GPU workers too
        shortfalls.append(f"ray.num_workers={n}: {where} has {cpus:g} CPU(s) and each worker takes one")
    if shortfalls:
        message = "; ".join(shortfalls)
        if pinned or local_ray():
            raise PlacementError(message)
        print(f"warning: {message}; waiting for the cluster to add nodes (an autoscaler may)", flush=True)
    return Placement(n, use_gpu, node_id if pinned else None)
