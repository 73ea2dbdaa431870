"""Scenarios of bench/interval_coverage.py that compare the two media on a label: ``compare_labels``
(kNN accuracy, silhouette and label-RDM differences) and the sweep's paired item tests (classification,
regression, Holm over a family of labels). The models and what each truth is: that script's docstring.
"""

from __future__ import annotations

import math
import time

import numpy as np
from scipy import stats as sps

from analysis.compare import compare_labels
from analysis.paired_tests import paired_classification_test, paired_regression_test
from bench.simulation_rates import ALPHA, cover, loo_mean, rate


# ---------------------------------------------------------------------------------------------- labels
def _label_data(kind: str, n: int, rng: np.random.Generator, centres: np.ndarray, rotation: np.ndarray):
    y = rng.integers(0, centres.shape[0], n)
    strength_a = 0.0 if kind == "none" else 1.0
    strength_s = {"none": 0.0, "equal": 1.0, "differ": 0.6}[kind]
    Xa = strength_a * centres[y] + rng.standard_normal((n, centres.shape[1]))
    Xs = (strength_s * centres[y] + rng.standard_normal((n, centres.shape[1]))) @ rotation
    return Xa, Xs, y


def run_labels(kind: str, reps: int, n: int, n_permutations: int, seed: int) -> dict:
    rng0 = np.random.default_rng([seed, 99])
    centres = rng0.standard_normal((4, 12)) * 0.9
    rotation = np.linalg.qr(rng0.standard_normal((12, 12)))[0]
    keys = ("knn_by_fold", "knn_by_recording", "silhouette_test", "label_rdm_test")
    est = {k: [] for k in keys}
    lo = {k: [] for k in keys}
    hi = {k: [] for k in keys}
    p = {k: [] for k in (*keys, "audio.label_rdm", "symbolic.label_rdm")}
    acc = {m: {"value": [], "lo": [], "hi": []} for m in ("audio", "symbolic")}
    fw = []
    started = time.perf_counter()
    for r in range(reps):
        Xa, Xs, y = _label_data(kind, n, np.random.default_rng([seed, r, 2]), centres, rotation)
        res = compare_labels(Xa, Xs, y, seed=r, k=5, n_permutations=n_permutations, n_boot=500)
        d = res["difference_audio_minus_symbolic"]
        for k in keys:
            est[k].append(d[k]["mean_difference"] if k.startswith("knn") else d[k]["difference"])
            lo[k].append(d[k]["ci_lo"])
            hi[k].append(d[k]["ci_hi"])
            p[k].append(d[k]["p_value"])
        for m in ("audio", "symbolic"):
            p[f"{m}.label_rdm"].append(res[m]["label_rdm"]["p_value"])
            knn = res[m]["knn"]
            acc[m]["value"].append(float(np.mean(knn["per_fold"])))
            acc[m]["lo"].append(knn["ci_lo"])
            acc[m]["hi"].append(knn["ci_hi"])
        fw.append(min(v["p_holm"] for v in [*(d[k] for k in keys), res["audio"]["label_rdm"],
                                               res["symbolic"]["label_rdm"]]) <= ALPHA)
    out = {"model": {"kind": kind, "n": n, "dim": 12, "classes": 4, "reps": reps}, "differences": {}, "media": {},
           "seconds": round(time.perf_counter() - started, 1)}
    for k in keys:
        e, a, b = (np.asarray(v, dtype=np.float64) for v in (est[k], lo[k], hi[k]))
        truth = np.zeros(reps) if kind in ("none", "equal") else loo_mean(e)  # media exchangeable: 0
        out["differences"][k] = {"coverage_ci": rate(cover(a, b, truth)),
                                 "rejection": rate(np.asarray(p[k]) <= ALPHA)}
    for m in ("audio", "symbolic"):
        v = np.asarray(acc[m]["value"])
        out["media"][f"{m}.knn_accuracy"] = {"coverage_ci": rate(cover(np.asarray(acc[m]["lo"]),
                                                                         np.asarray(acc[m]["hi"]), loo_mean(v)))}
        out["media"][f"{m}.label_rdm"] = {"rejection": rate(np.asarray(p[f"{m}.label_rdm"]) <= ALPHA)}
    out["familywise"] = rate(np.asarray(fw))
    return out


# ---------------------------------------------------------------------------------------------- paired item tests
ITEM_SD, INTERACTION_SD, SEED_SD = 1.0, 0.5, 0.1


def _probit_correct(mu: float, u: np.ndarray, n_seeds: int, rng: np.random.Generator) -> np.ndarray:
    w = rng.normal(0, INTERACTION_SD, u.size)
    nu = rng.normal(0, SEED_SD, (n_seeds, 1))
    return rng.random((n_seeds, u.size)) < sps.norm.cdf(mu + u + w + nu)


def population_accuracy(mu: float) -> float:
    return float(sps.norm.cdf(mu / math.sqrt(1 + ITEM_SD**2 + INTERACTION_SD**2 + SEED_SD**2)))


