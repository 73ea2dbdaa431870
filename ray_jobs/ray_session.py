"""One way for every job to get a Ray session, quiet unless asked.

A chain of jobs in one process (the demo, a notebook) pays Ray's start-up once: the first job
starts or joins the instance and the others find it already initialised. Separate processes share
one instance when it is started once with ``ray start --head`` and named with ``RAY_ADDRESS``
(see docs/cluster.md).
"""

from __future__ import annotations

import logging
import os

from ray_jobs.console import quiet_ray


def cluster_named() -> bool:
    """True when RAY_ADDRESS names a cluster to join (``ray job submit`` sets it; ``auto`` finds ``ray start``)."""
    address = os.environ.get("RAY_ADDRESS", "").strip()
    return bool(address) and address != "local"


def ensure_ray(num_cpus: int | None = None, *, dashboard: bool = False, verbose: bool = False) -> None:
    """Use the Ray session already running in this process (tests share one), else join or start one.

    With RAY_ADDRESS set plain ``ray.init()`` joins that cluster, with the auth mode and token of
    this process's environment, and ``num_cpus`` is ignored: a cluster's size is not the job's to
    choose. Otherwise this starts a new local instance with ``num_cpus`` CPUs (None: all). It never
    joins a ``ray start`` cluster it happens to find (``address="local"``): that one's size and auth
    settings are not this job's, and Ray refuses ``num_cpus`` when joining.

    ``dashboard``: start the dashboard (on 127.0.0.1 only). Only pretraining asks for it: Ray
    Train's controller polls the state API the dashboard serves. Without it a local start is ~1 s
    faster. ``verbose``: keep Ray's INFO logs, progress tables and the workers' output on the console.
    """
    quiet_ray(verbose)
    import ray

    if ray.is_initialized():
        return
    level = logging.INFO if verbose else logging.WARNING
    if cluster_named():
        ray.init(logging_level=level, log_to_driver=verbose)
    else:
        ray.init(address="local", num_cpus=num_cpus or None, include_dashboard=dashboard,
                 dashboard_host="127.0.0.1", logging_level=level, log_to_driver=verbose)
