"""``compare_labels``: label structure in each medium side by side, and the audio - symbolic difference.

Primary metric: ``knn_by_recording`` (kNN score difference paired by recording). Family "labels"
(Holm, ``analysis.multiplicity``): the Mantel p of each medium's label-RDM correlation and the p
of every difference (``knn_by_fold``, ``knn_by_recording``, ``silhouette_test``,
``label_rdm_test``). Result fields:

  audio / symbolic: {"knn": {value (mean over folds), per_fold, chance, ci_lo, ci_hi, se, n_blocks,
                             ci_of, ... (regression: r2_pooled, r2_pooled_ci_lo/hi, bootstrap)},
                     "silhouette": {value, ...} or None, "label_rdm": {value, p_value, p_holm, ...}}
  difference_audio_minus_symbolic:
    knn_by_fold                     ``analysis.stats.paired_difference_test`` on fold scores (+ p_holm)
    knn_by_recording                mean_a, mean_b, mean_difference, ci_lo, ci_hi, se, n_blocks, p_value
                                    (jackknife, predictions rebuilt), p_sign_flip, wilcoxon_p, n_units,
                                    p_holm, adjustment, method
    silhouette, label_rdm           the plain differences (floats, as before)
    silhouette_test, label_rdm_test {difference, se, ci_lo, ci_hi, p_value, p_holm, adjustment,
                                     n_blocks, level, method} (``analysis.label_differences``)
  primary: {"metric": "knn_by_recording", ...}, multiplicity: [family], timings_s
"""

from __future__ import annotations

import time

import numpy as np

from analysis import jackknife as jk
from analysis import label_differences as ld
from analysis import labels as lab
from analysis._checks import SeedLike, as_labels, as_matrix, check_choice, check_paired
from analysis._threads import blas_threads
from analysis.knn_cv_jackknife import knn_cv_with_replicates
from analysis.multiplicity import adjust_family
from analysis.stats import paired_difference_test
from analysis.streams import stream as _stream
from analysis.subsample import subsample_indices

PRIMARY_LABELS = "knn_by_recording"


def compare_labels(X_audio: np.ndarray, X_symbolic: np.ndarray, y: np.ndarray, *, numeric: bool = False,
                   groups: np.ndarray | None = None, seed: SeedLike = 0, k: int = 10, n_splits: int = 5,
                   n_permutations: int = 200, max_n: int | None = 2000, silhouette_n: int | None = 5000,
                   n_boot: int = 1000, level: float = 0.95, standardize: str = "none",
                   n_threads: int | None = 1) -> dict:
    """Label structure in each medium side by side, and the audio - symbolic difference.

    Both media use the same CV folds (and the same subsamples and jackknife groups for silhouette
    and RDM correlation), so every difference is paired: kNN by fold (``paired_difference_test``
    on fold scores; at most 2^n_splits sign patterns, and fold scores are dependent) and by
    recording (same test on per-recording correctness, or squared error when ``numeric``);
    silhouette and label-RDM by a paired jackknife (``analysis.label_differences``).
    ``numeric=True`` switches kNN to regression (R^2) and skips the silhouette.
    ``standardize="zscore"``: kNN features z-scored with each training fold's statistics.
    ``n_threads`` caps BLAS threads, as in ``compare_spaces`` (default 1).
    """
    with blas_threads(n_threads):
        return _compare_labels(X_audio, X_symbolic, y, numeric=numeric, groups=groups, seed=seed, k=k,
                               n_splits=n_splits, n_permutations=n_permutations, max_n=max_n,
                               silhouette_n=silhouette_n, n_boot=n_boot, level=level, standardize=standardize)


