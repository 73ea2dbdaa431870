"""Run a sweep: per task a Ray Tune search, then the best configuration retrained over seeds, then the table.

One Tune run per (medium, embedder, label) task, not one run with the tasks as grid dimensions:
ASHA compares trials at each rung, and comparing a composer trial with a bpm trial (another
metric) or an audio trial with a symbolic one (another input) would stop trials for the wrong
reason; one run per task also gives each task its own data in the object store, its own best
configuration and its own resume point. Every task samples the same configurations (the search
is seeded with ``--seed``), so both media get the same search effort. A task's retraining is a
Ray task started as soon as its search ends, so it runs beside the next task's trials.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import shutil
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.exceptions import RayTaskError
from ray.tune.logger import JsonLoggerCallback
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import BasicVariantGenerator

from analysis.report.sweep_page import table_markdown
from analysis.sweep_table import AUDIO, SYMBOLIC, build_table, key_metrics
from embedders.store.atomic import atomic_write_bytes, write_json
from embedders.store.parts import StoreError
from ray_jobs.console import Progress
from ray_jobs.sweep.plan import Settings, Task, read_json, task_dir, task_state, tune_dir
from ray_jobs.sweep.results import record_from_seeds
from ray_jobs.sweep.space import search_space, train_config_kwargs
from ray_jobs.sweep.tracking import RecordingASHA, SweepTracking, TrialLogger
from ray_jobs.sweep.trainable import train_trial, tune_domains

# errors that fail one task (recorded in tasks/<task>/error.json) while the sweep goes on
TASK_ERRORS = (StoreError, ValueError, KeyError, RayTaskError)


class SweepTaskError(Exception):
    """A task could not produce a result (e.g. every trial failed)."""


def _retrain(data: Any, config_kwargs: dict[str, Any], seeds: list[int], use_gpu: bool) -> dict:
    """Ray task: the best configuration over seeds, each scored once on test, with its controls."""
    import torch

    from training.experiment import TrainConfig
    from training.seed_runs import run_seeds

    device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
    return run_seeds(data, TrainConfig(**config_kwargs), seeds, device=device)


def _score_key(task: Task) -> str:
    return f"val_{task.score_name}"


def load_data(settings: Settings, task: Task):
    """The task's rows (those valid in every swept medium and embedder) and its split or CV folds."""
    from training.classifier_data import load_task

    return load_task(settings.h5_path, task.medium, task.label, embedder=task.embedder,
                     embedding_type=settings.embedding_type, group_column=settings.group_column,
                     task=task.task, split_column=settings.split_column, seed=settings.seed,
                     ids=settings.row_ids, cv=settings.cv)


