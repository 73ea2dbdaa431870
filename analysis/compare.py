"""One call per question: ``compare_spaces`` (how similar are two paired spaces?) and
``compare_labels`` (does each medium carry the label structure, and which carries more?).

Each metric entry has: value, ci_lo/ci_hi (bootstrap interval, ``ci_method`` says which),
ci_lo_raw/ci_hi_raw (plain percentile interval), boot_bias (mean of the bootstrap replicates
minus value), null_mean, null_lo/null_hi (2.5/97.5 %
of the permutation null by default), p_value, n_used, subsampled, chance (where defined),
null_n_used (rows or queries the null and p-value were computed on),
n_permutations, n_boot, null (the draws, for plots) and a note on how CI and null were obtained.

Resampling schemes, chosen for cost at N = 50,000 (details in the modules named):
* linear family (linear CKA, debiased CKA, mean CCA, SVCCA, Procrustes): all rows; permutation
  null costs one N x Dx x Dy product per draw (``linear_family.PreparedPair``); bootstrap
  resamples row blocks (``linear_bootstrap``; plain row bootstrap for N <= 200). A resample has
  only ~63% distinct rows, and these statistics overfit more on fewer distinct rows (in-sample
  CCA/Procrustes pick up noise dimensions), so every replicate is biased upwards by an artefact
  of resampling, not by sampling variability: at N = 50,000, D = 512 the plain percentile
  interval of mean CCA lay entirely above the estimate. The reported interval is therefore the
  percentile interval shifted by -boot_bias (centred like the estimate; the bootstrap is used
  for the spread only); the raw interval is kept in ci_lo_raw/ci_hi_raw.
* RBF CKA, RSA: one random subsample of ``max_n_kernel`` rows for value, null and bootstrap.
  RBF CKA keeps duplicated rows (standard bootstrap of a V-statistic; their K = L = 1 pairs bias
  replicates upwards, so its interval is bias-corrected too); RSA drops the pairs of a recording
  with its own copy instead.
* mutual kNN: all rows; null by permuting neighbour lists; CI by bootstrapping per-row scores.
* retrieval: CI by bootstrapping per-query scores; null on ``max_n_kernel`` queries
  (``retrieval_null``), so its p-value refers to that query subsample.
Each component draws from its own random stream derived from ``seed`` and its name, so adding
or removing a component does not change the others' results.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence

import numpy as np

from analysis import labels as lab
from analysis import linear_bootstrap as lb
from analysis import linear_family as lf
from analysis._checks import SeedLike, as_index, as_labels, as_matrix, check_int, check_paired
from analysis._threads import blas_threads
from analysis.neighbors import knn_indices
from analysis.pairwise import KernelPair, RdmPair, rbf_gram, rdm_condensed
from analysis.retrieval import project_for_retrieval, random_split, retrieval_metrics
from analysis.retrieval_null import RankNull
from analysis.similarity import knn_overlap
from analysis.stats import bootstrap_mean_ci, bootstrap_weights, null_summary, paired_difference_test, percentile_ci
from analysis.subsample import subsample_indices

LOWER_IS_BETTER = ("procrustes_distance", "median_rank")


def _stream(seed: SeedLike, name: str) -> np.random.Generator:
    """Independent, reproducible generator per component: SeedSequence([seed, crc32(name)])."""
    base = int(seed) if not isinstance(seed, np.random.Generator) else int(seed.integers(2**31 - 1))
    return np.random.default_rng(np.random.SeedSequence([base, zlib.crc32(name.encode())]))


def _entry(value: float, reps: np.ndarray | None, null: np.ndarray | None, observed_for_null: float | None,
           *, name: str, n_used: int, subsampled: bool, level: float, chance: float | None = None,
           null_n_used: int | None = None, debias_ci: bool = False, note: str = "") -> dict:
    lower = any(name.endswith(s) for s in LOWER_IS_BETTER)
    raw = percentile_ci(reps, level) if reps is not None else (float("nan"), float("nan"))
    finite = np.asarray(reps, dtype=np.float64)[np.isfinite(reps)] if reps is not None else np.empty(0)
    bias = float(finite.mean() - value) if finite.size else float("nan")
    # Bias-corrected percentile interval (raw interval minus the bootstrap bias), see module docstring.
    ci = (raw[0] - bias, raw[1] - bias) if debias_ci else raw
    nul = (null_summary(value if observed_for_null is None else observed_for_null, null,
                        "less" if lower else "greater", level) if null is not None else None)
    return {"value": float(value), "ci_lo": ci[0], "ci_hi": ci[1], "ci_method": "bias-corrected percentile"
            if debias_ci else "percentile", "ci_lo_raw": raw[0], "ci_hi_raw": raw[1], "boot_bias": bias,
            "null_mean": nul["null_mean"] if nul else float("nan"), "null_lo": nul["null_lo"] if nul else float("nan"),
            "null_hi": nul["null_hi"] if nul else float("nan"), "p_value": nul["p_value"] if nul else float("nan"),
            "n_used": int(n_used), "subsampled": bool(subsampled), "chance": chance,
            "null_n_used": int(n_used if null_n_used is None else null_n_used),
            "n_permutations": nul["n_permutations"] if nul else 0, "n_boot": 0 if reps is None else int(len(reps)),
            "null": nul["null"] if nul else None, "note": note}


def _linear(X, Y, out, timings, *, seed, n_permutations, n_boot, level, cca_reg, svcca_keep):
    t0 = time.perf_counter()
    pair = lf.PreparedPair(X, Y, cca_reg=cca_reg, cca_components=None, svcca_keep=svcca_keep)
    obs = pair.stats()
    rng = _stream(seed, "linear.null")
    draws = [pair.stats(rng.permutation(X.shape[0])) for _ in range(n_permutations)]
    reps, n_blocks = lb.bootstrap_replicates(X, Y, n_boot, _stream(seed, "linear.boot"), cca_reg=cca_reg,
                                             cca_components=None, svcca_keep=svcca_keep, prepared=pair)
    note = (f"all rows; null: permuted pairing; CI: bootstrap over {n_blocks} row blocks, shifted by the "
            "bootstrap bias")
    overfit = "; in-sample fit is biased upwards (compare with null_mean)"
    for name in lf.STAT_NAMES:
        out[name] = _entry(obs[name], reps[name], np.array([d[name] for d in draws]), None, name=name,
                           n_used=X.shape[0], subsampled=False, level=level, debias_ci=True,
                           note=note + (overfit if name in ("mean_cca", "svcca", "procrustes_similarity",
                                                             "procrustes_distance") else ""))
    timings["linear_family"] = time.perf_counter() - t0


def _kernel_and_rsa(X, Y, out, timings, *, seed, n_permutations, n_boot, level, max_n_kernel, sigma_frac, rsa_metric):
    idx = subsample_indices(X.shape[0], max_n_kernel, _stream(seed, "kernel.subsample"))
    sub = idx.size < X.shape[0]
    Xs, Ys = X[idx] - X[idx].mean(0), Y[idx] - Y[idx].mean(0)
    t0 = time.perf_counter()
    kp = KernelPair(rbf_gram(Xs, sigma_frac)[0], rbf_gram(Ys, sigma_frac)[0])
    null = np.array([kp.stat(p) for p in _perms(idx.size, n_permutations, _stream(seed, "rbf.null"))])
    reps = kp.stat_weights(bootstrap_weights(idx.size, n_boot, _stream(seed, "rbf.boot")))
    # Duplicated rows add K = L = 1 pairs to the V-statistic: an upward resampling artefact, so the
    # interval is bias-corrected like the linear family's.
    out["rbf_cka"] = _entry(kp.stat(), reps, null, None, name="rbf_cka", n_used=idx.size, subsampled=sub, level=level,
                            debias_ci=True, note=f"sigma = {sigma_frac} x median distance; subsample; CI: row "
                                                 "bootstrap (V-statistic), shifted by the bootstrap bias")
    timings["rbf_cka"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rp = RdmPair(rdm_condensed(Xs, rsa_metric), rdm_condensed(Ys, rsa_metric))
    null = np.array([rp.stat(p) for p in _perms(idx.size, n_permutations, _stream(seed, "rsa.null"))])
    reps = rp.stat_weights(bootstrap_weights(idx.size, n_boot, _stream(seed, "rsa.boot")))
    out["rsa"] = _entry(rp.stat(), reps, null, None, name="rsa", n_used=idx.size, subsampled=sub, level=level,
                        note=f"{rsa_metric} RDMs, Spearman; subsample; CI: item bootstrap without self-pairs, fixed ranks")
    timings["rsa"] = time.perf_counter() - t0


def _perms(n: int, count: int, rng: np.random.Generator):
    for _ in range(count):
        yield rng.permutation(n)


def _mutual_knn(X, Y, out, timings, *, seed, n_permutations, n_boot, level, k):
    t0 = time.perf_counter()
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    nx, ny = knn_indices(Xc, k), knn_indices(Yc, k)
    per_row = knn_overlap(nx, ny)
    null = np.array([knn_overlap(nx, ny, p).mean() for p in _perms(X.shape[0], n_permutations,
                                                                      _stream(seed, "knn.null"))])
    ci = bootstrap_mean_ci(per_row, n_boot, _stream(seed, "knn.boot"), level)
    out["mutual_knn"] = _entry(per_row.mean(), ci["replicates"], null, None, name="mutual_knn", n_used=X.shape[0],
                               subsampled=False, level=level, chance=k / (X.shape[0] - 1),
                               note=f"k={k}, cosine, centred; CI: bootstrap of per-row overlap (neighbours fixed)")
    timings["mutual_knn"] = time.perf_counter() - t0


def _retrieval(X, Y, out, timings, *, seed, n_permutations, n_boot, level, max_n_kernel, train_idx, test_idx, methods):
    for method in methods:
        t0 = time.perf_counter()
        proj = project_for_retrieval(X, Y, train_idx, test_idx, method, seed=_stream(seed, f"retrieval.{method}.fit"))
        for direction, tag in (("audio_to_symbolic", "x_to_y"), ("symbolic_to_audio", "y_to_x")):
            Q, G = proj[direction]
            m = retrieval_metrics(Q, G)
            rn = RankNull(Q, G, max_n_kernel, _stream(seed, f"retrieval.{method}.{tag}.queries"))
            obs_sub = rn.metrics()
            null = rn.null(n_permutations, _stream(seed, f"retrieval.{method}.{tag}.null"))
            for name in obs_sub:
                stat = np.median if name == "median_rank" else np.mean
                ci = bootstrap_mean_ci(m["per_query"][name], n_boot, _stream(seed, f"retrieval.{method}.{tag}.{name}"),
                                       level, statistic=stat)
                key = f"retrieval_{method}_{tag}_{name}"
                chance = m["chance_median_rank"] if name == "median_rank" else m[f"chance_{name}"]
                out[key] = _entry(m[name], ci["replicates"], null[name], obs_sub[name], name=key, n_used=test_idx.size,
                                  subsampled=False, level=level, chance=chance, null_n_used=rn.q_idx.size,
                                  note=f"train {train_idx.size} / test {test_idx.size}; p-value on {rn.q_idx.size} "
                                       "queries vs full gallery; CI: per-query bootstrap")
        timings[f"retrieval_{method}"] = time.perf_counter() - t0


def compare_spaces(X: np.ndarray, Y: np.ndarray, *, train_idx: np.ndarray | None = None,
                   test_idx: np.ndarray | None = None, seed: SeedLike = 0, n_permutations: int = 200,
                   n_boot: int = 200, max_n_kernel: int | None = 2000, k: int = 10, level: float = 0.95,
                   sigma_frac: float = 0.8, rsa_metric: str = "cosine", cca_reg: float = 1e-4,
                   svcca_keep: float = 0.99, retrieval_methods: Sequence[str] = ("ridge", "cca"),
                   n_threads: int | None = 1) -> dict:
    """All cross-space metrics for paired X (N, Dx) = audio and Y (N, Dy) = symbolic embeddings.

    ``train_idx``/``test_idx`` define the retrieval split (split by piece when pieces repeat);
    without them a seeded random 50/50 split is used. ``n_threads`` caps BLAS threads for the
    duration of the call (process-wide, restored afterwards; None leaves the library default).
    The default 1 is deliberate: on the shared 2-core machine OpenBLAS with 2 threads was 2-4x
    slower whenever another process was busy (5k bench: 161 s vs 101 s), and at most ~2x faster
    on an idle one. Returns {"n", "dim_x", "dim_y", "settings",
    "metrics": {name: entry}, "timings_s": {component: seconds}}.
    """
    with blas_threads(n_threads):
        return _compare_spaces(X, Y, train_idx=train_idx, test_idx=test_idx, seed=seed, n_permutations=n_permutations,
                               n_boot=n_boot, max_n_kernel=max_n_kernel, k=k, level=level, sigma_frac=sigma_frac,
                               rsa_metric=rsa_metric, cca_reg=cca_reg, svcca_keep=svcca_keep,
                               retrieval_methods=retrieval_methods)


def _compare_spaces(X, Y, *, train_idx, test_idx, seed, n_permutations, n_boot, max_n_kernel, k, level, sigma_frac,
                    rsa_metric, cca_reg, svcca_keep, retrieval_methods) -> dict:
    X = as_matrix("X", X)
    Y = as_matrix("Y", Y)
    check_paired(X, Y)
    n = X.shape[0]
    if n < 20:
        raise ValueError(f"X, Y: expected at least 20 paired rows for resampling-based inference, got {n}")
    n_permutations = check_int("n_permutations", n_permutations, minimum=1)
    n_boot = check_int("n_boot", n_boot, minimum=1)
    k = check_int("k", k, minimum=1, maximum=n - 2)
    split = "given"
    if train_idx is None and test_idx is None:
        train_idx, test_idx = random_split(n, 0.5, _stream(seed, "retrieval.split"))
        split = "random 50/50"
    elif train_idx is None or test_idx is None:
        raise ValueError("train_idx, test_idx: expected both or neither, got only one")
    train_idx, test_idx = as_index("train_idx", train_idx, n), as_index("test_idx", test_idx, n)
    common = dict(seed=seed, n_permutations=n_permutations, n_boot=n_boot, level=level)
    metrics: dict = {}
    timings: dict = {}
    _linear(X, Y, metrics, timings, cca_reg=cca_reg, svcca_keep=svcca_keep, **common)
    _kernel_and_rsa(X, Y, metrics, timings, max_n_kernel=max_n_kernel, sigma_frac=sigma_frac, rsa_metric=rsa_metric,
                    **common)
    _mutual_knn(X, Y, metrics, timings, k=k, **common)
    _retrieval(X, Y, metrics, timings, max_n_kernel=max_n_kernel, train_idx=train_idx, test_idx=test_idx,
               methods=tuple(retrieval_methods), **common)
    settings = {"seed": seed if not isinstance(seed, np.random.Generator) else "generator",
                "n_permutations": n_permutations, "n_boot": n_boot, "max_n_kernel": max_n_kernel, "k": k,
                "level": level, "sigma_frac": sigma_frac, "rsa_metric": rsa_metric, "cca_reg": cca_reg,
                "svcca_keep": svcca_keep, "retrieval_split": split, "n_train": int(train_idx.size),
                "n_test": int(test_idx.size)}
    return {"n": n, "dim_x": X.shape[1], "dim_y": Y.shape[1], "settings": settings, "metrics": metrics,
            "timings_s": timings}


def compare_labels(X_audio: np.ndarray, X_symbolic: np.ndarray, y: np.ndarray, *, numeric: bool = False,
                   groups: np.ndarray | None = None, seed: SeedLike = 0, k: int = 10, n_splits: int = 5,
                   n_permutations: int = 200, max_n: int | None = 2000, silhouette_n: int | None = 5000,
                   n_boot: int = 1000, level: float = 0.95, n_threads: int | None = 1) -> dict:
    """Label structure in each medium side by side, and the audio - symbolic difference.

    Both media use the same CV folds (and the same subsample for the RDM correlation), so the
    kNN comparison is paired: by fold (``paired_difference_test`` on fold scores; at most
    2^n_splits sign patterns, and fold scores are dependent, see that function) and by recording
    (same test on per-recording correctness, or squared error when ``numeric``; far more units).
    ``numeric=True`` switches kNN to regression (R^2) and skips the silhouette. ``n_threads``
    caps BLAS threads, as in ``compare_spaces`` (default 1).
    """
    with blas_threads(n_threads):
        return _compare_labels(X_audio, X_symbolic, y, numeric=numeric, groups=groups, seed=seed, k=k,
                               n_splits=n_splits, n_permutations=n_permutations, max_n=max_n,
                               silhouette_n=silhouette_n, n_boot=n_boot, level=level)


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


def _compare_labels(X_audio, X_symbolic, y, *, numeric, groups, seed, k, n_splits, n_permutations, max_n,
                    silhouette_n, n_boot, level) -> dict:
    Xa = as_matrix("X_audio", X_audio)
    Xs = as_matrix("X_symbolic", X_symbolic)
    check_paired(Xa, Xs, ("X_audio", "X_symbolic"))
    y = as_labels("y", y, Xa.shape[0])
    task = "regression" if numeric else "classification"
    splits = lab.cv_splits(y, n_splits, groups, int(_stream(seed, "labels.cv").integers(2**31 - 1)),
                           stratify=not numeric)
    timings: dict = {}
    media: dict = {}
    for medium, X in (("audio", Xa), ("symbolic", Xs)):
        t0 = time.perf_counter()
        knn = lab.knn_cv_accuracy(X, y, k=k, metric="cosine", task=task, splits=splits)
        rng = _stream(seed, f"labels.{medium}.knn.boot")
        ci = (pooled_r2_ci(knn["per_sample"], y, n_boot, rng, level) if numeric
              else bootstrap_mean_ci(knn["per_sample"], n_boot, rng, level, np.mean))
        sil = None if numeric else lab.silhouette(X, y, silhouette_n, _stream(seed, "labels.silhouette"))
        rdm = lab.label_rdm_correlation(X, y, numeric, n_permutations, _stream(seed, "labels.rdm"), max_n)
        media[medium] = {"knn": {**{kk: v for kk, v in knn.items() if kk != "per_sample"},
                                 **{kk: v for kk, v in ci.items() if kk.startswith(("ci_", "r2_"))}},
                         "silhouette": sil, "label_rdm": rdm, "per_sample": knn["per_sample"]}
        timings[medium] = time.perf_counter() - t0
    a, s = media["audio"], media["symbolic"]
    sign = -1.0 if numeric else 1.0  # squared error: lower is better, so report symbolic - audio
    diff = {
        "knn_by_fold": paired_difference_test(a["knn"]["per_fold"], s["knn"]["per_fold"], _stream(seed, "labels.diff.fold")),
        "knn_by_recording": paired_difference_test(sign * a.pop("per_sample"), sign * s.pop("per_sample"),
                                                   _stream(seed, "labels.diff.rec")),
        "silhouette": None if numeric else a["silhouette"]["value"] - s["silhouette"]["value"],
        "label_rdm": a["label_rdm"]["value"] - s["label_rdm"]["value"],
    }
    return {"n": int(Xa.shape[0]), "dim_audio": Xa.shape[1], "dim_symbolic": Xs.shape[1], "task": task,
            "grouped": groups is not None, "n_splits": len(splits), "audio": a, "symbolic": s,
            "difference_audio_minus_symbolic": diff, "timings_s": timings}
