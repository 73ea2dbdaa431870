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
                                  "n_used", "subsampled", "chance"]
    cka = rows.set_index("name").loc["linear_cka"]
    # plain CKA is biased: no interval on its value (issue 16); the debiased one carries the interval
    assert cka["value"] > 0.999 and np.isnan(cka["ci_lo"]) and cka["n_used"] == N - 1
    debiased = rows.set_index("name").loc["linear_cka_debiased"]
    assert debiased["ci_lo"] <= debiased["value"] + 1e-9 <= debiased["ci_hi"] + 2e-9
    nulls = np.load(runs["plain"] / "null_distributions.npz")
    assert nulls["linear_cka"].shape == (19,) and "label_audio_label_rdm" not in nulls
    page = (runs["plain"] / "report.html").read_text()
    assert "aud" in page and "sym" in page and "59</b> paired of 60" in page and "<script" in page


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


@pytest.mark.browser
def test_report_renders_in_a_browser(runs):
    from tests.browser import load_page

    for name in ("plain", "style"):
        dom, errors = load_page(runs[name] / "report.html")
        assert errors == [], errors
        assert 'class="plot-container plotly"' in dom
    assert "jazz" in dom and "rock" in dom  # legend entries from the label


# --------------------------------------------------------------------------------------------- end to end
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
        assert 0.0 <= m["spaces"]["metrics"]["linear_cka"]["value"] <= 1.0
        assert {"metrics.csv", "null_distributions.npz", "report.html"} <= {p.name for p in out.iterdir()}
    lab = m["labels"]
    assert lab["task"] == "classification" and 0.0 <= lab["audio"]["knn"]["value"] <= 1.0
    assert "linear_cka" in capsys.readouterr().out
