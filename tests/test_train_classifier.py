"""`python -m ray_jobs.train_classifier`: the seed's flags and defaults, its files, --model_path, exit codes."""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

from ray_jobs.train_classifier import job as train_classifier
from tests.classifier_factory import A, separable_store


class TinyCustom(nn.Module):
    """The seed's custom-model interface, used through --model tests.test_train_classifier:TinyCustom."""

    def __init__(self, input_dim: int, num_classes: int, width: int = 4, **kwargs):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(input_dim, width), nn.ReLU(), nn.Linear(width, num_classes))

    def forward(self, x):
        return self.net(x)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return separable_store(tmp_path_factory.mktemp("cli_store"))


def test_defaults_match_the_seed():
    args = train_classifier.build_parser().parse_args(["--h5_path", "x.h5", "--medium", A, "--label", "style"])
    assert (args.batch_size, args.learning_rate, args.num_epochs, args.save_dir, args.embedding_type) == \
        (32, 0.001, 50, None, "average")
    parser = train_classifier.build_parser()
    medium = next(a for a in parser._actions if a.dest == "medium")
    # the seed's two media, and the transcribed medium this project adds (a symbolic embedder on the audio's transcription)
    assert medium.required and tuple(medium.choices) == ("audio_embeddings", "symbolic_embeddings", "transcribed_embeddings")
    assert all(next(a for a in parser._actions if a.dest == d).required for d in ("h5_path", "label"))


def test_train_save_and_model_path_reproduces_test_metrics(store, tmp_path, capsys):
    out = tmp_path / "run"
    code = train_classifier.main(["--h5_path", str(store), "--medium", A, "--label", "style", "--num_epochs", "15",
                                  "--learning_rate", "0.05", "--save_dir", str(out)])
    assert code == 0
    assert {p.name for p in out.iterdir()} >= {"best_model.pth", "training_history.json", "confusion_matrix.json",
                                               "confusion_matrix.png"}
    history = json.loads((out / "training_history.json").read_text())
    assert history["config"]["batch_size"] == 32 and len(history["history"]) == history["epochs_run"]
    assert history["test"]["accuracy"] > 0.9 and "baseline" in history["test"]
    assert history["shuffled_label_control"]["accuracy"] < 0.4
    assert history["provenance"]["embedder"] == "toy_audio" and "torch" in history["package_versions"]
    state = torch.load(out / "best_model.pth", weights_only=True)
    assert state["class_names"] and state["label"] == "style" and state["mean"].shape == (8,)

    evaluated = tmp_path / "eval"
    assert train_classifier.main(["--h5_path", str(store), "--medium", A, "--label", "style",
                                  "--model_path", str(out / "best_model.pth"), "--save_dir", str(evaluated)]) == 0
    again = json.loads((evaluated / "evaluation.json").read_text())
    for key in ("accuracy", "macro_f1", "balanced_accuracy", "confusion_matrix", "per_class"):
        assert again["test"][key] == history["test"][key], key
    assert not (evaluated / "best_model.pth").exists()

    # the model file refuses a task it was not trained for, naming the flag
    capsys.readouterr()
    assert train_classifier.main(["--h5_path", str(store), "--medium", A, "--label", "tempo", "--task", "regression",
                                  "--model_path", str(out / "best_model.pth")]) == 2
    assert "--label" in capsys.readouterr().err


def test_custom_model_sequence_and_regression(store, tmp_path):
    custom = tmp_path / "custom"
    assert train_classifier.main(["--h5_path", str(store), "--medium", A, "--label", "style", "--num_epochs", "3",
                                  "--model", "tests.test_train_classifier:TinyCustom", "--model_kwargs", '{"width": 6}',
                                  "--save_dir", str(custom)]) == 0
    state = torch.load(custom / "best_model.pth", weights_only=True)
    assert state["spec"] == "tests.test_train_classifier:TinyCustom" and state["model_kwargs"]["width"] == 6
    seq = tmp_path / "seq"
    assert train_classifier.main(["--h5_path", str(store), "--medium", A, "--label", "style", "--num_epochs", "2",
                                  "--embedding_type", "sequence", "--model", "bilstm", "--save_dir", str(seq)]) == 0
    assert json.loads((seq / "training_history.json").read_text())["model"] == "bilstm"
    reg = tmp_path / "reg"
    assert train_classifier.main(["--h5_path", str(store), "--medium", A, "--label", "tempo", "--task", "regression",
                                  "--num_epochs", "3", "--seeds", "2", "--save_dir", str(reg)]) == 0
    seeds = json.loads((reg / "seeds.json").read_text())
    assert seeds["metric"] == "r2" and len(seeds["test_scores"]) == 2 and len(seeds["shuffled_scores"]) == 2
    assert not (reg / "confusion_matrix.json").exists()


