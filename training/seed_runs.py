"""A configuration trained and tested over seeds (and cross-validation folds), beside its controls.

``run_seeds(data, config, seeds)``: per seed, one ``ClassificationExperiment`` per fold (one with
a single split), each scored once on its fold's test rows, so under cross-validation every
recording is predicted once per seed; the scores are computed over all test items. Controls: a
feature-blind predictor (majority training class / training mean, per fold) and the same
configuration trained on shuffled labels (``shuffled_labels``: training and validation labels
permuted, test labels untouched). Every test item's prediction is kept per seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

# Wilson's interval of an accuracy over n items: the one function to swap for an items x seeds bootstrap
from analysis.sweep_table import wilson_interval
from training.classifier_data import TaskData
from training.classifier_metrics import classification_metrics, regression_metrics, t_interval
from training.evaluation_plan import split_digest
from training.experiment import ClassificationExperiment, TrainConfig


def shuffled_labels(data: TaskData, seed: int) -> TaskData:
    """The control: training and validation labels permuted among themselves; test labels untouched."""
    rng = np.random.default_rng(10_000 + seed)
    y = data.y.copy()
    fit_rows = np.flatnonzero(data.split != "test")
    y[fit_rows] = y[fit_rows][rng.permutation(len(fit_rows))]
    return data.with_labels(y)


def shuffled_control(data: TaskData, config: TrainConfig, device: str | None = None) -> dict:
    """Test metrics of the same configuration trained (and model-selected) on permuted labels."""
    control = ClassificationExperiment(shuffled_labels(data, config.seed), config, device=device)
    control.fit()
    out = control.evaluate("test")
    keys = (("accuracy", "balanced_accuracy", "macro_f1") if data.task == "classification" else ("mae", "rmse", "r2"))
    return {k: out[k] for k in keys} | {"best_epoch": control.best_epoch, "seed": config.seed,
                                         "what": "train and validation labels permuted, test labels untouched"}


def _control_predictions(data: TaskData) -> np.ndarray:
    """What the feature-blind control predicts for the test rows: the majority training class, or the train mean."""
    y_train = data.y[data.index("train")]
    n = len(data.index("test"))
    if data.task == "classification":
        return np.full(n, int(np.bincount(y_train, minlength=data.num_outputs).argmax()), dtype=np.int64)
    return np.full(n, float(np.mean(y_train)), dtype=np.float64)


def _scores(data: TaskData, y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    if data.task == "classification":
        return classification_metrics(y_true, y_pred, data.class_names)
    return regression_metrics(y_true, y_pred)


def _as_items(data: TaskData, values: np.ndarray) -> list:
    """Per-item values as they are written: class names (classification) or floats."""
    if data.task == "classification":
        return [data.class_names[int(v)] for v in values]
    return [float(v) for v in values]


def run_seeds(data: TaskData, config: TrainConfig, seeds: Sequence[int],
              on_epoch: Callable[[int, dict], None] | None = None, device: str | None = None,
              on_seed: Callable[[int, ClassificationExperiment, dict, dict], None] | None = None) -> dict:
    """Train and test once per seed (and per fold under cross-validation), with the shuffled-label control.

    Every test item is predicted once per seed (by the model of the fold that holds it as test);
    scores are computed over all test items. Returns per-seed scores and their mean; for accuracy a
    Wilson 95% interval over the n test items at the mean accuracy (test-sampling error, inside
    [0, 1]), for R^2 the Student-t interval over seeds (training variability) with its upper
    bound at 1; ``seed_interval``: the Student-t interval over seeds, clipped to the metric's range.

    Per-item test predictions (what an item-level paired test between media needs), aligned:
    ``test_ids`` (sorted, the same order for every seed and every medium scored on these rows),
    ``test_targets`` and ``test_folds`` (n,), ``test_predictions`` and ``shuffled_test_predictions``
    (n_seeds, n) in the order of ``seeds``; class names for classification, floats for regression;
    ``test_ids_sha256`` is ``training.evaluation_plan.split_digest`` of ``test_ids``.

    ``on_seed(seed, experiment, control, result)`` is called after each seed with the model of the
    first fold (the only one with one split), the control's scores and the seed's pooled scores
    (the CLI saves the first seed's model from there instead of training it twice).
    """
    metric = "accuracy" if data.task == "classification" else "r2"
    folds = [data.fold(k) for k in range(data.n_folds)]
    test_of = np.full(len(data.ids), -1, dtype=np.int64)
    for k, fold in enumerate(folds):
        test_of[fold.index("test")] = k
    items = np.flatnonzero(test_of >= 0)
    items = items[np.argsort(data.ids[items].astype(str), kind="stable")]
    y_true = data.y[items]
    baseline_pred = np.zeros(len(data.ids), dtype=np.float64)
    for fold in folds:
        baseline_pred[fold.index("test")] = _control_predictions(fold)
    baseline_pred = baseline_pred[items].astype(data.y.dtype)
    baseline = {k: v for k, v in _scores(data, y_true, baseline_pred).items()
                if k in ("accuracy", "balanced_accuracy", "macro_f1", "mae", "rmse", "r2")}
    if data.task == "classification":
        majority = sorted({data.class_names[int(v)] for v in baseline_pred})
        baseline["predicts"] = majority[0] if len(folds) == 1 else "the majority training class of each fold"
    else:
        baseline["predicts"] = float(baseline_pred[0]) if len(folds) == 1 else "the training mean of each fold"
    per_seed, shuffled, predictions, shuffled_predictions = [], [], [], []
    for seed in seeds:
        cfg = dataclasses.replace(config, seed=int(seed))
        pred = np.zeros(len(data.ids), dtype=np.float64)
        control_pred = np.zeros(len(data.ids), dtype=np.float64)
        loss, best_epochs, epochs_run, first = 0.0, [], [], None
        for fold in folds:
            exp = ClassificationExperiment(fold, cfg, device=device)
            exp.fit(on_epoch=on_epoch)
            test = fold.index("test")
            pred[test], fold_loss = exp.predict(test)
            loss += fold_loss * len(test)
            best_epochs.append(exp.best_epoch)
            epochs_run.append(len(exp.history))
            control = ClassificationExperiment(shuffled_labels(fold, cfg.seed), cfg, device=device)
            control.fit()
            control_pred[test] = control.predict(test)[0]
            first = first or exp
        pred_items = pred[items].astype(data.y.dtype)
        control_items = control_pred[items].astype(data.y.dtype)
        result = {"loss": loss / max(len(items), 1), **_scores(data, y_true, pred_items), "baseline": baseline,
                  "seed": int(seed), "best_epoch": best_epochs[0], "epochs_run": epochs_run[0]}
        if len(folds) > 1:
            result.update(best_epoch_per_fold=best_epochs, epochs_run_per_fold=epochs_run)
        control_scores = _scores(data, y_true, control_items)
        keys = ("accuracy", "balanced_accuracy", "macro_f1") if data.task == "classification" else ("mae", "rmse", "r2")
        control = {k: control_scores[k] for k in keys} | {
            "seed": int(seed), "what": "train and validation labels permuted, test labels untouched"}
        per_seed.append(result)
        shuffled.append(control[metric])
        predictions.append(_as_items(data, pred_items))
        shuffled_predictions.append(_as_items(data, control_items))
        if on_seed is not None:
            on_seed(int(seed), first, control, result)
    scores = [r[metric] for r in per_seed]
    bounds = (0.0, 1.0) if metric == "accuracy" else (-np.inf, 1.0)
    seed_ci = t_interval(scores)
    seed_ci.update({k: float(np.clip(seed_ci[k], *bounds)) for k in ("ci_lo", "ci_hi") if np.isfinite(seed_ci[k])})
    if metric == "accuracy":
        lo, hi = wilson_interval(float(np.mean(scores)), len(items))
        interval = {"mean": float(np.mean(scores)), "ci_lo": lo, "ci_hi": hi, "sd": seed_ci["sd"], "n": len(scores),
                    "interval": "Wilson 95% over the n test items at the mean accuracy over seeds (test-sampling "
                                "error)"}
    else:
        interval = {**seed_ci, "interval": "Student t 95% over seeds (training variability), clipped at R^2 = 1"}
    evaluation = data.provenance.get("evaluation", {"kind": "split", "n_folds": 1})
    test_ids = [str(i) for i in data.ids[items]]
    return {
        "metric": metric, "seeds": [int(s) for s in seeds], "test_scores": scores, "shuffled_scores": shuffled,
        "baseline": float(baseline[metric]), "baseline_detail": baseline, **interval, "seed_interval": seed_ci,
        "shuffled": t_interval(shuffled), "per_seed": per_seed, "config": dataclasses.asdict(config),
        "n_test": int(len(items)), "evaluation": evaluation, "provenance": data.provenance,
        "test_ids_sha256": split_digest(np.asarray(test_ids, dtype=object), np.full(len(test_ids), "test")),
        "test_ids": test_ids, "test_targets": _as_items(data, y_true),
        "test_folds": [int(k) for k in test_of[items]], "test_predictions": predictions,
        "shuffled_test_predictions": shuffled_predictions,
    }
