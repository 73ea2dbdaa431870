"""What a classifier sweep searches over, and how each label becomes a task (pure Python, no Ray).

``ray_jobs.sweep.trainable`` turns :func:`search_space` into Ray Tune domains; keeping the space
here as plain data lets it be documented, tested and recorded in every output without Tune.

Label tasks (``--labels composer,bpm`` or forced: ``bpm:regression``, ``n_parts:classification``):
``auto`` is ``analysis.labels.resolve_task``, the rule of every job: a regression when the column
is numeric (not boolean) with at least 20 distinct values (bpm, duration); everything else,
including small integer codes such as ``n_parts``, is a classification.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from analysis.labels import TASKS

PROBES_FOR = {"average": ("linear", "mlp"), "sequence": ("attention", "bilstm")}
HIDDEN_DIMS = (64, 128, 256, 512)
BATCH_SIZES = (16, 32, 64)
DROPOUT_RANGE = (0.0, 0.5)
LEARNING_RATE_RANGE = (1e-4, 3e-2)
WEIGHT_DECAY_RANGE = (1e-7, 1e-2)   # log scale; 1e-7 is "practically none"


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One searched hyperparameter: ``choice`` over values, or ``uniform`` / ``loguniform`` on [lo, hi]."""

    kind: str
    values: tuple

    def __post_init__(self):
        if self.kind not in ("choice", "uniform", "loguniform"):
            raise ValueError(f"Dimension.kind: expected choice, uniform or loguniform, got {self.kind!r}")
        if self.kind != "choice" and (len(self.values) != 2 or not self.values[0] < self.values[1]):
            raise ValueError(f"Dimension {self.kind}: expected (lo, hi) with lo < hi, got {self.values}")
        if self.kind == "loguniform" and self.values[0] <= 0:
            raise ValueError(f"Dimension loguniform: expected lo > 0, got {self.values}")

    def describe(self) -> str:
        if self.kind == "choice":
            return "{" + ", ".join(map(str, self.values)) + "}"
        lo, hi = self.values
        return f"{'log-' if self.kind == 'loguniform' else ''}uniform[{lo:g}, {hi:g}]"


def search_space(embedding_type: str) -> dict[str, Dimension]:
    """The hyperparameters every trial samples; the probe family follows the embedding type."""
    if embedding_type not in PROBES_FOR:
        raise ValueError(f"embedding_type: expected one of {sorted(PROBES_FOR)}, got {embedding_type!r}")
    return {
        "model": Dimension("choice", PROBES_FOR[embedding_type]),
        "hidden_dim": Dimension("choice", HIDDEN_DIMS),           # unused by the linear probe
        "dropout": Dimension("uniform", DROPOUT_RANGE),
        "learning_rate": Dimension("loguniform", LEARNING_RATE_RANGE),
        "weight_decay": Dimension("loguniform", WEIGHT_DECAY_RANGE),
        "batch_size": Dimension("choice", BATCH_SIZES),
    }


def describe_space(space: dict[str, Dimension]) -> dict[str, str]:
    return {name: dim.describe() for name, dim in space.items()}


def train_config_kwargs(trial_config: dict[str, Any], *, num_epochs: int, patience: int, seed: int) -> dict[str, Any]:
    """``TrainConfig`` keyword arguments of one sampled configuration (numpy scalars made plain)."""
    missing = [k for k in ("model", "hidden_dim", "dropout", "learning_rate", "weight_decay", "batch_size")
               if k not in trial_config]
    if missing:
        raise ValueError(f"trial configuration {trial_config}: missing {missing}")
    return {
        "model": str(trial_config["model"]), "hidden_dim": int(trial_config["hidden_dim"]),
        "dropout": float(trial_config["dropout"]), "learning_rate": float(trial_config["learning_rate"]),
        "weight_decay": float(trial_config["weight_decay"]), "batch_size": int(trial_config["batch_size"]),
        "num_epochs": int(num_epochs), "patience": int(patience), "seed": int(seed),
    }


# ---------------------------------------------------------------------------------------------- labels
@dataclasses.dataclass(frozen=True)
class LabelSpec:
    label: str
    task: str = "auto"   # auto | classification | regression


def parse_labels(text: str) -> list[LabelSpec]:
    """``"composer,bpm:regression"`` -> [LabelSpec(composer, auto), LabelSpec(bpm, regression)]."""
    specs, seen = [], set()
    for raw in (text or "").split(","):
        item = raw.strip()
        if not item:
            continue
        label, _, task = item.partition(":")
        label, task = label.strip(), (task.strip() or "auto")
        if not label:
            raise ValueError(f"--labels: empty label name in {text!r}")
        if task not in ("auto", *TASKS):
            raise ValueError(f"--labels: task of {label!r} must be classification or regression, got {task!r}")
        if label in seen:
            raise ValueError(f"--labels: {label!r} is listed twice")
        seen.add(label)
        specs.append(LabelSpec(label, task))
    if not specs:
        raise ValueError(f"--labels: expected at least one label, got {text!r}")
    return specs


def task_key(medium: str, embedder: str, label: str) -> str:
    """A file-name-safe key of one (medium, embedder, label) task, e.g. ``audio_embeddings__melstats__composer``."""
    def safe(part: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(part)).strip("-") or "x"
    return "__".join(safe(p) for p in (medium, embedder, label))
