"""One way for every job to get a Ray session."""

from __future__ import annotations

import os


def ensure_ray(num_cpus: int | None = None) -> None:
    """Use the Ray session already running in this process (tests share one), else start or join one.

    With RAY_ADDRESS set (``ray job submit`` sets it) plain ``ray.init()`` joins that cluster and
    ``num_cpus`` is ignored: a cluster's size is not the job's to choose. Otherwise this starts a
    local instance (or joins one begun with ``ray start`` on this machine, as plain ``ray.init()``
    does) with ``num_cpus`` CPUs (None: all) and its dashboard on 127.0.0.1 only.
    """
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        # The dashboard serves Ray's state API, which Ray Train's controller polls; loopback only.
        ray.init(num_cpus=num_cpus or None, dashboard_host="127.0.0.1")
