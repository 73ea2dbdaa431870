"""Shared fixtures: one Ray session for the whole test run (Ray 2.60 has no local_mode)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session")
def ray_session():
    """Ray with 2 CPUs, dashboard on loopback (Ray Train polls its state API); jobs find it via ray.is_initialized()."""
    import ray
    import ray.data  # noqa: F401  configures Ray Data's log handlers now, on the session's stdout,
    # not on the stdout of whichever test (with capsys) first imports it, closed after that test.

    ray.init(num_cpus=2, dashboard_host="127.0.0.1", ignore_reinit_error=True, log_to_driver=False)
    yield ray
    ray.shutdown()


def pytest_collection_modifyitems(config, items):
    """``bench`` tests (benchmark scripts end to end) run only when ``-m`` names the marker
    (``pytest -m bench``, ``make bench``); every other run deselects them."""
    if "bench" in (config.getoption("markexpr") or ""):
        return
    dropped = [item for item in items if item.get_closest_marker("bench")]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not item.get_closest_marker("bench")]
