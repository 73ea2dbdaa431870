"""The demo chain end to end at a reduced size, then a rerun that skips every finished stage; its index
page (read back as tables, cell by cell, against the files it summarises); the record that keeps
outputs of different dataset builds apart."""

import json
from html.parser import HTMLParser
from types import SimpleNamespace

import h5py
import numpy as np
import pandas as pd
import pytest

from analysis.report import demo_index
from analysis.report.html import number, p_value
from ray_jobs.demo import job as demo
from ray_jobs.demo import state as demo_state

# one label, one real-weight embedder per medium in the sweep, one seed: what keeps this test as fast as the
# two-media demo's was (the default's 8 sweep tasks x 3 seeds and 8 comparisons cost ~1 min more here)
SWEPT = ("musicnn", "pianoroll")
LABEL = "composer"
SMALL = ["--limit", "36", "--max_seconds", "8", "--pretrain_epochs", "1", "--sweep_samples", "1",
         "--sweep_epochs", "2", "--seeds", "1", "--n_permutations", "50", "--sweep_embedders", ",".join(SWEPT),
         "--labels", LABEL]
PRIMARY = "debiased CKA [95% CI] (primary)"


class _Tables(HTMLParser):
    """Every <table> of a page as a list of rows, each a list of cell texts (entities decoded)."""

    def __init__(self):
        super().__init__()
        self.tables, self._row, self._cell = [], None, None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self._row = []
            self.tables[-1].append(self._row)
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def table_with(page: str, column: str) -> list[dict]:
    """The rows (as {heading: text}) of the one table of ``page`` that has ``column``."""
    parser = _Tables()
    parser.feed(page)
    found = [t for t in parser.tables if t and column in t[0]]
    assert len(found) == 1, f"{len(found)} tables with column {column!r}"
    return [dict(zip(found[0][0], row)) for row in found[0][1:]]


def side(spec: str) -> str:
    medium, embedder = spec.split(":")
    return f"{embedder} ({demo_index.SHORT[medium]})"


def interval_text(value, lo, hi) -> str:
    return f"{number(value)} [{number(lo)}, {number(hi)}]"


