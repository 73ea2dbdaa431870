"""A job SIGKILLed between a part's write and its commit, and its rerun.

The job runs in its own process session (with its own local Ray, or the local executor), so every
process of it (driver, Ray's daemons, the embedding actor) can be killed at once, as when a node
dies. The embedding process is held at the injected point (``AVS_TEST_HOLD_BEFORE_COMMIT``): its
part is written under a temporary name and not yet renamed into place when the kill comes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from embedders.store.parts import HOLD_BEFORE_COMMIT, part_files
from ray_jobs.generate_embeddings import job as generate_embeddings
from tests.factory import make_dataset
from tests.job_processes import RAY_INFO, kill_session

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
A, S = "audio_embeddings", "symbolic_embeddings"
ARGS = ["--dataset", "toy", "--batch_size", "2", "--rows_per_part", "2", "--max_actors", "1"]


def stored_ids(emb: Path, medium: str, name: str) -> list[str]:
    return [i for p in part_files(emb, medium, name) for i in pq.read_table(p, columns=["id"]).column("id").to_pylist()]


@pytest.mark.parametrize("executor", ["ray", "local"])
def test_kill_between_write_and_commit_then_rerun(ray_session, tmp_path, capsys, executor):
    """On Ray the embedding actor is held; with the local executor and --max_actors 1, the driver."""
    if not sys.platform.startswith("linux"):
        pytest.skip("process bookkeeping reads /proc")
    make_dataset(tmp_path / "raw" / "toy", n=6, seconds=2.0)
    marker = tmp_path / "held"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": "local", "RAY_USAGE_STATS_ENABLED": "0",
           HOLD_BEFORE_COMMIT: f"2:{marker}"}  # the embedding process commits 2 parts, then holds its 3rd
    # --verbose on Ray: Ray's own log lines reach the console (test_console_is_quiet_unless_verbose checks
    # that a run without it shows none). Output to a file: a pipe nobody reads could fill and block the job.
    verbose = ["--verbose"] if executor == "ray" else []
    with open(tmp_path / "job.log", "w") as log:
        job = subprocess.Popen([sys.executable, "-m", "ray_jobs.generate_embeddings", *ARGS, "--data_root", str(tmp_path),
                                "--num_cpus", "2", "--executor", executor, *verbose], cwd=REPO, env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 420
        while not marker.exists() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), f"the job never reached the commit point: {job.poll()=}"
    finally:
        kill_session(job.pid)
        job.wait()
    if verbose:
        console = (tmp_path / "job.log").read_text()
        assert any(RAY_INFO.search(line) for line in console.splitlines()), console[-3000:]
    emb = tmp_path / "embeddings" / "toy"
    # One actor, 2 rows per call, audio then symbolic per call: calls 1's two parts are committed,
    # call 2's audio part is written whole but sits under its temporary name.
    (leftover,) = list((emb / "parquet" / A / "melstats").glob(".*.tmp"))
    assert pq.read_table(leftover, columns=["id"]).num_rows == 2  # a complete file, never committed
    committed = {A: stored_ids(emb, A, "melstats"), S: stored_ids(emb, S, "pianoroll")}
    assert {m: len(ids) for m, ids in committed.items()} == {A: 2, S: 2}
    assert set(pq.read_table(leftover, columns=["id"]).column("id").to_pylist()).isdisjoint(committed[A])
    assert not (emb / "embeddings.h5").exists() and (emb / "metadata.parquet").exists()

    capsys.readouterr()
    assert generate_embeddings.main([*ARGS, "--data_root", str(tmp_path)]) == 0
    assert "removed 1 uncommitted part file(s) left by a killed run" in capsys.readouterr().out
    assert not list(emb.rglob("*.tmp"))
    summary = pd.read_json(emb / "summary.json", typ="series")
    assert {m: (summary["media"][m]["skipped"], summary["media"][m]["done"]) for m in (A, S)} == {A: (2, 4), S: (2, 4)}
    for medium, name in ((A, "melstats"), (S, "pianoroll")):
        ids = stored_ids(emb, medium, name)
        assert sorted(ids) == [f"rec{k}" for k in range(6)], f"{medium}: every id exactly once"

    # The resumed store equals an uninterrupted run's, row for row.
    make_dataset(tmp_path / "clean" / "raw" / "toy", n=6, seconds=2.0)
    assert generate_embeddings.main([*ARGS, "--data_root", str(tmp_path / "clean")]) == 0
    with h5py.File(emb / "embeddings.h5") as got, h5py.File(tmp_path / "clean/embeddings/toy/embeddings.h5") as want:
        for group in (f"{A}/melstats", f"{S}/pianoroll"):
            for name in ("average", "sequence", "sequence_offsets", "valid"):
                np.testing.assert_array_equal(got[f"{group}/{name}"][...], want[f"{group}/{name}"][...])
