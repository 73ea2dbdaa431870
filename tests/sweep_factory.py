"""A tiny paired store with a known answer, and one small sweep over it shared by the sweep tests.

Store: 72 recordings, 24 per style x 3 styles, split 48 train / 12 validation / 12 test (every
split balanced).
``style`` (3 classes) is well separated in the audio space and only faintly present in the
symbolic one; ``tempo`` (numeric, many values) is a linear function of two audio features plus
noise, and unrelated to the symbolic features. So the sweep's table should put audio above
symbolic for both labels. Each recording has 3 frames, so both embedding types exist.
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


def tiny_store(root: Path) -> Path:
    rng = np.random.default_rng(0)
    styles = np.array(["jazz", "rock", "folk"])[np.arange(N) % 3]
    split = np.array(["train"] * 4 + ["validation", "test"])[np.arange(N) // 3 % 6]
    audio_centres = {s: rng.standard_normal(DIM_A) * 4 for s in ("jazz", "rock", "folk")}
    symbolic_centres = {s: rng.standard_normal(DIM_S) * 0.3 for s in ("jazz", "rock", "folk")}
    audio = np.stack([audio_centres[s] + rng.standard_normal(DIM_A) for s in styles])
    tempo = 100 + 15 * audio[:, 0] - 10 * audio[:, 1] + rng.normal(0, 2, N)
    info = pd.DataFrame({"id": [f"r{i:03d}" for i in range(N)], "audio_filename": [f"a/{i}.wav" for i in range(N)],
                         "midi_filename": [f"m/{i}.mid" for i in range(N)], "style": styles,
                         "tempo": tempo.round(2), "split": split})
    wa = ShardWriter(root, A, "toy_audio", "h", {"embedder": "toy_audio"}, 32)
    ws = ShardWriter(root, S, "toy_symbolic", "h", {"embedder": "toy_symbolic"}, 32)
    for i, item_id in enumerate(info["id"]):
        wa.add(item_id, (audio[i] + 0.3 * rng.standard_normal((3, DIM_A))).astype(np.float32))
        ws.add(item_id, (symbolic_centres[styles[i]] + rng.standard_normal((3, DIM_S))).astype(np.float32))
    wa.flush()
    ws.flush()
    consolidate(root, info, root / "embeddings.h5", provenance={"dataset": "tiny"})
    return root / "embeddings.h5"


@dataclasses.dataclass
class SweepRun:
    h5: Path
    output_dir: Path
    exit_code: int


_RUNS: dict[str, SweepRun] = {}


def tiny_sweep(tmp_path_factory) -> SweepRun:
    """Run the CI sweep once per test session (the e2e and the browser tests read the same run)."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _RUNS:
        from ray_jobs.sweep import job as sweep

        root = tmp_path_factory.mktemp("sweep_store")
        h5 = tiny_store(root)
        out = tmp_path_factory.mktemp("sweep_out") / "sweep"
        code = sweep.main(["--h5_path", str(h5), "--output_dir", str(out), *SWEEP_ARGS])
        _RUNS[key] = SweepRun(h5, out, code)
    return _RUNS[key]