@pytest.mark.slow
def test_demo_runs_the_whole_chain_then_skips_on_rerun(ray_session, tmp_path):
    argv = ["--data_root", str(tmp_path / "data"), "--results_dir", str(tmp_path / "results"), *SMALL]
    assert demo.main(argv) == 0
    info = pd.read_csv(tmp_path / "data/raw/music21/info.csv")
    assert len(info) == 36 and info["composer"].nunique() == 12
    assert set(info["perf_level"]) == {"light"}, "the demo's audio must be a performance, not the MIDI rendered"
    store = tmp_path / "data/embeddings/music21"
    with h5py.File(store / "embeddings.h5") as f:
        for path in ("audio_embeddings/melstats", "audio_embeddings/musicnn", "symbolic_embeddings/pianoroll",
                     "symbolic_embeddings/midi_transformer", "transcribed_embeddings/pianoroll"):
            assert f[path]["valid"][...].all(), path
    results = tmp_path / "results"
    assert (results / "pretrain/demo_model/model.pt").exists()
    page = (results / "index.html").read_text()

    spaces = {row["pair"]: row for row in table_with(page, PRIMARY)}
    within = {(row["pair"], row["label"]): row for row in table_with(page, "p (within label)")}
    assert len(spaces) == len(demo.COMPARISONS)
    for comparison in demo.comparisons((LABEL,)):
        pair = f"{side(comparison.x)} vs {side(comparison.y)}"
        for label in comparison.labels:
            m = json.loads((results / "compare" / comparison.name / (label or "no_label") / "metrics.json").read_text())
            assert m["inputs"]["media"] == [comparison.x.split(":")[0], comparison.y.split(":")[0]]
            assert m["inputs"]["embedders"] == [comparison.x.split(":")[1], comparison.y.split(":")[1]]
            d = m["spaces"]["metrics"]["linear_cka_debiased"]
            assert m["spaces"]["primary"]["metric"] == "linear_cka_debiased"
            if label is None:
                row = spaces[pair]
                assert row[PRIMARY] == interval_text(d["value"], d["ci_lo"], d["ci_hi"])
                assert row["p (free null)"] == p_value(d["p_value"])
                r1 = m["spaces"]["metrics"]["retrieval_ridge_x_to_y_recall@1"]
                assert row["R@1 x→y [CI]"] == interval_text(r1["value"], r1["ci_lo"], r1["ci_hi"])
                assert row["R@1 chance"] == number(r1["chance"])
                # 50 permutations cannot survive Holm over 29 metrics, and the page says so
                assert m["spaces"]["settings"]["min_permutations_for_holm"] > 50
                assert row["R@1 x→y p (Holm)"] == (f"{p_value(r1['p_holm'])} (Holm cannot reject: 50 permutations, "
                                                   f"{m['spaces']['settings']['min_permutations_for_holm']} needed)")
            else:
                row = within[(pair, label)]
                w = d["null_within"]
                assert row["excess over within-label null [CI]"] == interval_text(w["excess"], w["excess_ci_lo"],
                                                                                   w["excess_ci_hi"])
                assert row["p (within label)"] == p_value(w["p_value"])
    transcribed = [c for c in demo.COMPARISONS if c.y.startswith("transcribed_embeddings")]
    assert transcribed and transcribed[0].x == "symbolic_embeddings:" + transcribed[0].y.split(":")[1]

    quality = pd.read_parquet(store / "transcription_quality.parquet")
    assert (quality["status"] == "transcribed").all()
    assert f"F1 against the paired MIDI (the score; 50 ms tolerance) mean {number(quality['f1'].mean())}" in page

    summary = pd.read_csv(results / "sweep/summary.csv")
    assert list(summary["label"]) == [LABEL]
    assert list(summary["audio_embedder"]) == [SWEPT[0]] and list(summary["symbolic_embedder"]) == [SWEPT[1]]
    assert (summary["difference_method"] == "items x seeds").all()
    sweep_rows = table_with(page, "verdict")
    assert len(sweep_rows) == len(summary)
    for row, r in zip(sweep_rows, summary.to_dict("records")):
        assert row["audio"].startswith(f"{r['audio_embedder']}: {number(r['audio_mean'])}")
        assert row["test"] == "items x seeds"
        assert row["p (Holm)"] == p_value(r["p_holm"]) and row["verdict"] == r["verdict"]
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
    assert "the paired MIDI itself, rendered" in page  # no perf_* columns: audio rendered from the MIDI
    assert "best epoch 3 of 4" in page and "<td>164.2</td>" in page and "<td>&ndash;</td>" in page  # inf: a dash
    assert "skipped (output present)" in page and "<td>12.5</td>" in page
    assert page.count('<p class="muted">not run</p>') == 2   # embeddings and sweep
    assert "mlflow ui --backend-store-uri sqlite:///" in page


# -- the page's statistics, from hand-made result files (every number distinct, so a swap shows) --

def _entry(value, lo, hi, p, p_holm, *, excess=None, within=None, chance=None):
    e = {"value": value, "ci_lo": lo, "ci_hi": hi, "p_value": p, "p_holm": p_holm, "null_within": within}
    if excess is not None:
        e.update(excess=excess[0], excess_ci_lo=excess[1], excess_ci_hi=excess[2])
    if chance is not None:
        e["chance"] = chance
    return e


def _metrics(media, embedders, base, *, label=None, n_permutations=1000):
    """A metrics.json of compare_embeddings with the fields the page reads; values offset by ``base``."""
    within = None
    if label:
        within = {"p_value": base + 0.0031, "p_holm": base + 0.0032, "excess": base + 0.051, "excess_ci_lo": base + 0.011,
                  "excess_ci_hi": base + 0.091}
    metrics = {
        "linear_cka_debiased": _entry(base + 0.41, base + 0.31, base + 0.51, 0.000999, 0.0291, within=within),
        "linear_cka": _entry(base + 0.62, None, None, 0.000999, 0.0291, excess=(base + 0.22, base + 0.12, base + 0.32)),
        "mutual_knn": _entry(base + 0.15, None, None, 0.001, 0.03, excess=(base + 0.13, base + 0.03, base + 0.23)),
        "retrieval_ridge_x_to_y_recall@1": _entry(base + 0.44, base + 0.24, base + 0.64, 0.0021, 0.0444,
                                                  chance=0.0222, within=within),
        "retrieval_ridge_y_to_x_recall@1": _entry(base + 0.33, base + 0.23, base + 0.43, 0.0022, 0.0555, chance=0.0222),
    }
    labels = None
    if label:
        knn = {"value": base + 0.57, "ci_lo": base + 0.47, "ci_hi": base + 0.67, "chance": 0.0833}
        labels = {"audio": {"knn": knn}, "symbolic": {"knn": {**knn, "value": base + 0.71}},
                  "difference_audio_minus_symbolic": {"knn_by_recording": {
                      "mean_difference": base - 0.14, "ci_lo": base - 0.24, "ci_hi": base - 0.04, "p_value": 0.0123,
                      "p_holm": 0.0456}}}
    return {"inputs": {"media": list(media), "embedders": list(embedders), "audio_embedder": embedders[0],
                       "symbolic_embedder": embedders[1], "label": label},
            "counts": {"paired": 300},
            "spaces": {"metrics": metrics, "primary": {"metric": "linear_cka_debiased"},
                       "settings": {"n_permutations": n_permutations, "min_permutations_for_holm": 579}},
            "labels": labels}


