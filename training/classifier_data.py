"""One classification (or regression) task read from the embedding store, split before any training.

``load_task(h5, medium, label, ...)`` returns a :class:`TaskData`: the valid rows of one embedder,
their label as class indices (or floats), and a train / validation / test assignment that is
fixed before any model sees the data:

* the store's ``split`` column when it has one (``val``, ``valid`` and ``dev`` read as validation);
* otherwise a seeded stratified 70/15/15 split by label;
* with ``group_column`` every group (drummer, mass, opus...) lies on one side only: a given split
  column is checked and refused if a group crosses it; a drawn split assigns whole groups.

Rows whose label is empty, classes with fewer than ``min_class_size`` rows and classes absent from
the training split cannot be learned or scored honestly: they are dropped, counted in
``provenance["dropped"]`` with the reason, and printed; nothing is dropped silently.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from analysis.labels import resolve_task  # the one rule, shared with compare_embeddings and the sweep

SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation", "val": "validation",
                 "valid": "validation", "dev": "validation", "test": "test", "testing": "test"}
FRACTIONS = {"train": 0.70, "validation": 0.15, "test": 0.15}


class TaskDataError(ValueError):
    """The store, label, split or group column cannot make a task; the message says which and why."""


@dataclasses.dataclass
class TaskData:
    ids: np.ndarray                      # (N,) str
    X: Any                               # average: (N, D) float32; sequence: list of N (T_i, D) float32
    y: np.ndarray                        # (N,) int64 class index, or float32 target
    split: np.ndarray                    # (N,) str in SPLITS
    groups: np.ndarray | None            # (N,) str, or None
    task: str                            # "classification" | "regression"
    class_names: list[str] | None
    input_dim: int
    num_outputs: int                     # classes, or 1 for regression
    embedding_type: str                  # "average" | "sequence"
    provenance: dict

    def index(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    def rows(self, index: np.ndarray):
        return self.X[index] if isinstance(self.X, np.ndarray) else [self.X[i] for i in index]

    def with_labels(self, y: np.ndarray) -> TaskData:
        return dataclasses.replace(self, y=y)


def normalise_split(values: pd.Series, column: str) -> np.ndarray:
    text = values.astype(str).str.strip().str.lower()
    mapped = text.map(SPLIT_ALIASES)
    unknown = sorted(set(text[mapped.isna()]))
    if unknown:
        raise TaskDataError(f"split column '{column}' has values {unknown}; expected train, validation (val/valid/dev) "
                            "or test. Fix the column, or name another with --split_column")
    return mapped.to_numpy(dtype=object)


def assign_groups(strata: np.ndarray, groups: np.ndarray, seed: int) -> np.ndarray:
    """Split whole groups into train/validation/test, balancing rows per stratum (seeded)."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"stratum": strata, "group": groups})
    sizes = frame.groupby("group").size()
    stratum_of = frame.groupby("group")["stratum"].agg(lambda s: Counter(s).most_common(1)[0][0])
    split_of: dict[Any, str] = {}
    for stratum in sorted(set(stratum_of), key=str):
        members = stratum_of.index[stratum_of == stratum].to_numpy()
        members = members[rng.permutation(len(members))]
        total = sizes[members].sum()
        filled = dict.fromkeys(SPLITS, 0)
        for k, g in enumerate(members):
            # train first, so a class with a single group can still be learned
            split = "train" if k == 0 else max(SPLITS, key=lambda s: FRACTIONS[s] * total - filled[s])
            split_of[g] = split
            filled[split] += sizes[g]
    return frame["group"].map(split_of).to_numpy(dtype=object)


def split_digest(ids: np.ndarray, split: np.ndarray) -> str:
    """sha256 of the sorted test ids: a saved model records it, so --model_path can tell a different split."""
    import hashlib

    test = sorted(str(i) for i in np.asarray(ids)[np.asarray(split) == "test"])
    return hashlib.sha256("\n".join(test).encode()).hexdigest()


def _drop(keep: np.ndarray, mask: np.ndarray, dropped: list, reason: str, detail: dict | None = None) -> np.ndarray:
    n = int((keep & mask).sum())
    if n:
        dropped.append({"rows": n, "reason": reason, **(detail or {})})
        print(f"note: {n} row(s) left out: {reason}")
    return keep & ~mask


