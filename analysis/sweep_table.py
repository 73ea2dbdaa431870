"""The sweep's answer: audio against symbolic per label, from per-seed test results (pure functions).

Input: one record per swept (medium, embedder, label), as ``ray_jobs.sweep`` writes it after
retraining the best configuration over seeds and scoring each seed once on the test split::

    {"medium": "audio_embeddings", "embedder": "melstats", "label": "composer",
     "task": "classification", "metric": "accuracy",            # regression: "r2"
     "seeds": [0, 1, 2], "test_scores": [0.61, 0.64, 0.60],     # one test score per seed
     "baseline": 0.11,                                          # majority class / train-mean predictor
     "shuffled_scores": [0.09, 0.12, 0.10],                     # same config trained on shuffled labels
     "best_config": {...}, "best_val": 0.66, "n_trials": 20, "n_test": 45,
     # per-item fields (what the item-level verdict needs; records without them get no verdict):
     "test_ids_sha256": "9f2c...",       # ``test_ids_sha256(test ids)``: both media must carry the same
     "test_ids": ["r3", "r7", ...],      # optional: the item order below (default: sorted test ids)
     "test_targets": ["bach", ...],      # (n_items,) true label per test item
     "test_predictions": [[...], ...]}   # (n_seeds, n_items) prediction per seed (order of "seeds") and item

Statistics, and what they do and do not say:

* Records compared with each other must hold the same test items: different ``test_ids_sha256``
  (or one record without it) raise ``TestSetMismatch``; records without any hash are compared as
  before, marked "test set not verified".
* Each medium: ``{side}_ci_lo/hi`` includes test-sampling error and stays inside the metric's
  range: with per-item predictions the crossed items x seeds t interval (``analysis.paired_tests``)
  and, for accuracy, the wider of it and Wilson's interval over the items; without them Wilson over ``n_test`` (accuracy) or,
  for R^2, only the seed interval (``{side}_ci_method`` says which). ``{side}_seed_lo/hi``: the
  Student-t interval over seeds (training variability on one test set), clipped to the range.
* Audio - symbolic (``difference``): with per-item predictions of both, the item-level paired
  test of ``analysis.paired_tests`` (crossed items x seeds t: interval and p; McNemar's p
  for accuracy in ``mcnemar_p``). ``p_holm``: Holm over the item-level p-values of all rows of the
  table (the family). The verdict names a winner only when ``p_holm`` <= 0.05. Without per-item
  predictions the row shows the seed-paired difference (t interval, sign-flip p over seeds:
  training variability only) and the verdict says that no item-level test was possible.
* Flags (``control_flags``): a medium whose seed interval does not lie above its shuffled-label
  control's mean (or, for classification, above the majority-class baseline) is flagged; its
  number says nothing about the label. For classification the test-sampling error is also
  checked (Wilson interval over the ``n_test`` test items).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis.multiplicity import holm
from analysis.paired_tests import accuracy_interval, paired_classification_test, paired_regression_test, r2_interval
from analysis.paired_tests import wilson_interval as _wilson
from analysis.stats import paired_difference_test

AUDIO, SYMBOLIC = "audio_embeddings", "symbolic_embeddings"
ALPHA = 0.05
METRIC_BOUNDS = {"accuracy": (0.0, 1.0), "r2": (-math.inf, 1.0)}
BASELINE_NAMES = {"classification": "majority class", "regression": "train-mean predictor"}
REQUIRED = ("medium", "embedder", "label", "task", "metric", "seeds", "test_scores", "baseline", "shuffled_scores")
ITEM_KEYS = ("test_predictions", "test_targets")
_SIDE_KEYS = ("embedder", "mean", "ci_lo", "ci_hi", "ci_method", "seed_lo", "seed_hi", "baseline", "shuffled", "flags",
              "n_test", "sampling_lo", "sampling_hi", "best_val", "config")
COLUMNS = (
    "label", "task", "metric",
    *(f"audio_{k}" for k in _SIDE_KEYS), *(f"symbolic_{k}" for k in _SIDE_KEYS),
    "difference", "difference_ci_lo", "difference_ci_hi", "difference_method", "p_value", "p_holm", "mcnemar_p",
    "n_items", "n_seeds", "test_set", "verdict",
)



class TestSetMismatch(ValueError):
    """Two records set against each other were scored on different test items."""

    __test__ = False  # not a pytest test class, despite the name


def test_ids_sha256(ids: Iterable[Any]) -> str:
    """The hash every record carries: sha256 of the sorted test ids (as str) joined by newlines."""
    return hashlib.sha256("\n".join(sorted(str(i) for i in ids)).encode()).hexdigest()


def seed_interval(values: Sequence[float], level: float = 0.95,
                  bounds: tuple[float, float] = (-math.inf, math.inf)) -> dict:
    """Mean, sample sd and Student-t interval of per-seed scores, clipped to ``bounds`` (NaN with 1 seed)."""
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
    return {"mean": mean, "sd": sd, "ci_lo": float(np.clip(mean - half, *bounds)),
            "ci_hi": float(np.clip(mean + half, *bounds)), "n": int(v.size)}


def _as_scores(value: Any) -> np.ndarray:
    return np.atleast_1d(np.asarray(value, dtype=np.float64))


def wilson_interval(accuracy: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of an accuracy measured on ``n`` test items: the test-sampling error
    the seed interval leaves out (how far the score could move on another draw of recordings)."""
    if not 0 <= accuracy <= 1:
        raise ValueError(f"accuracy: expected a value in [0, 1], got {accuracy}")
    if n < 1:
        raise ValueError(f"n: expected at least 1 test item, got {n}")
    return _wilson(accuracy * n, int(n), level)


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


