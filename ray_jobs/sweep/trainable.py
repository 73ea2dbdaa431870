"""The sweep's Ray Tune pieces: the search space as Tune domains and the function trainable.

A function trainable (not a Ray Train trainer inside Tune: under ASHA that leaks placement groups
in Ray 2.60). One trial = one ``ClassificationExperiment.fit`` on the task's arrays, which arrive
through ``tune.with_parameters`` (put in the object store once per task, not re-read from the
HDF5 file by every trial). Every epoch is one ``tune.report``: the experiment's validation
metrics, ``score`` (the task's validation metric: accuracy or R^2) and ``best_score`` (its value
at the experiment's best epoch so far, what ASHA and the final choice compare). At each new best
epoch the trial also reports a checkpoint holding the model as ``best_model.pth`` (the
experiment's own format, so ``python -m ray_jobs.train_classifier --model_path`` evaluates it),
so a trial that ASHA stops early still leaves its best model behind. The test split is never
touched here.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

from ray import tune

from embedders.store.atomic import write_json
from ray_jobs.sweep.space import Dimension, search_space


def tune_domains(embedding_type: str) -> dict[str, Any]:
    """``ray_jobs.sweep.space.search_space`` as Ray Tune sampling domains."""
    return {name: _domain(dim) for name, dim in search_space(embedding_type).items()}


def _domain(dim: Dimension):
    if dim.kind == "choice":
        return tune.choice(list(dim.values))
    if dim.kind == "uniform":
        return tune.uniform(*dim.values)
    return tune.loguniform(*dim.values)


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool):
            out[key] = float(value)
            continue
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            continue   # per-class reports and the like stay out of the per-epoch stream
    return out


def train_trial(config: dict[str, Any], data: Any) -> None:
    """Fit one sampled configuration; report every epoch; checkpoint each new best epoch.

    ``config`` holds the sampled hyperparameters plus the task's fixed entries: ``score_key``
    (the key of the experiment's epoch metrics to select on, e.g. ``val_accuracy``),
    ``max_epochs``, ``patience``, ``seed`` and ``use_gpu``. The best epoch is the experiment's
    own (``experiment.best_epoch``: highest validation accuracy, ties to the lower validation
    loss; regression: lowest validation loss), so the checkpoint is the model ``fit`` keeps.
    """
    import logging

    import torch

    from ray_jobs.sweep.space import train_config_kwargs
    from training.experiment import ClassificationExperiment, TrainConfig

    # one "Checkpoint successfully created" line per new best epoch of every trial drowns the console
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    train_config = TrainConfig(**train_config_kwargs(config, num_epochs=config["max_epochs"],
                                                     patience=config["patience"], seed=config["seed"]))
    device = "cuda" if config.get("use_gpu") and torch.cuda.is_available() else "cpu"
    experiment = ClassificationExperiment(data, train_config, device=device)
    score_key = config["score_key"]
    best = {"score": -math.inf}

    def on_epoch(epoch: int, metrics: dict[str, Any]) -> None:
        if score_key not in metrics:
            raise KeyError(f"the experiment's epoch metrics have no {score_key!r}; they have {sorted(metrics)}")
        score = float(metrics[score_key])
        # the 0-based "epoch" stays out: Tune's training_iteration (1-based) counts epochs and is the MLflow step
        report = {**_numbers({k: v for k, v in metrics.items() if k != "epoch"}), "score": score}
        if experiment.best_epoch == epoch:      # fit has just taken this epoch as its best
            best["score"] = score if math.isfinite(score) else best["score"]
            report["best_score"] = best["score"]
            with tempfile.TemporaryDirectory(prefix="avs-trial-") as folder:
                save_best(experiment, Path(folder), {"epoch": int(epoch), **report,
                                                      "config": {k: config[k] for k in sorted(config)}})
                tune.report(report, checkpoint=tune.Checkpoint.from_directory(folder))
            return
        report["best_score"] = best["score"]
        tune.report(report)

    experiment.fit(on_epoch=on_epoch)


def save_best(experiment: Any, folder: Path, info: dict[str, Any]) -> None:
    """``best_model.pth`` in the experiment's own format (``ClassificationExperiment.load`` and
    ``train_classifier --model_path`` read it) and ``trial.json``. Not ``experiment.save``: that
    also scores the test split, which no trial may look at."""
    import torch

    from training.experiment import MODEL_FILE

    torch.save(experiment.state(), folder / MODEL_FILE)
    write_json(folder / "trial.json", info)
