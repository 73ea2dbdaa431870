"""From ``training.seed_runs.run_seeds``'s output to the record ``analysis.sweep_table`` reads.

Per-item fields of a record (the item-level paired test between media reads them)::

    "test_ids_sha256": "9f2c...",        # sha256 of the sorted test ids joined by newlines; equal for
                                         # every medium of a label (same rows, one split or one set of folds)
    "test_ids": ["r003", "r007", ...],   # (n,) the test items, sorted: the order of every list below
    "test_targets": ["jazz", ...],       # (n,) true value (class name, or float for regression)
    "test_predictions": [[...], ...],    # (n_seeds, n) prediction per seed (order of "seeds") and item
    "shuffled_test_predictions": [...],  # (n_seeds, n) the shuffled-label control's
    "test_folds": [0, 0, 1, ...],        # (n,) cross-validation: the fold holding the item as test (else 0)
    "evaluation": {"kind": "split" | "logo" | "group_kfold", "n_folds": k, ...}
"""

from __future__ import annotations

from typing import Any

from analysis.sweep_table import seed_interval

ITEM_KEYS = ("test_ids_sha256", "test_ids", "test_targets", "test_predictions", "shuffled_test_predictions",
             "test_folds")


class SeedsFormatError(ValueError):
    """run_seeds returned something this adapter does not know how to read."""


def _get(out: dict, *keys: str) -> Any:
    for key in keys:
        if key in out:
            return out[key]
    raise SeedsFormatError(f"run_seeds output has none of {keys}; it has {sorted(out)}")


def record_from_seeds(task, search: dict, out: dict, seeds: list[int]) -> dict:
    """The table record of one task: per-seed test scores, baseline and shuffled control, best config."""
    scores = [float(v) for v in _get(out, "test_scores")]
    shuffled = [float(v) for v in _get(out, "shuffled_scores")]
    baseline = float(_get(out, "baseline"))
    if len(scores) != len(seeds):
        raise SeedsFormatError(f"{task.name}: {len(seeds)} seeds but {len(scores)} test scores")
    # run_seeds' interval (accuracy: Wilson over the test items, inside [0, 1]); an older output: over seeds
    interval = {k: out[k] for k in ("mean", "ci_lo", "ci_hi")} if "interval" in out else seed_interval(scores)
    return {
        "medium": task.medium, "embedder": task.embedder, "label": task.label, "task": task.task,
        "metric": task.score_name, "seeds": list(seeds), "test_scores": scores, "baseline": baseline,
        "shuffled_scores": shuffled, "shuffled_mean": sum(shuffled) / len(shuffled),
        "n_test": int(out["n_test"]) if out.get("n_test") is not None else None,
        "mean": interval["mean"], "ci_lo": interval["ci_lo"], "ci_hi": interval["ci_hi"],
        "best_config": search["best_config"], "best_val": search["best_val"], "best_run_id": search.get("best_run_id"),
        "n_trials": search.get("n_trials"), "n_cut_by_asha": search.get("n_cut_by_asha"),
        "search_seconds": search.get("search_seconds"), "data": search.get("data", {}),
        "evaluation": out.get("evaluation", {"kind": "split", "n_folds": 1}),
        "interval": out.get("interval"), "seed_interval": out.get("seed_interval"),
        **{k: out[k] for k in ITEM_KEYS if k in out},
    }
