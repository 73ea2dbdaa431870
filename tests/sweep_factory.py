"""A tiny paired store with a known answer, and one small sweep over it shared by the sweep tests.

Store: ``n`` recordings (default 72), a third per style x 3 styles, split 4:1:1 train / validation
/ test (every split balanced). ``style`` (3 classes) is well separated in the audio space and only
faintly present in the symbolic one; ``tempo`` (numeric, many values) is a linear function of two
audio features plus noise, and unrelated to the symbolic features. So the sweep's table should put
audio above symbolic for both labels. Each recording has 3 frames, so both embedding types exist.
``invalid_audio``: that share of the rows (every k-th) has no audio embedding, as when audio files
fail; the media then differ in their valid rows and a comparison must still use the same rows.

``tiny_sweep``: the sweep every slow sweep test reads (``SWEEP_ANSWER_ARGS``: 4 configurations per
task under ASHA, epochs enough for the known answer, 3 seeds) on a store of 150 recordings with 20%
of the audio rows invalid. Its first run has one task fail on purpose (``FAILING_TASK``, at its last
step, writing result.json: its trials and final MLflow runs exist), exits 1, and is rerun once, which
retrains only that task.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from embedders.store.h5 import consolidate
from embedders.store.parts import ShardWriter

A, S = "audio_embeddings", "symbolic_embeddings"
N, DIM_A, DIM_S = 72, 8, 6
SWEEP_ARGS = ["--labels", "style,tempo", "--num_samples", "1", "--max_epochs", "3", "--grace_period", "1",
              "--patience", "3", "--seeds", "2", "--num_cpus", "2", "--verbose", "0"]
# one trial at a time: ASHA then sees the trials in a fixed order, so which trials it cuts and the best
# configuration do not depend on timing (the retraining still runs beside the next search)
SWEEP_ANSWER_ARGS = ["--labels", "style,tempo", "--num_samples", "4", "--max_epochs", "9", "--grace_period", "1",
                     "--reduction_factor", "3", "--patience", "9", "--seeds", "3", "--max_concurrent", "1",
                     "--num_cpus", "2", "--verbose", "0"]
ANSWER_ROWS, INVALID_AUDIO = 150, 0.2
FAILING_TASK = f"{S}__toy_symbolic__style"


def tiny_store(root: Path, n: int = N, invalid_audio: float = 0.0) -> Path:
    rng = np.random.default_rng(0)
    styles = np.array(["jazz", "rock", "folk"])[np.arange(n) % 3]
    split = np.array(["train"] * 4 + ["validation", "test"])[np.arange(n) // 3 % 6]
    every = round(1 / invalid_audio) if invalid_audio else 0
    audio_centres = {s: rng.standard_normal(DIM_A) * 4 for s in ("jazz", "rock", "folk")}
    symbolic_centres = {s: rng.standard_normal(DIM_S) * 0.3 for s in ("jazz", "rock", "folk")}
    audio = np.stack([audio_centres[s] + rng.standard_normal(DIM_A) for s in styles])
    tempo = 100 + 15 * audio[:, 0] - 10 * audio[:, 1] + rng.normal(0, 2, n)
    info = pd.DataFrame({"id": [f"r{i:03d}" for i in range(n)], "audio_filename": [f"a/{i}.wav" for i in range(n)],
                         "midi_filename": [f"m/{i}.mid" for i in range(n)], "style": styles,
                         "tempo": tempo.round(2), "split": split})
    wa = ShardWriter(root, A, "toy_audio", "h", {"embedder": "toy_audio"}, 32)
    ws = ShardWriter(root, S, "toy_symbolic", "h", {"embedder": "toy_symbolic"}, 32)
    for i, item_id in enumerate(info["id"]):
        frames = (audio[i] + 0.3 * rng.standard_normal((3, DIM_A))).astype(np.float32)
        if not (every and i % every == every - 1):      # every k-th row: no audio embedding
            wa.add(item_id, frames)
        ws.add(item_id, (symbolic_centres[styles[i]] + rng.standard_normal((3, DIM_S))).astype(np.float32))
    wa.flush()
    ws.flush()
    consolidate(root, info, root / "embeddings.h5", provenance={"dataset": "tiny"})
    return root / "embeddings.h5"


@dataclasses.dataclass
class SweepRun:
    h5: Path
    output_dir: Path
    exit_code: int                    # of the rerun (the sweep as a user ends up with it)
    first_exit_code: int              # of the first run, with FAILING_TASK failing
    first_error: dict | None          # tasks/<FAILING_TASK>/error.json after the first run
    first_runs: dict                  # MLflow runs per avs.role after the first run
    seconds: dict                     # wall time of the first run and of the rerun


_RUNS: dict[str, SweepRun] = {}


def runs_by_role(output_dir: Path) -> dict[str, int]:
    """Active MLflow runs of a sweep's sqlite store, counted per ``avs.role`` tag."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{output_dir / 'mlflow.db'}")
    counts: dict[str, int] = {}
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id], max_results=10000):
            role = run.data.tags.get("avs.role", "")
            counts[role] = counts.get(role, 0) + 1
    return counts


def tiny_sweep(tmp_path_factory) -> SweepRun:
    """Run the CI sweep once per test session (the e2e and the browser tests read the same run).

    The first run fails FAILING_TASK when it writes its result.json, so the run exits 1 with that task's
    error.json; the rerun retrains only that task (replacing its final MLflow run) and exits 0.
    """
    key = str(tmp_path_factory.getbasetemp())
    if key not in _RUNS:
        import json
        import time

        from ray_jobs.sweep import job as sweep
        from ray_jobs.sweep import runner

        root = tmp_path_factory.mktemp("sweep_store")
        h5 = tiny_store(root, ANSWER_ROWS, INVALID_AUDIO)
        out = tmp_path_factory.mktemp("sweep_out") / "sweep"
        argv = ["--h5_path", str(h5), "--output_dir", str(out), *SWEEP_ANSWER_ARGS]
        real = runner.write_json

        def failing(path, payload):
            # the task dies at its very last step: its search, trials and final MLflow run exist already
            if Path(path).name == "result.json" and Path(path).parent.name == FAILING_TASK:
                raise ValueError(f"injected failure of {FAILING_TASK} (tests/sweep_factory.py)")
            return real(path, payload)

        runner.write_json = failing
        t0 = time.perf_counter()
        try:
            first = sweep.main(argv)
        finally:
            runner.write_json = real
        t1 = time.perf_counter()
        error_file = out / "tasks" / FAILING_TASK / "error.json"
        first_error = json.loads(error_file.read_text()) if error_file.exists() else None
        first_runs = runs_by_role(out)
        code = sweep.main(argv)
        _RUNS[key] = SweepRun(h5, out, code, first, first_error, first_runs,
                              {"first": t1 - t0, "rerun": time.perf_counter() - t1})
    return _RUNS[key]
