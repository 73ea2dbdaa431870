"""compare_embeddings: pooling, a synthetic store with a known answer, flag errors, e2e and the page."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis.pooling import mean_std_pool
from embedders.store.h5 import consolidate
from embedders.store.parts import ShardWriter
from ray_jobs.compare_embeddings import job as compare_embeddings

A, S = "audio_embeddings", "symbolic_embeddings"
FAST = ["--n_permutations", "19", "--n_boot", "20"]
N, DIM = 60, 6


# --------------------------------------------------------------------------------------------- pooling
def test_mean_std_pool_concatenates_mean_and_population_std():
    a = np.array([[1.0, 2.0], [3.0, 6.0]], np.float32)
    b = np.array([[5.0, -1.0]], np.float32)
    out = mean_std_pool([a, b])
    assert out.shape == (2, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], [2.0, 4.0, 1.0, 2.0])
    np.testing.assert_allclose(out[1], [5.0, -1.0, 0.0, 0.0])  # one frame: std 0


@pytest.mark.parametrize("bad", [[], [np.zeros((0, 3))], [np.zeros((2, 3)), np.zeros((2, 4))], [np.zeros(3)]])
def test_mean_std_pool_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        mean_std_pool(bad)


# --------------------------------------------------------------------------------------------- synthetic store
def synthetic_store(root, n=N, missing_symbolic=("r3",)):
    """Symbolic frames = audio frames @ Q (Q orthogonal): the spaces are a rotation of each other."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    styles = np.array(["jazz", "rock", "folk"])[np.arange(n) % 3]
    centres = {s: rng.standard_normal(DIM) * 3 for s in set(styles)}
    info = pd.DataFrame({"id": [f"r{i}" for i in range(n)], "audio_filename": [f"a/{i}.wav" for i in range(n)],
                         "midi_filename": [f"m/{i}.mid" for i in range(n)], "style": styles,
                         "bpm": 60.0 + rng.uniform(0, 100, n).round(1), "piece": [f"p{i // 2}" for i in range(n)],
                         "session": [f"s{i % 4}" for i in range(n)],
                         "split": np.where(np.arange(n) % 3 == 0, "test", np.where(np.arange(n) % 7 == 0,
                                                                                    "validation", "train"))})
    wa = ShardWriter(root, A, "aud", "h", {"embedder": "aud"}, 16)
    ws = ShardWriter(root, S, "sym", "h", {"embedder": "sym"}, 16)
    for i, item_id in enumerate(info["id"]):
        frames = (centres[styles[i]] + rng.standard_normal((3, DIM))).astype(np.float32)
        wa.add(item_id, frames)
        if item_id not in missing_symbolic:
            ws.add(item_id, (frames @ q).astype(np.float32))
    wa.flush()
    ws.flush()
    consolidate(root, info, root / "embeddings.h5", provenance={"dataset": "synthetic"})
    return root / "embeddings.h5"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def runs(store, tmp_path_factory):
    out = {}
    # raw coordinates for the rotation invariances (z-scoring each space apart would bend the rotation)
    for name, extra in (("plain", ["--standardize", "none"]),
                        ("style", ["--label", "style", "--group_column", "piece"])):
        folder = tmp_path_factory.mktemp(name)
        assert compare_embeddings.main(["--h5_path", str(store), "--output_dir", str(folder), *FAST, *extra]) == 0
        out[name] = folder
    return out


def test_rotation_gives_cka_one_and_perfect_retrieval(runs):
    m = json.loads((runs["plain"] / "metrics.json").read_text())
    assert m["counts"]["paired"] == N - 1 and m["counts"]["dropped"] == 1
    assert m["spaces"]["n"] == N - 1 and m["spaces"]["dim_x"] == m["spaces"]["dim_y"] == DIM
    metrics = m["spaces"]["metrics"]
    assert metrics["linear_cka"]["value"] > 0.999
    assert metrics["linear_cka"]["p_value"] == pytest.approx(1 / 20)
    assert metrics["linear_cka"]["null_mean"] < 0.5
    for direction in ("x_to_y", "y_to_x"):
        e = metrics[f"retrieval_ridge_{direction}_recall@1"]
        assert e["value"] > 0.95 and e["chance"] < 0.1
    assert "null" not in metrics["linear_cka"]  # draws live in the .npz
    assert "40 train+validation" in m["retrieval_split"] and m["spaces"]["settings"]["n_test"] == 19  # r3 unpaired
    assert m["labels"] is None and m["inputs"]["n_permutations"] == 19
    assert m["inputs"]["standardize"] == "none"
    styled = json.loads((runs["style"] / "metrics.json").read_text())
    assert styled["inputs"]["standardize"] == "zscore"  # the default


def test_csv_npz_and_page(runs):
    rows = pd.read_csv(runs["plain"] / "metrics.csv")
    assert list(rows.columns) == ["name", "value", "ci_lo", "ci_hi", "null_mean", "null_lo", "null_hi", "p_value",
                                  "n_used", "subsampled", "chance",  # then the fields some row has (no label: no within)
                                  "excess", "excess_ci_lo", "excess_ci_hi", "p_holm", "kind"]
    cka = rows.set_index("name").loc["linear_cka"]
    # plain CKA is biased: no interval on its value (issue 16); the debiased one carries the interval
    assert cka["value"] > 0.999 and np.isnan(cka["ci_lo"]) and cka["n_used"] == N - 1
    debiased = rows.set_index("name").loc["linear_cka_debiased"]
    assert debiased["ci_lo"] <= debiased["value"] + 1e-9 <= debiased["ci_hi"] + 2e-9
    nulls = np.load(runs["plain"] / "null_distributions.npz")
    assert nulls["linear_cka"].shape == (19,) and "label_audio_label_rdm" not in nulls
    page = (runs["plain"] / "report.html").read_text()
    assert "aud" in page and "sym" in page and "59</b> paired of 60" in page and "<script" in page
    # every metric of metrics.json is a CSV row with the same numbers (NaN/None: an empty cell)
    m = json.loads((runs["plain"] / "metrics.json").read_text())["spaces"]["metrics"]
    by_name = rows.set_index("name")
    assert list(by_name.index) == list(m)
    for name, entry in m.items():
        for key in ("value", "ci_lo", "ci_hi", "null_mean", "p_value", "n_used", "chance"):
            want, got = entry[key], by_name.loc[name, key]
            assert (want is None and pd.isna(got)) or got == pytest.approx(want, rel=1e-12), (name, key)


def report_inputs():
    """A hand-made payload: two space metrics (one with a retrieval-style chance), a label block."""
    def entry(value, p, **extra):
        return {"value": value, "ci_lo": value - 0.1, "ci_hi": value + 0.1, "null_mean": 0.0, "null_lo": -0.05,
                "null_hi": 0.05, "p_value": p, "n_used": 40, "subsampled": False, "null_n_used": 40, **extra}
    spaces = {"dim_x": 4, "dim_y": 5, "metrics": {"linear_cka": entry(0.9, 0.01), "rsa": entry(0.5, 0.2, chance=0.1)}}
    knn = {"value": 0.8, "ci_lo": 0.7, "ci_hi": 0.9, "chance": 0.34, "n_splits": 5, "k": 10, "n_used": 40,
           "subsampled": False}
    rdm = {"value": 0.3, "p_value": 0.02, "null_mean": 0.0, "null_lo": -0.1, "null_hi": 0.1, "n_used": 40,
           "subsampled": False}
    test = {"mean_difference": 0.05, "ci_lo": -0.01, "ci_hi": 0.11, "p_value": 0.3, "wilcoxon_p": 0.25, "n_units": 40}
    labels = {"task": "classification", "n": 40, "n_splits": 5,
              "audio": {"knn": knn, "silhouette": {"value": 0.2, "n_used": 40}, "label_rdm": rdm},
              "symbolic": {"knn": dict(knn, value=0.75), "silhouette": {"value": 0.1, "n_used": 40}, "label_rdm": rdm},
              "difference_audio_minus_symbolic": {"knn_by_fold": test, "knn_by_recording": dict(test, n_units=40),
                                                  "silhouette": 0.1, "label_rdm": 0.0}}
    return spaces, labels


