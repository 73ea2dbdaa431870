"""How much label structure (genre, composer, era, ...) one embedding space carries.

* ``knn_cv_accuracy``: k-NN classification accuracy under (group-aware) stratified K-fold CV.
* ``silhouette``: mean silhouette width of the label classes (Rousseeuw 1987), on a subsample.
* ``label_rdm_correlation``: Spearman correlation between the embedding RDM and the label RDM
  (0 same class / 1 different; numeric labels: |y_i - y_j|), Mantel permutation p-value.

Cosine geometry is used throughout by default, after subtracting the mean row (the training
fold's mean in CV, so no test information leaks), as in ``analysis.similarity``.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import silhouette_score
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

from analysis._checks import SeedLike, as_generator, as_labels, as_matrix, check_choice, check_int
from analysis.neighbors import METRICS, knn_indices
from analysis.pairwise import CodedRdmPair, rdm_condensed
from analysis.stats import null_summary, permutation_null
from analysis.subsample import subsample_indices, subsample_info

# One rule for every job's "--task auto": a label is a regression target when its column is numeric
# (not boolean) with at least this many distinct values (bpm, duration, year); a numeric column
# with few values (a count of beats, a 0/1 flag, a class code) is a set of classes.
AUTO_REGRESSION_MIN_UNIQUE = 20


TASKS = ("classification", "regression")


def auto_task(values) -> str:
    """'regression' or 'classification' for a label column (a pandas Series) by the rule above."""
    return resolve_task("auto", values)[0]


def resolve_task(requested: str, values, *, source: str = "--task") -> tuple[str, str]:
    """(task, reason) of a label column for a job's ``--task auto|classification|regression``.

    ``auto`` applies the rule above (reason e.g. "numeric with 24 distinct values (>= 20)" or
    "not numeric"); a named task is taken as given ("forced on the command line"), a regression
    only when every non-empty value reads as a number. ``values``: the label column (a Series,
    whose name the messages use, or an array). Raises ValueError starting with ``source`` (the flag
    as the user wrote it) for another request or for a regression on values that are not numbers.
    """
    import pandas as pd

    values = pd.Series(values)
    if requested == "auto":
        if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            return "classification", "not numeric"
        distinct = int(values.nunique())
        many = distinct >= AUTO_REGRESSION_MIN_UNIQUE
        return (("regression" if many else "classification"),
                f"numeric with {distinct} distinct values ({'>=' if many else '<'} {AUTO_REGRESSION_MIN_UNIQUE})")
    if requested not in TASKS:
        raise ValueError(f"{source}: expected auto, classification or regression, got {requested!r}")
    if requested == "regression":
        raw = values.reset_index(drop=True)
        bad = raw[pd.to_numeric(raw, errors="coerce").isna() & ~raw.isna()]
        if len(bad):
            column = f"column {values.name!r}" if values.name is not None else "the label"
            raise ValueError(f"{source}: {len(bad)} non-empty value(s) of {column} are not numbers "
                             f"(e.g. {bad.iloc[0]!r}); a regression needs a numeric label")
    return requested, "forced on the command line"


def cv_splits(y: np.ndarray, n_splits: int = 5, groups: np.ndarray | None = None, seed: SeedLike = 0,
              stratify: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    """K-fold (train, test) index pairs; stratified by y and, with ``groups``, group-exclusive.

    With groups (e.g. piece or performer ids) StratifiedGroupKFold keeps every group on one side
    of each split, so near-duplicate recordings cannot inflate accuracy. ``stratify=False`` (numeric
    targets) uses KFold / GroupKFold. Shuffled with ``seed``; the same arguments give the same
    folds, which is what makes per-fold comparisons between two media paired.
    """
    y = np.asarray(y)
    n_splits = check_int("n_splits", n_splits, minimum=2, maximum=y.shape[0])
    rs = int(seed) if not isinstance(seed, np.random.Generator) else int(seed.integers(2**31 - 1))
    dummy = np.zeros((y.shape[0], 1))
    if stratify:
        # a stratified fold needs each of its classes in every fold: with at most m rows in the largest
        # class only m folds exist (small datasets, tests); report it through len(result), never crash
        largest = int(np.unique(y, return_counts=True)[1].max())
        n_splits = max(2, min(n_splits, largest))
    if groups is None:
        splitter = (StratifiedKFold if stratify else KFold)(n_splits=n_splits, shuffle=True, random_state=rs)
        return [(tr, te) for tr, te in splitter.split(dummy, y)]
    groups = as_labels("groups", groups, y.shape[0])
    n_groups = np.unique(groups).size
    if n_groups < n_splits:
        raise ValueError(f"groups: expected at least n_splits={n_splits} distinct groups, got {n_groups}")
    splitter = (StratifiedGroupKFold if stratify else GroupKFold)(n_splits=n_splits, shuffle=True, random_state=rs)
    return [(tr, te) for tr, te in splitter.split(dummy, y, groups)]


def knn_predict(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, k: int, metric: str = "cosine",
                task: str = "classification", standardize: bool = False) -> np.ndarray:
    """k-NN prediction: majority vote (classification) or neighbour mean (regression).

    Vote ties go to the class whose neighbours are nearer (each vote weighs 1 + 1e-6 * (k - rank)).
    Rows are centred with the training mean before the (chunked, exact) neighbour search;
    ``standardize=True`` also divides each feature by its training std (test rows never inform it).
    """
    mu = X_train.mean(0)
    scale = 1.0
    if standardize:
        sd = X_train.std(0)
        scale = np.where(sd > 0, sd, 1.0)
    nn = knn_indices((X_train - mu) / scale, k, queries=(X_test - mu) / scale, metric=metric)
    if task == "regression":
        return y_train[nn].mean(axis=1)
    classes, codes = np.unique(y_train, return_inverse=True)
    votes = np.zeros((X_test.shape[0], classes.size))
    weights = 1.0 + 1e-6 * (k - np.arange(k))
    rows = np.repeat(np.arange(X_test.shape[0]), k)
    np.add.at(votes, (rows, codes[nn].ravel()), np.tile(weights, X_test.shape[0]))
    return classes[votes.argmax(axis=1)]


def knn_cv_accuracy(X: np.ndarray, y: np.ndarray, k: int = 10, n_splits: int = 5, groups: np.ndarray | None = None,
                    seed: SeedLike = 0, metric: str = "cosine", task: str = "classification",
                    splits: list[tuple[np.ndarray, np.ndarray]] | None = None, standardize: bool = False) -> dict:
    """Cross-validated k-NN score: accuracy (classification) or R^2 (``task="regression"``).

    Returns ``value`` (mean over folds), ``per_fold``, ``chance`` (majority-class rate for
    classification: what always guessing the commonest class scores; 0 for R^2), and
    ``per_sample`` (1/0 correct, or squared error for regression) aligned with the rows of X, for
    paired per-recording comparisons. ``splits`` overrides the folds (from ``cv_splits``).
    ``standardize=True`` z-scores features with each training fold's statistics (``knn_predict``).
    """
    X = as_matrix("X", X)
    y = as_labels("y", y, X.shape[0])
    check_choice("metric", metric, METRICS)
    check_choice("task", task, ("classification", "regression"))
    if splits is None:
        splits = cv_splits(y, n_splits, groups, seed, stratify=task == "classification")
    per_fold, per_sample = [], np.full(X.shape[0], np.nan)
    for tr, te in splits:
        kk = check_int("k", k, minimum=1, maximum=tr.size)
        pred = knn_predict(X[tr], y[tr], X[te], kk, metric, task, standardize)
        if task == "classification":
            per_sample[te] = pred == y[te]
            per_fold.append(float(np.mean(pred == y[te])))
        else:
            err = (pred - y[te].astype(np.float64)) ** 2
            per_sample[te] = err
            ss_tot = float(np.sum((y[te] - y[te].mean()) ** 2))
            per_fold.append(1.0 - float(err.sum()) / ss_tot if ss_tot > 0 else float("nan"))
    if task == "classification":
        _, counts = np.unique(y, return_counts=True)
        chance = float(counts.max() / counts.sum())
    else:
        chance = 0.0
    return {"value": float(np.mean(per_fold)), "per_fold": np.asarray(per_fold), "chance": chance,
            "per_sample": per_sample, "k": int(k), "n_splits": len(splits), "task": task,
            "grouped": groups is not None, "n_used": int(X.shape[0]), "subsampled": False}


def silhouette(X: np.ndarray, y: np.ndarray, sample_size: int | None = 5000, seed: SeedLike = 0,
               metric: str = "cosine") -> dict:
    """Mean silhouette width s = mean_i (b_i - a_i) / max(a_i, b_i) (sklearn), in [-1, 1].

    a_i: mean distance to the own class, b_i: to the nearest other class. O(n^2), so above
    ``sample_size`` rows a uniform random subsample is used (not stratified: rare classes may be
    thin). Rows are centred first. Needs at least 2 classes in the subsample.
    """
    X = as_matrix("X", X)
    y = as_labels("y", y, X.shape[0])
    check_choice("metric", metric, METRICS)
    idx = subsample_indices(X.shape[0], sample_size, seed)
    Xs, ys = X[idx] - X[idx].mean(0), y[idx]
    n_labels = np.unique(ys).size
    if not 2 <= n_labels <= idx.size - 1:
        raise ValueError(f"y: expected between 2 and n_used - 1 = {idx.size - 1} classes in the sample, got {n_labels}")
    return {"value": float(silhouette_score(Xs, ys, metric=metric)), "metric": metric,
            **subsample_info(X.shape[0], idx)}


def label_rdm(y: np.ndarray, numeric: bool) -> np.ndarray:
    """Condensed label dissimilarities: |y_i - y_j| if numeric, else 1 when classes differ."""
    iu, ju = np.triu_indices(y.shape[0], 1)
    if numeric:
        yf = y.astype(np.float64)
        return np.abs(yf[iu] - yf[ju])
    return (y[iu] != y[ju]).astype(np.float64)


def label_rdm_correlation(X: np.ndarray, y: np.ndarray, numeric: bool = False, n_permutations: int = 200,
                          seed: SeedLike = 0, max_n: int | None = 2000, metric: str = "cosine") -> dict:
    """Spearman rho between embedding RDM and label RDM, with a Mantel permutation test.

    Labels are permuted across recordings (rows and columns of the label RDM together), which
    respects the dependence between the n(n-1)/2 pairs; p = (1 + #{null >= rho}) / (1 + n_perm),
    one-sided (same-label pairs closer). Above ``max_n`` rows a uniform random subsample is used
    for the value and the null alike. With categorical labels rho is a rank-biserial-type
    correlation (the label RDM has two values, so it is heavily tied).
    """
    X = as_matrix("X", X, min_rows=3)
    y = as_labels("y", y, X.shape[0])
    check_choice("metric", metric, ("correlation", "cosine", "euclidean"))
    rng = as_generator(seed)
    idx = subsample_indices(X.shape[0], max_n, rng)
    ys = y[idx]
    if np.unique(ys).size < 2:
        raise ValueError("y: expected at least 2 distinct labels in the sample, got 1")
    Xs = X[idx] - X[idx].mean(0)
    # the label RDM depends only on each pair's labels: draws by class sums (``CodedRdmPair``)
    pair = CodedRdmPair(rdm_condensed(Xs, metric), label_rdm(ys, numeric), ys)
    null = permutation_null(pair.stat, idx.size, n_permutations, rng)
    out = null_summary(pair.stat(), null, "greater")
    return {"value": out.pop("observed"), **out, "numeric": bool(numeric), "metric": metric,
            **subsample_info(X.shape[0], idx)}