def test_index_shows_the_primary_metric_both_nulls_holm_and_the_item_level_verdict(tmp_path):
    results = tmp_path / "results"
    dirs = {}
    for name, media, embedders, base in (
            ("a", ("audio_embeddings", "symbolic_embeddings"), ("musicnn", "pianoroll"), 0.0),
            ("t", ("symbolic_embeddings", "transcribed_embeddings"), ("pianoroll", "pianoroll"), 0.002)):
        for label in (None, "composer"):
            out = results / "compare" / name / (label or "no_label")
            out.mkdir(parents=True)
            (out / "metrics.json").write_text(json.dumps(_metrics(media, embedders, base, label=label,
                                                                  n_permutations=1000 if name == "a" else 99)))
            dirs[(name, label)] = out
    sweep = results / "sweep"
    sweep.mkdir()
    pd.DataFrame([{"label": "composer", "metric": "accuracy", "audio_embedder": "musicnn", "audio_mean": 0.612,
                   "audio_ci_lo": 0.512, "audio_ci_hi": 0.702, "audio_baseline": 0.111, "audio_shuffled": 0.101,
                   "audio_flags": "", "symbolic_embedder": "pianoroll", "symbolic_mean": 0.734, "symbolic_ci_lo": 0.634,
                   "symbolic_ci_hi": 0.824, "symbolic_baseline": 0.111, "symbolic_shuffled": 0.121,
                   "symbolic_flags": "", "difference": -0.122, "difference_ci_lo": -0.222, "difference_ci_hi": -0.022,
                   "difference_method": "items x seeds", "p_value": 0.0042, "p_holm": 0.0084,
                   "verdict": "symbolic higher (item-level paired test, Holm-adjusted p = 0.0084)"}]).to_csv(
        sweep / "summary.csv", index=False)
    info = tmp_path / "info.csv"
    pd.DataFrame({"id": ["a", "b"], "composer": ["bach", "haydn"], "duration": [30, 30], "perf_level": ["light"] * 2,
                  "perf_family": ["strings", "winds"]}).to_csv(info, index=False)
    page = demo_index.render(results / "index.html", info_csv=info, h5=tmp_path / "none.h5", model=tmp_path / "m.pt",
                             compare_dirs=dirs, sweep_dir=sweep, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                             timings={})
    assert "--performance light" in page and "strings 1, winds 1" in page

    spaces = {row["pair"]: row for row in table_with(page, PRIMARY)}
    assert list(spaces) == ["musicnn (audio) vs pianoroll (symbolic)", "pianoroll (symbolic) vs pianoroll (transcribed)"]
    a = spaces["musicnn (audio) vs pianoroll (symbolic)"]
    assert a[PRIMARY] == "0.410 [0.310, 0.510]" and a["p (free null)"] == "0.001"
    assert a["linear CKA"] == "0.620" and a["linear CKA excess over null [CI]"] == "0.220 [0.120, 0.320]"
    assert a["R@1 x→y [CI]"] == "0.440 [0.240, 0.640]" and a["R@1 y→x [CI]"] == "0.330 [0.230, 0.430]"
    assert a["R@1 chance"] == "0.022" and a["R@1 x→y p (Holm)"] == "0.044"   # Holm's p, not the raw 0.0021
    t = spaces["pianoroll (symbolic) vs pianoroll (transcribed)"]
    assert t[PRIMARY] == "0.412 [0.312, 0.512]" and t["n"] == "300"
    assert t["R@1 x→y p (Holm)"] == "0.044 (Holm cannot reject: 99 permutations, 579 needed)"

    within = {(row["pair"], row["label"]): row for row in table_with(page, "p (within label)")}
    w = within[("musicnn (audio) vs pianoroll (symbolic)", "composer")]
    assert w["p (free null)"] == "0.001" and w["p (within label)"] == "0.0031"
    assert w["excess over within-label null [CI]"] == "0.051 [0.011, 0.091]"
    assert w["R@1 within-label p (Holm)"] == "0.0032"
    assert ("pianoroll (symbolic) vs pianoroll (transcribed)", "composer") in within

    knn = table_with(page, "x − y by recording [CI] (primary)")
    assert knn[0]["kNN x [CI]"] == "0.570 [0.470, 0.670]" and knn[0]["kNN y [CI]"] == "0.710 [0.470, 0.670]"
    assert knn[0]["x − y by recording [CI] (primary)"] == "-0.140 [-0.240, -0.040]"
    assert knn[0]["p"] == "0.012" and knn[0]["p (Holm)"] == "0.046"

    (row,) = table_with(page, "verdict")
    assert row["audio"] == "musicnn: 0.612 [0.512, 0.702]" and row["symbolic"] == "pianoroll: 0.734 [0.634, 0.824]"
    assert row["audio − symbolic [CI]"] == "-0.122 [-0.222, -0.022]" and row["test"] == "items x seeds"
    assert row["p"] == "0.0042" and row["p (Holm)"] == "0.0084"
    assert row["verdict"] == "symbolic higher (item-level paired test, Holm-adjusted p = 0.0084)"


