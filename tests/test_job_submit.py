"""The cluster flow on one machine: a Ray head on loopback with token auth, `ray job submit
--working-dir .` of generate_embeddings, its outputs, and a teardown that stops only what it started.

Token auth works offline (the token is a shared secret, no service is asked), so the head runs as
cluster.yaml configures it: RAY_AUTH_MODE=token with the token in RAY_AUTH_TOKEN (nothing is written
to ~/.ray, which other Ray users of this machine share). The head has its own --temp-dir and
ports, so it neither joins nor disturbs the test session's Ray (``ray_session``) or anyone else's.
It is never stopped with `ray stop`, which kills every Ray of the user on the machine: the test
kills the processes of its own session (the head was started in a new one) and those whose
command line or working directory lies in its temp dir (job drivers start a session of their own).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import h5py
import pytest

from tests.factory import make_dataset

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _proc_ids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _session_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[3])  # fields after "comm": state ppid pgrp session


def _refers_to(pid: int, marker: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    return marker in cmdline or cwd.startswith(marker)


def ours(session: int, temp_dir: str) -> list[int]:
    """Processes of the head's session, or tied to its unique temp dir; never this test process."""
    me = os.getpid()
    return [p for p in _proc_ids() if p != me and (_session_of(p) == session or _refers_to(p, temp_dir))]


def stop_ours(session: int, temp_dir: str, timeout: float = 30.0) -> list[int]:
    """SIGKILL them; returns what still runs ``timeout`` seconds later (should be nothing). No SIGTERM
    first: the head's gcs_server and one of its Python daemons outlast a SIGTERM for 30 s and more,
    and nothing of this throwaway head (its files are removed next) needs a clean shutdown."""
    for pid in ours(session, temp_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while ours(session, temp_dir) and time.monotonic() < deadline:
        time.sleep(0.1)  # waiting for the kernel to reap them, not timing anything
    return ours(session, temp_dir)


@pytest.fixture
def head(tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("process bookkeeping reads /proc")
    temp_dir = tempfile.mkdtemp(prefix="avsray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    gcs, dash, client, agent, agent_grpc, metrics, rt_env = free_ports(7)
    token = uuid.uuid4().hex + uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")  # the job's `python`
    log = open(tmp_path / "ray_start.log", "w")  # a file, not a pipe: the head's daemons inherit it
    start = subprocess.Popen(
        [RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs), "--num-cpus", "2",
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
         "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
         "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(rt_env),
         "--temp-dir", temp_dir, "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    session = start.pid
    try:
        start.wait(timeout=180)  # `ray start` returns once the head is up
        assert start.returncode == 0, (tmp_path / "ray_start.log").read_text()[-3000:]
        yield {"address": f"http://127.0.0.1:{dash}", "env": env, "temp_dir": temp_dir, "token": token}
    finally:
        if start.poll() is None:
            start.kill()
        left = stop_ours(session, temp_dir)
        assert not left, f"processes of the test head still running: {left}"
        shutil.rmtree(temp_dir, ignore_errors=True)


def ray_cli(args, env, **kw):
    return subprocess.run([RAY, *args], env=env, capture_output=True, text=True, cwd=REPO, **kw)


def job_api(address: str, token: str | None = None) -> tuple[int, str]:
    """(HTTP status, body) of GET /api/jobs/ on the head, with ``token`` as the CLI sends it (a bearer header)."""
    request = urllib.request.Request(f"{address}/api/jobs/",
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_submit_generate_embeddings_with_working_dir(head, tmp_path):
    make_dataset(tmp_path / "raw" / "toy", n=4, seconds=2.0)
    env, address = head["env"], head["address"]

    # Token auth is on: the head's job API refuses no token and a wrong one, and answers the right one.
    # Asked over HTTP as the `ray job` CLI asks it (a CLI process costs seconds of imports per call).
    assert job_api(address) == (401, "Unauthorized: Missing authentication token")
    assert job_api(address, "0" * 64) == (403, "Forbidden: Invalid authentication token")
    assert job_api(address, head["token"])[0] == 200

    job_id = f"avs-test-{uuid.uuid4().hex[:8]}"
    submit = ray_cli(["job", "submit", "--address", address, "--submission-id", job_id, "--working-dir", ".", "--",
                      "python", "-m", "ray_jobs.generate_embeddings", "--dataset", "toy", "--data_root", str(tmp_path),
                      "--batch_size", "4"], env, timeout=600)  # waits for the job, streaming its logs
    logs = submit.stdout + submit.stderr
    assert submit.returncode == 0, logs[-4000:]
    # submit exits 1 on a failed job; it ends by printing the job's status, as `ray job status` would
    assert f"Job '{job_id}' succeeded" in logs, logs[-4000:]
    assert "4 to do" in logs and "wrote" in logs

    with h5py.File(tmp_path / "embeddings" / "toy" / "embeddings.h5") as f:
        assert [i.decode() for i in f["ids"][...]] == ["rec0", "rec1", "rec2", "rec3"]
        assert f["audio_embeddings/melstats/valid"][...].all() and f["symbolic_embeddings/pianoroll/valid"][...].all()
    summary = json.loads((tmp_path / "embeddings" / "toy" / "summary.json").read_text())
    assert {m: c["done"] for m, c in summary["media"].items()} == {"audio_embeddings": 4, "symbolic_embeddings": 4}

    # What was uploaded: the tracked sources, not .venv, data/, results/ (.gitignore) or .git (.rayignore).
    unpacked = [p for p in Path(head["temp_dir"]).glob("session_2*/runtime_resources/working_dir_files/_ray_pkg_*")
                if p.is_dir()]  # session_latest is a link to the one session; *.zip.lock files are Ray's
    assert len(unpacked) == 1, unpacked
    top = {p.name for p in unpacked[0].iterdir()}
    assert {"ray_jobs", "embedders", "analysis", "pyproject.toml", "constraints.txt"} <= top
    assert not top & {".venv", "data", "results", "mlruns", ".git", ".pytest_cache"}, top
    size = sum(p.stat().st_size for p in unpacked[0].rglob("*") if p.is_file())
    assert size < 20 * 2**20, f"working dir upload is {size / 2**20:.1f} MiB"
    print(f"working_dir upload: {size / 2**20:.2f} MiB in {sum(1 for _ in unpacked[0].rglob('*'))} entries")
