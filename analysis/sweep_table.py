"""The sweep's answer: audio against symbolic per label, from per-seed test scores (pure functions).

Input: one record per swept (medium, embedder, label), as ``ray_jobs.sweep`` writes it after
retraining the best configuration over seeds and scoring each seed once on the test split::

    {"medium": "audio_embeddings", "embedder": "melstats", "label": "composer",
     "task": "classification", "metric": "accuracy",            # regression: "r2"
     "seeds": [0, 1, 2], "test_scores": [0.61, 0.64, 0.60],     # one test score per seed
     "baseline": 0.11,                                          # majority class / train-mean predictor
     "shuffled_scores": [0.09, 0.12, 0.10],                     # same config trained on shuffled labels
     "best_config": {...}, "best_val": 0.66, "n_trials": 20, "n_test": 45}

Statistics, and what they do and do not say:

* Each medium: mean over seeds with a Student-t 95% interval. Seeds vary the initialisation and
  batch order (and the split only when the store has no ``split`` column); the test recordings
  stay the same, so the interval shows training variability, not how much the number would move
  on other recordings. That is said beside every table.
* Audio - symbolic: seeds are paired (seed k trains both media with the same seed on the same
  split), so the difference uses ``analysis.stats.paired_difference_test`` on per-seed
  differences: a t interval and an exact sign-flip p-value (its smallest possible value with n
  seeds is 2 / 2^n: 0.0625 for 5 seeds, so the interval is the main statement).
* Flags (``control_flags``): a medium whose seed interval does not lie above its shuffled-label
  control's mean (or, for classification, above the majority-class baseline) is flagged; its
  number says nothing about the label. For classification the test-sampling error is also
  checked (Wilson interval over the ``n_test`` test items): an edge over the baseline smaller
  than that is flagged too. Regression has no such check (it would need per-item predictions).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis.stats import paired_difference_test

AUDIO, SYMBOLIC = "audio_embeddings", "symbolic_embeddings"
BASELINE_NAMES = {"classification": "majority class", "regression": "train-mean predictor"}
REQUIRED = ("medium", "embedder", "label", "task", "metric", "seeds", "test_scores", "baseline", "shuffled_scores")
COLUMNS = (
    "label", "task", "metric",
    "audio_embedder", "audio_mean", "audio_ci_lo", "audio_ci_hi", "audio_baseline", "audio_shuffled",
    "audio_flags", "audio_n_test", "audio_sampling_lo", "audio_sampling_hi", "audio_best_val", "audio_config",
    "symbolic_embedder", "symbolic_mean", "symbolic_ci_lo", "symbolic_ci_hi", "symbolic_baseline",
    "symbolic_shuffled", "symbolic_flags", "symbolic_n_test", "symbolic_sampling_lo", "symbolic_sampling_hi",
    "symbolic_best_val", "symbolic_config",
    "difference", "difference_ci_lo", "difference_ci_hi", "p_value", "n_seeds", "verdict",
)



def seed_interval(values: Sequence[float], level: float = 0.95) -> dict:
    """Mean, sample sd and Student-t interval of per-seed scores (bounds NaN with fewer than 2 seeds)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"values: expected a non-empty 1-D list of per-seed scores, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"values: expected finite per-seed scores, got {v.tolist()}")
    if not 0 < level < 1:
        raise ValueError(f"level: expected a value in (0, 1), got {level}")
    mean = float(v.mean())
    if v.size < 2:
        return {"mean": mean, "sd": math.nan, "ci_lo": math.nan, "ci_hi": math.nan, "n": 1}
    sd = float(v.std(ddof=1))
    half = float(sps.t.ppf(0.5 + level / 2, v.size - 1) * sd / math.sqrt(v.size))
    return {"mean": mean, "sd": sd, "ci_lo": mean - half, "ci_hi": mean + half, "n": int(v.size)}


def _as_scores(value: Any) -> np.ndarray:
    return np.atleast_1d(np.asarray(value, dtype=np.float64))


