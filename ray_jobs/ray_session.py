"""One way for every job to get a Ray session."""

from __future__ import annotations

import os


def ensure_ray(num_cpus: int | None = None) -> None:
    """Use the Ray session already running in this process (tests share one), else join or start one.

    With RAY_ADDRESS set (``ray job submit`` sets it to the cluster's GCS address; ``auto`` picks a
    cluster begun with ``ray start`` on this machine) plain ``ray.init()`` joins that cluster, with
    the auth mode and token of this process's environment, and ``num_cpus`` is ignored: a cluster's
    size is not the job's to choose. Otherwise this starts a new local instance with ``num_cpus``
    CPUs (None: all) and its dashboard on 127.0.0.1 only. It never joins a ``ray start`` cluster it
    happens to find (``address="local"``): that one's size and auth settings are not this job's,
    and Ray refuses ``num_cpus`` when joining.
    """
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if address and address != "local":
        ray.init()
    else:
        # The dashboard serves Ray's state API, which Ray Train's controller polls; loopback only.
        ray.init(address="local", num_cpus=num_cpus or None, dashboard_host="127.0.0.1")
