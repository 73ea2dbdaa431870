"""Shared fixtures: one Ray session for the whole test run (Ray 2.60 has no local_mode)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
# Ray Train's controller polls its workers every 2 s by default, so each start, restart and finish of a
# tiny test run waits for the next poll; every Ray instance of the test run (its workers inherit this
# process's environment) polls every 0.2 s. Jobs run by users keep Ray's default.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


S3_BUCKET = "avs-test-bucket"


def require_moto() -> None:
    """Skip without moto (the dev extra installs moto[s3]); under CI=true its absence is a failure."""
    try:
        import moto.server  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("moto is required when CI=true: pip install -e '.[dev]' (moto[s3])")
        pytest.skip("moto not installed (pip install 'moto[s3]'): S3 tests need its local server")


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 for the whole session, with bucket ``S3_BUCKET``; the AWS_* variables in
    this process's environment point pyarrow (and every process started later) at it. None without moto.

    ``ray_session`` starts it first, so the shared Ray instance's workers inherit those variables and S3
    jobs run in the test process on that instance, as a cluster's nodes have their credentials in their
    environment. AWS_EC2_METADATA_DISABLED keeps the AWS SDK from asking the instance-metadata address
    for credentials: no request leaves the loopback interface.
    """
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        yield None
        return
    import pyarrow.fs as pafs

    from embedders.store import locations

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        pafs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], allow_bucket_creation=True).create_dir(S3_BUCKET)
        locations._remote_filesystem.cache_clear()
        yield env
        locations._remote_filesystem.cache_clear()
    server.stop()


@pytest.fixture
def s3(s3_server):
    """The session's S3 server (its AWS_* settings); skips without moto (fails under CI=true)."""
    if s3_server is None:
        require_moto()
    return s3_server


@pytest.fixture(scope="session")
def ray_session(s3_server, tmp_path_factory):
    """Ray with 2 CPUs, dashboard on loopback (Ray Train polls its state API); jobs find it via ray.is_initialized().

    Started after ``s3_server``: its workers see the S3 settings. They stage remote folders and files
    in a session folder (AVS_STAGE_DIR), never in the home directory's cache."""
    os.environ.setdefault("AVS_STAGE_DIR", str(tmp_path_factory.mktemp("ray_workers_stage")))
    import ray
    import ray.data  # noqa: F401  configures Ray Data's log handlers now, on the session's stdout,
    # not on the stdout of whichever test (with capsys) first imports it, closed after that test.

    # address="local": a new instance even when a `ray start` cluster runs on this machine (test_job_submit's)
    ray.init(address="local", num_cpus=2, dashboard_host="127.0.0.1", ignore_reinit_error=True, log_to_driver=False)
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


def pytest_sessionfinish(session, exitstatus):
    """Under CI=true a run in which no test passed (every one skipped, or none selected) fails with
    pytest's "no tests" status 5: a green CI must have run something."""
    if os.environ.get("CI") != "true" or exitstatus != pytest.ExitCode.OK:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and not reporter.stats.get("passed"):
        reporter.ensure_newline()
        reporter.write_line("CI=true: no test passed; failing the run (exit status 5)", red=True)
        session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED
