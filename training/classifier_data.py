"""One classification (or regression) task read from the embedding store, split before any training.

``load_task(h5, medium, label, ...)`` returns a :class:`TaskData`: the valid rows of one embedder,
their label as class indices (or floats), and a train / validation / test assignment that is
fixed before any model sees the data (``training.evaluation_plan`` draws it):

* the store's ``split`` column when it has one (``val``, ``valid`` and ``dev`` read as validation);
* otherwise a seeded stratified 70/15/15 split by label;
* with ``group_column`` every group (drummer, mass, opus...) lies on one side only: a given split
  column is checked and refused if a group crosses it; a drawn split assigns whole groups;
* cross-validation over groups (``cv="logo"`` or ``"group_kfold"``, or ``"auto"`` when a grouped
  split leaves a split without rows, as with 3-10 drummers): ``TaskData.folds`` holds one split
  per fold, every row is test in exactly one fold, ``TaskData.fold(k)`` is the task of fold k.

Media compared with each other must use the same rows: ``shared_ids`` gives the ids valid in every
compared (medium, embedder), and ``load_task(..., ids=...)`` keeps only those. The split depends
only on the rows' ids, labels, groups and the seed (never on the medium or the row order), so every
medium loaded with the same ids gets the same split and the same ``test_ids_sha256``.

Rows whose label is empty, classes with fewer than ``min_class_size`` rows and (one split) classes
absent from the training split cannot be learned or scored honestly: they are dropped, counted in
``provenance["dropped"]`` with the reason, and printed; nothing is dropped silently.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from analysis.labels import resolve_task  # the one rule, shared with compare_embeddings and the sweep
from training.evaluation_plan import (
    CV_MODES,
    SPLITS,
    EvaluationError,
    assign_groups,
    choose_cv,
    folds_digest,
    group_folds,
    split_digest,
)

SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation", "val": "validation",
                 "valid": "validation", "dev": "validation", "test": "test", "testing": "test"}
__all__ = ["SPLITS", "CV_MODES", "TaskData", "TaskDataError", "load_task", "shared_ids", "split_digest",
           "assign_groups", "resolve_task", "normalise_split"]


class TaskDataError(ValueError):
    """The store, label, split or group column cannot make a task; the message says which and why."""


@dataclasses.dataclass
class TaskData:
    ids: np.ndarray                      # (N,) str
    X: Any                               # average: (N, D) float32; sequence: list of N (T_i, D) float32
    y: np.ndarray                        # (N,) int64 class index, or float32 target
    split: np.ndarray                    # (N,) str in SPLITS: the split of this task (of fold ``fold_index``)
    groups: np.ndarray | None            # (N,) str, or None
    task: str                            # "classification" | "regression"
    class_names: list[str] | None
    input_dim: int
    num_outputs: int                     # classes, or 1 for regression
    embedding_type: str                  # "average" | "sequence"
    provenance: dict
    folds: list[np.ndarray] | None = None   # cross-validation: one (N,) split per fold; None: one split
    fold_index: int = 0

    def index(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    def rows(self, index: np.ndarray):
        return self.X[index] if isinstance(self.X, np.ndarray) else [self.X[i] for i in index]

    def with_labels(self, y: np.ndarray) -> TaskData:
        return dataclasses.replace(self, y=y)

    @property
    def n_folds(self) -> int:
        return len(self.folds) if self.folds is not None else 1

    def fold(self, k: int) -> TaskData:
        """The task of fold ``k`` (shares the arrays); with one split, fold 0 is the task itself."""
        if self.folds is None:
            if k != 0:
                raise IndexError(f"fold {k}: this task has one split, no cross-validation folds")
            return self
        return dataclasses.replace(self, split=self.folds[k], fold_index=k)

    def split_sha256(self) -> str:
        """sha256 of this split's sorted test ids (a saved model records it; one fold's, under CV)."""
        return split_digest(self.ids, self.split)


def normalise_split(values: pd.Series, column: str) -> np.ndarray:
    text = values.astype(str).str.strip().str.lower()
    mapped = text.map(SPLIT_ALIASES)
    unknown = sorted(set(text[mapped.isna()]))
    if unknown:
        raise TaskDataError(f"split column '{column}' has values {unknown}; expected train, validation (val/valid/dev) "
                            "or test. Fix the column, or name another with --split_column")
    return mapped.to_numpy(dtype=object)


def _load_medium(h5_path, medium: str, embedder: str | None, embedding_type: str, label: str | None):
    """The store's valid rows of one (medium, embedder): the one place this module reads the store."""
    from embedders.store.reader import load

    return load(h5_path, medium, embedder=embedder, embedding_type=embedding_type, label=label)


