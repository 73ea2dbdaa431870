"""Fair comparisons between media: grouped cross-validation with few groups, one set of rows and one split
for every medium, per-item test predictions, and a standardiser that never sees the test rows."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
import torch

from tests.classifier_factory import A, S, separable_store
from tests.sweep_factory import tiny_store
from training import evaluation_plan as ep
from training.classifier_data import TaskDataError, load_task, shared_ids
from training.experiment import ClassificationExperiment, TrainConfig
from training.seed_runs import run_seeds


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def drummers(tmp_path_factory):
    """160 recordings, 8 styles, 5 drummers who each play every style (GMD's shape, with fewer drummers)."""
    return separable_store(tmp_path_factory.mktemp("drummers"), drummers=5)


@pytest.fixture(scope="module")
def gappy(tmp_path_factory):
    """72 recordings, 20% of them without audio; no split column is used (the split is drawn)."""
    return tiny_store(tmp_path_factory.mktemp("gappy"), invalid_audio=0.2)


# ------------------------------------------------------------------------------------------ the plan itself
def _check_folds(groups, folds):
    groups = np.asarray(groups, dtype=object)
    tested = np.zeros(groups.size, dtype=int)
    for split in folds:
        assert set(split) <= {"train", "validation", "test"} and {"train", "validation", "test"} <= set(split)
        tested += split == "test"
        for g in set(groups):                                   # a group never straddles two sides of a fold
            assert len(set(split[groups == g])) == 1, g
    assert (tested == 1).all()                                  # every row is test exactly once


def test_leave_one_group_out_and_grouped_kfold():
    rng = np.random.default_rng(0)
    few = np.array([f"d{k}" for k in rng.integers(0, 4, 90)], dtype=object)
    logo = ep.group_folds(few, "logo", seed=0)
    assert len(logo) == 4 and [sorted(set(few[f == "test"])) for f in logo] == [["d0"], ["d1"], ["d2"], ["d3"]]
    _check_folds(few, logo)
    # composers: many, unbalanced (one holds a third of the rows)
    many = np.array(["c00"] * 60 + [f"c{k:02d}" for k in rng.integers(1, 30, 120)], dtype=object)
    kfold = ep.group_folds(many, "group_kfold", seed=3)
    assert len(kfold) == ep.GROUP_KFOLD
    _check_folds(many, kfold)
    sizes = sorted(int((f == "test").sum()) for f in kfold)
    assert sizes[-1] == 60 and sizes[0] >= 20                 # the big group alone; the rest balanced greedily
    assert [list(f) for f in ep.group_folds(many, "group_kfold", seed=3)] == [list(f) for f in kfold]   # seeded
    with pytest.raises(ep.EvaluationError, match="at least 3"):
        ep.group_folds(np.array(["a", "b", "a"], dtype=object), "logo", seed=0)


def test_auto_rule_and_digests():
    five = np.array([f"d{i % 5}" for i in range(50)], dtype=object)
    assert ep.choose_cv("auto", [], five)[0] == "none"
    mode, why = ep.choose_cv("auto", ["test"], five)
    assert mode == "logo" and "every row is test once" in why
    assert ep.choose_cv("auto", ["test"], np.array([f"c{i % 11}" for i in range(50)], dtype=object))[0] == "group_kfold"
    with pytest.raises(ep.EvaluationError, match="give --group_column"):
        ep.choose_cv("auto", ["test"], None)
    with pytest.raises(ep.EvaluationError, match="--cv logo scores each of the 5 groups"):
        ep.choose_cv("none", ["validation", "test"], five)
    ids = np.array(["b", "a", "c"], dtype=object)
    split = np.array(["test", "test", "train"], dtype=object)
    assert ep.split_digest(ids, split) == hashlib.sha256(b"a\nb").hexdigest()
    assert ep.folds_digest(ids, [split]) != ep.folds_digest(ids, [np.array(["test", "train", "test"], dtype=object)])


def test_drawn_split_does_not_depend_on_the_row_order():
    rng = np.random.default_rng(1)
    strata = np.array(list("abc") * 20, dtype=object)
    ids = np.array([f"r{i:02d}" for i in range(60)], dtype=object)
    order = rng.permutation(60)
    first = dict(zip(ids, ep.assign_groups(strata, ids, seed=4)))
    again = dict(zip(ids[order], ep.assign_groups(strata[order], ids[order], seed=4)))
    assert first == again


# ------------------------------------------------------------------------------------------ tasks
def test_few_groups_fall_back_to_leave_one_group_out(drummers):
    with pytest.raises(TaskDataError, match="no validation, test rows after the split.*--cv logo"):
        load_task(drummers, A, "style", group_column="drummer", split_column=None, cv="none")
    data = load_task(drummers, A, "style", group_column="drummer", split_column=None)
    assert data.n_folds == 5 and data.provenance["evaluation"]["kind"] == "logo"
    assert "leave-one-group-out cross-validation over 5 groups" in data.provenance["split_source"]
    _check_folds(data.groups, data.folds)
    for k in range(5):
        fold = data.fold(k)
        assert set(fold.groups[fold.split == "test"]) == {f"d{k}"}
        assert fold.split_sha256() == ep.split_digest(data.ids, data.folds[k])
    assert data.provenance["test_ids_sha256"] == hashlib.sha256("\n".join(sorted(data.ids)).encode()).hexdigest()
    assert load_task(drummers, A, "style", group_column="player", cv="group_kfold").n_folds == 5
    with pytest.raises(TaskDataError, match="--cv logo holds out whole groups"):
        load_task(drummers, A, "style", cv="logo")


def test_media_get_the_same_rows_and_split(gappy):
    """Audio misses 20% of the rows: with the shared ids both media have the same rows, split and test hash;
    without them (each medium's own rows, split drawn per medium) they do not."""
    shared = shared_ids(gappy, [(A, None), (S, None)])
    assert len(shared["ids"]) == 58 and shared["sources"] == {f"{A}/toy_audio": 58, f"{S}/toy_symbolic": 72}
    own = [load_task(gappy, m, "style", split_column=None) for m in (A, S)]
    assert own[0].provenance["test_ids_sha256"] != own[1].provenance["test_ids_sha256"]
    audio, symbolic = (load_task(gappy, m, "style", split_column=None, ids=shared["ids"]) for m in (A, S))
    assert list(audio.ids) == list(symbolic.ids) and list(audio.split) == list(symbolic.split)
    assert audio.provenance["test_ids_sha256"] == symbolic.provenance["test_ids_sha256"]
    reasons = {d["reason"]: d["rows"] for d in symbolic.provenance["dropped"]}
    assert reasons == {"not valid in every compared medium (the media are scored on the same rows)": 14}


# ------------------------------------------------------------------------------------------ runs
def test_cross_validated_runs_score_every_item_once_with_aligned_predictions(drummers):
    """Each item's saved prediction is the one its own fold's model makes (checked by retraining that fold);
    the ids are renamed so that sorted-id order is not the row order."""
    data = load_task(drummers, A, "style", group_column="drummer", split_column=None)
    n = len(data.ids)
    data = dataclasses.replace(data, ids=np.array([f"x{(7 * i) % n:04d}" for i in range(n)], dtype=object))
    config = TrainConfig(model="linear", num_epochs=4, learning_rate=0.01, batch_size=16)
    out = run_seeds(data, config, seeds=[0, 1], device="cpu")
    assert out["test_ids"] == sorted(out["test_ids"]) and len(out["test_ids"]) == n == out["n_test"]
    assert np.asarray(out["test_predictions"]).shape == (2, n) and out["evaluation"]["kind"] == "logo"
    row = {i: k for k, i in enumerate(data.ids)}
    assert out["test_folds"] == [int(np.flatnonzero([f[row[i]] == "test" for f in data.folds])[0])
                                 for i in out["test_ids"]]
    assert out["test_targets"] == [data.class_names[data.y[row[i]]] for i in out["test_ids"]]
    for seed_index in range(2):
        correct = np.asarray(out["test_predictions"][seed_index]) == np.asarray(out["test_targets"])
        assert correct.mean() == pytest.approx(out["test_scores"][seed_index])
    fold = data.fold(2)
    exp = ClassificationExperiment(fold, dataclasses.replace(config, seed=1), device="cpu")
    exp.fit()
    test = fold.index("test")
    mine = dict(zip(data.ids[test], (data.class_names[int(p)] for p in exp.predict(test)[0])))
    saved = dict(zip(out["test_ids"], out["test_predictions"][1]))
    assert {i: saved[i] for i in mine} == mine


def test_standardiser_is_fitted_on_training_rows_only(store_with_shifted_test):
    """Moving every test row far away changes nothing the model learns (same epochs, same validation
    scores) and the saved statistics are the training rows' own (numpy over those rows, all frames)."""
    h5, data, shifted = store_with_shifted_test
    for d in (data, load_task(h5, A, "style", embedding_type="sequence")):
        exp = ClassificationExperiment(d, TrainConfig(model="auto", num_epochs=1), device="cpu")
        train = d.rows(d.index("train"))
        frames = train if isinstance(train, np.ndarray) else np.concatenate(train)
        everything = d.X if isinstance(d.X, np.ndarray) else np.concatenate(d.X)
        np.testing.assert_allclose(exp.mean, frames.mean(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(exp.std, frames.std(0), rtol=1e-5, atol=1e-5)
        assert not np.allclose(exp.mean, everything.mean(0), atol=1e-3)     # the fixture can tell them apart
    config = TrainConfig(model="mlp", hidden_dim=16, num_epochs=6, patience=6, learning_rate=3e-3, seed=2)
    runs = []
    for d in (data, shifted):
        exp = ClassificationExperiment(d, config, device="cpu")
        exp.fit()
        runs.append((exp.history, exp.predict(d.index("validation"))[0]))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


@pytest.fixture(scope="module")
def store_with_shifted_test(tmp_path_factory):
    """A task and the same task with every test row's features moved by +50 in each dimension."""
    h5 = separable_store(tmp_path_factory.mktemp("shift"))
    data = load_task(h5, A, "style")
    X = data.X.copy()
    X[data.index("test")] += 50.0
    return h5, data, dataclasses.replace(data, X=X)