# ---------------------------------------------------------------------------------------------- search
def search_task(settings: Settings, task: Task, data: Any, tracking: SweepTracking) -> dict:
    """The task's Tune run from scratch; writes ``search.json`` and returns it."""
    folder = task_dir(settings, task)
    stale = tune_dir(settings) / task.key
    if stale.exists():
        shutil.rmtree(stale)
    discarded = tracking.discard_incomplete_task(task.key)
    if discarded:
        print(f"  {task.name}: an earlier attempt was interrupted; its {discarded} MLflow run(s) are marked deleted "
              "(restorable in the MLflow UI) and the search starts again")
    space = search_space(settings.embedding_type)
    parent = tracking.start_task(task.key, task.name, params={
        "medium": task.medium, "embedder": task.embedder, "label": task.label, "task": task.task,
        "task_rule": task.task_reason, "embedding_type": settings.embedding_type, "num_samples": settings.num_samples,
        "scheduler": settings.scheduler, "max_epochs": settings.max_epochs, "patience": settings.patience,
        "seed": settings.seed, "group_column": settings.group_column, "selection_metric": _score_key(task),
        **{f"space.{k}": v.describe() for k, v in space.items()}, **_data_params(data)},
        tags={"avs.medium": task.medium, "avs.embedder": task.embedder, "avs.label": task.label})
    scheduler = (RecordingASHA(time_attr="training_iteration", max_t=settings.max_epochs,
                               grace_period=min(settings.grace_period, settings.max_epochs),
                               reduction_factor=settings.reduction_factor)
                 if settings.scheduler == "asha" else FIFOScheduler())
    progress = Progress(f"  {task.name} search", settings.num_samples, unit="trials")
    logger = TrialLogger(tracking, parent, task.key, space, settings.max_epochs,
                         scheduler if isinstance(scheduler, RecordingASHA) else None, progress)
    # cross-validation: the search selects on fold 1's validation groups (not nested: the chosen
    # configuration is then retrained and tested on every fold)
    trainable = tune.with_resources(tune.with_parameters(train_trial, data=data.fold(0)),
                                    {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})
    param_space = {**tune_domains(settings.embedding_type), "score_key": _score_key(task),
                   "max_epochs": settings.max_epochs, "patience": settings.patience, "seed": settings.seed,
                   "use_gpu": settings.gpus_per_trial > 0}
    tuner = tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(
            metric="best_score", mode="max", num_samples=settings.num_samples, scheduler=scheduler,
            # the generator's own limit: Tune ignores max_concurrent_trials with a BasicVariantGenerator
            reuse_actors=True,
            search_alg=BasicVariantGenerator(random_state=settings.seed, max_concurrent=settings.max_concurrent or 0)),
        run_config=tune.RunConfig(
            # Tune's result.json per trial (its ResultGrid reads it); its CSV and TensorBoard loggers are off
            # (TUNE_DISABLE_AUTO_CALLBACK_LOGGERS, set by the job): MLflow holds every metric already
            name=task.key, storage_path=str(tune_dir(settings)), callbacks=[logger, JsonLoggerCallback()],
            verbose=settings.verbose,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),   # the latest checkpoint is the best
            failure_config=tune.FailureConfig(max_failures=0)),
    )
    start = time.perf_counter()
    with progress:
        tuner.fit()
    seconds = time.perf_counter() - start
    trials = trial_table(logger, list(space))
    finished = [t for t in trials if t["best_score"] is not None and math.isfinite(t["best_score"])]
    if not finished:
        errors = [t["error"] for t in trials if t["error"]]
        tracking.finish(parent, "FAILED")
        raise SweepTaskError(f"{task.name}: none of {len(trials)} trials reported a finite {_score_key(task)}"
                             + (f"; first error: {errors[0][-1500:]}" if errors else ""))
    best = max(finished, key=lambda t: (t["best_score"], -t["index"]))
    search = {
        "task": _task_dict(task), "parent_run_id": parent, "experiment_id": tracking.experiment_id,
        "best_config": best["config"], "best_val": best["best_score"], "best_trial": best["trial_id"],
        "best_run_id": best["run_id"], "selection_metric": _score_key(task), "trials": trials,
        "n_trials": len(trials), "n_cut_by_asha": sum(t["end"] == "asha" for t in trials),
        "n_errors": sum(t["end"] == "error" for t in trials), "search_seconds": seconds,
        "data": _data_params(data),
    }
    write_json(folder / "search.json", search)
    atomic_write_bytes(folder / "trials.csv", _trials_csv(trials))
    tracking.log_metrics(parent, {f"best_{_score_key(task)}": best["best_score"], "n_trials": len(trials),
                                  "n_cut_by_asha": search["n_cut_by_asha"], "n_errors": search["n_errors"],
                                  "search_seconds": seconds})
    tracking.set_tags(parent, {"avs.best_run_id": best["run_id"], "avs.best_trial": best["trial_id"]})
    tracking.log_files(parent, [folder / "trials.csv"])
    return search


def trial_table(logger: TrialLogger, searched: list[str]) -> list[dict]:
    rows = []
    for trial_id, trial in logger.trials.items():
        last = trial.last_result or {}
        best = last.get("best_score")
        rows.append({
            "index": int(trial_id.rsplit("_", 1)[-1]) if trial_id.rsplit("_", 1)[-1].isdigit() else len(rows),
            "trial_id": trial_id, "run_id": logger.runs.get(trial_id),
            "config": {k: trial.config[k] for k in searched if k in trial.config},
            "best_score": float(best) if best is not None and math.isfinite(float(best)) else None,
            "epochs": int(last.get("training_iteration", 0)), "end": logger.ends.get(trial_id, "unfinished"),
            "model_logged": bool(logger.logged_models.get(trial_id, False)), "error": logger.errors.get(trial_id, ""),
        })
    return sorted(rows, key=lambda r: r["index"])


def _trials_csv(trials: list[dict]) -> bytes:
    out = io.StringIO()
    keys = sorted({k for t in trials for k in t["config"]})
    writer = csv.writer(out)
    writer.writerow(["trial_id", "run_id", *keys, "best_score", "epochs", "end", "model_logged"])
    for t in trials:
        writer.writerow([t["trial_id"], t["run_id"], *(t["config"].get(k, "") for k in keys),
                         "" if t["best_score"] is None else t["best_score"], t["epochs"], t["end"], t["model_logged"]])
    return out.getvalue().encode()


