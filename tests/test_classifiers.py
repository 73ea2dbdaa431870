"""Probes, task loading (splits, groups, small classes), training, controls and metrics of the classifier path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.classifier_factory import STYLES, A, separable_store
from training.classifier_data import TaskDataError, load_task
from training.classifier_metrics import classification_metrics, regression_metrics, t_interval
from training.classifiers import PROBES, ModelSpecError, build_model, resolve_spec
from training.experiment import ClassificationExperiment, TrainConfig
from training.seed_runs import run_seeds, shuffled_control


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: intra-op threads only contend on a shared CI machine (and make runs slower, not faster)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return separable_store(tmp_path_factory.mktemp("cls_store"))


@pytest.fixture(scope="module")
def split_store(tmp_path_factory):
    return separable_store(tmp_path_factory.mktemp("cls_split_store"), with_split=True, rare_rows=2, empty_labels=3)


# ------------------------------------------------------------------------------------------ probes
@pytest.mark.parametrize("name", ["attention", "bilstm"])
def test_sequence_probes_ignore_padding(name):
    torch.manual_seed(0)
    model = build_model(name, 4, 3, hidden_dim=8, dropout=0.0).eval()
    x = torch.randn(2, 5, 4)
    lengths = torch.tensor([3, 5])
    padded = x.clone()
    padded[0, 3:] = 1e3                                     # garbage in the padding of row 0
    with torch.no_grad():
        a, b = model(x, lengths), model(padded, lengths)
        alone = model(x[:1, :3], torch.tensor([3]))        # row 0 with no padding at all
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a[:1], alone, atol=1e-5)
    assert a.shape == (2, 3)


def test_build_model_specs():
    assert set(PROBES) == {"linear", "mlp", "attention", "bilstm"}
    assert resolve_spec("auto", "average") == "linear" and resolve_spec("auto", "sequence") == "attention"
    with pytest.raises(ModelSpecError, match="other embedding type"):
        resolve_spec("bilstm", "average")
    with pytest.raises(ModelSpecError, match="nope"):
        build_model("nope", 4, 2)
    with pytest.raises(ModelSpecError, match="cannot import"):
        build_model("tests.no_such_module:Model", 4, 2)
    custom = build_model("torch.nn:Linear", 4, 2, hidden_dim=8)   # any nn.Module(input_dim, num_classes) is accepted
    assert isinstance(custom, torch.nn.Linear) and custom.out_features == 2
    with pytest.raises(ModelSpecError, match="Bilinear.*input_dim, num_classes"):
        build_model("torch.nn:Bilinear", 4, 2)


# ------------------------------------------------------------------------------------------ data
def test_drawn_split_is_disjoint_stratified_and_keeps_groups_whole(store):
    data = load_task(store, A, "style", group_column="player", seed=3)
    assert set(data.split) == {"train", "validation", "test"}
    ids = {s: set(data.ids[data.split == s]) for s in ("train", "validation", "test")}
    assert not (ids["train"] & ids["validation"] or ids["train"] & ids["test"] or ids["validation"] & ids["test"])
    for group in set(data.groups):
        assert len(set(data.split[data.groups == group])) == 1, group
    for k in range(len(STYLES)):                              # every class on every side
        assert {s for s in data.split[data.y == k]} == {"train", "validation", "test"}
    again = load_task(store, A, "style", group_column="player", seed=3)
    assert list(again.split) == list(data.split)             # seeded
    assert list(load_task(store, A, "style", seed=4).split) != list(load_task(store, A, "style", seed=5).split)


def test_split_column_honoured_and_small_classes_and_empty_labels_dropped(split_store, capsys):
    data = load_task(split_store, A, "style")
    assert data.provenance["split_source"] == "column 'split'"
    by_id = dict(zip(data.ids, data.split))
    assert "r0000" not in by_id and by_id["r0004"] == "train" and by_id["r0016"] == "test"
    assert by_id["r0012"] == "validation"   # "val" read
    assert data.class_names == sorted(STYLES)                # 'polka' (2 rows) dropped
    reasons = {d["reason"]: d["rows"] for d in data.provenance["dropped"]}
    assert reasons == {"empty 'style'": 3, "classes with fewer than 3 rows": 2}
    out = capsys.readouterr().out
    assert "empty 'style'" in out and "fewer than 3 rows" in out
    assert data.provenance["rows_used"] == 160 - 3


def test_group_crossing_a_given_split_is_refused_or_replaced(split_store):
    """--cv none keeps the given split or refuses it; auto (the default) draws a grouped split instead."""
    with pytest.raises(TaskDataError, match="--group_column style.*several splits.*--cv logo"):
        load_task(split_store, A, "tempo", group_column="style", task="regression", cv="none")
    drawn = load_task(split_store, A, "tempo", group_column="style", task="regression")
    assert drawn.provenance["split_source"].startswith("column 'split' ignored: 8 style group(s)")
    for group in set(drawn.groups):
        assert len(set(drawn.split[drawn.groups == group])) == 1, group
    ok = load_task(split_store, A, "style", group_column="player")    # players lie within one split
    assert len(ok.ids) == 157 and ok.provenance["split_source"] == "column 'split'"


def test_bad_label_and_group_column_name_it(store):
    with pytest.raises(TaskDataError, match="no label column 'colour'"):
        load_task(store, A, "colour")
    with pytest.raises(TaskDataError, match="--group_column drummer"):
        load_task(store, A, "style", group_column="drummer")


# ------------------------------------------------------------------------------------------ training
PROBE_CASES = [("linear", "average", 40), ("mlp", "average", 40), ("attention", "sequence", 40),
               ("bilstm", "sequence", 40)]


@pytest.mark.parametrize("probe,embedding_type,epochs", PROBE_CASES)
def test_probe_learns_separable_label_and_shuffled_control_stays_near_chance(store, probe, embedding_type, epochs):
    data = load_task(store, A, "style", embedding_type=embedding_type, seed=0)
    config = TrainConfig(model=probe, hidden_dim=32, num_epochs=epochs, patience=epochs, learning_rate=3e-3, seed=0)
    exp = ClassificationExperiment(data, config, device="cpu")
    history = exp.fit()
    result = exp.evaluate("test")
    assert result["accuracy"] > 0.95, (probe, result["accuracy"])
    assert result["baseline"]["accuracy"] < 0.3
    assert history["best_epoch"] == max(history["history"], key=lambda m: (m["val_accuracy"], -m["val_loss"]))["epoch"]
    control = shuffled_control(data, config, device="cpu")
    assert control["accuracy"] < 0.4, (probe, control)       # chance is 1/8


def test_fit_reports_every_epoch_and_stops_early(store):
    data = load_task(store, A, "style")
    seen = []
    exp = ClassificationExperiment(data, TrainConfig(model="linear", num_epochs=200, patience=3, learning_rate=0.05),
                                   device="cpu")
    exp.fit(on_epoch=lambda epoch, m: seen.append((epoch, sorted(m))))
    assert len(seen) < 200 and [e for e, _ in seen] == list(range(1, len(seen) + 1))
    assert {"train_loss", "val_loss", "val_accuracy", "val_macro_f1"} <= set(seen[0][1])
    assert exp.best_epoch == len(seen) - 3


def test_training_is_deterministic_given_a_seed(store):
    data = load_task(store, A, "style", embedding_type="sequence")
    cfg = TrainConfig(model="attention", hidden_dim=16, num_epochs=3, seed=7)
    runs = [ClassificationExperiment(data, cfg, device="cpu") for _ in range(2)]
    for r in runs:
        r.fit()
    assert runs[0].history == runs[1].history


def test_regression_path(store):
    data = load_task(store, A, "tempo", task="regression")
    assert data.task == "regression" and data.num_outputs == 1 and data.class_names is None
    exp = ClassificationExperiment(data, TrainConfig(model="linear", num_epochs=60, patience=60, learning_rate=0.01),
                                   device="cpu")
    seen = []
    exp.fit(on_epoch=lambda e, m: seen.append(m))
    assert {"val_mae", "val_r2"} <= set(seen[-1])
    result = exp.evaluate("test")
    assert result["r2"] > 0.9, result
    assert result["baseline"]["r2"] < 0.1 and result["mae"] < result["baseline"]["mae"]


def test_run_seeds_interval_baseline_and_control(store):
    from scipy.stats import binomtest

    data = load_task(store, A, "style")
    out = run_seeds(data, TrainConfig(model="linear", num_epochs=15, learning_rate=0.01), seeds=[0, 1, 2], device="cpu")
    assert out["metric"] == "accuracy" and len(out["test_scores"]) == 3 == len(out["shuffled_scores"])
    assert out["baseline"] < 0.3 and np.mean(out["shuffled_scores"]) < 0.4 and out["mean"] > 0.9
    # accuracy: Wilson over the test items (scipy's as the reference), never a t-interval past 1
    n = len(data.index("test"))
    assert out["n_test"] == n and "Wilson" in out["interval"]
    reference = binomtest(round(out["mean"] * n), n).proportion_ci(method="wilson")
    assert (out["ci_lo"], out["ci_hi"]) == pytest.approx((reference.low, reference.high), abs=1e-9)
    assert 0 <= out["ci_lo"] <= out["mean"] <= out["ci_hi"] <= 1
    assert 0 <= out["seed_interval"]["ci_lo"] <= out["seed_interval"]["ci_hi"] <= 1
    import json
    json.dumps(out, default=str)                              # JSON-able


# ------------------------------------------------------------------------------------------ metrics
def test_classification_metrics_known_answer_and_invariance():
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([0, 1, 1, 1, 2, 0])
    m = classification_metrics(y, p, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_class"]["b"] == {"precision": pytest.approx(2 / 3), "recall": 1.0, "f1": pytest.approx(0.8),
                                   "support": 2}
    perm = np.array([2, 0, 1])                                # renaming classes changes nothing but the order
    m2 = classification_metrics(perm[y], perm[p], ["b", "c", "a"])
    assert m2["accuracy"] == m["accuracy"] and m2["macro_f1"] == pytest.approx(m["macro_f1"])


def test_regression_metrics_and_t_interval_known_answers():
    r = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))
    assert r["mae"] == pytest.approx(1 / 3) and r["rmse"] == pytest.approx(math.sqrt(1 / 3)) and r["r2"] == pytest.approx(0.5)
    ci = t_interval([1.0, 2.0, 3.0])
    assert ci["mean"] == 2.0 and ci["ci_hi"] - 2.0 == pytest.approx(4.302653 * 1 / math.sqrt(3), rel=1e-5)
    assert math.isnan(t_interval([0.5])["ci_lo"])