def pooled_r2_ci(sq_err: np.ndarray, y: np.ndarray, n_boot: int, rng: np.random.Generator,
                 level: float, chunk: int = 50) -> dict:
    """Bootstrap interval of the pooled out-of-fold R^2 = 1 - sum(err) / sum((y - mean y)^2), resampling
    recordings; the point value is the per-fold mean R^2 beside it, so ``r2_pooled`` is given too."""
    y = np.asarray(y, dtype=np.float64)
    n = y.size
    reps = []
    for start in range(0, n_boot, chunk):  # chunked: (chunk, n) index matrices stay small at n = 50,000
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        yb = y[idx]
        sst = ((yb - yb.mean(1, keepdims=True)) ** 2).sum(1)
        reps.append(1.0 - sq_err[idx].sum(1) / np.where(sst > 0, sst, np.nan))
    reps = np.concatenate(reps)
    alpha = (1.0 - level) / 2
    sst = float(((y - y.mean()) ** 2).sum())
    return {"ci_lo": float(np.nanquantile(reps, alpha)), "ci_hi": float(np.nanquantile(reps, 1 - alpha)),
            "r2_pooled": 1.0 - float(sq_err.sum()) / sst if sst > 0 else float("nan"),
            "ci_of": "pooled out-of-fold R^2, bootstrap over recordings"}


def _chance(y: np.ndarray, numeric: bool) -> float:
    """Majority-class rate (what always guessing the commonest class scores); 0 for R^2."""
    if numeric:
        return 0.0
    _, counts = np.unique(y, return_counts=True)
    return float(counts.max() / counts.sum())


def _by_recording(a: dict, s: dict, sign: float, n_blocks: int, level: float, rng) -> dict:
    """Per-recording kNN score difference: jackknife interval and t p (predictions rebuilt per replicate),
    with ``paired_difference_test``'s sign-flip p (``p_sign_flip``, given the predictions) beside it."""
    base = paired_difference_test(sign * a.pop("per_sample"), sign * s.pop("per_sample"), rng)
    jack = ld.paired_difference(base["mean_a"], sign * a.pop("pooled_replicates"), base["mean_b"],
                                sign * s.pop("pooled_replicates"), n_blocks, level)
    return {**base, "ci_lo": jack["ci_lo"], "ci_hi": jack["ci_hi"], "se": jack["se"], "n_blocks": n_blocks,
            "p_value": jack["p_value"], "p_sign_flip": base["p_value"],
            "method": "delete-a-group jackknife (predictions rebuilt), t interval and p; p_sign_flip: sign flips "
                      "over recordings given the predictions"}


def _paired_subsample_test(stat, Xa, Xs, idx, seed, name, level):
    """Values and paired jackknife difference of ``stat(X_sub, blocks, G) -> (value, reps)`` on rows ``idx``."""
    g = jk.n_blocks_for(idx.size)
    blocks = jk.block_ids(idx.size, g, _stream(seed, f"labels.{name}.jackknife"))
    va, ra = stat(Xa[idx], blocks, g)
    vs, rs = stat(Xs[idx], blocks, g)
    return ld.paired_difference(va, ra, vs, rs, g, level)