def test_rows_and_tables_follow_the_metrics_dicts(monkeypatch):
    """A new metric or field reaches metrics.csv and the page through the dicts and FIELDS alone."""
    from analysis.report import compare_page, compare_rows

    spaces, labels = report_inputs()
    rows = compare_rows.metric_rows(spaces, labels)
    assert [r["name"] for r in rows] == [
        "linear_cka", "rsa", "label_audio_knn_accuracy", "label_audio_silhouette", "label_audio_label_rdm",
        "label_symbolic_knn_accuracy", "label_symbolic_silhouette", "label_symbolic_label_rdm",
        "label_diff_knn_by_fold", "label_diff_knn_by_recording", "label_diff_silhouette", "label_diff_label_rdm"]
    diff = rows[8]
    assert (diff["value"], diff["ci_lo"], diff["p_value"], diff["n_used"]) == (0.05, -0.01, 0.3, 40)
    assert rows[-1]["n_used"] == 40 and rows[3]["null_mean"] is None and rows[2]["chance"] == 0.34
    text = compare_rows.metrics_csv(rows)
    assert text.splitlines()[0] == ",".join(compare_rows.CSV_COLUMNS)
    assert text.splitlines()[1] == "linear_cka,0.9,0.8,1.0,0.0,-0.05,0.05,0.01,40,False,"
    table = compare_page.metrics_table(rows[:2])
    assert table.index("<th>95% CI</th>") < table.index("<th>p</th>") < table.index("<th>n used</th>")
    assert "<b>0.900</b>" in table and "[0.800, 1.000]" in table and "0.01" in table
    label = compare_page.label_table(labels)
    assert "kNN accuracy (5-fold CV, k=10), chance 0.340" in label and "Holm" not in table + label
    assert "by fold: 0.050 [-0.010, 0.110], p = 0.3" in label and "0.300, p = 0.02" in label

    nan = dict(spaces["metrics"]["rsa"], p_value=float("nan"))   # undefined: an empty cell, a dash on the page
    assert compare_rows.metrics_csv(compare_rows.metric_rows({"metrics": {"x": nan}}, None)).splitlines()[1] == (
        "x,0.5,0.4,0.6,0.0,-0.05,0.05,,40,False,0.1")
    assert "<td>&ndash;</td>" in compare_page.metrics_table(compare_rows.metric_rows({"metrics": {"x": nan}}, None))

    # a new metric (in the dicts) and a new field (one Field) need no page code
    spaces["metrics"]["new_metric"] = dict(spaces["metrics"]["rsa"], value=0.25, p_bonferroni=0.04)
    labels["audio"]["new_label_metric"] = {"value": 0.6, "p_bonferroni": 0.5}
    labels["symbolic"]["new_label_metric"] = {"value": 0.4}
    monkeypatch.setattr(compare_rows, "FIELDS", (*compare_rows.FIELDS, compare_rows.Field("p_bonferroni", "p (Bonferroni)", "p")))
    before = compare_rows.metric_rows(*report_inputs())   # no entry has the new field: outputs as they were
    assert compare_rows.metrics_csv(before).splitlines()[0] == ",".join(compare_rows.CSV_COLUMNS)
    assert "Bonferroni" not in compare_page.metrics_table(before) + compare_page.label_table(report_inputs()[1])
    rows = compare_rows.metric_rows(spaces, labels)
    text = compare_rows.metrics_csv(rows)
    assert text.splitlines()[0] == ",".join(compare_rows.CSV_COLUMNS) + ",p_bonferroni"
    assert text.splitlines()[3].startswith("new_metric,0.25,") and text.splitlines()[3].endswith(",0.04")
    assert text.splitlines()[1].endswith(",")   # linear_cka has no Bonferroni p: an empty cell
    assert "label_audio_new_label_metric" in text and "label_symbolic_new_label_metric" in text
    table = compare_page.metrics_table(rows[:3])
    assert "<th>p (Bonferroni)</th>" in table and table.count("<tr>") == 4
    label = compare_page.label_table(labels)
    assert "new_label_metric" in label and "0.600, p (Bonferroni) 0.5" in label


