"""One call per question: ``compare_spaces`` (how similar are two paired spaces?) and
``compare_labels`` (does each medium carry the label structure, and which carries more?;
``analysis.compare_labels``).

Primary analysis (declared before looking at data; one per question):

* spaces: ``linear_cka_debiased`` (debiased linear CKA, Song et al. 2012 / Nguyen et al. 2021):
  nearly unbiased for the population CKA, ~0 for unrelated spaces at any N and dimension, all rows
  used, and its interval targets the population value. Its free-null p answers "are the spaces
  related?"; with strata, its within-stratum p answers "does each recording match its own
  counterpart beyond what the label explains?" (``result["primary"]``).
* labels: ``knn_by_recording`` (audio - symbolic kNN score, paired by recording).
* sweep (``analysis.sweep_table``): the item-level paired test of the label's test metric.

Multiplicity: every p-value of a result belongs to one family, adjusted by Holm
(``analysis.multiplicity``): "spaces" (the free-null p of every metric), "spaces.within" (the
within-stratum p of every metric), "labels". ``p_holm`` sits beside each ``p_value``;
``adjustment`` names family and size; ``result["multiplicity"]`` lists the families. The primary
metric's raw ``p_value`` is its confirmatory test (one pre-declared hypothesis); claims about any
other metric should use ``p_holm``. Holm can only reject with enough permutations:
``settings["min_permutations_for_holm"]``.

Fields of each ``result["metrics"][name]`` entry (``analysis.entries``):
  value        the statistic on all rows (or its subsample, ``n_used`` / ``subsampled``)
  kind         "population" | "at_n" | "biased" (what the value estimates), target (words)
  ci_lo/ci_hi  interval for the target: value +/- t_{G-1} se (NaN for biased statistics)
  ci_method, se, n_blocks, level, bounds (range of the statistic, intervals are clipped to it)
  excess       value - null_mean; excess_ci_lo/excess_ci_hi its interval (every metric)
  null_mean, null_lo, null_hi (central ``level`` range), p_value (free permutation null),
  p_holm, adjustment, alternative ("greater"; "less" for lower-is-better), n_permutations,
  null (the draws, for plots), null_n_used (rows / queries the null used)
  null_within  None, or with strata {null_mean, null_lo, null_hi, p_value, p_holm, adjustment,
               n_permutations, null, excess, excess_ci_lo, excess_ci_hi}: the same for the pairing
               permuted within strata
  n_used, subsampled, chance (where defined), note

Resampling, chosen for cost at N = 50,000 (details in the modules named):
* intervals: delete-a-group jackknife (``analysis.jackknife``: G ~ sqrt(n) groups, 10..100),
  replicates without duplicated rows, one group assignment shared by all whole-sample metrics.
  Linear family: totals minus a group's row sums (``linear_bootstrap.jackknife_replicates``);
  RBF CKA / RSA: 0/1 weights on the subsample; mutual kNN: neighbour lists rebuilt per replicate
  (``knn_jackknife``); retrieval: the group leaves queries and gallery (``retrieval_jackknife``).
  Recall@k's se is floored at the Agresti-Coull binomial se (a recall of 0 of 100 queries still
  admits chance); the median rank gets the wider of the order-statistic interval of a median and
  the jackknife interval (``entries``).
  Excess intervals use the value's se, the null mean (an average of many draws) taken as fixed.
  Checked by simulation: bench/interval_coverage.py, figures in bench/results/interval_coverage.json.
* nulls: pairing permuted; linear family one N x Dx x Dy product per draw (``PreparedPair``);
  RBF CKA and RSA on one random subsample of ``max_n_kernel`` rows (value, null and jackknife);
  mutual kNN by permuting neighbour lists (``similarity.OverlapCounter``); retrieval on
  ``max_n_kernel`` queries, read from rank tables built once (``retrieval_null``), so its p-value
  refers to that query subsample. Neighbour lists are exact (``analysis.topk``).
* with ``strata`` (label or group per row; numeric labels binned by ``analysis.nulls.strata_codes``)
  every metric also gets the within-stratum null, from its own stream.
Each component draws from its own random stream derived from ``seed`` and its name
(``analysis.streams``), so adding or removing a component does not change the others' results.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

from analysis import jackknife as jk
from analysis import linear_bootstrap as lb
from analysis import linear_family as lf
from analysis import nulls
from analysis._checks import SeedLike, as_index, as_labels, as_matrix, check_choice, check_int, check_paired
from analysis._threads import blas_threads
from analysis.compare_labels import compare_labels, pooled_r2_ci
from analysis.entries import KIND_AT_N, KIND_BIASED, KIND_POPULATION, median_interval, metric_entry, proportion_se
from analysis.knn_jackknife import mutual_knn_jackknife
from analysis.multiplicity import adjust_family, min_permutations_for
from analysis.pairwise import KernelPair, RdmPair, rbf_gram, rdm_condensed
from analysis.pooling import zscore_fitted
from analysis.retrieval import project_for_retrieval, random_split
from analysis.retrieval_jackknife import BlockRanks
from analysis.retrieval_null import RankNull
from analysis.similarity import OverlapCounter
from analysis.streams import stream as _stream
from analysis.subsample import subsample_indices

__all__ = ["compare_spaces", "compare_labels", "pooled_r2_ci", "PRIMARY_SPACES", "LINEAR_KINDS"]
PRIMARY_SPACES = "linear_cka_debiased"
PRIMARY_QUESTION = ("free null: are the spaces related at all? within-stratum null: does each recording's audio "
                    "embedding match its own symbolic embedding beyond what the label explains?")
LINEAR_KINDS = {"linear_cka": KIND_BIASED, "linear_cka_debiased": KIND_POPULATION, "mean_cca": KIND_BIASED,
                "svcca": KIND_BIASED, "procrustes_similarity": KIND_BIASED, "procrustes_distance": KIND_BIASED}
LINEAR_BOUNDS = {"linear_cka_debiased": (-1.0, 1.0), "procrustes_distance": (0.0, math.sqrt(2.0))}


class _Nulls:
    """The free and (with strata) within-stratum permuters of one set of rows, with named streams."""

    def __init__(self, codes: np.ndarray | None, n: int, seed: SeedLike, n_permutations: int):
        self.seed, self.n_permutations = seed, n_permutations
        self.free = nulls.free_permuter(n)
        self.within, self.problem = None, None
        if codes is not None:
            try:
                self.within = nulls.StrataPermuter(codes)
            except ValueError as exc:
                self.problem = str(exc)

    def run(self, stat, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        """(free draws, within draws or None) of ``stat(perm)`` (a float or a dict of floats)."""
        free = [stat(p) for p in nulls.draws(self.free, self.n_permutations, _stream(self.seed, f"{name}.null"))]
        within = None
        if self.within is not None:
            within = [stat(p) for p in nulls.draws(self.within, self.n_permutations,
                                                   _stream(self.seed, f"{name}.null_within"))]
        return free, within


def _column(draws, key=None):
    if draws is None:
        return None
    return np.array([d[key] for d in draws] if key is not None else draws, dtype=np.float64)


def _linear(X, Y, out, timings, *, nul, blocks, n_blocks, level, cca_reg, svcca_keep):
    t0 = time.perf_counter()
    pair = lf.PreparedPair(X, Y, cca_reg=cca_reg, cca_components=None, svcca_keep=svcca_keep)
    obs = pair.stats()
    free, within = nul.run(pair.stats, "linear")
    reps = lb.jackknife_replicates(pair, blocks, n_blocks)
    note = f"all rows; null: permuted pairing; CI: delete-a-group jackknife ({n_blocks} groups)"
    for name in lf.STAT_NAMES:
        kind = LINEAR_KINDS[name]
        out[name] = metric_entry(name, obs[name], kind=kind, replicates=reps[name], n_blocks=n_blocks,
                                 null=_column(free, name), null_within=_column(within, name),
                                 bounds=LINEAR_BOUNDS.get(name, (0.0, 1.0)), n_used=X.shape[0], subsampled=False,
                                 level=level, note=note + ("; biased upwards (read excess)" if kind == KIND_BIASED
                                                           else ""))
    timings["linear_family"] = time.perf_counter() - t0


def _kernel_and_rsa(X, Y, out, timings, *, codes, seed, n_permutations, level, max_n_kernel, sigma_frac, rsa_metric):
    idx = subsample_indices(X.shape[0], max_n_kernel, _stream(seed, "kernel.subsample"))
    sub = idx.size < X.shape[0]
    Xs, Ys = X[idx] - X[idx].mean(0), Y[idx] - Y[idx].mean(0)
    g = jk.n_blocks_for(idx.size)
    weights = jk.leave_out_weights(jk.block_ids(idx.size, g, _stream(seed, "kernel.jackknife")), g)
    nul = _Nulls(None if codes is None else codes[idx], idx.size, seed, n_permutations)
    t0 = time.perf_counter()
    kp = KernelPair(rbf_gram(Xs, sigma_frac)[0], rbf_gram(Ys, sigma_frac)[0])
    free, within = nul.run(kp.stat, "rbf")
    out["rbf_cka"] = metric_entry("rbf_cka", kp.stat(), kind=KIND_BIASED, replicates=kp.stat_weights(weights),
                                  n_blocks=g, null=_column(free), null_within=_column(within), n_used=idx.size,
                                  subsampled=sub, level=level,
                                  note=f"sigma = {sigma_frac} x median distance; biased (V-statistic HSIC): read excess")
    timings["rbf_cka"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rp = RdmPair(rdm_condensed(Xs, rsa_metric), rdm_condensed(Ys, rsa_metric))
    free, within = nul.run(rp.stat, "rsa")
    out["rsa"] = metric_entry("rsa", rp.stat(), kind=KIND_POPULATION, replicates=rp.stat_weights(weights), n_blocks=g,
                              null=_column(free), null_within=_column(within), bounds=(-1.0, 1.0), n_used=idx.size,
                              subsampled=sub, level=level,
                              note=f"{rsa_metric} RDMs, Spearman; jackknife keeps the subsample's ranks")
    timings["rsa"] = time.perf_counter() - t0
    return nul.problem


def _mutual_knn(X, Y, out, timings, *, nul, blocks, n_blocks, level, k):
    t0 = time.perf_counter()
    res = mutual_knn_jackknife(X - X.mean(0), Y - Y.mean(0), k, blocks, n_blocks)
    counter = OverlapCounter(res["neighbors_x"], res["neighbors_y"])  # lists permuted per draw, never rebuilt
    free, within = nul.run(counter.mean, "knn")
    out["mutual_knn"] = metric_entry("mutual_knn", res["value"], kind=KIND_AT_N, replicates=res["replicates"],
                                     n_blocks=n_blocks, null=_column(free), null_within=_column(within),
                                     n_used=X.shape[0], subsampled=False, level=level, chance=k / (X.shape[0] - 1),
                                     note=f"k={k}, cosine, centred; CI: jackknife with neighbour lists rebuilt")
    timings["mutual_knn"] = time.perf_counter() - t0


def _retrieval(X, Y, out, timings, *, codes, seed, n_permutations, level, max_n_kernel, train_idx, test_idx, methods,
               standardize):
    n_test = test_idx.size
    g = jk.n_blocks_for(n_test)
    blocks = jk.block_ids(n_test, g, _stream(seed, "retrieval.jackknife"))
    problem = None
    for method in methods:
        t0 = time.perf_counter()
        proj = project_for_retrieval(X, Y, train_idx, test_idx, method, seed=_stream(seed, f"retrieval.{method}.fit"),
                                     standardize=standardize)
        for direction, tag in (("audio_to_symbolic", "x_to_y"), ("symbolic_to_audio", "y_to_x")):
            Q, G = proj[direction]
            ranks = BlockRanks(Q, G, blocks, g)
            m, reps = ranks.metrics(), ranks.replicates()
            rn = RankNull(Q, G, max_n_kernel, _stream(seed, f"retrieval.{method}.{tag}.queries"))
            nul = _Nulls(None if codes is None else codes[test_idx], n_test, seed, n_permutations)
            problem = problem or nul.problem
            free, within = nul.run(rn.metrics, f"retrieval.{method}.{tag}")
            obs_sub = rn.metrics()
            for name in obs_sub:
                key = f"retrieval_{method}_{tag}_{name}"
                chance = m["chance_median_rank"] if name == "median_rank" else m[f"chance_{name}"]
                out[key] = metric_entry(key, m[name], kind=KIND_AT_N, replicates=reps[name], n_blocks=g,
                                        null=_column(free, name), null_within=_column(within, name),
                                        observed_for_null=obs_sub[name],
                                        bounds=(1.0, float(n_test)) if name == "median_rank" else (0.0, 1.0),
                                        n_used=n_test, subsampled=False, level=level, chance=chance,
                                        null_n_used=rn.q_idx.size, se_floor=proportion_se(m[name], n_test, level)
                                        if name.startswith("recall@") else 0.0,
                                        interval=median_interval(m["per_query"]["median_rank"], level)
                                        if name == "median_rank" else None,
                                        note=f"train {train_idx.size} / test {n_test}; p-value on {rn.q_idx.size} "
                                             "queries vs full gallery; CI: jackknife over test items")
        timings[f"retrieval_{method}"] = time.perf_counter() - t0
    return problem


def compare_spaces(X: np.ndarray, Y: np.ndarray, *, train_idx: np.ndarray | None = None,
                   test_idx: np.ndarray | None = None, strata: np.ndarray | None = None, seed: SeedLike = 0,
                   n_permutations: int = 200, n_boot: int | None = None, max_n_kernel: int | None = 2000, k: int = 10,
                   level: float = 0.95, sigma_frac: float = 0.8, rsa_metric: str = "cosine", cca_reg: float = 0.0,
                   svcca_keep: float = 0.99, retrieval_methods: Sequence[str] = ("ridge", "cca"),
                   standardize: str = "none", n_threads: int | None = 1) -> dict:
    """All cross-space metrics for paired X (N, Dx) = audio and Y (N, Dy) = symbolic embeddings.

    ``train_idx``/``test_idx`` define the retrieval split (split by piece when pieces repeat);
    without them a seeded random 50/50 split is used. ``strata``: (N,) label or group codes (see
    ``analysis.nulls.strata_codes``) for the within-stratum nulls; None: free nulls only.
    ``standardize``: "none", or "zscore" (each feature to mean 0, sd 1: over all rows for the
    whole-sample metrics, which use no held-out rows; over the training rows for retrieval).
    ``n_boot`` is accepted for older callers and ignored (intervals come from the jackknife).
    ``n_threads`` caps BLAS threads for the duration of the call (process-wide, restored
    afterwards; None leaves the library default). The default 1 is deliberate: on the shared 2-core
    machine OpenBLAS with 2 threads was 2-4x slower whenever another process was busy.
    Returns {"n", "dim_x", "dim_y", "settings", "metrics": {name: entry}, "primary",
    "multiplicity", "timings_s"} (fields: module docstring).
    """
    with blas_threads(n_threads):
        return _compare_spaces(X, Y, train_idx=train_idx, test_idx=test_idx, strata=strata, seed=seed,
                               n_permutations=n_permutations, max_n_kernel=max_n_kernel, k=k, level=level,
                               sigma_frac=sigma_frac, rsa_metric=rsa_metric, cca_reg=cca_reg, svcca_keep=svcca_keep,
                               retrieval_methods=retrieval_methods, standardize=standardize)


def _compare_spaces(X, Y, *, train_idx, test_idx, strata, seed, n_permutations, max_n_kernel, k, level, sigma_frac,
                    rsa_metric, cca_reg, svcca_keep, retrieval_methods, standardize) -> dict:
    X = as_matrix("X", X)
    Y = as_matrix("Y", Y)
    check_paired(X, Y)
    n = X.shape[0]
    if n < 20:
        raise ValueError(f"X, Y: expected at least 20 paired rows for resampling-based inference, got {n}")
    n_permutations = check_int("n_permutations", n_permutations, minimum=1)
    k = check_int("k", k, minimum=1, maximum=n - 2)
    check_choice("standardize", standardize, ("none", "zscore"))
    codes = None if strata is None else nulls.strata_codes(as_labels("strata", strata, n))
    split = "given"
    if train_idx is None and test_idx is None:
        train_idx, test_idx = random_split(n, 0.5, _stream(seed, "retrieval.split"))
        split = "random 50/50"
    elif train_idx is None or test_idx is None:
        raise ValueError("train_idx, test_idx: expected both or neither, got only one")
    train_idx, test_idx = as_index("train_idx", train_idx, n), as_index("test_idx", test_idx, n)
    if test_idx.size < 10:
        raise ValueError(f"test_idx: expected at least 10 test rows for retrieval and its jackknife, got {test_idx.size}")
    Xw, Yw = (zscore_fitted(X), zscore_fitted(Y)) if standardize == "zscore" else (X, Y)
    g = jk.n_blocks_for(n)
    blocks = jk.block_ids(n, g, _stream(seed, "jackknife"))
    metrics: dict = {}
    timings: dict = {}
    whole = _Nulls(codes, n, seed, n_permutations)
    _linear(Xw, Yw, metrics, timings, nul=whole, blocks=blocks, n_blocks=g, level=level, cca_reg=cca_reg,
            svcca_keep=svcca_keep)
    problems = [whole.problem]
    problems.append(_kernel_and_rsa(Xw, Yw, metrics, timings, codes=codes, seed=seed, n_permutations=n_permutations,
                                    level=level, max_n_kernel=max_n_kernel, sigma_frac=sigma_frac,
                                    rsa_metric=rsa_metric))
    _mutual_knn(Xw, Yw, metrics, timings, nul=whole, blocks=blocks, n_blocks=g, level=level, k=k)
    problems.append(_retrieval(X, Y, metrics, timings, codes=codes, seed=seed, n_permutations=n_permutations,
                               level=level, max_n_kernel=max_n_kernel, train_idx=train_idx, test_idx=test_idx,
                               methods=tuple(retrieval_methods), standardize=standardize == "zscore"))
    families = [adjust_family(metrics, "spaces")]
    within = {name: e["null_within"] for name, e in metrics.items() if e["null_within"] is not None}
    if within:
        families.append(adjust_family(within, "spaces.within"))
    primary = metrics[PRIMARY_SPACES]
    strata_info = None
    if codes is not None:
        strata_info = {"n_strata": int(np.unique(codes).size), "n_movable": whole.within.n_movable if whole.within
                       else 0, "problems": [p for p in problems if p]}
    settings = {"seed": seed if not isinstance(seed, np.random.Generator) else "generator",
                "n_permutations": n_permutations, "n_blocks": g, "max_n_kernel": max_n_kernel, "k": k,
                "level": level, "sigma_frac": sigma_frac, "rsa_metric": rsa_metric, "cca_reg": cca_reg,
                "svcca_keep": svcca_keep, "standardize": standardize, "retrieval_split": split,
                "n_train": int(train_idx.size), "n_test": int(test_idx.size), "strata": strata_info,
                "min_permutations_for_holm": min_permutations_for(families[0]["size"])}
    return {"n": n, "dim_x": X.shape[1], "dim_y": Y.shape[1], "settings": settings, "metrics": metrics,
            "primary": {"metric": PRIMARY_SPACES, "question": PRIMARY_QUESTION, "value": primary["value"],
                        "ci_lo": primary["ci_lo"], "ci_hi": primary["ci_hi"], "p_value": primary["p_value"],
                        "p_within": None if primary["null_within"] is None else primary["null_within"]["p_value"]},
            "multiplicity": families, "timings_s": timings}
