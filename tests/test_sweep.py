"""ray_jobs.sweep: search space and label rules, CLI errors, and a 4-trial sweep end to end."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from analysis.labels import resolve_task
from ray_jobs.sweep import job as sweep
from ray_jobs.sweep import space as sp
from tests.sweep_factory import SWEEP_ARGS, A, S, tiny_store, tiny_sweep


# --------------------------------------------------------------------------------------------- space and labels
def test_search_space_follows_the_embedding_type():
    average, sequence = sp.search_space("average"), sp.search_space("sequence")
    assert average["model"].values == ("linear", "mlp") and sequence["model"].values == ("attention", "bilstm")
    assert set(average) == {"model", "hidden_dim", "dropout", "learning_rate", "weight_decay", "batch_size"}
    assert average["learning_rate"].kind == "loguniform" and average["weight_decay"].kind == "loguniform"
    assert average["weight_decay"].values[0] <= 1e-6          # "practically none" is searchable
    assert sp.describe_space(average)["learning_rate"] == "log-uniform[0.0001, 0.03]"
    with pytest.raises(ValueError, match="embedding_type"):
        sp.search_space("pooled")
    with pytest.raises(ValueError, match="lo > 0"):
        sp.Dimension("loguniform", (0.0, 1.0))


def test_tune_domains_sample_inside_the_space_and_reproducibly():
    from ray.tune.search.variant_generator import generate_variants

    from ray_jobs.sweep.trainable import tune_domains

    def draw(seed):
        return [cfg for _, cfg in generate_variants(tune_domains("average"), random_state=seed)]

    assert draw(3) == draw(3) and draw(3) != draw(4)
    config = draw(3)[0]
    assert config["model"] in ("linear", "mlp") and 1e-4 <= config["learning_rate"] <= 3e-2
    kwargs = sp.train_config_kwargs(config, num_epochs=7, patience=2, seed=5)
    assert kwargs["num_epochs"] == 7 and kwargs["seed"] == 5 and isinstance(kwargs["batch_size"], int)
    with pytest.raises(ValueError, match="missing"):
        sp.train_config_kwargs({"model": "mlp"}, num_epochs=1, patience=1, seed=0)


def test_parse_labels_and_task_rule():
    assert sp.parse_labels("style, bpm:regression ,n_parts:classification") == [
        sp.LabelSpec("style"), sp.LabelSpec("bpm", "regression"), sp.LabelSpec("n_parts", "classification")]
    for bad, message in [("", "at least one"), ("a,a", "twice"), ("bpm:ranking", "must be"), (":x", "empty")]:
        with pytest.raises(ValueError, match=message):
            sp.parse_labels(bad)
    assert resolve_task("auto", pd.Series(range(20), dtype=float)) == ("regression", "numeric with 20 distinct values (>= 20)")
    assert resolve_task("auto", pd.Series(list(range(19)) * 3))[0] == "classification"     # 19 distinct: a code
    assert resolve_task("auto", pd.Series(["4-4", "3-4"]))[0] == "classification"
    assert resolve_task("auto", pd.Series([True, False] * 20))[0] == "classification"
    assert resolve_task("regression", pd.Series([1, 2, 3]))[0] == "regression"
    with pytest.raises(ValueError, match="not numbers"):
        resolve_task("regression", pd.Series(["C", "G"]))
    assert sp.task_key(A, "my emb/v2", "time signature") == "audio_embeddings__my-emb-v2__time-signature"


def test_task_resolver_names_the_flag_and_the_column():
    """analysis.labels.resolve_task is the one rule of compare_embeddings, train_classifier and the sweep."""
    with pytest.raises(ValueError, match=r"^--labels key:regression: 2 non-empty value\(s\) of column 'key' are not"):
        resolve_task("regression", pd.Series(["C", "G"], name="key"), source="--labels key:regression")
    with pytest.raises(ValueError, match="^--task ranking: expected auto, classification or regression"):
        resolve_task("ranking", pd.Series([1.0]), source="--task ranking")
    assert resolve_task("classification", pd.Series(range(40))) == ("classification", "forced on the command line")
    assert resolve_task("regression", pd.Series([1.0, None, 3.0]))[0] == "regression"  # empty cells are no error
    assert resolve_task("auto", pd.Series(["a"] * 30)) == ("classification", "not numeric")


# --------------------------------------------------------------------------------------------- CLI errors
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tiny_store(tmp_path_factory.mktemp("cli_store"))


@pytest.mark.parametrize("extra, message", [
    (["--labels", "drummer"], "--labels: no column 'drummer'"),
    (["--labels", "style", "--media", "video_embeddings"], "--media: unknown medium ['video_embeddings']"),
    (["--labels", "style", "--embedders", "clap"], "--embedders: audio_embeddings"),
    (["--labels", "style", "--group_column", "piece"], "--group_column: no column 'piece'"),
    (["--labels", "style:regression"], "are not numbers"),
    (["--labels", "style:ranking"], "must be classification or regression"),
])
def test_cli_errors_exit_2_with_a_clear_message(store, tmp_path, capsys, extra, message):
    assert sweep.main(["--h5_path", str(store), "--output_dir", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert not (tmp_path / "o").exists()          # nothing written before the flags are checked


def test_cli_missing_file_and_flags(tmp_path, capsys):
    assert sweep.main(["--labels", "style"]) == 2
    assert "--h5_path" in capsys.readouterr().err
    assert sweep.main(["--h5_path", str(tmp_path / "none.h5"), "--labels", "style"]) == 2
    assert "no file at" in capsys.readouterr().err
    assert sweep.main(["--h5_path", str(tmp_path / "none.h5"), "--labels", "style", "--num_samples", "0"]) == 2


def test_rerun_with_other_search_settings_is_refused(store, tmp_path, capsys):
    from ray_jobs.sweep.plan import check_or_record_settings

    args = sweep.build_parser().parse_args(["--h5_path", str(store), "--labels", "style",
                                             "--output_dir", str(tmp_path / "o")])
    settings = sweep.settings_from_args(args)
    settings.output_dir.mkdir(parents=True)
    check_or_record_settings(settings)
    assert sweep.main(["--h5_path", str(store), "--labels", "style", "--output_dir", str(tmp_path / "o"),
                       "--num_samples", "3"]) == 2
    assert "num_samples: was 20, now 3" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- MLflow bookkeeping
def test_tracking_reruns_touch_only_their_own_sweep(tmp_path):
    from ray_jobs.sweep.tracking import SweepTracking, default_tracking_uri

    uri = default_tracking_uri(tmp_path)
    mine, other = SweepTracking(uri, "shared", "sweep-a"), SweepTracking(uri, "shared", "sweep-b")
    assert mine.experiment_id == other.experiment_id
    experiment = mine.client.get_experiment(mine.experiment_id)
    assert experiment.artifact_location.startswith((tmp_path / "mlartifacts").as_uri())
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"   # the UI opens on runs
    parents = {}
    for tracking in (mine, other):
        parent = tracking.start_task("k", "audio/x/style", {"label": "style"}, {})
        tracking.child_run(parent, "k", "trial-1", "trial", {"lr": 0.1})
        tracking.child_run(parent, "k", "final", "final", {})
        parents[tracking.sweep_id] = parent
    # an interrupted attempt at task k of sweep a: its parent and children go, sweep b keeps its runs
    assert mine.discard_children(parents["sweep-a"], "final") == 1
    assert mine.discard_incomplete_task("k") == 2
    alive = mine.find_runs("")          # active runs only: deleted ones are not listed
    assert {r.data.tags["avs.sweep_id"] for r in alive} == {"sweep-b"} and len(alive) == 3
    # the summary run is kept while the table is the same and replaced when it changes
    (tmp_path / "summary.csv").write_text("label\nstyle\n")
    first = mine.summary_run("d1", [tmp_path / "summary.csv"], {"style.audio_mean": 0.5}, {"tasks": 2})
    assert mine.summary_run("d1", [tmp_path / "summary.csv"], {}, {}) == first
    second = mine.summary_run("d2", [tmp_path / "summary.csv"], {"style.audio_mean": 0.6}, {"tasks": 2})
    assert second != first and [r.info.run_id for r in mine.find_runs("tags.`avs.role` = 'summary'")] == [second]


# --------------------------------------------------------------------------------------------- the sweep
@pytest.fixture(scope="module")
def run(ray_session, tmp_path_factory):
    return tiny_sweep(tmp_path_factory)


def _client(out):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")


@pytest.mark.slow
def test_sweep_trials_are_mlflow_runs_with_epochs_and_models(run):
    assert run.exit_code == 0
    recorded = json.loads((run.output_dir / "sweep.json").read_text())
    client = _client(run.output_dir)
    experiment = client.get_experiment_by_name(recorded["experiment_name"])
    assert experiment is not None and recorded["experiment_name"] == f"tiny/{run.output_dir.name}"
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    by_role = {}
    for r in runs:
        by_role.setdefault(r.data.tags.get("avs.role"), []).append(r)
    assert {k: len(v) for k, v in by_role.items()} == {"task": 4, "trial": 4, "final": 4, "summary": 1}
    parents = {r.info.run_id: r.info.run_name for r in by_role["task"]}
    assert sorted(parents.values()) == sorted(f"{m}/{e}/{label}" for m, e in ((A, "toy_audio"), (S, "toy_symbolic"))
                                              for label in ("style", "tempo"))
    for trial in by_role["trial"]:
        assert trial.info.status == "FINISHED" and trial.data.tags["mlflow.parentRunId"] in parents
        metric = "val_accuracy" if parents[trial.data.tags["mlflow.parentRunId"]].endswith("style") else "val_r2"
        history = client.get_metric_history(trial.info.run_id, metric)
        search = json.loads((run.output_dir / "tasks" / trial.data.tags["avs.task"] / "search.json").read_text())
        epochs = search["trials"][0]["epochs"]
        assert [m.step for m in history] == list(range(1, epochs + 1)) and epochs >= 1
        assert set(sp.search_space("average")) <= set(trial.data.params)
        assert "best_model.pth" in [a.path for a in client.list_artifacts(trial.info.run_id)]
    for final in by_role["final"]:
        assert final.data.tags["mlflow.parentRunId"] in parents
        assert len(client.get_metric_history(final.info.run_id, next(k for k in final.data.metrics
                                                                        if k in ("test_accuracy", "test_r2")))) == 2
    summary = by_role["summary"][0]
    assert {a.path for a in client.list_artifacts(summary.info.run_id)} >= {"summary.csv", "summary.md"}
    assert "style.toy_audio_vs_toy_symbolic.difference" in summary.data.metrics


@pytest.mark.slow
def test_best_model_artifact_reloads_and_reproduces_its_validation_score(run, tmp_path):
    """The MLflow artifact of a trial is the model of its best epoch: reloaded, it scores what the trial reported."""
    from training.classifier_data import load_task
    from training.experiment import ClassificationExperiment

    client = _client(run.output_dir)
    for key, label, metric in [(f"{A}__toy_audio__style", "style", "accuracy"),
                               (f"{S}__toy_symbolic__tempo", "tempo", "r2")]:
        search = json.loads((run.output_dir / "tasks" / key / "search.json").read_text())
        trial = search["trials"][0]
        path = client.download_artifacts(trial["run_id"], "best_model.pth", str(tmp_path / key))
        medium = A if key.startswith(A) else S
        data = load_task(run.h5, medium, label, task=search["task"]["task"], seed=0)
        score = ClassificationExperiment.load(path, data, device="cpu").evaluate("validation")[metric]
        assert score == pytest.approx(trial["best_score"], abs=1e-5)


@pytest.mark.slow
def test_sweep_table_holds_both_media_with_intervals_and_controls(run):
    table = pd.read_csv(run.output_dir / "summary.csv", keep_default_na=False)
    assert list(table["label"]) == ["style", "tempo"]
    assert list(table["task"]) == ["classification", "regression"]
    assert set(table["audio_embedder"]) == {"toy_audio"} and set(table["symbolic_embedder"]) == {"toy_symbolic"}
    for side in ("audio", "symbolic"):
        for column in ("mean", "ci_lo", "ci_hi", "baseline", "shuffled"):
            assert all(math.isfinite(float(v)) for v in table[f"{side}_{column}"]), f"{side}_{column}"
        assert all(table[f"{side}_ci_lo"] <= table[f"{side}_mean"]) and all(table[f"{side}_mean"] <= table[f"{side}_ci_hi"])
    assert all(table["n_seeds"] == 2) and all(math.isfinite(float(v)) for v in table["difference_ci_lo"])
    markdown = (run.output_dir / "summary.md").read_text()
    assert "| style (toy_audio / toy_symbolic) | test accuracy |" in markdown and "shuffled" in markdown
    # one search seed: every task tried the same configuration
    configs = {json.dumps(json.loads(p.read_text())["best_config"], sort_keys=True)
               for p in (run.output_dir / "tasks").glob("*/search.json")}
    assert len(configs) == 1


@pytest.mark.slow
def test_sweep_rerun_skips_finished_tasks_without_duplicating_runs(run, capsys):
    before = len(_client(run.output_dir).search_runs(["1"], max_results=1000))
    assert sweep.main(["--h5_path", str(run.h5), "--output_dir", str(run.output_dir), *SWEEP_ARGS]) == 0
    assert "4 task(s) already finished" in capsys.readouterr().out
    assert len(_client(run.output_dir).search_runs(["1"], max_results=1000)) == before
