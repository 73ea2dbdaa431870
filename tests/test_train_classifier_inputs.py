"""train_classifier on the inputs users bring: a legacy-layout store, a custom sequence model, a real process.

(The flags, files and --model_path round trip are in test_train_classifier.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from embedders.store.h5 import export_legacy
from ray_jobs.train_classifier.job import main
from tests.classifier_factory import A, separable_store
from training.classifier_data import load_task

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: more intra-op threads only add contention on a shared 2-core runner."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The same recordings twice: the columnar store and its legacy-layout export (rec_N groups)."""
    root = tmp_path_factory.mktemp("inputs_store")
    columnar = separable_store(root, with_split=True)
    legacy = root / "legacy.h5"
    export_legacy(columnar, legacy)
    return columnar, legacy


@pytest.mark.parametrize("embedding_type", ["average", "sequence"])
def test_legacy_store_gives_the_same_task(stores, embedding_type):
    columnar, legacy = stores
    new = load_task(columnar, A, "style", embedding_type=embedding_type, group_column="player")
    old = load_task(legacy, A, "style", embedding_type=embedding_type, group_column="player")
    assert old.provenance["embedder"] == "legacy" and old.provenance["split_source"] == "column 'split'"
    order = {i: k for k, i in enumerate(new.ids)}
    assert sorted(old.ids) == sorted(new.ids)                   # paired by the id field, not by rec_N
    for k, i in enumerate(old.ids):
        j = order[i]
        assert old.split[k] == new.split[j] and old.y[k] == new.y[j]
        assert (old.X[k] == new.X[j]).all()


def test_legacy_store_trains_from_the_command_line(stores, tmp_path):
    _, legacy = stores
    out = tmp_path / "legacy_run"
    assert main(["--h5_path", str(legacy), "--medium", A, "--label", "tempo", "--task", "regression",
                 "--model", "linear", "--num_epochs", "40", "--learning_rate", "0.01", "--save_dir", str(out)]) == 0
    history = json.loads((out / "training_history.json").read_text())
    assert history["provenance"]["embedder"] == "legacy" and history["test"]["r2"] > 0.9


def test_custom_sequence_model_gets_lengths_and_reloads(stores, tmp_path):
    columnar, _ = stores
    out = tmp_path / "custom_seq"
    base = ["--h5_path", str(columnar), "--medium", A, "--label", "style", "--embedding_type", "sequence"]
    assert main([*base, "--model", "tests.classifier_factory:MeanPoolNet", "--model_kwargs", "width=12",
                 "--num_epochs", "8", "--learning_rate", "0.03", "--save_dir", str(out)]) == 0
    state = torch.load(out / "best_model.pth", weights_only=True)
    assert state["spec"] == "tests.classifier_factory:MeanPoolNet" and state["model_kwargs"]["width"] == 12
    saved = json.loads((out / "training_history.json").read_text())["test"]
    assert saved["accuracy"] > 0.9
    assert main([*base, "--model_path", str(out / "best_model.pth"), "--save_dir", str(tmp_path / "eval")]) == 0
    again = json.loads((tmp_path / "eval" / "evaluation.json").read_text())["test"]
    assert again["confusion_matrix"] == saved["confusion_matrix"] and again["accuracy"] == saved["accuracy"]


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=300)


def test_bad_label_exits_2_from_a_real_process(stores, tmp_path):
    columnar, _ = stores
    proc = _run(["-m", "ray_jobs.train_classifier", "--h5_path", str(columnar), "--medium", A, "--label", "colour"],
                tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "colour" in proc.stderr and "style" in proc.stderr          # names the label, lists the columns
    assert not (tmp_path / "results").exists()


def test_training_never_starts_or_imports_ray(stores, tmp_path):
    columnar, _ = stores
    code = ("import sys; from ray_jobs.train_classifier.job import main; "
            f"rc = main(['--h5_path', {str(columnar)!r}, '--medium', '{A}', '--label', 'style', '--num_epochs', '1', "
            "'--save_dir', 'r']); print(rc, 'ray' in sys.modules)")
    proc = _run(["-c", code], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "0 False"


def test_unknown_device_exits_2_naming_it(stores, capsys):
    columnar, _ = stores
    assert main(["--h5_path", str(columnar), "--medium", A, "--label", "style", "--device", "gpu"]) == 2
    assert "--device gpu" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["--h5_path", str(columnar), "--medium", A, "--label", "style", "--device", "cuda"]) == 2
        assert "--device cuda" in capsys.readouterr().err