def test_label_metrics_side_by_side(runs):
    m = json.loads((runs["style"] / "metrics.json").read_text())
    lab = m["labels"]
    assert lab["task"] == "classification" and lab["grouped"] and lab["n"] == N - 1
    for medium in ("audio", "symbolic"):
        assert lab[medium]["knn"]["value"] > 0.8 and lab[medium]["knn"]["chance"] == pytest.approx(1 / 3, abs=0.02)
    # a rotation keeps cosine neighbours only after centring; the paired test exists either way
    assert set(lab["difference_audio_minus_symbolic"]) >= {"knn_by_fold", "knn_by_recording"}
    names = set(pd.read_csv(runs["style"] / "metrics.csv")["name"])
    assert {"label_audio_knn_accuracy", "label_symbolic_knn_accuracy", "label_diff_knn_by_recording"} <= names
    assert "label_symbolic_label_rdm" in np.load(runs["style"] / "null_distributions.npz")
    assert "audio &minus; symbolic (paired)" in (runs["style"] / "report.html").read_text()


def test_numeric_label_uses_regression_and_task_override(store, tmp_path, capsys):
    assert compare_embeddings.main(["--h5_path", str(store), "--output_dir", str(tmp_path / "bpm"), "--label", "bpm",
                                    *FAST]) == 0
    m = json.loads((tmp_path / "bpm" / "metrics.json").read_text())
    assert m["labels"]["task"] == "regression" and m["labels"]["audio"]["silhouette"] is None
    r2 = pd.read_csv(tmp_path / "bpm" / "metrics.csv").set_index("name").loc["label_audio_knn_r2"]
    assert r2["ci_lo"] <= r2["ci_hi"] <= 1.0  # an interval on R^2 itself, not on squared error
    knn = m["labels"]["audio"]["knn"]
    assert knn["ci_lo"] <= knn["r2_pooled"] <= knn["ci_hi"]
    assert compare_embeddings.main(["--h5_path", str(store), "--output_dir", str(tmp_path / "s"), "--label", "style",
                                    "--task", "regression", *FAST]) == 2
    assert "numeric" in capsys.readouterr().err


