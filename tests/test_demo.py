"""The demo chain end to end at a reduced size, then a rerun that skips every finished stage."""

import json

import h5py
import pandas as pd
import pytest

from ray_jobs.demo import job as demo

pytestmark = pytest.mark.slow

SMALL = ["--limit", "36", "--max_seconds", "8", "--pretrain_epochs", "1", "--sweep_samples", "1",
         "--sweep_epochs", "2", "--seeds", "2", "--n_permutations", "50"]


def test_demo_runs_the_whole_chain_then_skips_on_rerun(ray_session, tmp_path):
    argv = ["--data_root", str(tmp_path / "data"), "--results_dir", str(tmp_path / "results"), *SMALL]
    assert demo.main(argv) == 0
    info = pd.read_csv(tmp_path / "data/raw/music21/info.csv")
    assert len(info) == 36 and info["composer"].nunique() == 12
    with h5py.File(tmp_path / "data/embeddings/music21/embeddings.h5") as f:
        for path in ("audio_embeddings/melstats", "symbolic_embeddings/pianoroll",
                     "symbolic_embeddings/midi_transformer"):
            assert f[path]["valid"][...].all(), path
    results = tmp_path / "results"
    assert (results / "pretrain/demo_model/model.pt").exists()
    for symbolic in demo.SYMBOLIC:
        for label in ("no_label", *demo.LABELS):
            assert (results / "compare" / f"melstats_vs_{symbolic}" / label / "report.html").exists()
    summary = pd.read_csv(results / "sweep/summary.csv")
    assert set(summary["label"]) == set(demo.LABELS)
    assert set(summary["symbolic_embedder"]) == set(demo.SYMBOLIC)
    page = (results / "index.html").read_text()
    for needle in ("report.html", "summary.csv", "model.pt", "embeddings.h5", "mlflow ui --backend-store-uri"):
        assert needle in page, needle
    first = json.loads((results / "demo_timings.json").read_text())
    assert all(v > 0 for v in first.values()), first

    assert demo.main(argv) == 0
    timings = json.loads((results / "demo_timings.json").read_text())
    assert set(timings.values()) == {0.0}, "a rerun must skip every finished stage"
