"""MLflow bookkeeping of a sweep, written from the driver only.

Layout in the tracking store:

* one experiment per sweep (``--experiment_name``, default ``<dataset>/<output folder name>``),
  tagged ``mlflow.experimentKind=custom_model_development`` so the MLflow 3 UI opens it on its runs;
* one parent run per (medium, embedder, label) task, named ``<medium>/<embedder>/<label>``,
  tag ``avs.role=task``; its trials are nested runs (``mlflow.parentRunId``, ``avs.role=trial``)
  holding the sampled hyperparameters, every epoch's metrics (step = epoch) and the trial's best
  model (``best_model.pth`` and what else its checkpoint holds); the retraining of the best
  configuration over seeds is one more nested run (``avs.role=final``);
* one ``summary`` run (``avs.role=summary``) with the audio-vs-symbolic table as CSV, Markdown
  and JSON artifacts and its headline numbers as metrics.

Why the driver writes everything (a Tune callback, ``TrialLogger``) rather than each trial: one
writer never contends for a sqlite store's lock, and trials on other nodes of a cluster cannot
reach a sqlite file on the head node anyway. Checkpoints reach the driver through Tune's storage
(``storage_path``), so the model artifact is read from there when a trial ends.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.result import AUTO_RESULT_KEYS
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from ray_jobs.console import Progress
from training.mlflow_store import artifact_location, sqlite_path

ROLE = "avs.role"
TASK = "avs.task"
SWEEP = "avs.sweep_id"
PARENT = "mlflow.parentRunId"
# Tune's own bookkeeping in every result; everything else numeric a trial reports is a metric
_NOT_METRICS = set(AUTO_RESULT_KEYS) | {"done", "trial_id", "should_checkpoint", "experiment_tag"}


def sweep_id(output_dir: Path) -> str:
    """A short stable id of a sweep: its output folder's absolute path, hashed."""
    return hashlib.sha1(str(Path(output_dir).absolute()).encode()).hexdigest()[:12]


def default_tracking_uri(output_dir: Path) -> str:
    return f"sqlite:///{Path(output_dir).absolute() / 'mlflow.db'}"


def _params(values: dict[str, Any]) -> list[Param]:
    # MLflow caps a param value at 6000 characters
    return [Param(str(k), str(v)[:6000]) for k, v in values.items()]


class SweepTracking:
    """The sweep's experiment and its task, trial, final and summary runs."""

    def __init__(self, tracking_uri: str, experiment_name: str, sweep_id: str = ""):
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        # runs of this sweep (output folder) carry avs.sweep_id, so a rerun touches its own runs only,
        # even in an experiment that other sweeps share (--experiment_name)
        self.sweep_id = sweep_id
        if sqlite_path(tracking_uri) is not None:
            sqlite_path(tracking_uri).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=tracking_uri)
        experiment = self.client.get_experiment_by_name(experiment_name)
        if experiment is not None and experiment.lifecycle_stage == "deleted":
            self.client.restore_experiment(experiment.experiment_id)
        if experiment is None:
            self.experiment_id = self.client.create_experiment(
                experiment_name, artifact_location=artifact_location(tracking_uri, experiment_name),
                tags={"mlflow.experimentKind": "custom_model_development", "avs.kind": "classifier-sweep"})
        else:
            self.experiment_id = experiment.experiment_id

    # ------------------------------------------------------------------------------------ runs
    def find_runs(self, filter_string: str) -> list:
        return self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=10000)

    def discard_incomplete_task(self, key: str) -> int:
        """Soft-delete (restorable in the UI) the runs of an earlier, interrupted attempt at ``key``."""
        parents = self.find_runs(f"tags.`{TASK}` = '{key}' and tags.`{ROLE}` = 'task' "
                                 f"and tags.`{SWEEP}` = '{self.sweep_id}'")
        n = 0
        for parent in parents:
            for child in self.find_runs(f"tags.`{PARENT}` = '{parent.info.run_id}'"):
                self.client.delete_run(child.info.run_id)
                n += 1
            self.client.delete_run(parent.info.run_id)
            n += 1
        return n

    def discard_children(self, parent_id: str, role: str) -> int:
        """Soft-delete ``role`` runs under a parent (a retraining that died before its result was written)."""
        old = self.find_runs(f"tags.`{PARENT}` = '{parent_id}' and tags.`{ROLE}` = '{role}'")
        for run in old:
            self.client.delete_run(run.info.run_id)
        return len(old)

    def start_task(self, key: str, name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={ROLE: "task", TASK: key, SWEEP: self.sweep_id, **tags})
        self.client.log_batch(run.info.run_id, params=_params(params))
        return run.info.run_id

    def child_run(self, parent_id: str, key: str, name: str, role: str, params: dict[str, Any],
                  tags: dict[str, str] | None = None) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={ROLE: role, TASK: key, PARENT: parent_id, SWEEP: self.sweep_id,
                                           **(tags or {})})
        if params:
            self.client.log_batch(run.info.run_id, params=_params(params))
        return run.info.run_id

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int = 0) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, int(step)) for k, v in metrics.items() if _is_number(v)]
        for start in range(0, len(batch), 1000):   # MLflow's log_batch limit
            self.client.log_batch(run_id, metrics=batch[start:start + 1000])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def log_files(self, run_id: str, files: Iterable[Path], artifact_path: str | None = None) -> None:
        for path in files:
            self.client.log_artifact(run_id, str(path), artifact_path)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def summary_run(self, digest: str, files: list[Path], metrics: dict[str, float], params: dict[str, Any]) -> str:
        """The summary run of this table; an earlier summary of a different table is soft-deleted."""
        for old in self.find_runs(f"tags.`{ROLE}` = 'summary' and tags.`{SWEEP}` = '{self.sweep_id}'"):
            if old.data.tags.get("avs.table_sha256") == digest and old.info.status == "FINISHED":
                return old.info.run_id
            self.client.delete_run(old.info.run_id)
        run_id = self.client.create_run(self.experiment_id, run_name="summary: audio vs symbolic",
                                        tags={ROLE: "summary", SWEEP: self.sweep_id,
                                              "avs.table_sha256": digest}).info.run_id
        self.client.log_batch(run_id, params=_params(params))
        self.log_metrics(run_id, metrics)
        self.log_files(run_id, files)
        self.finish(run_id)
        return run_id

    def run_url(self, run_id: str | None = None) -> str:
        """Where the UI shows the experiment (or a run), relative to the server's address."""
        base = f"#/experiments/{self.experiment_id}"
        return f"{base}/runs/{run_id}" if run_id else f"{base}/runs"


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