def _task_dict(task: Task) -> dict:
    return {"medium": task.medium, "embedder": task.embedder, "label": task.label, "task": task.task,
            "task_rule": task.task_reason, "key": task.key}


def _data_params(data: Any) -> dict:
    """What the search saw: rows per split (fold 1's under cross-validation), evaluation, test set hash."""
    split = getattr(data, "split", None)
    counts = {}
    if split is not None:
        import numpy as np

        values, n = np.unique(np.asarray(split).astype(str), return_counts=True)
        counts = {f"n_{v}": int(c) for v, c in zip(values, n)}
    provenance = getattr(data, "provenance", {}) or {}
    dropped = sum(int(d.get("rows", 0)) for d in provenance.get("dropped", []))
    evaluation = provenance.get("evaluation", {})
    return {"n_rows": len(getattr(data, "y", [])), "input_dim": getattr(data, "input_dim", None),
            "num_outputs": getattr(data, "num_outputs", None), "n_dropped": dropped,
            "split_source": provenance.get("split_source"), "evaluation": evaluation.get("kind", "split"),
            "n_folds": evaluation.get("n_folds", 1), "test_ids_sha256": provenance.get("test_ids_sha256"), **counts}


# ---------------------------------------------------------------------------------------------- retraining
def finish_task(settings: Settings, task: Task, search: dict, seeds_out: dict, tracking: SweepTracking,
                seconds: float) -> dict:
    """Turn ``run_seeds``'s output into the table record, log it as the task's ``final`` run, write result.json."""
    record = record_from_seeds(task, search, seeds_out, settings.retrain_seeds())
    record["retrain_seconds"] = seconds   # from submission: includes waiting for a CPU the next search holds
    folder = task_dir(settings, task)
    write_json(folder / "seeds.json", seeds_out)
    parent = search["parent_run_id"]
    tracking.discard_children(parent, "final")
    final = tracking.child_run(parent, task.key, f"final: best config x {len(record['seeds'])} seeds", "final",
                               {**search["best_config"], "seeds": record["seeds"]},
                               tags={"avs.test_ids_sha256": str(record.get("test_ids_sha256")),
                                     "avs.evaluation": str(record["evaluation"].get("kind"))})
    for seed, score, shuffled in zip(record["seeds"], record["test_scores"], record["shuffled_scores"]):
        tracking.log_metrics(final, {f"test_{task.score_name}": score, f"shuffled_test_{task.score_name}": shuffled},
                             step=int(seed))
    headline = {f"test_{task.score_name}_mean": record["mean"], f"test_{task.score_name}_ci_lo": record["ci_lo"],
                f"test_{task.score_name}_ci_hi": record["ci_hi"], f"baseline_{task.score_name}": record["baseline"],
                f"shuffled_{task.score_name}_mean": record["shuffled_mean"], "retrain_seconds": seconds}
    tracking.log_metrics(final, headline)
    tracking.log_files(final, [folder / "seeds.json"])
    tracking.finish(final)
    tracking.log_metrics(parent, headline)
    tracking.finish(parent)
    write_json(folder / "result.json", record)
    return record


