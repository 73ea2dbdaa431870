"""A sweep's settings, its tasks, and the files that make a rerun continue instead of duplicate.

Output folder (``--output_dir``)::

    sweep.json                  settings of the sweep; a rerun must use the same search settings
    mlflow.db, mlartifacts/     the default MLflow store (sqlite) and its artifacts
    tune/<task>/                Ray Tune's experiment folder: trial folders, best-model checkpoints
    tasks/<task>/search.json    written when the task's search ended: best configuration, trial table
    tasks/<task>/trials.csv     one row per trial: hyperparameters, best validation score, epochs, end
    tasks/<task>/seeds.json     run_seeds' full output (per-seed test metrics, controls, per-item predictions)
    tasks/<task>/result.json    written last, when the best configuration was retrained over seeds: the
                                table record, with test_ids_sha256 and per-item predictions
    tasks/<task>/error.json     why the task failed (a rerun tries it again)
    summary.csv / .md           the audio-vs-symbolic table of every finished task in the folder
    summary_table.json          the table and the records it was built from
    summary.json                this run: failures, timings, tasks run and skipped

Rerun: a task with ``result.json`` is skipped; with ``search.json`` only, its best configuration
is retrained; otherwise it was interrupted mid-search (or never started) and is searched from
scratch: its Tune folder is removed and the MLflow runs of the earlier attempt are soft-deleted
(restorable in the UI), which the job prints. ``<task>`` is ``<medium>__<embedder>__<label>``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.labels import resolve_task
from embedders.store.atomic import json_ready, write_json
from embedders.store.parts import MEDIA, StoreError
from embedders.store.reader import list_embedders, load
from ray_jobs.sweep.space import LabelSpec, describe_space, search_space, task_key

# settings that change what a task's search or retraining means; a rerun must keep them
SEARCH_KEYS = ("h5_path", "embedding_type", "num_samples", "scheduler", "max_epochs", "patience", "grace_period",
               "reduction_factor", "seed", "seeds", "group_column", "split_column", "cv", "rows_sha256", "space")


class SweepError(Exception):
    """Bad flags or inputs, named with what was expected and what came (exit status 2)."""


@dataclasses.dataclass
class Settings:
    h5_path: Path
    labels: list[LabelSpec]
    media: list[str]
    embedders: list[str] | None
    output_dir: Path
    tracking_uri: str
    experiment_name: str
    embedding_type: str = "average"
    num_samples: int = 20
    max_concurrent: int | None = None
    seeds: int = 5
    scheduler: str = "asha"
    max_epochs: int = 50
    patience: int = 10
    grace_period: int = 5
    reduction_factor: float = 3.0
    group_column: str | None = None
    split_column: str | None = "split"     # None: load_task draws a seeded stratified split
    cv: str = "auto"                       # training.evaluation_plan.CV_MODES
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    num_cpus: int | None = None
    seed: int = 0
    verbose: int = 0
    h5_source: str | None = None  # the URI a remote --h5_path came from (h5_path is then a local copy)
    # the ids valid in every swept (medium, embedder): every task uses these rows (plan_tasks fills it)
    row_ids: list[str] | None = None

    def h5_name(self) -> str:
        """The input as the user named it: the URI, or the absolute local path."""
        return self.h5_source or str(Path(self.h5_path).absolute())

    @property
    def rows_sha256(self) -> str | None:
        """sha256 of the sorted shared row ids: a rerun on other rows (media, embedders, store) is refused."""
        if self.row_ids is None:
            return None
        return hashlib.sha256("\n".join(sorted(self.row_ids)).encode()).hexdigest()

    def search_settings(self) -> dict[str, Any]:
        values = {k: getattr(self, k) for k in SEARCH_KEYS if k != "space"}
        values["h5_path"] = self.h5_name()
        values["space"] = describe_space(search_space(self.embedding_type))
        return values

    def retrain_seeds(self) -> list[int]:
        return list(range(self.seed, self.seed + self.seeds))


@dataclasses.dataclass(frozen=True)
class Task:
    medium: str
    embedder: str
    label: str
    task: str            # classification | regression
    task_reason: str

    @property
    def key(self) -> str:
        return task_key(self.medium, self.embedder, self.label)

    @property
    def name(self) -> str:
        return f"{self.medium}/{self.embedder}/{self.label}"

    @property
    def score_name(self) -> str:
        return "accuracy" if self.task == "classification" else "r2"


def plan_tasks(settings: Settings) -> list[Task]:
    """Every (medium, embedder, label) to sweep, after checking media, embedders and columns exist."""
    h5 = Path(settings.h5_path)
    if not h5.exists():
        raise SweepError(f"--h5_path: no file at {h5}; run python -m ray_jobs.generate_embeddings first")
    unknown = [m for m in settings.media if m not in MEDIA]
    if unknown:
        raise SweepError(f"--media: unknown medium {unknown}; expected names from {list(MEDIA)}")
    if settings.cv in ("logo", "group_kfold") and settings.group_column is None:
        raise SweepError(f"--cv {settings.cv} holds out whole groups: give --group_column (e.g. drummer, composer)")
    if not 1 <= len(settings.media) <= 2 or len(set(settings.media)) != len(settings.media):
        raise SweepError(f"--media: expected one medium or two different ones to set side by side, got {settings.media}")
    try:
        stored = list_embedders(h5)
    except OSError as exc:
        raise SweepError(f"--h5_path: {h5} is not a readable HDF5 file or store folder ({exc})") from None
    chosen: dict[str, list[str]] = {}
    for medium in settings.media:
        available = stored.get(medium, [])
        if not available:
            raise SweepError(f"--media: {h5} has no {medium}; it holds {sorted(stored) or 'no media'}")
        names = [e for e in (settings.embedders or available) if e in available]
        if not names:
            raise SweepError(f"--embedders: {medium} in {h5} has none of {settings.embedders}; it has {available}")
        chosen[medium] = names
    if settings.embedders:
        everywhere = {e for names in chosen.values() for e in names}
        missing = [e for e in settings.embedders if e not in everywhere]
        if missing:
            raise SweepError(f"--embedders: {missing} not found in {settings.media} of {h5}; "
                             f"stored: { {m: stored.get(m, []) for m in settings.media} }")
    metadata = _metadata(h5, chosen)
    settings.row_ids = _shared_rows(h5, chosen, settings.embedding_type)
    named = [(spec.label, "--labels") for spec in settings.labels] + [(settings.group_column, "--group_column")]
    if settings.split_column != "split":     # the default may be absent (a split is drawn); a named one may not
        named.append((settings.split_column, "--split_column"))
    for column, flag in named:
        if column is not None and column not in metadata.columns:
            raise SweepError(f"{flag}: no column {column!r} in {h5}; "
                             f"its metadata columns are {sorted(metadata.columns)}")
    tasks = []
    for spec in settings.labels:
        try:
            task, reason = resolve_task(spec.task, metadata[spec.label], source=f"--labels {spec.label}:{spec.task}")
        except ValueError as exc:
            raise SweepError(str(exc)) from None
        for medium, names in chosen.items():
            tasks.extend(Task(medium, name, spec.label, task, reason) for name in names)
    return tasks


def _metadata(h5: Path, chosen: dict[str, list[str]]) -> pd.DataFrame:
    """Metadata of the rows valid in any chosen (medium, embedder), one row per id."""
    frames = []
    for medium, names in chosen.items():
        for name in names:
            try:
                frames.append(load(h5, medium, None if name == "legacy" else name, "average").metadata)
            except StoreError as exc:
                raise SweepError(f"--h5_path: cannot read {medium}/{name} from {h5}: {exc}") from None
    merged = pd.concat(frames, ignore_index=True)
    return merged.drop_duplicates("id") if "id" in merged.columns else merged


def _shared_rows(h5: Path, chosen: dict[str, list[str]], embedding_type: str) -> list[str]:
    """The ids valid in every chosen (medium, embedder): the rows of every task, so media share one test set."""
    from training.classifier_data import TaskDataError, shared_ids

    sources = [(medium, None if name == "legacy" else name) for medium, names in chosen.items() for name in names]
    try:
        shared = shared_ids(h5, sources, embedding_type)
    except TaskDataError as exc:
        raise SweepError(f"--h5_path: {exc}") from None
    if not shared["ids"]:
        raise SweepError(f"--media/--embedders: no row of {h5} is valid in every swept medium and embedder "
                         f"({shared['sources']})")
    smallest = min(shared["sources"].values())
    if len(shared["ids"]) < max(shared["sources"].values()):
        print(f"note: {len(shared['ids'])} rows are valid in every swept medium and embedder "
              f"({', '.join(f'{k}: {n}' for k, n in shared['sources'].items())}); every task uses those"
              + ("" if len(shared["ids"]) == smallest else " (fewer than any one source: they miss different rows)"))
    return shared["ids"]


# ---------------------------------------------------------------------------------------------- state files
def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def check_or_record_settings(settings: Settings) -> dict[str, Any]:
    """Write ``sweep.json`` on the first run; on a rerun refuse search settings that differ.

    Returns the recorded sweep description (its experiment name and tracking URI win over
    defaults derived again, so a rerun lands in the same MLflow experiment).
    """
    path = settings.output_dir / "sweep.json"
    current = settings.search_settings()
    if path.exists():
        recorded = read_json(path)
        before = recorded.get("search", {})
        differ = {k: (before.get(k), current[k]) for k in current if json_ready(before.get(k)) != json_ready(current[k])}
        if differ:
            lines = "; ".join(f"{k}: was {a!r}, now {b!r}" for k, (a, b) in differ.items())
            raise SweepError(f"--output_dir {settings.output_dir} holds a sweep with other search settings ({lines}). "
                             "Rerun with the same flags to continue it, or choose another --output_dir")
        return recorded
    recorded = {"search": current, "experiment_name": settings.experiment_name, "tracking_uri": settings.tracking_uri}
    write_json(path, recorded)
    return recorded


def task_dir(settings: Settings, task: Task) -> Path:
    return settings.output_dir / "tasks" / task.key


def tune_dir(settings: Settings) -> Path:
    return (settings.output_dir / "tune").absolute()


def task_state(settings: Settings, task: Task) -> str:
    """done | searched | new (see the module docstring)."""
    folder = task_dir(settings, task)
    if (folder / "result.json").exists():
        return "done"
    if (folder / "search.json").exists():
        return "searched"
    return "new"