def _compare_labels(X_audio, X_symbolic, y, *, numeric, groups, seed, k, n_splits, n_permutations, max_n,
                    silhouette_n, n_boot, level, standardize) -> dict:
    Xa = as_matrix("X_audio", X_audio)
    Xs = as_matrix("X_symbolic", X_symbolic)
    check_paired(Xa, Xs, ("X_audio", "X_symbolic"))
    y = as_labels("y", y, Xa.shape[0])
    check_choice("standardize", standardize, ("none", "zscore"))
    task = "regression" if numeric else "classification"
    splits = lab.cv_splits(y, n_splits, groups, int(_stream(seed, "labels.cv").integers(2**31 - 1)),
                           stratify=not numeric)
    timings: dict = {}
    media: dict = {}
    n = Xa.shape[0]
    # recordings of one group are not independent: with groups a replicate removes whole groups
    blocks, g = jk.blocks_for(n, groups, _stream(seed, "labels.knn.jackknife"))
    bounds = (-np.inf, 1.0) if numeric else (0.0, 1.0)
    for medium, X in (("audio", Xa), ("symbolic", Xs)):
        t0 = time.perf_counter()
        knn = knn_cv_with_replicates(X, y, k, splits, blocks, g, "cosine", task, standardize == "zscore")
        se = jk.standard_error(knn["replicates"])
        lo, hi = jk.t_interval(knn["value"], se, g, level, bounds)
        entry = {"value": knn["value"], "per_fold": knn["per_fold"], "chance": _chance(y, numeric), "k": int(k),
                 "n_splits": len(splits), "task": task, "grouped": groups is not None, "n_used": int(n),
                 "subsampled": False, "ci_lo": lo, "ci_hi": hi, "se": se, "n_blocks": int(g),
                 "ci_of": "mean over folds; delete-a-group jackknife over recordings"
                          + (" (whole groups)" if groups is not None else "") + " with predictions rebuilt, t interval"}
        if numeric:
            pooled = pooled_r2_ci(knn["per_sample"], y, n_boot, _stream(seed, f"labels.{medium}.knn.boot"), level)
            entry.update({"r2_pooled": pooled["r2_pooled"], "r2_pooled_ci_lo": pooled["ci_lo"],
                          "r2_pooled_ci_hi": pooled["ci_hi"]})
        sil = None if numeric else lab.silhouette(X, y, silhouette_n, _stream(seed, "labels.silhouette"))
        rdm = lab.label_rdm_correlation(X, y, numeric, n_permutations, _stream(seed, "labels.rdm"), max_n)
        media[medium] = {"knn": entry, "silhouette": sil, "label_rdm": rdm, "per_sample": knn["per_sample"],
                         "pooled_replicates": knn["pooled_replicates"]}
        timings[medium] = time.perf_counter() - t0
    a, s = media["audio"], media["symbolic"]
    sign = -1.0 if numeric else 1.0  # squared error: lower is better, so report symbolic - audio
    t0 = time.perf_counter()
    # the same subsamples label_rdm_correlation and silhouette drew (same named streams, first draw)
    idx_rdm = subsample_indices(n, max_n, _stream(seed, "labels.rdm"))
    diff = {
        "knn_by_fold": paired_difference_test(a["knn"]["per_fold"], s["knn"]["per_fold"], _stream(seed, "labels.diff.fold")),
        "knn_by_recording": _by_recording(a, s, sign, g, level, _stream(seed, "labels.diff.rec")),
        "silhouette": None if numeric else a["silhouette"]["value"] - s["silhouette"]["value"],
        "label_rdm": a["label_rdm"]["value"] - s["label_rdm"]["value"],
        "silhouette_test": None,
        "label_rdm_test": _paired_subsample_test(
            lambda X, b, g: ld.label_rdm_with_replicates(X, y[idx_rdm], numeric, b, g), Xa, Xs, idx_rdm, seed,
            "rdm", level),
    }
    if not numeric:
        idx_sil = subsample_indices(n, silhouette_n, _stream(seed, "labels.silhouette"))
        diff["silhouette_test"] = _paired_subsample_test(
            lambda X, b, g: ld.silhouette_with_replicates(X, y[idx_sil], b, g), Xa, Xs, idx_sil, seed,
            "silhouette", level)
    timings["differences"] = time.perf_counter() - t0
    family = {"audio.label_rdm": a["label_rdm"], "symbolic.label_rdm": s["label_rdm"],
              **{name: diff[name] for name in ("knn_by_fold", "knn_by_recording", "label_rdm_test",
                                               "silhouette_test")}}
    families = [adjust_family(family, "labels")]
    p = diff[PRIMARY_LABELS]
    return {"n": int(Xa.shape[0]), "dim_audio": Xa.shape[1], "dim_symbolic": Xs.shape[1], "task": task,
            "grouped": groups is not None, "n_splits": len(splits), "audio": a, "symbolic": s,
            "difference_audio_minus_symbolic": diff, "standardize": standardize,
            "primary": {"metric": PRIMARY_LABELS, "question": "which medium's kNN predicts the label better, "
                        "paired by recording?", "difference": p["mean_difference"], "ci_lo": p["ci_lo"],
                        "ci_hi": p["ci_hi"], "p_value": p["p_value"]},
            "multiplicity": families, "timings_s": timings}