def _name(record: dict) -> str:
    return f"{record.get('medium')}/{record.get('embedder')}/{record.get('label')}"


def check_same_test_set(audio: dict, symbolic: dict) -> str:
    """"verified" when both records carry the same ``test_ids_sha256``, "not verified" when neither does.

    Raises TestSetMismatch when the hashes differ or only one record has one.
    """
    ha, hs = audio.get("test_ids_sha256"), symbolic.get("test_ids_sha256")
    if ha is None and hs is None:
        return "not verified"
    if ha != hs:
        raise TestSetMismatch(f"label {audio['label']!r}: {_name(audio)} was scored on test set {str(ha)[:12]} and "
                              f"{_name(symbolic)} on {str(hs)[:12]}; media are compared only on the same test items "
                              "(rows valid in both media, one split)")
    return "verified"


def _item_grid(record: dict) -> tuple[np.ndarray, np.ndarray, list]:
    """(predictions (S, n), targets (n,), item ids or None) of a record, seeds in the record's order."""
    preds = np.asarray(record["test_predictions"])
    targets = np.asarray(record["test_targets"])
    if preds.ndim != 2 or preds.shape != (len(record["seeds"]), targets.size):
        raise ValueError(f"sweep record {_name(record)}: test_predictions must be (n_seeds={len(record['seeds'])}, "
                         f"n_items={targets.size}), got shape {preds.shape}")
    ids = record.get("test_ids")
    if ids is not None and len(ids) != targets.size:
        raise ValueError(f"sweep record {_name(record)}: {len(ids)} test_ids but {targets.size} test_targets")
    return preds, targets, ids