def shared_ids(h5_path, sources: Iterable[tuple[str, str | None]], embedding_type: str = "average") -> dict:
    """The ids valid in every ``(medium, embedder)`` of ``sources`` (embedder None: the only one stored).

    Returns ``{"ids": [...] (file order), "sources": {"medium/embedder": valid rows}, "rows_in_file": n}``.
    A sequence with no frames counts as invalid (it cannot be pooled). Raises TaskDataError naming the
    source that cannot be read.
    """
    from embedders.store.parts import StoreError

    common: list[str] | None = None
    counts: dict[str, int] = {}
    total = 0
    for medium, embedder in sources:
        try:
            # validity is the same for both embedding types in the columnar layout (a valid row has
            # frames), so the cheap averages tell it; a legacy file may hold empty sequences
            es = _load_medium(h5_path, medium, embedder, "average", None)
            if embedding_type == "sequence" and es.embedder == "legacy":
                es = _load_medium(h5_path, medium, embedder, "sequence", None)
        except (StoreError, KeyError, ValueError) as exc:
            raise TaskDataError(f"{medium}/{embedder or '(only embedder)'}: {exc}") from exc
        ids = [str(i) for i in es.ids]
        if not isinstance(es.embeddings, np.ndarray):
            ids = [i for i, e in zip(ids, es.embeddings) if len(e)]
        counts[f"{medium}/{es.embedder}"] = len(ids)
        total = max(total, int(es.n_total))
        mine = set(ids)
        common = ids if common is None else [i for i in common if i in mine]
    if common is None:
        raise TaskDataError("shared_ids: no (medium, embedder) given")
    return {"ids": common, "sources": counts, "rows_in_file": total}


def _drop(keep: np.ndarray, mask: np.ndarray, dropped: list, reason: str, detail: dict | None = None) -> np.ndarray:
    n = int((keep & mask).sum())
    if n:
        dropped.append({"rows": n, "reason": reason, **(detail or {})})
        print(f"note: {n} row(s) left out: {reason}")
    return keep & ~mask


def load_task(h5_path, medium: str, label: str, *, embedder: str | None = None, embedding_type: str = "average",
              group_column: str | None = None, task: str = "classification", split_column: str | None = "split",
              seed: int = 0, min_class_size: int = 3, ids: Sequence[str] | None = None, cv: str = "auto") -> TaskData:
    """The task of one medium. ``ids``: keep only these rows (``shared_ids`` of the compared media).

    ``cv``: "none" (one split; a split without rows is an error), "auto" (one split, or
    cross-validation over ``group_column`` groups when the split leaves a split without rows),
    "logo" (leave one group out) or "group_kfold" (5 folds of whole groups). Raises TaskDataError.
    """
    from embedders.store.parts import StoreError

    if cv not in CV_MODES:
        raise TaskDataError(f"--cv must be one of {list(CV_MODES)}, got {cv!r}")
    if cv in ("logo", "group_kfold") and group_column is None:
        raise TaskDataError(f"--cv {cv} holds out whole groups: give --group_column (e.g. drummer, composer)")
    try:
        es = _load_medium(h5_path, medium, embedder, embedding_type, label)
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
    all_ids = np.asarray([str(i) for i in es.ids], dtype=object)
    keep = np.ones(len(all_ids), dtype=bool)
    if ids is not None:
        keep = _drop(keep, ~np.isin(all_ids, np.asarray(list(ids), dtype=object)), dropped,
                     "not valid in every compared medium (the media are scored on the same rows)")

    if task == "regression":
        target = pd.to_numeric(meta[label], errors="coerce").to_numpy(dtype=np.float64)
        keep = _drop(keep, ~np.isfinite(target), dropped, f"'{label}' is not a number")
    if not isinstance(es.embeddings, np.ndarray):   # a sequence with no frames cannot be pooled or packed
        empty = np.array([len(e) == 0 for e in es.embeddings], dtype=bool)
        keep = _drop(keep, empty, dropped, "sequence with no frames")
    groups = meta[group_column].astype(str).to_numpy(dtype=object) if group_column else None
    labels_text = meta[label].astype(str).to_numpy(dtype=object)
    if task == "classification":
        counts = Counter(labels_text[keep])
        small = sorted(c for c, n in counts.items() if n < min_class_size)
        keep = _drop(keep, np.isin(labels_text, small), dropped,
                     f"classes with fewer than {min_class_size} rows", {"classes": small})

    absent: list[str] = []
    empty_splits: list[str] = []
    if cv in ("none", "auto"):
        split, split_source = _one_split(meta, keep, all_ids, labels_text, groups, task, split_column, group_column,
                                         seed, strict=cv == "none")
        if task == "classification":
            absent = sorted(set(labels_text[keep]) - set(labels_text[keep & (split == "train")]))
        scored = keep & ~np.isin(labels_text, absent)
        empty_splits = [s for s in SPLITS if not np.any(split[scored] == s)]
    try:
        mode, why = choose_cv(cv, empty_splits, None if groups is None else groups[keep])
    except EvaluationError as exc:
        where = f" ({split_source})" if cv in ("none", "auto") else ""
        raise TaskDataError(f"--label {label}: {exc}{where}") from None
    folds = None
    if mode == "none":
        keep = _drop(keep, np.isin(labels_text, absent), dropped, "classes with no training row", {"classes": absent})
    else:
        try:
            folds_kept = group_folds(groups[keep], mode, seed)
        except EvaluationError as exc:
            raise TaskDataError(f"--group_column {group_column}: {exc}") from None
        folds = []
        for f in folds_kept:
            full = np.full(len(all_ids), "", dtype=object)
            full[keep] = f
            folds.append(full)
        split, split_source = folds[0], why
        print(f"note: {why}")

    class_names = None
    if task == "classification":
        class_names = sorted(set(labels_text[keep]))
        if len(class_names) < 2:
            raise TaskDataError(f"--label {label}: {len(class_names)} class(es) left after dropping small ones; "
                                "a classifier needs at least 2")
        y = np.array([class_names.index(v) if v in class_names else -1 for v in labels_text], dtype=np.int64)
    else:
        y = np.nan_to_num(target).astype(np.float32)

    index = np.flatnonzero(keep)
    X = es.embeddings[index] if isinstance(es.embeddings, np.ndarray) else [es.embeddings[i] for i in index]
    X = X.astype(np.float32, copy=False) if isinstance(X, np.ndarray) else [np.asarray(x, np.float32) for x in X]
    kept_ids = all_ids[index]
    kept_folds = None if folds is None else [f[index] for f in folds]
    evaluation = {"kind": "split" if folds is None else mode, "n_folds": 1 if folds is None else len(folds),
                  "description": split_source}
    if kept_folds is not None:
        kept_groups = groups[index]
        evaluation["test_groups"] = [sorted(set(kept_groups[f == "test"])) for f in kept_folds]
        evaluation["validation_groups"] = [sorted(set(kept_groups[f == "validation"])) for f in kept_folds]
        evaluation["folds_sha256"] = folds_digest(kept_ids, kept_folds)
        if task == "classification":
            unseen = sum(int(np.sum((f == "test") & ~np.isin(labels_text[index], list(set(
                labels_text[index][f == "train"]))))) for f in kept_folds)
            evaluation["test_rows_of_classes_unseen_in_their_fold"] = unseen
            if unseen:
                print(f"note: {unseen} test row(s) belong to a class their fold never trained on (the label and "
                      f"--group_column {group_column} are entangled); they count as errors")
    provenance = {
        "h5_path": str(h5_path), "medium": medium, "embedder": es.embedder, "label": label, "task": task,
        "embedding_type": embedding_type, "split_source": split_source, "group_column": group_column,
        "rows_in_file": es.n_total, "rows_invalid_in_medium": es.n_invalid, "rows_used": int(index.size),
        "rows_per_split": {s: int(np.sum(split[index] == s)) for s in SPLITS}, "dropped": dropped,
        "evaluation": evaluation, "rows_restricted_to_shared_ids": ids is not None,
        "embedder_attrs": {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in es.attrs.items()},
    }
    # every row is test exactly once under CV: the hash of all test ids, which both media share
    provenance["test_ids_sha256"] = split_digest(kept_ids, np.full(len(kept_ids), "test", dtype=object)
                                                 if kept_folds is not None else split[index])
    return TaskData(
        ids=kept_ids, X=X, y=y[index], split=split[index],
        groups=None if groups is None else groups[index], task=task, class_names=class_names,
        input_dim=int(es.dim), num_outputs=len(class_names) if class_names else 1,
        embedding_type=embedding_type, provenance=provenance, folds=kept_folds,
    )