def wilson_interval(accuracy: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of an accuracy measured on ``n`` test items: the test-sampling error
    the seed interval leaves out (how far the score could move on another draw of recordings)."""
    if not 0 <= accuracy <= 1:
        raise ValueError(f"accuracy: expected a value in [0, 1], got {accuracy}")
    if n < 1:
        raise ValueError(f"n: expected at least 1 test item, got {n}")
    z = float(sps.norm.ppf(0.5 + level / 2))
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def control_flags(test_scores: Sequence[float], baseline: float, shuffled_scores: Sequence[float] | float,
                  task: str, n_test: int | None = None) -> list[str]:
    """Why a result should not be read as evidence about the label (empty: none).

    * "not above shuffled-label control": the seed interval's lower bound (the mean with one seed)
      does not exceed the mean score of the same configuration trained on shuffled labels;
    * "not above majority baseline" (classification): the same against the majority-class accuracy;
    * "within test-sampling error of the baseline" (classification with ``n_test``): the Wilson
      interval of the mean accuracy over ``n_test`` test items reaches down to the larger of the
      baseline and the shuffled control: on another draw of test recordings the edge could vanish.
    """
    if task not in BASELINE_NAMES:
        raise ValueError(f"task: expected one of {sorted(BASELINE_NAMES)}, got {task!r}")
    real = seed_interval(test_scores)
    shuffled = float(np.mean(_as_scores(shuffled_scores)))
    low = real["ci_lo"] if np.isfinite(real["ci_lo"]) else real["mean"]
    flags = []
    if not low > shuffled:
        flags.append("not above shuffled-label control")
    if task == "classification":
        if not low > float(baseline):
            flags.append("not above majority baseline")
        if n_test and not flags and not wilson_interval(real["mean"], int(n_test))[0] > max(float(baseline), shuffled):
            flags.append("within test-sampling error of the baseline")
    return flags


def compare_media(audio: dict, symbolic: dict, level: float = 0.95) -> dict:
    """Audio - symbolic on the seeds both records share (paired by seed)."""
    a_by_seed = dict(zip(audio["seeds"], _as_scores(audio["test_scores"])))
    s_by_seed = dict(zip(symbolic["seeds"], _as_scores(symbolic["test_scores"])))
    common = [s for s in audio["seeds"] if s in s_by_seed]
    if not common:
        raise ValueError(f"label {audio['label']!r}: audio seeds {audio['seeds']} and symbolic seeds "
                         f"{symbolic['seeds']} share none, so the media cannot be paired")
    a = np.array([a_by_seed[s] for s in common])
    b = np.array([s_by_seed[s] for s in common])
    if len(common) < 2:
        return {"difference": float(a[0] - b[0]), "ci_lo": math.nan, "ci_hi": math.nan, "p_value": math.nan,
                "n_seeds": 1}
    test = paired_difference_test(a, b, level=level)
    return {"difference": test["mean_difference"], "ci_lo": test["ci_lo"], "ci_hi": test["ci_hi"],
            "p_value": test["p_value"], "n_seeds": len(common)}


def verdict(row: dict) -> str:
    """One sentence a reader can act on; flags come first because they void the comparison."""
    parts = []
    for side in ("audio", "symbolic"):
        if row.get(f"{side}_flags"):
            parts.append(f"{side}: {row[f'{side}_flags']}")
    diff, lo, hi = row.get("difference"), row.get("difference_ci_lo"), row.get("difference_ci_hi")
    if diff is None or not np.isfinite(diff):
        parts.append("only one medium swept: no comparison")
    elif not (np.isfinite(lo) and np.isfinite(hi)):
        parts.append("one seed: no interval on the difference (use --seeds >= 2)")
    elif lo > 0:
        parts.append("audio higher across seeds (paired interval above 0)")
    elif hi < 0:
        parts.append("symbolic higher across seeds (paired interval below 0)")
    else:
        parts.append("no clear difference (paired interval includes 0)")
    return "; ".join(parts)


def _check_record(record: dict) -> None:
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise ValueError(f"sweep record {record.get('medium')}/{record.get('embedder')}/{record.get('label')}: "
                         f"missing keys {missing}")
    if record["medium"] not in (AUDIO, SYMBOLIC):
        raise ValueError(f"sweep record: medium must be {AUDIO!r} or {SYMBOLIC!r}, got {record['medium']!r}")
    if len(record["seeds"]) != len(_as_scores(record["test_scores"])):
        raise ValueError(f"sweep record {record['medium']}/{record['embedder']}/{record['label']}: "
                         f"{len(record['seeds'])} seeds but {len(_as_scores(record['test_scores']))} test scores")


def config_text(config: dict | None) -> str:
    """A best configuration as one short line: ``mlp h=256 drop=0.10 lr=1.20e-03 wd=3.00e-05 bs=32``."""
    if not config:
        return ""
    short = {"hidden_dim": "h", "dropout": "drop", "learning_rate": "lr", "weight_decay": "wd", "batch_size": "bs"}
    parts = [str(config.get("model", "?"))]
    for key, name in short.items():
        if key == "hidden_dim" and config.get("model") == "linear":
            continue   # sampled, but a linear probe has no hidden layer
        if key in config:
            value = config[key]
            text = f"{value:.2e}" if key in ("learning_rate", "weight_decay") else (
                f"{value:.2f}" if isinstance(value, float) else str(value))
            parts.append(f"{name}={text}")
    return " ".join(parts)


_SIDE_KEYS = ("embedder", "mean", "ci_lo", "ci_hi", "baseline", "shuffled", "flags", "n_test", "sampling_lo",
              "sampling_hi", "best_val", "config")


def _side(record: dict | None, prefix: str) -> dict:
    if record is None:
        return {f"{prefix}_{k}": (math.nan if k not in ("embedder", "flags", "config") else "") for k in _SIDE_KEYS}
    interval = seed_interval(record["test_scores"])
    n_test = record.get("n_test")
    sampling = (wilson_interval(interval["mean"], int(n_test))
                if n_test and record["task"] == "classification" else (math.nan, math.nan))
    return {
        f"{prefix}_embedder": record["embedder"], f"{prefix}_mean": interval["mean"],
        f"{prefix}_ci_lo": interval["ci_lo"], f"{prefix}_ci_hi": interval["ci_hi"],
        f"{prefix}_baseline": float(record["baseline"]),
        f"{prefix}_shuffled": float(np.mean(_as_scores(record["shuffled_scores"]))),
        f"{prefix}_flags": "; ".join(control_flags(record["test_scores"], record["baseline"],
                                                  record["shuffled_scores"], record["task"], n_test)),
        f"{prefix}_n_test": float(n_test) if n_test else math.nan,
        f"{prefix}_sampling_lo": sampling[0], f"{prefix}_sampling_hi": sampling[1],
        f"{prefix}_best_val": float(record.get("best_val", math.nan)),
        f"{prefix}_config": config_text(record.get("best_config")),
    }


def build_table(records: Iterable[dict], level: float = 0.95) -> pd.DataFrame:
    """One row per (label, audio embedder, symbolic embedder); a medium swept alone gets its own row."""
    records = list(records)
    for record in records:
        _check_record(record)
    rows = []
    for label in dict.fromkeys(r["label"] for r in records):
        mine = [r for r in records if r["label"] == label]
        tasks = {(r["task"], r["metric"]) for r in mine}
        if len(tasks) > 1:
            raise ValueError(f"label {label!r} was swept as several tasks {sorted(tasks)}; one per label")
        task, metric = tasks.pop()
        audio = [r for r in mine if r["medium"] == AUDIO] or [None]
        symbolic = [r for r in mine if r["medium"] == SYMBOLIC] or [None]
        for a in audio:
            for s in symbolic:
                row = {"label": label, "task": task, "metric": metric, **_side(a, "audio"), **_side(s, "symbolic")}
                if a is not None and s is not None:
                    diff = compare_media(a, s, level)
                    row.update({"difference": diff["difference"], "difference_ci_lo": diff["ci_lo"],
                                "difference_ci_hi": diff["ci_hi"], "p_value": diff["p_value"],
                                "n_seeds": diff["n_seeds"]})
                else:
                    only = a or s
                    row.update({"difference": math.nan, "difference_ci_lo": math.nan, "difference_ci_hi": math.nan,
                                "p_value": math.nan, "n_seeds": len(only["seeds"])})
                row["verdict"] = verdict(row)
                rows.append(row)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def key_metrics(table: pd.DataFrame) -> dict[str, float]:
    """Flat ``{name: value}`` of the headline numbers (MLflow metric names: letters, digits, ``_-./``)."""
    out = {}
    for _, row in table.iterrows():
        stem = f"{row['label']}.{row['audio_embedder'] or 'none'}_vs_{row['symbolic_embedder'] or 'none'}"
        for key in ("audio_mean", "audio_ci_lo", "audio_ci_hi", "audio_shuffled", "symbolic_mean", "symbolic_ci_lo",
                    "symbolic_ci_hi", "symbolic_shuffled", "difference", "difference_ci_lo", "difference_ci_hi",
                    "p_value"):
            value = row[key]
            if value is not None and np.isfinite(value):
                out[_metric_name(f"{stem}.{key}")] = float(value)
    return out


def _metric_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)
