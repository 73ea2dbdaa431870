"""Start ``mlflow server`` on 127.0.0.1 for a test, wait until it answers, stop its process group after.

The server is the ``mlflow`` console script of the running interpreter's environment, one worker
(the build machines have 2 cores). Readiness is polled on ``/health``; the server's own log is
quoted when it exits or does not come up in time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (uvicorn forks), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)
    except ProcessLookupError:
        pass


@contextmanager
def mlflow_server(backend_store_uri: str, timeout_s: float = 300.0) -> Iterator[str]:
    """Yield the base URL (``http://127.0.0.1:<port>``) of a server on ``backend_store_uri``."""
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    if not mlflow_bin.exists():
        raise FileNotFoundError(f"no mlflow console script beside {sys.executable}; install mlflow in this environment")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile("w+", prefix="mlflow-server-", suffix=".log", delete=False)
    # MLflow 3's server also starts a job runner with a pool of huey consumer processes (for its
    # server-side jobs, which the UI pages tested here never use): off, it comes up in about half the time
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--backend-store-uri", backend_store_uri, "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
    )
    try:
        deadline = time.monotonic() + timeout_s
        while not _answers(f"{url}/health"):
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode} before answering on {url}:\n"
                                   f"{Path(log.name).read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"mlflow server on {url} did not answer /health within {timeout_s:.0f} s:\n"
                                   f"{Path(log.name).read_text()[-3000:]}")
            time.sleep(0.1)  # poll interval (a refused connection costs nothing); readiness is decided by /health
        yield url
    finally:
        _stop(proc)
        log.close()
        os.unlink(log.name)


def api(url: str, endpoint: str, payload: dict | None = None) -> dict:
    """POST (with payload) or GET a REST endpoint such as ``experiments/get-by-name``."""
    full = f"{url}/api/2.0/mlflow/{endpoint}"
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(full, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())