def test_sequence_pools_mean_and_std(store, tmp_path):
    assert compare_embeddings.main(["--h5_path", str(store), "--output_dir", str(tmp_path), "--embedding_type",
                                    "sequence", *FAST]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["spaces"]["dim_x"] == 2 * DIM and "std" in m["inputs"]["pooling"]


@pytest.mark.parametrize("extra, message", [
    (["--label", "nope"], "metadata columns"),
    (["--audio_embedder", "openl3"], "no audio_embeddings embedder 'openl3'"),
    (["--label", "style", "--group_column", "nope"], "no group column 'nope'"),
    (["--n_permutations", "0"], "positive integer"),
    (["--embedding_type", "frames"], "invalid choice"),
])
def test_bad_flags_exit_2_with_a_message(store, tmp_path, capsys, extra, message):
    assert compare_embeddings.main(["--h5_path", str(store), "--output_dir", str(tmp_path), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "metrics.json").exists()


def test_missing_file_flag_and_too_few_rows(tmp_path, capsys):
    assert compare_embeddings.main(["--output_dir", str(tmp_path)]) == 2
    assert "--h5_path" in capsys.readouterr().err
    assert compare_embeddings.main(["--h5_path", str(tmp_path / "no.h5"), "--output_dir", str(tmp_path)]) == 2
    assert "no embeddings file" in capsys.readouterr().err
    small = synthetic_store(tmp_path / "small", n=12)
    assert compare_embeddings.main(["--h5_path", str(small), "--output_dir", str(tmp_path / "o"), *FAST]) == 2
    assert "at least 20" in capsys.readouterr().err


def test_retrieval_split_keeps_groups_on_one_side():
    """A split column that puts a group on both sides is not used; whole groups are drawn, about half each."""
    from ray_jobs.compare_embeddings.rows import retrieval_split

    n = 60
    meta = pd.DataFrame({"split": np.where(np.arange(n) % 3 == 0, "test", "train"), "piece": [f"p{i // 2}" for i in range(n)],
                         "block": [f"b{i // 30}" for i in range(n)]})
    train, test, desc = retrieval_split(meta, seed=0)
    assert test.size == 20 and "metadata 'split'" in desc
    train, test, desc = retrieval_split(meta, seed=0, group_column="piece")
    pieces = meta["piece"].to_numpy()
    assert not set(pieces[train]) & set(pieces[test]) and train.size + test.size == n
    assert abs(test.size - n / 2) <= 2 and "seeded 50/50 of whole piece groups" in desc and "not used" in desc
    kept = retrieval_split(meta.assign(split=np.where(np.arange(n) < 30, "test", "train")), 0, "block")
    assert kept[1].size == 30 and "no block group on both sides" in kept[2]      # a grouped split column is kept
    _, _, desc = retrieval_split(meta.drop(columns="split"), seed=0, group_column="piece")
    assert "no 'split' column" in desc


def test_few_groups_use_leave_one_group_out_and_other_media_pairs(store, runs, tmp_path):
    """4 sessions < 5 folds: the label metrics become leave-one-group-out (5-fold grouped CV would need 5);
    --media in the other order pairs the same rows through the generic path: linear CKA is symmetric."""
    out = tmp_path / "sessions"
    assert compare_embeddings.main(["--h5_path", str(store), "--output_dir", str(out), "--label", "style",
                                    "--group_column", "session", *FAST]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["labels"]["n_splits"] == 4 and m["labels"]["cv"].startswith("leave-one-group-out over 4 session groups")
    assert "seeded 50/50 of whole session groups" in m["retrieval_split"]
    swapped = tmp_path / "swapped"
    assert compare_embeddings.main(["--h5_path", str(store), "--output_dir", str(swapped), "--standardize", "none",
                                    "--media", f"{S},{A}", *FAST]) == 0
    plain = json.loads((runs["plain"] / "metrics.json").read_text())
    turned = json.loads((swapped / "metrics.json").read_text())
    assert turned["inputs"]["media"] == [S, A] and turned["counts"]["paired"] == plain["counts"]["paired"]
    assert (turned["inputs"]["audio_embedder"], turned["inputs"]["symbolic_embedder"]) == ("sym", "aud")
    assert turned["spaces"]["metrics"]["linear_cka"]["value"] == pytest.approx(
        plain["spaces"]["metrics"]["linear_cka"]["value"], abs=1e-9)
    assert compare_embeddings.main(["--h5_path", str(store), "--output_dir", str(tmp_path / "x"),
                                    "--media", A, *FAST]) == 2


def test_symbolic_against_transcribed_same_embedder(tmp_path):
    """The transcribed medium beside the symbolic one, one embedder: only the medium differs."""
    rng = np.random.default_rng(3)
    n = 40
    info = pd.DataFrame({"id": [f"r{i}" for i in range(n)], "audio_filename": [f"a/{i}.wav" for i in range(n)],
                         "midi_filename": [f"m/{i}.mid" for i in range(n)]})
    ws = ShardWriter(tmp_path, S, "roll", "h", {"embedder": "roll"}, 16)
    wt = ShardWriter(tmp_path, "transcribed_embeddings", "roll", "h", {"embedder": "roll"}, 16)
    for i, item_id in enumerate(info["id"]):
        frames = rng.standard_normal((2, DIM)).astype(np.float32)
        ws.add(item_id, frames)
        if i % 10:  # every tenth transcription failed
            wt.add(item_id, frames + 0.1 * rng.standard_normal((2, DIM)).astype(np.float32))
    ws.flush()
    wt.flush()
    consolidate(tmp_path, info, tmp_path / "embeddings.h5", provenance={"dataset": "synthetic"})
    out = tmp_path / "out"
    assert compare_embeddings.main(["--h5_path", str(tmp_path / "embeddings.h5"), "--output_dir", str(out),
                                    "--media", f"{S}:roll,transcribed_embeddings:roll", *FAST]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["inputs"]["media"] == [S, "transcribed_embeddings"] and m["inputs"]["embedders"] == ["roll", "roll"]
    assert m["counts"]["paired"] == 36 and m["counts"]["valid_transcribed"] == 36
    assert m["spaces"]["metrics"]["linear_cka"]["value"] > 0.9  # a noisy copy
    page = (out / "report.html").read_text()
    assert "Symbolic vs transcribed: roll vs roll" in page and "valid transcribed 36" in page


@pytest.mark.browser
def test_report_renders_in_a_browser(runs):
    from tests.browser import load_page

    for name in ("plain", "style"):
        dom, errors = load_page(runs[name] / "report.html")
        assert errors == [], errors
        assert 'class="plot-container plotly"' in dom
    assert "jazz" in dom and "rock" in dom  # legend entries from the label


# --------------------------------------------------------------------------------------------- end to end
def _hand_linear_cka(h5_path) -> float:
    """Linear CKA of the z-scored averages of the rows valid in both media (the job's defaults)."""
    import h5py

    from tests import references

    with h5py.File(h5_path, "r") as f:
        audio, symbolic = f[f"{A}/melstats"], f[f"{S}/pianoroll"]
        both = audio["valid"][...] & symbolic["valid"][...]
        return references.linear_cka(references.zscore(audio["average"][...][both]),
                                     references.zscore(symbolic["average"][...][both]))


@pytest.mark.slow
def test_on_a_store_written_by_generate_embeddings(ray_session, tmp_path, capsys):
    from ray_jobs.generate_embeddings import job as generate_embeddings
    from tests.factory import make_dataset

    root = tmp_path / "raw" / "toy"
    make_dataset(root, n=24, seconds=1.0)
    assert generate_embeddings.main(["--dataset", "toy", "--data_root", str(tmp_path), "--batch_size", "8"]) == 0
    h5 = tmp_path / "embeddings" / "toy" / "embeddings.h5"
    capsys.readouterr()
    for name, extra in (("plain", []), ("style", ["--label", "style"])):
        out = tmp_path / name
        assert compare_embeddings.main(["--h5_path", str(h5), "--output_dir", str(out), *FAST, *extra]) == 0
        m = json.loads((out / "metrics.json").read_text())
        assert m["counts"]["paired"] == 24 and m["counts"]["dropped"] == 0
        assert (m["inputs"]["audio_embedder"], m["inputs"]["symbolic_embedder"]) == ("melstats", "pianoroll")
        assert m["spaces"]["settings"]["n_test"] == 12  # make_dataset alternates train/test
        # the value itself, from the file read with h5py and Kornblith's formula by hand (tests/references.py)
        assert m["spaces"]["metrics"]["linear_cka"]["value"] == pytest.approx(_hand_linear_cka(h5), rel=1e-4)
        assert {"metrics.csv", "null_distributions.npz", "report.html"} <= {p.name for p in out.iterdir()}
    lab = m["labels"]
    assert lab["task"] == "classification" and 0.0 <= lab["audio"]["knn"]["value"] <= 1.0
    assert "linear_cka" in capsys.readouterr().out


def label_only_store(root, n=90):
    """Audio and symbolic share only their style's centroid; within a style the pairing is random noise."""
    rng = np.random.default_rng(3)
    styles = np.array(["jazz", "rock", "folk"])[np.arange(n) % 3]
    ca = {s: rng.standard_normal(DIM) * 3 for s in ("jazz", "rock", "folk")}
    cs = {s: rng.standard_normal(DIM) * 3 for s in ("jazz", "rock", "folk")}
    info = pd.DataFrame({"id": [f"r{i}" for i in range(n)], "audio_filename": [f"a/{i}.wav" for i in range(n)],
                         "midi_filename": [f"m/{i}.mid" for i in range(n)], "style": styles})
    wa = ShardWriter(root, A, "aud", "h", {"embedder": "aud"}, 32)
    ws = ShardWriter(root, S, "sym", "h", {"embedder": "sym"}, 32)
    for i, item_id in enumerate(info["id"]):
        wa.add(item_id, (ca[styles[i]] + rng.standard_normal((2, DIM))).astype(np.float32))
        ws.add(item_id, (cs[styles[i]] + rng.standard_normal((2, DIM))).astype(np.float32))
    wa.flush()
    ws.flush()
    consolidate(root, info, root / "embeddings.h5", provenance={"dataset": "label_only"})
    return root / "embeddings.h5"


def test_within_label_null_separates_recordings_from_labels(tmp_path):
    """Spaces related only through the label: the free null rejects, the within-label null does not, and
    both reach metrics.csv, the .npz and the page (the primary metric first)."""
    h5 = label_only_store(tmp_path / "store")
    out = tmp_path / "out"
    assert compare_embeddings.main(["--h5_path", str(h5), "--output_dir", str(out), "--label", "style",
                                    "--n_permutations", "199"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    primary = m["spaces"]["metrics"][m["spaces"]["primary"]["metric"]]
    assert m["spaces"]["primary"]["metric"] == "linear_cka_debiased" and m["inputs"]["strata"] == "style"
    assert primary["p_value"] <= 0.01 and primary["value"] > 0.3            # related through the styles
    assert primary["null_within"]["p_value"] > 0.05                          # nothing beyond the styles
    lo, hi = primary["null_within"]["excess_ci_lo"], primary["null_within"]["excess_ci_hi"]
    assert lo <= 0.0 <= hi
    rows = pd.read_csv(out / "metrics.csv").set_index("name")
    assert {"within_p_value", "within_p_holm", "within_excess", "p_holm"} <= set(rows.columns)
    assert rows.loc["linear_cka_debiased", "within_p_value"] == pytest.approx(primary["null_within"]["p_value"])
    holm = rows["p_holm"].dropna()
    assert (holm >= rows.loc[holm.index, "p_value"] - 1e-12).all()          # Holm never lowers a p-value
    assert "linear_cka_debiased__within" in np.load(out / "null_distributions.npz")
    page = (out / "report.html").read_text()
    assert page.index("Primary analysis") < page.index("How the two spaces relate")
    assert "within-stratum null" in page and "Holm p" in page


def test_group_column_alone_gives_the_within_group_null(tmp_path):
    h5 = label_only_store(tmp_path / "store")
    out = tmp_path / "out"
    assert compare_embeddings.main(["--h5_path", str(h5), "--output_dir", str(out), "--group_column", "style",
                                    "--n_permutations", "99"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["inputs"]["strata"] == "style" and m["labels"] is None
    primary = m["spaces"]["metrics"]["linear_cka_debiased"]
    assert primary["p_value"] <= 0.02 and primary["null_within"]["p_value"] > 0.05
