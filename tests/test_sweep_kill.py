"""A sweep SIGKILLed mid-search, and its rerun.

The job runs as a subprocess in its own process session with its own local Ray, so the driver, Ray's
daemons and the trial actors die at once, as when a node dies. The driver is held (tests/held_sweep.py)
once the second task's first trial has reported an epoch: the first task's search has ended (its
retraining was submitted, never recorded), the second's MLflow parent and trial run exist, unfinished.
The rerun must keep the first task's search (same search.json, same trial runs), drop the killed
attempt's runs, search the second task again, and leave each run once in MLflow and a complete table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from ray_jobs.sweep import job as sweep
from tests.sweep_factory import A, S, runs_by_role, tiny_store
from tests.test_embedding_job_kill import kill_session

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
FIRST, SECOND = f"{A}__toy_audio__style", f"{S}__toy_symbolic__style"
# one configuration per task, one epoch, one seed: the kill and the resume need no more
N_SAMPLES = 1
ARGS = ["--labels", "style", "--num_samples", str(N_SAMPLES), "--max_epochs", "1", "--grace_period", "1",
        "--patience", "1", "--seeds", "1", "--max_concurrent", "1", "--verbose", "0"]


def runs_per_task(out: Path, view: str = "active") -> dict[tuple[str, str], list[str]]:
    """MLflow run ids per (avs.task, avs.role); ``view``: active or deleted runs."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs: dict[tuple[str, str], list[str]] = {}
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id], max_results=10000,
                                      run_view_type=ViewType.ACTIVE_ONLY if view == "active" else ViewType.DELETED_ONLY):
            key = (run.data.tags.get("avs.task", ""), run.data.tags.get("avs.role", ""))
            runs.setdefault(key, []).append(run.info.run_id)
    return {k: sorted(v) for k, v in runs.items()}


def test_sweep_killed_mid_search_then_rerun(ray_session, tmp_path, capsys):
    if not sys.platform.startswith("linux"):
        pytest.skip("process bookkeeping reads /proc")
    h5 = tiny_store(tmp_path / "store")
    out = tmp_path / "sweep"
    flags = ["--h5_path", str(h5), "--output_dir", str(out), *ARGS]
    marker = tmp_path / "held"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": "local", "RAY_USAGE_STATS_ENABLED": "0"}
    log = tmp_path / "held_sweep.log"
    with log.open("wb") as sink:
        job = subprocess.Popen([sys.executable, "-m", "tests.held_sweep", str(marker), SECOND, "--", *flags,
                                "--num_cpus", "2"], cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)     # polling the marker (a stat per poll), not timing anything
        assert marker.exists(), f"the sweep never reached the hold point: {job.poll()=}\n{log.read_text()[-3000:]}"
    finally:
        kill_session(job.pid)
        job.wait()
    output = log.read_text()[-3000:]
    assert job.returncode == -9, output

    # What the kill left: the first task searched, the second mid-search, nothing retrained.
    tasks = out / "tasks"
    assert (tasks / FIRST / "search.json").exists() and not (tasks / SECOND / "search.json").exists(), output
    assert not list(tasks.glob("*/result.json")) and not (out / "summary.csv").exists()
    first_search = (tasks / FIRST / "search.json").read_bytes()
    before = runs_per_task(out)
    assert {k: len(v) for k, v in before.items()} == {(FIRST, "task"): 1, (FIRST, "trial"): N_SAMPLES,
                                                     (SECOND, "task"): 1, (SECOND, "trial"): 1}, output

    capsys.readouterr()
    assert sweep.main(flags) == 0
    printed = capsys.readouterr().out

    # The first task was not searched again: same search.json, same trial runs; only its retraining ran.
    assert (tasks / FIRST / "search.json").read_bytes() == first_search
    after = runs_per_task(out)
    assert after[(FIRST, "task")] == before[(FIRST, "task")] and after[(FIRST, "trial")] == before[(FIRST, "trial")]
    # Each run once: the killed attempt's parent and trials are soft-deleted, the new attempt's are active.
    assert {k: len(v) for k, v in after.items()} == {(FIRST, "task"): 1, (FIRST, "trial"): N_SAMPLES, (FIRST, "final"): 1,
                                                    (SECOND, "task"): 1, (SECOND, "trial"): N_SAMPLES,
                                                    (SECOND, "final"): 1, ("", "summary"): 1}
    deleted = runs_per_task(out, "deleted")
    assert deleted == {(SECOND, "task"): before[(SECOND, "task")], (SECOND, "trial"): before[(SECOND, "trial")]}
    assert runs_by_role(out) == {"task": 2, "trial": 2 * N_SAMPLES, "final": 2, "summary": 1}
    search = json.loads((tasks / SECOND / "search.json").read_text())
    assert {t["run_id"] for t in search["trials"]} == set(after[(SECOND, "trial")])

    # A complete table: both media's records, one row with both sides.
    assert sorted(p.parent.name for p in tasks.glob("*/result.json")) == sorted([FIRST, SECOND])
    assert not list(tasks.glob("*/error.json"))
    table = pd.read_csv(out / "summary.csv", keep_default_na=False)
    assert list(table["label"]) == ["style"] and len(table) == 1
    row = table.iloc[0]
    assert (row["audio_embedder"], row["symbolic_embedder"]) == ("toy_audio", "toy_symbolic")
    assert 0 <= float(row["audio_mean"]) <= 1 and 0 <= float(row["symbolic_mean"]) <= 1
    assert "search finished earlier" in printed and "an earlier attempt was interrupted; its 2 MLflow run(s)" in printed
