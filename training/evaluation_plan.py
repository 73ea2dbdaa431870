"""Which rows are train, validation and test: one seeded split, or cross-validation folds over groups.

Pure functions of ids, labels and groups (never of a medium or of the row order), so every medium
given the same rows gets the same assignment:

* ``assign_groups``: a seeded split of whole groups into train/validation/test (70/15/15 of the
  rows, balanced per stratum); without a group column each row's id is its own group.
* ``group_folds``: cross-validation over groups. ``"logo"``: one fold per group (that group is the
  test set); ``"group_kfold"``: 5 folds of whole groups, balanced by rows. In each fold the
  validation set (model selection and early stopping only) is drawn from the remaining groups,
  about 15% of their rows and at least one group, and the rest is train. Every row is test in
  exactly one fold. Needs at least 3 groups (test, validation and train each hold one).
* ``choose_cv``: the rule of ``--cv auto``: keep the one split when it gives every split rows;
  otherwise, with a group column, leave-one-group-out up to ``MAX_LOGO_GROUPS`` groups and grouped
  5-fold above (few groups: 3-10 drummers; many unbalanced composers).
* ``split_digest`` / ``folds_digest``: sha256 of the sorted test ids (what records carry as
  ``test_ids_sha256``) and of the fold assignment.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

SPLITS = ("train", "validation", "test")
FRACTIONS = {"train": 0.70, "validation": 0.15, "test": 0.15}
CV_MODES = ("auto", "none", "logo", "group_kfold")
MAX_LOGO_GROUPS = 10
GROUP_KFOLD = 5
CV_NAMES = {"logo": "leave-one-group-out", "group_kfold": f"grouped {GROUP_KFOLD}-fold"}


class EvaluationError(ValueError):
    """No honest train/validation/test assignment exists for these rows; the message says why."""


def assign_groups(strata: np.ndarray, groups: np.ndarray, seed: int) -> np.ndarray:
    """Split whole groups into train/validation/test, balancing rows per stratum (seeded).

    Depends on the set of (stratum, group) pairs and the seed only, not on the row order.
    """
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


def choose_cv(cv: str, empty_splits: list[str], groups: np.ndarray | None) -> tuple[str, str]:
    """(mode, description): "none" (the one split stands) or a CV mode with why it was chosen.

    ``empty_splits``: the splits the one split left without rows (ignored for an explicit CV mode).
    Raises EvaluationError when the one split is empty somewhere and no grouped CV can replace it.
    """
    if cv not in CV_MODES:
        raise EvaluationError(f"--cv must be one of {list(CV_MODES)}, got {cv!r}")
    n_groups = 0 if groups is None else len(set(groups))
    if cv in ("logo", "group_kfold"):
        return cv, f"{CV_NAMES[cv]} cross-validation over {n_groups} groups (--cv {cv}); every row is test once"
    if not empty_splits:
        return "none", ""
    if cv == "none" or groups is None:
        hint = ("; give --group_column to cross-validate over groups" if groups is None
                else f"; --cv logo scores each of the {n_groups} groups once as test")
        raise EvaluationError(f"no {', '.join(empty_splits)} rows after the split; a task needs train, validation "
                              f"and test rows{hint}")
    mode = "logo" if n_groups <= MAX_LOGO_GROUPS else "group_kfold"
    return mode, (f"{CV_NAMES[mode]} cross-validation over {n_groups} groups: a grouped split left no "
                  f"{', '.join(empty_splits)} rows (--cv auto); every row is test once")


def group_folds(groups: np.ndarray, mode: str, seed: int, n_folds: int = GROUP_KFOLD) -> list[np.ndarray]:
    """One (N,) split array per fold (see the module docstring). Raises EvaluationError below 3 groups."""
    groups = np.asarray(groups, dtype=object)
    sizes = Counter(groups.tolist())
    names = sorted(sizes, key=str)
    if len(names) < 3:
        raise EvaluationError(f"{len(names)} group(s) {names[:3]}: cross-validation over groups needs at least 3 "
                              "(one each for test, validation and training)")
    if mode == "logo":
        test_sets = [[g] for g in names]
    elif mode == "group_kfold":
        k = min(n_folds, len(names))
        rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
        order = [names[i] for i in rng.permutation(len(names))]
        order.sort(key=lambda g: -sizes[g])     # stable: largest first, equal sizes in seeded order
        test_sets, load = [[] for _ in range(k)], [0] * k
        for g in order:
            j = int(np.argmin(load))
            test_sets[j].append(g)
            load[j] += sizes[g]
    else:
        raise EvaluationError(f"cross-validation mode must be logo or group_kfold, got {mode!r}")
    folds = []
    for k, test in enumerate(test_sets):
        rest = [g for g in names if g not in test]
        rng = np.random.default_rng(np.random.SeedSequence([seed, 2, k]))
        target = FRACTIONS["validation"] / (1 - FRACTIONS["test"]) * sum(sizes[g] for g in rest)
        validation, filled = [], 0
        for i in rng.permutation(len(rest)):
            if len(validation) == len(rest) - 1 or (validation and filled >= target):
                break
            validation.append(rest[i])
            filled += sizes[rest[i]]
        split = np.where(np.isin(groups, test), "test", np.where(np.isin(groups, validation), "validation", "train"))
        folds.append(split.astype(object))
    return folds


def split_digest(ids: np.ndarray, split: np.ndarray) -> str:
    """sha256 of the sorted test ids joined by newlines: records compared with each other must share it."""
    test = sorted(str(i) for i in np.asarray(ids)[np.asarray(split) == "test"])
    return hashlib.sha256("\n".join(test).encode()).hexdigest()


def folds_digest(ids: np.ndarray, folds: list[np.ndarray]) -> str:
    """sha256 of the sorted "id<TAB>fold" lines: which fold holds each row as test."""
    lines = sorted(f"{i}\t{k}" for k, f in enumerate(folds) for i in np.asarray(ids)[np.asarray(f) == "test"])
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()