def _one_split(meta: pd.DataFrame, keep: np.ndarray, ids: np.ndarray, labels_text: np.ndarray,
               groups: np.ndarray | None, task: str, split_column: str | None, group_column: str | None,
               seed: int, strict: bool) -> tuple[np.ndarray, str]:
    """(split of every row, where it came from): the split column, else a seeded (grouped) stratified draw.

    A split column that a group crosses is refused when ``strict`` (``cv="none"``), else replaced by a draw."""
    note = ""
    if split_column and split_column in meta.columns:
        split = normalise_split(meta[split_column], split_column)
        if groups is None:
            return split, f"column '{split_column}'"
        crossing = pd.DataFrame({"g": groups[keep], "s": split[keep]}).groupby("g")["s"].nunique()
        bad = crossing.index[crossing > 1].tolist()
        if not bad:
            return split, f"column '{split_column}'"
        if strict:
            raise TaskDataError(f"--group_column {group_column}: {len(bad)} group(s) lie in several splits of "
                                f"column '{split_column}' (e.g. {bad[:5]}), which would leak between train and "
                                "test. Fix the split, or pass --split_column none to draw a grouped split "
                                "(or --cv logo to hold out each group in turn)")
        note = (f"column '{split_column}' ignored: {len(bad)} {group_column} group(s) lie in several of its splits "
                f"(e.g. {bad[:3]}); ")
        print(f"note: {note}a grouped split is drawn instead")
    split = np.full(len(ids), "", dtype=object)
    strata = labels_text if task == "classification" else np.zeros(len(ids), dtype=object)
    # the rows' ids stand in for groups without a group column: the draw then depends on the ids, not the row order
    split[keep] = assign_groups(strata[keep], groups[keep] if groups is not None else ids[keep], seed)
    return split, f"{note}drawn: seeded {'grouped ' if groups is not None else ''}stratified 70/15/15 (seed {seed})"