def _aligned(audio: dict, symbolic: dict, common: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both media's predictions on the shared seeds (audio's order) and items (audio's order)."""
    pa, ta, ia = _item_grid(audio)
    ps, ts, is_ = _item_grid(symbolic)
    if ta.size != ts.size:
        raise TestSetMismatch(f"label {audio['label']!r}: {ta.size} audio test items but {ts.size} symbolic ones")
    if ia is not None and is_ is not None:
        where = {str(i): j for j, i in enumerate(is_)}
        missing = [i for i in ia if str(i) not in where]
        if missing:
            raise TestSetMismatch(f"label {audio['label']!r}: audio test items {missing[:3]} are not among the "
                                  "symbolic record's test_ids")
        order = np.array([where[str(i)] for i in ia])
        ps, ts = ps[:, order], ts[order]
    if not np.array_equal(ta.astype(str), ts.astype(str)):
        raise TestSetMismatch(f"label {audio['label']!r}: the two records' test_targets differ item by item, so "
                              "their items are not in the same order")
    sa = [list(audio["seeds"]).index(s) for s in common]
    ss = [list(symbolic["seeds"]).index(s) for s in common]
    return pa[sa], ps[ss], ta


def compare_media(audio: dict, symbolic: dict, level: float = 0.95, seed: int = 0) -> dict:
    """Audio - symbolic on the seeds both records share: item-level paired test, or seeds only.

    Returns difference, ci_lo, ci_hi, p_value, method, mcnemar_p, n_items, n_seeds, test_set.
    Raises TestSetMismatch (different test items) and ValueError (no shared seed).
    """
    test_set = check_same_test_set(audio, symbolic)
    s_seeds = set(symbolic["seeds"])
    common = [s for s in audio["seeds"] if s in s_seeds]
    if not common:
        raise ValueError(f"label {audio['label']!r}: audio seeds {audio['seeds']} and symbolic seeds "
                         f"{symbolic['seeds']} share none, so the media cannot be paired")
    base = {"mcnemar_p": math.nan, "n_items": math.nan, "n_seeds": len(common), "test_set": test_set}
    if all(k in audio for k in ITEM_KEYS) and all(k in symbolic for k in ITEM_KEYS):
        pa, ps, targets = _aligned(audio, symbolic, common)
        if audio["task"] == "classification":
            t = paired_classification_test(pa, ps, targets, level=level, seed=seed)
            base["mcnemar_p"] = t["mcnemar"]["p_value"]
        else:
            t = paired_regression_test(pa.astype(float), ps.astype(float), targets.astype(float), level=level, seed=seed)
        return {**base, "difference": t["difference"], "ci_lo": t["ci_lo"], "ci_hi": t["ci_hi"],
                "p_value": t["p_value"], "n_items": t["n_items"], "method": "items x seeds", "test": t}
    a_by_seed = dict(zip(audio["seeds"], _as_scores(audio["test_scores"])))
    s_by_seed = dict(zip(symbolic["seeds"], _as_scores(symbolic["test_scores"])))
    a = np.array([a_by_seed[s] for s in common])
    b = np.array([s_by_seed[s] for s in common])
    if len(common) < 2:
        return {**base, "difference": float(a[0] - b[0]), "ci_lo": math.nan, "ci_hi": math.nan, "p_value": math.nan,
                "method": "one seed"}
    test = paired_difference_test(a, b, level=level)
    return {**base, "difference": test["mean_difference"], "ci_lo": test["ci_lo"], "ci_hi": test["ci_hi"],
            "p_value": test["p_value"], "method": "seeds only"}


def verdict(row: dict) -> str:
    """One sentence a reader can act on; flags come first because they void the comparison."""
    parts = []
    for side in ("audio", "symbolic"):
        if row.get(f"{side}_flags"):
            parts.append(f"{side}: {row[f'{side}_flags']}")
    diff, method, p_holm = row.get("difference"), row.get("difference_method"), row.get("p_holm")
    if diff is None or not np.isfinite(diff):
        parts.append("only one medium swept: no comparison")
    elif method == "one seed":
        parts.append("one seed and no per-item predictions: no test (use --seeds >= 2)")
    elif method == "seeds only":
        parts.append("no item-level test (records lack per-item test predictions); the seed-paired difference "
                     "shows training variability only")
    elif p_holm is not None and np.isfinite(p_holm) and p_holm <= ALPHA:
        winner = "audio" if diff > 0 else "symbolic"
        parts.append(f"{winner} higher (item-level paired test, Holm-adjusted p = {p_holm:.3g})")
    else:
        parts.append("no clear difference (item-level paired test, Holm-adjusted p > 0.05)")
    return "; ".join(parts)


def _check_record(record: dict) -> None:
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise ValueError(f"sweep record {_name(record)}: missing keys {missing}")
    if record["medium"] not in (AUDIO, SYMBOLIC):
        raise ValueError(f"sweep record: medium must be {AUDIO!r} or {SYMBOLIC!r}, got {record['medium']!r}")
    if len(record["seeds"]) != len(_as_scores(record["test_scores"])):
        raise ValueError(f"sweep record {_name(record)}: "
                         f"{len(record['seeds'])} seeds but {len(_as_scores(record['test_scores']))} test scores")
    if any(k in record for k in ITEM_KEYS) and not all(k in record for k in ITEM_KEYS):
        raise ValueError(f"sweep record {_name(record)}: per-item results need both {ITEM_KEYS}")
    if any(k in record for k in ITEM_KEYS):
        _item_grid(record)


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


def _interval(record: dict, seeds: dict, level: float) -> tuple[float, float, str, tuple[float, float]]:
    """The medium's interval with test-sampling error (see module docstring) and the Wilson one."""
    n_test, task = record.get("n_test"), record["task"]
    wilson = (wilson_interval(seeds["mean"], int(n_test), level) if n_test and task == "classification"
              else (math.nan, math.nan))
    if all(k in record for k in ITEM_KEYS):
        preds, targets, _ = _item_grid(record)
        if task == "classification":
            t = accuracy_interval(preds, targets, level=level)
            return t["lo"], t["hi"], "crossed items x seeds t or Wilson, the wider", (t["wilson_lo"], t["wilson_hi"])
        t = r2_interval(preds.astype(float), targets.astype(float), level=level)
        return t["ci_lo"], t["ci_hi"], "crossed items x seeds t", wilson
    if np.isfinite(wilson[0]):
        return wilson[0], wilson[1], f"Wilson over {int(n_test)} test items (seed mean)", wilson
    return seeds["ci_lo"], seeds["ci_hi"], "seeds only (no test-sampling error)", wilson


def _side(record: dict | None, prefix: str, level: float = 0.95) -> dict:
    if record is None:
        return {f"{prefix}_{k}": (math.nan if k not in ("embedder", "flags", "config", "ci_method") else "")
                for k in _SIDE_KEYS}
    seeds = seed_interval(record["test_scores"], level, METRIC_BOUNDS.get(record["metric"], (-math.inf, math.inf)))
    lo, hi, method, wilson = _interval(record, seeds, level)
    n_test = record.get("n_test")
    return {
        f"{prefix}_embedder": record["embedder"], f"{prefix}_mean": seeds["mean"],
        f"{prefix}_ci_lo": lo, f"{prefix}_ci_hi": hi, f"{prefix}_ci_method": method,
        f"{prefix}_seed_lo": seeds["ci_lo"], f"{prefix}_seed_hi": seeds["ci_hi"],
        f"{prefix}_baseline": float(record["baseline"]),
        f"{prefix}_shuffled": float(np.mean(_as_scores(record["shuffled_scores"]))),
        f"{prefix}_flags": "; ".join(control_flags(record["test_scores"], record["baseline"],
                                                  record["shuffled_scores"], record["task"], n_test)),
        f"{prefix}_n_test": float(n_test) if n_test else math.nan,
        f"{prefix}_sampling_lo": wilson[0], f"{prefix}_sampling_hi": wilson[1],
        f"{prefix}_best_val": float(record.get("best_val", math.nan)),
        f"{prefix}_config": config_text(record.get("best_config")),
    }


def build_table(records: Iterable[dict], level: float = 0.95) -> pd.DataFrame:
    """One row per (label, audio embedder, symbolic embedder); a medium swept alone gets its own row.

    Raises TestSetMismatch when two records set against each other hold different test items.
    """
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
                row = {"label": label, "task": task, "metric": metric, **_side(a, "audio", level),
                       **_side(s, "symbolic", level)}
                if a is not None and s is not None:
                    diff = compare_media(a, s, level)
                    row.update({"difference": diff["difference"], "difference_ci_lo": diff["ci_lo"],
                                "difference_ci_hi": diff["ci_hi"], "difference_method": diff["method"],
                                "p_value": diff["p_value"], "mcnemar_p": diff["mcnemar_p"],
                                "n_items": diff["n_items"], "n_seeds": diff["n_seeds"], "test_set": diff["test_set"]})
                else:
                    only = a or s
                    row.update({"difference": math.nan, "difference_ci_lo": math.nan, "difference_ci_hi": math.nan,
                                "difference_method": "", "p_value": math.nan, "mcnemar_p": math.nan,
                                "n_items": math.nan, "n_seeds": len(only["seeds"]), "test_set": ""})
                rows.append(row)
    # the family: every item-level comparison in this table (seed-only rows are not tests of the verdict)
    item_level = [i for i, r in enumerate(rows) if r["difference_method"] == "items x seeds"]
    adjusted = holm([rows[i]["p_value"] for i in item_level])
    for row in rows:
        row["p_holm"] = math.nan
    for i, p in zip(item_level, adjusted):
        rows[i]["p_holm"] = float(p)
    for row in rows:
        row["verdict"] = verdict(row)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def key_metrics(table: pd.DataFrame) -> dict[str, float]:
    """Flat ``{name: value}`` of the headline numbers (MLflow metric names: letters, digits, ``_-./``)."""
    out = {}
    for _, row in table.iterrows():
        stem = f"{row['label']}.{row['audio_embedder'] or 'none'}_vs_{row['symbolic_embedder'] or 'none'}"
        for key in ("audio_mean", "audio_ci_lo", "audio_ci_hi", "audio_shuffled", "symbolic_mean", "symbolic_ci_lo",
                    "symbolic_ci_hi", "symbolic_shuffled", "difference", "difference_ci_lo", "difference_ci_hi",
                    "p_value", "p_holm"):
            value = row[key]
            if value is not None and np.isfinite(value):
                out[_metric_name(f"{stem}.{key}")] = float(value)
    return out


def _metric_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)