def test_five_drummers_are_cross_validated_leave_one_group_out(tmp_path, capsys):
    """The GMD case: --group_column drummer --split_column none with 5 drummers cannot give every split a
    drummer; the job cross-validates instead, scores every recording once and says so."""
    h5 = separable_store(tmp_path / "store", drummers=5)
    base = ["--h5_path", str(h5), "--medium", A, "--label", "style", "--group_column", "drummer",
            "--split_column", "none", "--num_epochs", "4", "--learning_rate", "0.05"]
    assert train_classifier.main([*base, "--cv", "none"]) == 2
    assert "--cv logo" in capsys.readouterr().err
    out = tmp_path / "run"
    assert train_classifier.main([*base, "--seeds", "2", "--save_dir", str(out)]) == 0
    assert "leave-one-group-out cross-validation over 5 groups" in capsys.readouterr().out
    history = json.loads((out / "training_history.json").read_text())
    assert history["test"]["n"] == 160 and history["cv"]["kind"] == "logo" and history["cv"]["n_folds"] == 5
    items = history["test_items"]
    assert len(items["test_ids"]) == 160 == len(set(items["test_ids"])) and sorted(set(items["test_folds"])) == [0, 1, 2, 3, 4]
    assert len(items["test_predictions"]) == 2 and history["test"]["accuracy"] > 0.9
    seeds = json.loads((out / "seeds.json").read_text())
    assert 0 <= seeds["ci_lo"] <= seeds["mean"] <= seeds["ci_hi"] <= 1 and seeds["evaluation"]["kind"] == "logo"
    # the saved model is fold 1's; --model_path evaluates it on that fold's held-out drummer
    assert train_classifier.main([*base, "--model_path", str(out / "best_model.pth"),
                                  "--save_dir", str(tmp_path / "eval")]) == 0
    evaluation = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert evaluation["test"]["n"] == 32


def test_runs_on_different_media_score_the_same_test_rows(tmp_path):
    """20% of the audio rows are invalid and the split is drawn: by default (--rows shared) an audio run and
    a symbolic run test the same recordings; --rows medium gives each its own rows and test set."""
    from tests.sweep_factory import tiny_store

    h5 = tiny_store(tmp_path / "store", invalid_audio=0.2)
    digests = {}
    for rows in ("shared", "medium"):
        for medium in (A, "symbolic_embeddings"):
            out = tmp_path / f"{rows}_{medium}"
            assert train_classifier.main(["--h5_path", str(h5), "--medium", medium, "--label", "style",
                                          "--split_column", "none", "--num_epochs", "2", "--rows", rows,
                                          "--save_dir", str(out)]) == 0
            history = json.loads((out / "training_history.json").read_text())
            assert history["test_items"]["test_ids_sha256"] == history["provenance"]["test_ids_sha256"]
            digests[rows, medium] = history["test_items"]["test_ids_sha256"]
    assert digests["shared", A] == digests["shared", "symbolic_embeddings"]
    assert digests["medium", A] != digests["medium", "symbolic_embeddings"]


def test_default_save_dir_pattern(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert train_classifier.main(["--h5_path", str(store), "--medium", A, "--label", "style", "--num_epochs", "1"]) == 0
    (made,) = (tmp_path / "results").iterdir()
    assert re.fullmatch(r"audio_embeddings_style_\d{8}_\d{6}", made.name)
    assert (made / "best_model.pth").exists()


@pytest.mark.parametrize("argv,named", [
    (["--medium", A, "--label", "colour"], "colour"),
    (["--medium", "video_embeddings", "--label", "style"], "--medium"),
    (["--medium", A, "--label", "style", "--group_column", "drummer"], "--group_column drummer"),
    (["--medium", A, "--label", "style", "--model", "transformer"], "--model"),
    (["--medium", A, "--label", "style", "--model_path", "missing.pth"], "--model_path"),
    (["--medium", A, "--label", "style", "--embedder", "clap"], "clap"),
])
def test_bad_input_exits_2_naming_it(store, argv, named, capsys):
    try:
        code = train_classifier.main(["--h5_path", str(store), *argv])
    except SystemExit as exc:          # argparse's own refusals (choices) exit 2 as well
        code = exc.code
    assert code == 2
    assert named in capsys.readouterr().err


def test_missing_h5_exits_2(tmp_path, capsys):
    assert train_classifier.main(["--h5_path", str(tmp_path / "none.h5"), "--medium", A, "--label", "style"]) == 2
    assert "--h5_path" in capsys.readouterr().err
