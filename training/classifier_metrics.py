"""Test metrics of a probe and its baselines, and the t-interval over seeds (pure functions)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as sps


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> dict:
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    present = support > 0   # macro averages over the classes that occur in this split
    return {
        "n": int(len(y_true)),
        "accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else math.nan,
        # mean recall over the classes present in y_true (sklearn's definition, without its warning when
        # a prediction names a class absent from this split, which small test splits make routine)
        "balanced_accuracy": float(recall[present].mean()) if present.any() else math.nan,
        "macro_f1": float(f1_score(y_true, y_pred, labels=np.flatnonzero(present), average="macro", zero_division=0)),
        "per_class": {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for name, p, r, f, s in zip(class_names, precision, recall, f1, support)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "class_names": list(class_names),
    }


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    y_true = np.asarray(y_true, np.float64)
    y_pred = np.asarray(y_pred, np.float64)
    resid = y_true - y_pred
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2))
    return {"n": int(len(y_true)), "mae": float(np.mean(np.abs(resid))), "rmse": float(np.sqrt(np.mean(resid ** 2))),
            "r2": float(1 - np.sum(resid ** 2) / ss_tot) if ss_tot > 0 else math.nan}


def majority_baseline(y_train: np.ndarray, y_test: np.ndarray, class_names: Sequence[str]) -> dict:
    """Always predict the most frequent training class."""
    majority = int(np.bincount(y_train, minlength=len(class_names)).argmax())
    out = classification_metrics(y_test, np.full_like(y_test, majority), class_names)
    return {"predicts": class_names[majority], **{k: out[k] for k in ("accuracy", "balanced_accuracy", "macro_f1")}}


def mean_baseline(y_train: np.ndarray, y_test: np.ndarray) -> dict:
    """Always predict the training mean (R^2 <= 0 on test by construction, up to the mean shift)."""
    out = regression_metrics(y_test, np.full(len(y_test), float(np.mean(y_train))))
    return {"predicts": float(np.mean(y_train)), **out}


def t_interval(values: Sequence[float], level: float = 0.95) -> dict:
    """Mean and Student-t interval over seeds (bounds NaN with one seed)."""
    v = np.asarray(values, np.float64)
    mean = float(v.mean())
    if v.size < 2:
        return {"mean": mean, "ci_lo": math.nan, "ci_hi": math.nan, "sd": math.nan, "n": int(v.size)}
    sd = float(v.std(ddof=1))
    half = float(sps.t.ppf(0.5 + level / 2, v.size - 1) * sd / math.sqrt(v.size))
    return {"mean": mean, "ci_lo": mean - half, "ci_hi": mean + half, "sd": sd, "n": int(v.size)}
