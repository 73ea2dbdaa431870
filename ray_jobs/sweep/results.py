"""From ``training.experiment.run_seeds``'s output to the record ``analysis.sweep_table`` reads."""

from __future__ import annotations

from typing import Any

from analysis.sweep_table import seed_interval


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
    interval = seed_interval(scores)
    return {
        "medium": task.medium, "embedder": task.embedder, "label": task.label, "task": task.task,
        "metric": task.score_name, "seeds": list(seeds), "test_scores": scores, "baseline": baseline,
        "shuffled_scores": shuffled, "shuffled_mean": sum(shuffled) / len(shuffled),
        "n_test": int(out["n_test"]) if out.get("n_test") is not None else None,
        "mean": interval["mean"], "ci_lo": interval["ci_lo"], "ci_hi": interval["ci_hi"],
        "best_config": search["best_config"], "best_val": search["best_val"], "best_run_id": search.get("best_run_id"),
        "n_trials": search.get("n_trials"), "n_cut_by_asha": search.get("n_cut_by_asha"),
        "search_seconds": search.get("search_seconds"), "data": search.get("data", {}),
    }