def test_transcription_quality_is_the_mean_over_scored_recordings(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    pd.DataFrame({"id": ["a", "b", "c", "d"], "status": ["transcribed", "transcribed", "transcribed", "failed"],
                  "transcriber": ["basic_pitch"] * 4, "scored": [True, True, False, None],
                  "f1": [0.5, 0.7, 0.0, np.nan], "precision": [0.4, 0.6, 0.0, np.nan],
                  "recall": [0.8, 0.9, 0.0, np.nan]}).to_parquet(store / "transcription_quality.parquet")
    text = demo_index.transcription_text(tmp_path / "index.html", store)
    assert "3 recordings transcribed to MIDI by <code>basic_pitch</code>" in text
    assert "mean 0.600, median 0.600 (precision 0.500, recall 0.850) over 2 scored recordings" in text
    assert "The audio is a performance" not in text  # rendered from the MIDI: timing agrees
    assert "The audio is a performance" in demo_index.transcription_text(tmp_path / "index.html", store, True)


# -- outputs of different builds of the dataset never mix --

def _built(folder, ids, build_hash):
    (folder / ".build").mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"id": ids}).to_csv(folder / "info.csv", index=False)
    for i in ids:
        (folder / ".build" / f"{i}.json").write_text(json.dumps({"id": i, "build_hash": build_hash}))


def test_prepare_is_redone_when_the_folder_holds_another_build(tmp_path):
    root = tmp_path / "data" / "raw" / "music21"
    args = demo.build_parser().parse_args(["--data_root", str(tmp_path / "data"), "--limit", "2"])
    argv = demo.prepare_argv(args, ["--dataset", "music21", "--data_root", args.data_root])
    assert argv[argv.index("--performance") + 1] == "light"
    state = demo_state.DemoState(tmp_path / "results")
    from embedders.store import filesystem as fs
    from ray_jobs.prepare_dataset import job as prepare_dataset

    def hash_of(performance):
        at = argv.index("--performance") + 1
        _, parsed = prepare_dataset.parse_args([*argv[:at], performance, *argv[at + 1:]])
        return prepare_dataset.build_hash(parsed, fs.read_bytes(parsed.soundfont))

    assert hash_of("light") != hash_of("none")
    _built(root, ["w1", "w2"], hash_of("none"))             # an older demo's build: the MIDI rendered
    done, wanted = demo.prepare_check(args, argv, root, state)
    assert not done
    _built(root, ["w1", "w2"], hash_of("light"))
    assert not demo.prepare_check(args, argv, root, state)[0], "built right, but not recorded as this demo's"
    state.set("prepare", wanted)
    assert demo.prepare_check(args, argv, root, state) == (True, wanted)
    (root / ".build" / "w2.json").write_text(json.dumps({"id": "w2", "build_hash": hash_of("none")}))
    assert not demo.prepare_check(args, argv, root, state)[0], "one work built otherwise"
    other = demo.build_parser().parse_args(["--data_root", str(tmp_path / "data"), "--limit", "3"])
    _built(root, ["w1", "w2"], hash_of("light"))
    assert not demo.prepare_check(other, demo.prepare_argv(other, argv[2:6]), root, state)[0], "other flags"