def load_task(h5_path, medium: str, label: str, *, embedder: str | None = None, embedding_type: str = "average",
              group_column: str | None = None, task: str = "classification", split_column: str | None = "split",
              seed: int = 0, min_class_size: int = 3) -> TaskData:
    from embedders.store.h5 import load
    from embedders.store.parts import StoreError

    try:
        es = load(h5_path, medium, embedder=embedder, embedding_type=embedding_type, label=label)
    except (StoreError, KeyError) as exc:
        raise TaskDataError(f"--label {label} / --medium {medium}: {exc}") from exc
    meta = es.metadata
    if len(es.ids) == 0:
        raise TaskDataError(f"{h5_path}: no valid {medium}/{es.embedder} rows with a '{label}' label")
    if group_column is not None and group_column not in meta.columns:
        raise TaskDataError(f"--group_column {group_column}: no such column; columns are {sorted(meta.columns)}")
    try:
        task, _ = resolve_task(task, meta[label], source=f"--task {task}")
    except ValueError as exc:
        raise TaskDataError(str(exc)) from None
    dropped: list[dict] = []
    if es.n_missing_label:
        dropped.append({"rows": es.n_missing_label, "reason": f"empty '{label}'"})
        print(f"note: {es.n_missing_label} row(s) left out: empty '{label}'")
    keep = np.ones(len(es.ids), dtype=bool)

    if task == "regression":
        target = pd.to_numeric(meta[label], errors="coerce").to_numpy(dtype=np.float64)
        keep = _drop(keep, ~np.isfinite(target), dropped, f"'{label}' is not a number")
    if not isinstance(es.embeddings, np.ndarray):   # a sequence with no frames cannot be pooled or packed
        empty = np.array([len(e) == 0 for e in es.embeddings], dtype=bool)
        keep = _drop(keep, empty, dropped, "sequence with no frames")
    groups = meta[group_column].astype(str).to_numpy(dtype=object) if group_column else None
    labels_text = meta[label].astype(str).to_numpy(dtype=object)

    if split_column and split_column in meta.columns:
        split = normalise_split(meta[split_column], split_column)
        split_source = f"column '{split_column}'"
        if groups is not None:
            crossing = pd.DataFrame({"g": groups, "s": split}).groupby("g")["s"].nunique()
            bad = crossing.index[crossing > 1].tolist()
            if bad:
                raise TaskDataError(f"--group_column {group_column}: {len(bad)} group(s) lie in several splits of "
                                    f"column '{split_column}' (e.g. {bad[:5]}), which would leak between train and "
                                    "test. Fix the split, or pass --split_column none to draw a grouped split")
    else:
        strata = labels_text if task == "classification" else np.zeros(len(labels_text), dtype=object)
        split = assign_groups(strata, groups if groups is not None else np.arange(len(strata)), seed)
        split_source = f"drawn: seeded {'grouped ' if groups is not None else ''}stratified 70/15/15 (seed {seed})"

    class_names = None
    if task == "classification":
        counts = Counter(labels_text[keep])
        small = [c for c, n in counts.items() if n < min_class_size]
        keep = _drop(keep, np.isin(labels_text, small), dropped,
                     f"classes with fewer than {min_class_size} rows", {"classes": sorted(small)})
        in_train = set(labels_text[keep & (split == "train")])
        absent = sorted(set(labels_text[keep]) - in_train)
        keep = _drop(keep, np.isin(labels_text, absent), dropped, "classes with no training row", {"classes": absent})
        class_names = sorted(set(labels_text[keep]))
        if len(class_names) < 2:
            raise TaskDataError(f"--label {label}: {len(class_names)} class(es) left after dropping small ones; "
                                "a classifier needs at least 2")
        y = np.array([class_names.index(v) if v in class_names else -1 for v in labels_text], dtype=np.int64)
    else:
        y = np.nan_to_num(target).astype(np.float32)

    index = np.flatnonzero(keep)
    for s in SPLITS:
        if not np.any(split[index] == s):
            raise TaskDataError(f"--label {label}: no {s} rows after the split ({split_source}); "
                                "a task needs train, validation and test rows")
    X = es.embeddings[index] if isinstance(es.embeddings, np.ndarray) else [es.embeddings[i] for i in index]
    X = X.astype(np.float32, copy=False) if isinstance(X, np.ndarray) else [np.asarray(x, np.float32) for x in X]
    provenance = {
        "h5_path": str(h5_path), "medium": medium, "embedder": es.embedder, "label": label, "task": task,
        "embedding_type": embedding_type, "split_source": split_source, "group_column": group_column,
        "rows_in_file": es.n_total, "rows_invalid_in_medium": es.n_invalid, "rows_used": int(index.size),
        "rows_per_split": {s: int(np.sum(split[index] == s)) for s in SPLITS}, "dropped": dropped,
        "embedder_attrs": {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in es.attrs.items()},
    }
    ids = np.asarray(es.ids, dtype=object)[index]
    provenance["test_ids_sha256"] = split_digest(ids, split[index])
    return TaskData(
        ids=ids, X=X, y=y[index], split=split[index],
        groups=None if groups is None else groups[index], task=task, class_names=class_names,
        input_dim=int(es.dim), num_outputs=len(class_names) if class_names else 1,
        embedding_type=embedding_type, provenance=provenance,
    )
