"""The comparison's metrics as rows (one per metric): metrics.csv, the page's table, the null draws' file.

A row holds the metric's ``name``, ``subsampled`` and every key of :data:`FIELDS` (None where
the metric has no such value). Rows come from the result dicts of ``analysis.compare``
generically, so a new statistic needs no code here or in ``compare_page``:

* a new metric (a new key in ``compare_spaces``'s ``metrics``, or in ``compare_labels``'s
  per-medium dict) gets a row named after its key (label metrics: ``label_<medium>_<key>``);
* a new field of the metric entries: add one :class:`Field` to :data:`FIELDS` (the within-label
  null's fields are flattened to ``within_<key>``, :data:`WITHIN_KEYS`). Its key(s) become metrics.csv columns
  after :data:`CSV_COLUMNS` and a page column at its place in FIELDS (label metrics: a clause in
  their cell), each only when some row has a value, so outputs without the field keep their bytes.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import math
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Field:
    """A reported field of a metric entry: its key(s) and how the page shows it."""

    key: str                 # the entry's key (an interval's low end)
    heading: str             # page column heading (HTML)
    kind: str = "number"     # value (bold) | number | interval | p | count | text
    hi: str | None = None    # an interval's high end

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.key,) if self.hi is None else (self.key, self.hi)


FIELDS: tuple[Field, ...] = (
    Field("value", "value", "value"),
    Field("ci_lo", "95% CI", "interval", hi="ci_hi"),
    Field("null_mean", "null mean"),
    Field("null_lo", "null 95% range", "interval", hi="null_hi"),
    Field("p_value", "p", "p"),
    Field("chance", "chance"),
    Field("n_used", "n used", "count"),
    Field("excess", "excess over null"),
    Field("excess_ci_lo", "excess 95% CI", "interval", hi="excess_ci_hi"),
    Field("p_holm", "Holm p", "p"),
    Field("within_excess", "excess over within-label null"),
    Field("within_excess_ci_lo", "within excess 95% CI", "interval", hi="within_excess_ci_hi"),
    Field("within_p_value", "within-label p", "p"),
    Field("within_p_holm", "within-label Holm p", "p"),
    Field("kind", "estimates", "text"),
)
# metrics.csv's first columns, in this order, always present
CSV_COLUMNS = ("name", "value", "ci_lo", "ci_hi", "null_mean", "null_lo", "null_hi", "p_value", "n_used",
               "subsampled", "chance")
# null_within's keys that become ``within_<key>`` row fields (the rest: draws and bookkeeping)
WITHIN_KEYS = ("excess", "excess_ci_lo", "excess_ci_hi", "p_value", "p_holm", "null_mean")


def _plain(value):
    """A cell value: numpy scalars as Python values, NaN/inf as None (an empty CSV cell, a dash on the page)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _row(name: str, entry: dict, **override) -> dict:
    within = entry.get("null_within") or {}
    flat = {**entry, **{f"within_{k}": within.get(k) for k in WITHIN_KEYS}}
    row = {"name": name, **{k: flat.get(k) for f in FIELDS for k in f.keys},
           "subsampled": bool(entry.get("subsampled", False)), **override}
    return {k: _plain(v) for k, v in row.items()}


def metric_rows(spaces: dict | None, labels: dict | None) -> list[dict]:
    """Every space metric, then per medium every label metric, then the audio - symbolic differences.

    Label rows: ``label_<medium>_<metric>`` (the kNN score: ``label_<medium>_knn_accuracy`` or
    ``_knn_r2``); ``label_diff_<name>`` for each paired test (value: the mean difference, n used:
    its units) and each plain difference (n used: the labelled rows).
    """
    rows = [_row(name, e) for name, e in ((spaces or {}).get("metrics") or {}).items()]
    if labels:
        score = "r2" if labels["task"] == "regression" else "accuracy"
        for medium in ("audio", "symbolic"):
            for key, entry in labels[medium].items():
                if isinstance(entry, dict):
                    rows.append(_row(f"label_{medium}_{key}" + (f"_{score}" if key == "knn" else ""), entry))
        for key, diff in labels["difference_audio_minus_symbolic"].items():
            if isinstance(diff, dict):   # a paired test
                rows.append(_row(f"label_diff_{key}", diff, value=difference_value(diff),
                                 n_used=diff.get("n_units", labels["n"])))
            elif diff is not None:
                rows.append(_row(f"label_diff_{key}", {}, value=diff, n_used=labels["n"]))
    return rows


def difference_value(test: dict) -> float:
    """A paired test's point difference: ``mean_difference`` (by fold / recording) or ``difference`` (jackknife)."""
    return test["mean_difference"] if "mean_difference" in test else test["difference"]


def csv_columns(rows: Sequence[dict]) -> list[str]:
    """CSV_COLUMNS, then every other FIELDS key that some row has a value for."""
    extra = [k for f in FIELDS for k in f.keys
             if k not in CSV_COLUMNS and any(r.get(k) is not None for r in rows)]
    return [*CSV_COLUMNS, *extra]


def metrics_csv(rows: Sequence[dict]) -> str:
    """metrics.csv: a header, then one line per row; a missing value is an empty cell."""
    columns = csv_columns(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: ("" if r.get(k) is None else r[k]) for k in columns} for r in rows])
    return buf.getvalue()


WITHIN_SUFFIX = "__within"  # null_distributions.npz: a metric's within-label draws


def split_nulls(payload: dict) -> tuple[dict, dict[str, np.ndarray]]:
    """(payload without the permutation draws, {metric name: draws}) for metrics.json and the .npz file."""
    out = copy.deepcopy(payload)
    nulls: dict[str, np.ndarray] = {}
    for name, entry in (out.get("spaces") or {}).get("metrics", {}).items():
        null = entry.pop("null", None)
        if null is not None:
            nulls[name] = np.asarray(null, dtype=np.float64)
        within = (entry.get("null_within") or {}).pop("null", None)
        if within is not None:
            nulls[name + WITHIN_SUFFIX] = np.asarray(within, dtype=np.float64)
    labels = out.get("labels")
    for medium in ("audio", "symbolic"):
        rdm = (labels or {}).get(medium, {}).get("label_rdm") or {}
        null = rdm.pop("null", None)
        if null is not None:
            nulls[f"label_{medium}_label_rdm"] = np.asarray(null, dtype=np.float64)
    return out, nulls


def nulls_npz(nulls: dict[str, np.ndarray]) -> bytes:
    """null_distributions.npz: one compressed array of draws per metric name."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **nulls)
    return buf.getvalue()