def test_results_of_another_dataset_are_moved_aside_and_embedding_steps_overwritten(tmp_path):
    results = tmp_path / "results"
    (results / "compare" / "x").mkdir(parents=True)
    (results / "compare" / "x" / "metrics.json").write_text("{}")
    (results / "index.html").write_text("old")
    (results / "mine.txt").write_text("not the demo's")
    state = demo_state.DemoState(results)
    moved = state.claim_results(results, {"dir": "/d", "info_csv_sha256": "A"})  # an older demo: no record
    assert moved is not None and (moved / "compare" / "x" / "metrics.json").exists()
    assert not (results / "compare").exists() and not (results / "index.html").exists()
    assert (results / "mine.txt").exists()

    store = tmp_path / "store"
    calls = []
    fake = SimpleNamespace(__name__="generate", main=lambda argv: calls.append(argv) or 0)
    step = demo.EMBED_STEPS[1]
    assert demo.embed(fake, state, step, ["--x"], store) == 0 and calls[-1] == ["--x"]  # nothing stored yet
    for medium, name in step.needs:
        (store / "parquet" / medium / name).mkdir(parents=True)
    demo.embed(fake, state, step, ["--x"], store)
    assert calls[-1] == ["--x"], "rows of this dataset (a killed run): resume, not overwrite"
    assert demo_state.DemoState(results).step_current(step.key)

    (results / "index.html").write_text("new")
    assert state.claim_results(results, {"dir": "/d", "info_csv_sha256": "A"}) is None  # same dataset: kept
    assert (results / "index.html").read_text() == "new"
    assert state.claim_results(results, {"dir": "/d", "info_csv_sha256": "B"}) is not None
    assert not state.step_current(step.key)
    state.claim_results(results, {"dir": "/d", "info_csv_sha256": "A"})  # back to A before the step ran on B:
    assert not state.step_current(step.key), "the store may hold B's rows now: the record of A must be gone"
    state.claim_results(results, {"dir": "/d", "info_csv_sha256": "B"})
    demo.embed(fake, state, step, ["--x"], store)
    assert calls[-1] == ["--x", "--overwrite"], "rows made from another build must be recomputed"
    transcribed = demo.EMBED_STEPS[0]
    (store / "transcriptions").mkdir()
    fresh = demo_state.DemoState(tmp_path / "other_results")  # another results folder on the same store
    assert fresh.claim_results(tmp_path / "other_results", {"dir": "/d", "info_csv_sha256": "B"}) is None
    demo.embed(fake, fresh, transcribed, ["--y"], store)
    assert calls[-1] == ["--y", "--overwrite"], "transcriptions of other audio are reused by id unless overwritten"


def test_the_default_sweep_sets_every_audio_embedder_against_every_symbolic_one():
    args = demo.build_parser().parse_args([])
    assert args.sweep_embedders.split(",") == [*demo.AUDIO, *demo.SYMBOLIC]
    assert args.labels.split(",") == ["composer", "time_signature"]
    assert [(c.x, c.y, c.labels) for c in demo.COMPARISONS] == [  # audio vs symbolic, symbolic vs transcribed
        ("audio_embeddings:melstats", "symbolic_embeddings:pianoroll", (None, "composer", "time_signature")),
        ("audio_embeddings:musicnn", "symbolic_embeddings:pianoroll", (None, "composer", "time_signature")),
        ("symbolic_embeddings:pianoroll", "transcribed_embeddings:pianoroll", (None, "composer"))]
    assert args.performance == "light" and args.n_permutations >= 579  # Holm over 29 space metrics


def test_a_comparison_or_sweep_made_with_other_settings_is_not_done(tmp_path):
    out = tmp_path / "c"
    out.mkdir()
    assert not demo.compared(out, 1000)
    (out / "metrics.json").write_text(json.dumps({"inputs": {"n_permutations": 50}}))
    assert not demo.compared(out, 1000) and demo.compared(out, 50)
    assert not demo.swept(tmp_path, "melstats,pianoroll")
    pd.DataFrame({"label": ["composer"], "audio_embedder": ["melstats"], "symbolic_embedder": ["pianoroll"]}).to_csv(
        tmp_path / "summary.csv", index=False)
    assert demo.swept(tmp_path, "melstats,pianoroll", ("composer",))
    assert not demo.swept(tmp_path, "melstats,musicnn,pianoroll", ("composer",))
    assert not demo.swept(tmp_path, "melstats,pianoroll", ("composer", "time_signature"))
