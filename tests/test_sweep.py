"""ray_jobs.sweep: search space and label rules, CLI errors, and one sweep end to end (tests/sweep_factory.py):
its known answer, ASHA, shared rows and test ids, a failed task and its retry."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from analysis.labels import resolve_task
from ray_jobs.sweep import job as sweep
from ray_jobs.sweep import space as sp
from tests.sweep_factory import SWEEP_ANSWER_ARGS, A, S, tiny_store, tiny_sweep


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
    (["--labels", "style", "--media", f"{A},{A}"], "--media: expected one medium or two different ones"),
    (["--labels", "style", "--cv", "logo"], "--cv logo holds out whole groups: give --group_column"),
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


def test_rerun_on_other_rows_is_refused(tmp_path, capsys):
    """The tasks of a sweep share the rows valid in every swept medium; a rerun that would use other rows
    (here: audio alone, whose valid rows are not symbolic's) cannot continue that sweep."""
    from ray_jobs.sweep.plan import check_or_record_settings, plan_tasks

    h5 = tiny_store(tmp_path / "store", invalid_audio=0.2)
    args = sweep.build_parser().parse_args(["--h5_path", str(h5), "--labels", "style", "--media", S,
                                             "--output_dir", str(tmp_path / "o")])
    settings = sweep.settings_from_args(args)
    plan_tasks(settings)
    assert len(settings.row_ids) == 72                     # symbolic alone: every row
    settings.output_dir.mkdir(parents=True)
    check_or_record_settings(settings)
    assert sweep.main(["--h5_path", str(h5), "--labels", "style", "--output_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr()
    assert "rows_sha256: was" in err.err and "58 rows are valid in every swept medium" in err.out


def test_two_other_media_fill_the_table_sides_in_order(tmp_path):
    """--media A,B with media other than audio/symbolic: A fills the table's audio columns, B the symbolic
    ones, and summary.md says so (the store holds only audio and symbolic today; records are made here)."""
    from ray_jobs.sweep.plan import Settings
    from ray_jobs.sweep.runner import table_sides, write_summary

    assert table_sides([S, A]) == {A: A, S: S} and table_sides([A]) == {A: A, S: S}
    media = ["transcribed_embeddings", S]
    settings = Settings(h5_path=tmp_path / "x.h5", labels=[sp.LabelSpec("style")], media=media, embedders=None,
                        output_dir=tmp_path, tracking_uri="", experiment_name="x")
    for medium, scores in ((media[0], [0.9, 0.8]), (media[1], [0.5, 0.6])):
        record = {"medium": medium, "embedder": medium[:5], "label": "style", "task": "classification",
                  "metric": "accuracy", "seeds": [0, 1], "test_scores": scores, "baseline": 0.3,
                  "shuffled_scores": [0.3, 0.3], "n_test": 40}
        (tmp_path / "tasks" / medium).mkdir(parents=True)
        (tmp_path / "tasks" / medium / "result.json").write_text(json.dumps(record))

    class NoTracking:
        def summary_run(self, *args):
            return "run"

    summary = write_summary(settings, NoTracking())
    row = summary["table"][0]
    assert (row["audio_embedder"], row["symbolic_embedder"]) == ("trans", "symbo")
    assert row["audio_mean"] == pytest.approx(0.85) and row["difference"] == pytest.approx(0.3)
    assert summary["markdown"].startswith(f"Columns: 'audio' = transcribed_embeddings, 'symbolic' = {S}")


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


def _records(out) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (out / "tasks").glob("*/result.json")}


N_TASKS, N_SAMPLES, N_SEEDS = 4, 4, 3


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
    assert {k: len(v) for k, v in by_role.items()} == {"task": N_TASKS, "trial": N_TASKS * N_SAMPLES,
                                                        "final": N_TASKS, "summary": 1}
    parents = {r.info.run_id: r.info.run_name for r in by_role["task"]}
    assert sorted(parents.values()) == sorted(f"{m}/{e}/{label}" for m, e in ((A, "toy_audio"), (S, "toy_symbolic"))
                                              for label in ("style", "tempo"))
    for trial in by_role["trial"]:
        assert trial.info.status == "FINISHED" and trial.data.tags["mlflow.parentRunId"] in parents
        metric = "val_accuracy" if parents[trial.data.tags["mlflow.parentRunId"]].endswith("style") else "val_r2"
        history = client.get_metric_history(trial.info.run_id, metric)
        search = json.loads((run.output_dir / "tasks" / trial.data.tags["avs.task"] / "search.json").read_text())
        mine = next(t for t in search["trials"] if t["run_id"] == trial.info.run_id)
        assert [m.step for m in history] == list(range(1, mine["epochs"] + 1)) and mine["epochs"] >= 1
        assert trial.data.tags["avs.end"] == mine["end"]
        assert set(sp.search_space("average")) <= set(trial.data.params)
        assert "best_model.pth" in [a.path for a in client.list_artifacts(trial.info.run_id)]
    records = _records(run.output_dir)
    for final in by_role["final"]:
        assert final.data.tags["mlflow.parentRunId"] in parents
        assert final.data.tags["avs.test_ids_sha256"] == records[final.data.tags["avs.task"]]["test_ids_sha256"]
        assert len(client.get_metric_history(final.info.run_id, next(k for k in final.data.metrics
                                                                        if k in ("test_accuracy", "test_r2")))) == N_SEEDS
    summary = by_role["summary"][0]
    assert {a.path for a in client.list_artifacts(summary.info.run_id)} >= {"summary.csv", "summary.md"}
    assert "style.toy_audio_vs_toy_symbolic.difference" in summary.data.metrics


@pytest.mark.slow
def test_asha_cuts_trials_and_tags_them(run):
    """4 configurations, grace 1, reduction factor 3: ASHA stops some trials at a rung before max_epochs."""
    searches = [json.loads(p.read_text()) for p in (run.output_dir / "tasks").glob("*/search.json")]
    cut = sum(s["n_cut_by_asha"] for s in searches)
    assert cut > 0, [[t["end"] for t in s["trials"]] for s in searches]
    for s in searches:
        assert s["n_cut_by_asha"] == sum(t["end"] == "asha" for t in s["trials"])
        for t in s["trials"]:
            assert (t["epochs"] < 9) if t["end"] == "asha" else t["end"] in ("max_epochs", "patience")
    tagged = _client(run.output_dir).search_runs(["1"], "tags.`avs.end` = 'asha'", max_results=1000)
    assert len(tagged) == cut


@pytest.mark.slow
def test_best_model_artifact_reloads_and_reproduces_its_validation_score(run, tmp_path):
    """The MLflow artifact of a trial is the model of its best epoch: reloaded, it scores what the trial reported."""
    from training.classifier_data import load_task, shared_ids
    from training.experiment import ClassificationExperiment

    client = _client(run.output_dir)
    rows = shared_ids(run.h5, [(A, None), (S, None)])["ids"]
    for key, label, metric in [(f"{A}__toy_audio__style", "style", "accuracy"),
                               (f"{S}__toy_symbolic__tempo", "tempo", "r2")]:
        search = json.loads((run.output_dir / "tasks" / key / "search.json").read_text())
        trial = search["trials"][0]
        path = client.download_artifacts(trial["run_id"], "best_model.pth", str(tmp_path / key))
        medium = A if key.startswith(A) else S
        data = load_task(run.h5, medium, label, task=search["task"]["task"], seed=0, ids=rows)
        assert data.provenance["test_ids_sha256"] == json.loads((run.output_dir / "tasks" / key / "result.json")
                                                                .read_text())["test_ids_sha256"]
        score = ClassificationExperiment.load(path, data, device="cpu").evaluate("validation")[metric]
        assert score == pytest.approx(trial["best_score"], abs=1e-5)


@pytest.mark.slow
def test_sweep_reaches_the_known_answer_audio_beats_symbolic(run):
    """sweep_factory plants both labels in the audio features only: audio must win, with the verdict saying so."""
    table = pd.read_csv(run.output_dir / "summary.csv", keep_default_na=False)
    assert list(table["label"]) == ["style", "tempo"]
    assert list(table["task"]) == ["classification", "regression"]
    assert set(table["audio_embedder"]) == {"toy_audio"} and set(table["symbolic_embedder"]) == {"toy_symbolic"}
    for _, row in table.iterrows():
        assert row["audio_mean"] > row["symbolic_mean"] and row["difference"] > 0, row.to_dict()
        assert float(row["difference_ci_lo"]) > 0 and "audio higher" in row["verdict"], row["verdict"]
        assert not row["audio_flags"], row["audio_flags"]          # audio is clearly above its controls
        assert row["n_seeds"] == N_SEEDS
    style = table.set_index("label").loc["style"]
    assert style["audio_mean"] > 0.9 and style["audio_mean"] > style["audio_baseline"] + 0.5
    assert table.set_index("label").loc["tempo"]["audio_mean"] > 0.5          # R^2 (ASHA cuts the best config early)
    markdown = (run.output_dir / "summary.md").read_text()
    assert "| style (toy_audio / toy_symbolic) | test accuracy |" in markdown and "shuffled" in markdown
    # one search seed: every task sampled the same configurations
    configs = {json.dumps([t["config"] for t in json.loads(p.read_text())["trials"]], sort_keys=True)
               for p in (run.output_dir / "tasks").glob("*/search.json")}
    assert len(configs) == 1


@pytest.mark.slow
def test_media_share_rows_split_and_test_ids_despite_invalid_audio(run):
    """20% of the audio rows are invalid: every task still uses the rows valid in both media, one split,
    so both media's records carry the same test ids (hash and list) and per-item predictions per seed."""
    from tests.sweep_factory import ANSWER_ROWS, INVALID_AUDIO

    records = _records(run.output_dir)
    assert len(records) == N_TASKS
    shared = ANSWER_ROWS - round(ANSWER_ROWS * INVALID_AUDIO)
    for label in ("style", "tempo"):
        audio, symbolic = records[f"{A}__toy_audio__{label}"], records[f"{S}__toy_symbolic__{label}"]
        assert audio["test_ids_sha256"] == symbolic["test_ids_sha256"]
        assert audio["test_ids"] == symbolic["test_ids"] == sorted(audio["test_ids"])
        assert audio["test_targets"] == symbolic["test_targets"]
        digest = hashlib.sha256("\n".join(sorted(audio["test_ids"])).encode()).hexdigest()
        assert audio["test_ids_sha256"] == digest and audio["n_test"] == len(audio["test_ids"]) == shared // 6
        for record in (audio, symbolic):
            assert record["data"]["n_rows"] == shared and record["evaluation"]["kind"] == "split"
            predictions = np.asarray(record["test_predictions"])
            assert predictions.shape == (N_SEEDS, record["n_test"])
            # the per-seed scores are those of the per-item predictions
            if label == "style":
                correct = predictions == np.asarray(record["test_targets"])[None, :]
                assert correct.mean(axis=1).tolist() == pytest.approx(record["test_scores"])
                assert 0.0 <= record["ci_lo"] <= record["mean"] <= record["ci_hi"] <= 1.0
            else:
                y = np.asarray(record["test_targets"], float)
                r2 = 1 - ((predictions - y) ** 2).sum(1) / ((y - y.mean()) ** 2).sum()
                assert r2.tolist() == pytest.approx(record["test_scores"], abs=1e-6)
    summary = json.loads((run.output_dir / "summary.json").read_text())["evaluation"]
    assert summary[f"{A}/toy_audio/style"] == summary[f"{S}/toy_symbolic/style"] == {
        "evaluation": "column 'split'", "test_ids_sha256": records[f"{A}__toy_audio__style"]["test_ids_sha256"],
        "n_test": shared // 6}
    table = pd.read_csv(run.output_dir / "summary.csv", keep_default_na=False)
    for side in ("audio", "symbolic"):
        style = table.set_index("label").loc["style"]
        assert 0.0 <= float(style[f"{side}_sampling_lo"]) <= float(style[f"{side}_sampling_hi"]) <= 1.0


@pytest.mark.slow
def test_failed_task_exits_1_and_a_rerun_retries_it_without_duplicate_runs(run, capsys):
    """First run: one task fails at its last step (exit 1, error.json, no record, the others finished).
    Rerun: only that task is retrained; error.json goes, the table is complete, MLflow holds each run once
    (the failed attempt's final run is replaced, not kept beside the new one)."""
    from tests.sweep_factory import FAILING_TASK, runs_by_role

    assert run.first_exit_code == 1 and run.exit_code == 0
    assert run.first_error["task"]["key"] == FAILING_TASK and "injected failure" in run.first_error["error"]
    assert run.first_runs == {"task": N_TASKS, "trial": N_TASKS * N_SAMPLES, "final": N_TASKS, "summary": 1}
    assert not (run.output_dir / "tasks" / FAILING_TASK / "error.json").exists()
    assert len(_records(run.output_dir)) == N_TASKS
    table = pd.read_csv(run.output_dir / "summary.csv", keep_default_na=False)
    assert len(table) == 2 and all(table["symbolic_embedder"] == "toy_symbolic")
    assert runs_by_role(run.output_dir) == {"task": N_TASKS, "trial": N_TASKS * N_SAMPLES, "final": N_TASKS,
                                            "summary": 1}
    # a third run finds everything finished and adds no run
    assert sweep.main(["--h5_path", str(run.h5), "--output_dir", str(run.output_dir), *SWEEP_ANSWER_ARGS]) == 0
    assert f"{N_TASKS} task(s) already finished" in capsys.readouterr().out
    assert runs_by_role(run.output_dir)["trial"] == N_TASKS * N_SAMPLES
    print(f"sweep timings (s): {run.seconds}")


@pytest.fixture
def one_thread():
    """Tiny models in this process: more intra-op threads only contend on a shared 2-core runner."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_few_groups_sweep_tasks_cross_validate(tmp_path, one_thread):
    """5 drummers cannot fill a grouped 70/15/15 split: a task's data holds 5 folds, the search sees fold 1
    (its params say so) and the retraining scores every recording once; its record says so. (The runner's
    pieces without Ray: a whole sweep run with --group_column drummer costs a minute on the CI machine.)"""
    from ray_jobs.sweep import runner
    from ray_jobs.sweep.plan import plan_tasks
    from ray_jobs.sweep.results import record_from_seeds
    from tests.classifier_factory import separable_store

    h5 = separable_store(tmp_path / "store", drummers=5)
    args = sweep.build_parser().parse_args(["--h5_path", str(h5), "--output_dir", str(tmp_path / "o"), "--labels",
                                             "style", "--group_column", "drummer", "--split_column", "none"])
    settings = sweep.settings_from_args(args)
    tasks = plan_tasks(settings)
    assert len(tasks) == 2 and len(settings.row_ids) == 160
    data = runner.load_data(settings, tasks[0])
    params = runner._data_params(data)
    assert (params["evaluation"], params["n_folds"], params["n_test"]) == ("logo", 5, 32)
    kwargs = sp.train_config_kwargs({"model": "linear", "hidden_dim": 8, "dropout": 0.0, "learning_rate": 0.05,
                                     "weight_decay": 0.0, "batch_size": 32}, num_epochs=2, patience=2, seed=0)
    out = runner._retrain(data, kwargs, [0], False)
    search = {"best_config": {}, "best_val": 1.0, "data": params}
    record = record_from_seeds(tasks[0], search, out, [0])
    assert record["evaluation"]["kind"] == "logo" and record["n_test"] == 160 == len(set(record["test_ids"]))
    assert sorted(set(record["test_folds"])) == list(range(5)) and np.asarray(record["test_predictions"]).shape == (1, 160)
    other = runner.load_data(settings, tasks[1])                                   # the symbolic task
    assert other.provenance["evaluation"]["folds_sha256"] == data.provenance["evaluation"]["folds_sha256"]
