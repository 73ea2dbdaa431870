"""Cross-validated kNN scores with delete-a-group jackknife replicates that rebuild the predictions.

A bootstrap of per-recording correctness treats the out-of-fold predictions as fixed, but every
recording is also a training neighbour of others: removing it changes their votes. The interval
then misses that variability (coverage 0.89 in bench/interval_coverage.py). Replicate g removes row group
g from the test rows *and* from every training fold, and recomputes each affected prediction from
the remaining neighbours, with the same folds:

* per fold, lists of K = min(n_train, 2k + 8) nearest training rows are found once (training
  mean and, with ``standardize``, training std of the full fold);
* a test row whose first k neighbours include a deleted row votes again with its first k
  surviving ones (rows with fewer than k survivors are searched again exactly).

Votes follow ``analysis.labels.knn_predict`` (ties to the nearer neighbours), so the full-sample
predictions are exactly that function's.
"""

from __future__ import annotations

import numpy as np

from analysis.neighbors import knn_indices


def _scaled(X: np.ndarray, tr: np.ndarray, standardize: bool) -> np.ndarray:
    mu = X[tr].mean(0)
    if not standardize:
        return X - mu
    sd = X[tr].std(0)
    return (X - mu) / np.where(sd > 0, sd, 1.0)


def _predict(lists: np.ndarray, y_codes: np.ndarray, y_num: np.ndarray | None, k: int, n_classes: int) -> np.ndarray:
    """Vote (classification: class codes) or mean (regression) over the first k entries of each list."""
    nn = lists[:, :k]
    if y_num is not None:
        return y_num[nn].mean(axis=1)
    votes = np.zeros((nn.shape[0], n_classes))
    weights = 1.0 + 1e-6 * (k - np.arange(k))
    rows = np.repeat(np.arange(nn.shape[0]), k)
    np.add.at(votes, (rows, y_codes[nn].ravel()), np.tile(weights, nn.shape[0]))
    return votes.argmax(axis=1)


def _surviving(lists: np.ndarray, deleted: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Lists with deleted entries moved out of the first k (order kept) and whether k survived."""
    keep = ~deleted[lists]
    order = np.argsort(~keep, axis=1, kind="stable")
    return np.take_along_axis(lists, order, axis=1), keep.sum(axis=1) >= k


def _fold_score(pred: np.ndarray, truth: np.ndarray, task: str) -> tuple[float, np.ndarray]:
    """(fold score, per-sample score): accuracy and 1/0, or R^2 and squared error."""
    if task == "classification":
        ok = (pred == truth).astype(np.float64)
        return float(ok.mean()), ok
    err = (pred - truth) ** 2
    ss = float(np.sum((truth - truth.mean()) ** 2))
    return (1.0 - float(err.sum()) / ss if ss > 0 else float("nan")), err


def knn_cv_with_replicates(X: np.ndarray, y: np.ndarray, k: int, splits: list, blocks: np.ndarray, n_blocks: int,
                           metric: str = "cosine", task: str = "classification", standardize: bool = False) -> dict:
    """Mean-over-folds kNN score, per-sample scores, and G leave-one-group-out replicates.

    Returns ``value`` (mean over folds, as ``analysis.labels.knn_cv_accuracy``), ``per_sample``
    (1/0 correct or squared error), ``replicates`` (G,) of the mean-over-folds score and
    ``pooled_replicates`` (G,) of the mean per-sample score (for paired differences), and
    ``n_exact_searches``.
    """
    n = X.shape[0]
    numeric = task == "regression"
    y_num = y.astype(np.float64) if numeric else None
    classes, codes = np.unique(y, return_inverse=True)
    truth = y_num if numeric else codes
    folds = []
    per_sample = np.full(n, np.nan)
    fold_scores = []
    for tr, te in splits:
        kk = min(k, tr.size)
        Z = _scaled(X, tr, standardize)
        lists = tr[knn_indices(Z[tr], min(tr.size, 2 * kk + 8), queries=Z[te], metric=metric)]
        pred = _predict(lists, codes, y_num, kk, classes.size)
        score, ps = _fold_score(pred, truth[te], task)
        per_sample[te] = ps
        fold_scores.append(score)
        folds.append((tr, te, kk, Z, lists, pred))
    reps, pooled, exact = np.empty(n_blocks), np.empty(n_blocks), 0
    for g in range(n_blocks):
        deleted = blocks == g
        scores, sample_sum, sample_n = [], 0.0, 0
        for tr, te, kk, Z, lists, pred in folds:
            alive = ~deleted[te]
            hit = alive & deleted[lists[:, :kk]].any(axis=1)
            new_pred = pred.copy()
            if np.any(hit):
                moved, ok = _surviving(lists[hit], deleted, kk)
                if not np.all(ok):
                    keep_tr = tr[~deleted[tr]]
                    rows = np.flatnonzero(hit)[~ok]
                    moved[~ok, :kk] = keep_tr[knn_indices(Z[keep_tr], min(kk, keep_tr.size), queries=Z[te[rows]],
                                                          metric=metric)]
                    exact += rows.size
                new_pred[hit] = _predict(moved, codes, y_num, kk, classes.size)
            score, ps = _fold_score(new_pred[alive], truth[te][alive], task)
            scores.append(score)
            sample_sum += float(ps.sum())
            sample_n += int(alive.sum())
        reps[g] = float(np.mean(scores))
        pooled[g] = sample_sum / sample_n
    return {"value": float(np.mean(fold_scores)), "per_fold": np.asarray(fold_scores), "per_sample": per_sample,
            "replicates": reps, "pooled_replicates": pooled, "n_exact_searches": exact}