def run_paired_classification(kind: str, reps: int, n_items: int, n_seeds: int, seed: int) -> dict:
    mu_a, mu_b = (0.4, 0.4) if kind == "equal" else (0.6, 0.2)
    truth_a, truth_b = population_accuracy(mu_a), population_accuracy(mu_b)
    hits = {k: [] for k in ("diff", "a_t", "b_t", "a_wilson", "b_wilson", "a_reported", "b_reported", "reject",
                            "mcnemar", "items_conditional")}
    for r in range(reps):
        rng = np.random.default_rng([seed, r, 3])
        u = rng.normal(0, ITEM_SD, n_items)
        ca, cb = _probit_correct(mu_a, u, n_seeds, rng), _probit_correct(mu_b, u, n_seeds, rng)
        t = paired_classification_test(ca.astype(int), cb.astype(int), np.ones(n_items, int), seed=r,
                                       n_permutations=1999)
        hits["diff"].append(t["ci_lo"] <= truth_a - truth_b <= t["ci_hi"])
        for side, truth in (("a", truth_a), ("b", truth_b)):
            hits[f"{side}_t"].append(t[f"{side}_ci_lo"] <= truth <= t[f"{side}_ci_hi"])
            hits[f"{side}_wilson"].append(t[f"{side}_wilson_lo"] <= truth <= t[f"{side}_wilson_hi"])
            hits[f"{side}_reported"].append(t[f"{side}_lo"] <= truth <= t[f"{side}_hi"])
        hits["reject"].append(t["p_value"] <= ALPHA)
        hits["mcnemar"].append(t["mcnemar"]["p_value"] <= ALPHA)
        hits["items_conditional"].append(t["p_items"] <= ALPHA)
    out = {"model": {"kind": kind, "n_items": n_items, "n_seeds": n_seeds, "reps": reps,
                     "accuracy_a": round(truth_a, 4), "accuracy_b": round(truth_b, 4)}}
    out.update({k: rate(np.asarray(v)) for k, v in hits.items()})
    return out


def run_paired_regression(kind: str, reps: int, n_items: int, n_seeds: int, seed: int) -> dict:
    beta_a, beta_b = (0.8, 0.8) if kind == "equal" else (0.9, 0.6)
    shared, own, noise, seed_sd = 0.3, 0.3, 0.2, 0.1

    def mse(beta):
        return (beta - 1) ** 2 + shared**2 + own**2 + noise**2 + seed_sd**2

    r2 = {m: 1 - mse(b) for m, b in (("a", beta_a), ("b", beta_b))}
    mae = {m: math.sqrt(2 / math.pi) * math.sqrt(mse(b)) for m, b in (("a", beta_a), ("b", beta_b))}
    hits = {k: [] for k in ("r2_diff", "mae_diff", "a_r2", "reject_r2", "reject_mae", "items_conditional")}
    for r in range(reps):
        rng = np.random.default_rng([seed, r, 4])
        y = rng.standard_normal(n_items)
        u = rng.normal(0, shared, n_items)

        def preds(beta, y=y, u=u, rng=rng):
            return (beta * y + u + rng.normal(0, own, n_items) + rng.normal(0, seed_sd, (n_seeds, 1))
                    + rng.normal(0, noise, (n_seeds, n_items)))

        t = paired_regression_test(preds(beta_a), preds(beta_b), y, seed=r, n_permutations=1999)
        hits["r2_diff"].append(t["ci_lo"] <= r2["a"] - r2["b"] <= t["ci_hi"])
        hits["mae_diff"].append(t["mae"]["ci_lo"] <= mae["a"] - mae["b"] <= t["mae"]["ci_hi"])
        hits["a_r2"].append(t["a_ci_lo"] <= r2["a"] <= t["a_ci_hi"])
        hits["reject_r2"].append(t["p_value"] <= ALPHA)
        hits["reject_mae"].append(t["mae"]["p_value"] <= ALPHA)
        hits["items_conditional"].append(t["p_items"] <= ALPHA)
    out = {"model": {"kind": kind, "n_items": n_items, "n_seeds": n_seeds, "reps": reps,
                     "r2_a": round(r2["a"], 4), "r2_b": round(r2["b"], 4)}}
    out.update({k: rate(np.asarray(v)) for k, v in hits.items()})
    return out


def run_sweep_family(reps: int, n_items: int, n_seeds: int, n_labels: int, seed: int) -> dict:
    """Family-wise error of the sweep verdicts (Holm over labels) when no label differs."""
    from analysis.multiplicity import holm

    raw, adjusted = [], []
    for r in range(reps):
        rng = np.random.default_rng([seed, r, 5])
        ps = []
        for _ in range(n_labels):
            u = rng.normal(0, ITEM_SD, n_items)
            ca, cb = _probit_correct(0.4, u, n_seeds, rng), _probit_correct(0.4, u, n_seeds, rng)
            ps.append(paired_classification_test(ca.astype(int), cb.astype(int), np.ones(n_items, int), seed=r,
                                                 n_permutations=1)["p_value"])
        raw.append(min(ps) <= ALPHA)
        adjusted.append(min(holm(ps)) <= ALPHA)
    return {"n_labels": n_labels, "reps": reps, "familywise_raw": rate(np.asarray(raw)),
            "familywise_holm": rate(np.asarray(adjusted))}