class RecordingASHA(ASHAScheduler):
    """ASHA that remembers which trials it cut short (as opposed to trials that reached ``max_t``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cut: set[str] = set()

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and result.get(self._time_attr, 0) < self._max_t:
            self.cut.add(trial.trial_id)
        return action


class TrialLogger(tune.Callback):
    """Tune callback: every trial becomes a nested MLflow run under its task's parent run."""

    def __init__(self, tracking: SweepTracking, parent_id: str, key: str, searched: Iterable[str],
                 max_epochs: int, scheduler: RecordingASHA | None, progress: Progress | None = None):
        self.tracking, self.parent_id, self.key = tracking, parent_id, key
        self.progress = progress  # trials finished / asked, on the console
        self.searched, self.max_epochs, self.scheduler = tuple(searched), max_epochs, scheduler
        self.trials: dict[str, Any] = {}      # trial id -> Tune Trial (config, last result)
        self.runs: dict[str, str] = {}        # trial id -> MLflow run id
        self.errors: dict[str, str] = {}
        self.ends: dict[str, str] = {}        # trial id -> max_epochs | patience | asha | error
        self.logged_models: dict[str, bool] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.trials[trial.trial_id] = trial
        if trial.trial_id in self.runs:
            return
        config = {k: trial.config[k] for k in self.searched if k in trial.config}
        name = f"{config.get('model', 'trial')}-{trial.trial_id}"
        self.runs[trial.trial_id] = self.tracking.child_run(
            self.parent_id, self.key, name, "trial", {**config, "trial_id": trial.trial_id},
            tags={"avs.trial_id": trial.trial_id})

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            return
        metrics = {k: v for k, v in result.items() if k not in _NOT_METRICS and _is_number(v)}
        # step = epochs completed (Tune's 1-based training_iteration: the trainable reports once per epoch)
        self.tracking.log_metrics(run_id, metrics, step=int(result.get("training_iteration", 0)))

    def _end_reason(self, trial) -> str:
        if self.scheduler is not None and trial.trial_id in self.scheduler.cut:
            return "asha"
        epochs = int((trial.last_result or {}).get("training_iteration", 0))
        return "max_epochs" if epochs >= self.max_epochs else "patience"

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            return
        end = self._end_reason(trial)
        self.ends[trial.trial_id] = end
        logged = False
        if trial.checkpoint is not None:
            with trial.checkpoint.as_directory() as folder:
                files = sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))
                self.tracking.log_files(run_id, files)
                logged = any(p.name == "best_model.pth" for p in files)
        self.logged_models[trial.trial_id] = logged
        self.tracking.set_tags(run_id, {"avs.end": end, "avs.model_logged": logged})
        self.tracking.finish(run_id, "FINISHED")
        if self.progress is not None:
            self.progress.update(done=1)

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            return
        self.ends[trial.trial_id] = "error"
        message = ""
        if trial.error_file and Path(trial.error_file).exists():
            message = Path(trial.error_file).read_text()[-4000:]
        self.errors[trial.trial_id] = message or "error (see the Tune trial folder)"
        self.tracking.set_tags(run_id, {"avs.end": "error", "avs.error": message or "see the Tune trial folder"})
        self.tracking.finish(run_id, "FAILED")
        if self.progress is not None:
            self.progress.update(done=1, failed=1)