# ---------------------------------------------------------------------------------------------- the sweep
def run_sweep(settings: Settings, tasks: list[Task], tracking: SweepTracking) -> dict:
    """Search every unfinished task, retrain as searches end, then write the table. Returns the summary."""
    started = time.perf_counter()
    pending: dict[Any, tuple[Task, dict, float]] = {}   # retraining ObjectRef -> (task, search, start)
    failures: dict[str, str] = {}
    states = {task.key: task_state(settings, task) for task in tasks}
    skipped = [t.name for t in tasks if states[t.key] == "done"]
    if skipped:
        print(f"{len(skipped)} task(s) already finished in {settings.output_dir}, skipped: {', '.join(skipped)}")
    todo = [t for t in tasks if states[t.key] != "done"]
    retrain_options = {"num_cpus": settings.cpus_per_trial, "num_gpus": settings.gpus_per_trial}
    retrain = ray.remote(_retrain)
    for n, task in enumerate(todo, 1):
        error_file = task_dir(settings, task) / "error.json"
        try:
            data = load_data(settings, task)
            if states[task.key] == "searched":
                search = read_json(task_dir(settings, task) / "search.json")
                print(f"[{n}/{len(todo)}] {task.name}: search finished earlier (best val {search['best_val']:.4f}); "
                      "retraining its best configuration")
            else:
                print(f"[{n}/{len(todo)}] {task.name} ({task.task}: {task.task_reason}): "
                      f"{settings.num_samples} configurations, scheduler {settings.scheduler}")
                search = search_task(settings, task, data, tracking)
                print(f"  best val {search['selection_metric']} {search['best_val']:.4f} after "
                      f"{search['search_seconds']:.0f} s ({search['n_cut_by_asha']} trials cut by ASHA, "
                      f"{search['n_errors']} failed)")
            kwargs = train_config_kwargs(search["best_config"], num_epochs=settings.max_epochs,
                                         patience=settings.patience, seed=settings.seed)
            ref = retrain.options(**retrain_options).remote(data, kwargs, settings.retrain_seeds(),
                                                            settings.gpus_per_trial > 0)
            pending[ref] = (task, search, time.perf_counter())
            error_file.unlink(missing_ok=True)
        except (*TASK_ERRORS, SweepTaskError) as exc:
            failures[task.key] = _fail(task, exc, error_file)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        task, search, t0 = pending.pop(done[0])
        try:
            finish_task(settings, task, search, ray.get(done[0]), tracking, time.perf_counter() - t0)
            print(f"  {task.name}: retrained over {settings.seeds} seeds")
        except (*TASK_ERRORS, SweepTaskError) as exc:
            tracking.finish(search["parent_run_id"], "FAILED")
            failures[task.key] = _fail(task, exc, task_dir(settings, task) / "error.json")
    summary = write_summary(settings, tracking)
    summary.update({"failures": failures, "seconds": time.perf_counter() - started,
                    "tasks_run": [t.key for t in todo], "tasks_skipped": skipped})
    write_json(settings.output_dir / "summary.json", summary)
    return summary


def _fail(task: Task, exc: BaseException, error_file: Path) -> str:
    message = f"{type(exc).__name__}: {exc}"
    print(f"  {task.name} FAILED: {message[:2000]}")
    write_json(error_file, {"task": _task_dict(task), "error": message})
    return message


def table_sides(media: list[str]) -> dict[str, str]:
    """Which medium fills the table's ``audio_*`` and ``symbolic_*`` columns (the two sides)."""
    if len(media) == 2 and set(media) != {AUDIO, SYMBOLIC}:
        return {AUDIO: media[0], SYMBOLIC: media[1]}
    return {AUDIO: AUDIO, SYMBOLIC: SYMBOLIC}


def write_summary(settings: Settings, tracking: SweepTracking) -> dict:
    """summary.csv / .md (and the summary MLflow run) from every result.json in the output folder.

    Two media other than audio and symbolic (``--media A,B``) fill the table's audio and symbolic
    columns in that order; summary.md says so in its first line."""
    records = [read_json(p) for p in sorted((settings.output_dir / "tasks").glob("*/result.json"))]
    if not records:
        return {"table": [], "records": 0}
    sides = table_sides(settings.media)
    side_of = {medium: side for side, medium in sides.items()}
    table = build_table([{**r, "medium": side_of[r["medium"]]} for r in records if r["medium"] in side_of])
    markdown = table_markdown(table)
    if sides[AUDIO] != AUDIO:
        markdown = (f"Columns: 'audio' = {sides[AUDIO]}, 'symbolic' = {sides[SYMBOLIC]} (--media "
                    f"{','.join(settings.media)}).\n\n" + markdown)
    csv_bytes = table.to_csv(index=False).encode()
    out = settings.output_dir
    atomic_write_bytes(out / "summary.csv", csv_bytes)
    atomic_write_bytes(out / "summary.md", markdown.encode())
    digest = hashlib.sha256(csv_bytes).hexdigest()
    write_json(out / "summary_table.json", {"records": records, "table": table.to_dict("records")})
    run_id = tracking.summary_run(digest, [out / "summary.csv", out / "summary.md", out / "summary_table.json"],
                                  key_metrics(table), {"h5_path": settings.h5_name(),
                                                       "tasks": len(records), "seeds": settings.seeds,
                                                       "num_samples": settings.num_samples,
                                                       "scheduler": settings.scheduler})
    evaluation = {f"{r['medium']}/{r['embedder']}/{r['label']}": {
        "evaluation": r.get("evaluation", {}).get("description") or r.get("data", {}).get("split_source"),
        "test_ids_sha256": r.get("test_ids_sha256"), "n_test": r.get("n_test")} for r in records}
    return {"table": table.to_dict("records"), "records": len(records), "markdown": markdown,
            "summary_run_id": run_id, "sides": sides, "evaluation": evaluation}
