"""The demo chain end to end at a reduced size, then a rerun that skips every finished stage; its index page."""

import json

import h5py
import pandas as pd
import pytest

from analysis.report import demo_index
from ray_jobs.demo import job as demo

SMALL = ["--limit", "36", "--max_seconds", "8", "--pretrain_epochs", "1", "--sweep_samples", "1",
         "--sweep_epochs", "2", "--seeds", "2", "--n_permutations", "50"]


@pytest.mark.slow
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


def test_index_links_outputs_relative_to_the_page_and_marks_what_is_missing(tmp_path):
    results = tmp_path / "results"
    (results / "pretrain" / "m").mkdir(parents=True)
    model = results / "pretrain" / "m" / "model.pt"
    model.write_bytes(b"weights")
    (model.parent / "test_metrics.json").write_text(json.dumps({
        "best_epoch": 2, "epochs_run": 4, "test_loss": 5.1, "test_perplexity": 164.25, "unigram_test_loss": 5.8,
        "unigram_test_perplexity": float("inf"), "test_masked_tokens": 999}))
    info = tmp_path / "data" / "info.csv"
    info.parent.mkdir()
    pd.DataFrame({"id": ["a", "b", "c"], "composer": ["bach", "bach", "mozart"], "duration": [60, 60, 60]}).to_csv(
        info, index=False)
    page = demo_index.render(results / "index.html", info_csv=info, h5=tmp_path / "none.h5", model=model,
                             compare_dirs={("pianoroll", None): results / "compare" / "x"}, sweep_dir=results / "sweep",
                             tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", timings={"prepare_dataset": 0.0,
                                                                                          "pretrain": 12.5})
    assert '<a href="pretrain/m/model.pt">model.pt</a>' in page and '<a href="../data/info.csv">' in page
    assert "3 paired recordings (3.0 min of audio)" in page and "<td>mozart</td><td>1</td>" in page
    assert "best epoch 3 of 4" in page and "<td>164.2</td>" in page and "<td>&ndash;</td>" in page  # inf: a dash
    assert "skipped (output present)" in page and "<td>12.5</td>" in page
    assert page.count('<p class="muted">not run</p>') == 2   # embeddings and sweep
    assert "mlflow ui --backend-store-uri sqlite:///" in page
