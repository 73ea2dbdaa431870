"""Coverage of every reported interval and rejection rate of every reported test, by simulation.

    .venv/bin/python bench/interval_coverage.py                      # the full run (bench/results/interval_coverage.json)
    .venv/bin/python bench/interval_coverage.py --quick              # seconds: the size the test suite runs

(Named interval_coverage, not coverage: a bench/coverage.py would shadow the coverage package, which
numba imports, in every script run as ``python bench/<script>.py``.)

Not a timing benchmark: it checks that ``analysis.compare.compare_spaces``, ``compare_labels`` and
``analysis.paired_tests`` mean what they say. Data are made in code; each scenario draws R
independent datasets from one fixed model:

* spaces (n rows, Dx = 16, Dy = 12 by default): ``independent`` (X, Y with latent structure of
  their own, unrelated), ``dependent`` (a shared recording-level latent, random labels as strata),
  ``label_only`` (both spaces share only class centroids, 4 classes, the labels as strata).
* labels: ``none`` (no class structure in either medium), ``equal`` (the same structure, symbolic =
  audio rotated, so every difference is 0 in the population), ``differ`` (symbolic noisier).
* paired item tests (S seeds x n items, probit model with item, item x medium and seed effects):
  ``equal`` and ``differ`` accuracies; regression ``equal`` and ``differ``; a family of 3 labels.
  ``items_conditional`` is the rejection rate of ``p_items`` (item sign flips given the trained
  models): its null is "these models are equally good", not "these training procedures are", so
  seed effects make it reject more often here; it is shown, not used for verdicts or the summary.

Truth of each interval: population values where the interval targets one (debiased CKA in closed
form from the model's covariances, RSA from a large sample, accuracies and R^2/MAE in closed form);
0 for every excess under independence and every within-stratum excess where the pairing is
independent given the label; otherwise the expected value at this N, estimated by the mean over
the other R - 1 datasets (leave-one-out, so dataset r's own value is not in its truth).
Coverage = share of datasets whose interval contains the truth; rejection rate = share with
p <= alpha; family-wise = share with any Holm-adjusted p <= alpha. ``mc_se`` is the Monte Carlo
standard error of a rate (sqrt(r (1 - r) / R)).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.compare import compare_spaces  # noqa: E402
from analysis.nulls import StrataPermuter, strata_codes  # noqa: E402
from analysis.pairwise import RdmPair, rdm_condensed  # noqa: E402
from analysis.retrieval import fit_retrieval_maps, random_split, retrieval_metrics  # noqa: E402
from analysis.retrieval_null import RankNull  # noqa: E402
from analysis.streams import stream  # noqa: E402
from bench.common import finish, machine  # noqa: E402
from bench.interval_coverage_media import (  # noqa: E402
    run_labels,
    run_paired_classification,
    run_paired_regression,
    run_sweep_family,
)
from bench.simulation_rates import ALPHA, cover, loo_mean, rate  # noqa: E402


# ---------------------------------------------------------------------------------------------- spaces
class SpacesModel:
    """X = Zx A + E, Y = Zy B + F (unit-variance noise); Z shared (dependent) or not; or class centroids."""

    def __init__(self, kind: str, dx: int = 16, dy: int = 12, rank: int = 3, n_classes: int = 4, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.kind, self.dx, self.dy, self.n_classes = kind, dx, dy, n_classes
        self.A = rng.standard_normal((rank, dx)) * 0.8
        self.B = rng.standard_normal((rank, dy)) * 0.8
        self.cx = rng.standard_normal((n_classes, dx)) * 0.8
        self.cy = rng.standard_normal((n_classes, dy)) * 0.8

    def draw(self, n: int, rng: np.random.Generator):
        y = rng.integers(0, self.n_classes, n)
        if self.kind == "label_only":
            X = self.cx[y] + rng.standard_normal((n, self.dx))
            Y = self.cy[y] + rng.standard_normal((n, self.dy))
            return X, Y, y
        zx = rng.standard_normal((n, self.A.shape[0]))
        zy = zx if self.kind == "dependent" else rng.standard_normal((n, self.B.shape[0]))
        return zx @ self.A + rng.standard_normal((n, self.dx)), zy @ self.B + rng.standard_normal((n, self.dy)), y

    def covariances(self):
        if self.kind == "label_only":
            cxc, cyc = self.cx - self.cx.mean(0), self.cy - self.cy.mean(0)  # classes equally likely
            return (cxc.T @ cxc / self.n_classes + np.eye(self.dx), cyc.T @ cyc / self.n_classes + np.eye(self.dy),
                    cxc.T @ cyc / self.n_classes)
        sxy = self.A.T @ self.B if self.kind == "dependent" else np.zeros((self.dx, self.dy))
        return self.A.T @ self.A + np.eye(self.dx), self.B.T @ self.B + np.eye(self.dy), sxy

    def population_cka(self) -> float:
        sxx, syy, sxy = self.covariances()
        return float(np.sum(sxy**2) / (np.linalg.norm(sxx) * np.linalg.norm(syy)))

    def population_rsa(self, n_big: int = 3000, repeats: int = 2) -> float:
        if self.kind == "independent":
            return 0.0
        vals = []
        for r in range(repeats):
            X, Y, _ = self.draw(n_big, np.random.default_rng(10_000 + r))
            Xc, Yc = X - X.mean(0), Y - Y.mean(0)
            vals.append(RdmPair(rdm_condensed(Xc, "cosine"), rdm_condensed(Yc, "cosine")).stat())
        return float(np.mean(vals))


def run_familywise(kind: str, reps: int, n: int, n_permutations: int, seed: int) -> dict:
    """Family-wise error after Holm with enough permutations for Holm to reject at all.

    With m = 29 p-values Holm's first step needs p <= 0.05 / 29, i.e. n_permutations >= 579
    (``analysis.multiplicity.min_permutations_for``); the coverage runs use fewer, so the
    family-wise rate is measured here, on its own datasets.
    """
    model = SpacesModel(kind, seed=seed)
    free, within, raw = [], [], []
    for r in range(reps):
        X, Y, y = model.draw(n, np.random.default_rng([seed, r, 6]))
        res = compare_spaces(X, Y, strata=None if kind == "independent" else y, seed=r, n_permutations=n_permutations)
        m = res["metrics"].values()
        free.append(min(e["p_holm"] for e in m) <= ALPHA)
        raw.append(min(e["p_value"] for e in m) <= ALPHA)
        if kind != "independent":
            within.append(min(e["null_within"]["p_holm"] for e in m) <= ALPHA)
    out = {"kind": kind, "reps": reps, "n": n, "n_permutations": n_permutations,
           "familywise_free_raw": rate(np.asarray(raw)), "familywise_free_holm": rate(np.asarray(free))}
    if within:
        out["familywise_within_holm"] = rate(np.asarray(within))
    return out


RETRIEVAL_NAMES = ("recall@1", "recall@5", "recall@10", "median_rank", "mrr")


def retrieval_truth(model: SpacesModel, X: np.ndarray, Y: np.ndarray, r: int, n_fresh: int, seed: int,
                    within_draws: int = 0) -> tuple[dict, dict]:
    """Expected held-out retrieval metrics of the maps ``compare_spaces(seed=r)`` fitted on this dataset's
    training rows, over ``n_fresh`` new test sets of the same size from the model; with ``within_draws``
    also the expected (metric - its within-label null mean) over the same test sets.

    Held-out retrieval measures the fitted maps, so its intervals (test items resampled, maps fixed)
    target this conditional value; how the maps would differ on other training rows is not part of it.
    """
    train, test = random_split(X.shape[0], 0.5, stream(r, "retrieval.split"))
    value: dict[str, list] = {}
    within: dict[str, list] = {}
    for method in ("ridge", "cca"):
        maps = fit_retrieval_maps(X[train], Y[train], method, seed=stream(r, f"retrieval.{method}.fit"))
        for m in range(n_fresh):
            rng = np.random.default_rng([seed, r, 7, m])
            Xf, Yf, yf = model.draw(test.size, rng)
            proj = maps.project(Xf, Yf)
            for direction, tag in (("audio_to_symbolic", "x_to_y"), ("symbolic_to_audio", "y_to_x")):
                metrics = retrieval_metrics(*proj[direction])
                null = None
                if within_draws:
                    rank_null = RankNull(*proj[direction], None, 0)
                    perm_of = StrataPermuter(strata_codes(yf))
                    draws = [rank_null.metrics(perm_of(rng)) for _ in range(within_draws)]
                    null = {k: float(np.mean([d[k] for d in draws])) for k in draws[0]}
                for name in RETRIEVAL_NAMES:
                    key = f"retrieval_{method}_{tag}_{name}"
                    value.setdefault(key, []).append(metrics[name])
                    if null is not None:
                        within.setdefault(key, []).append(metrics[name] - null[name])
    return ({k: float(np.mean(v)) for k, v in value.items()}, {k: float(np.mean(v)) for k, v in within.items()})


def run_spaces(kind: str, reps: int, n: int, n_permutations: int, seed: int, n_big: int = 3000,
               n_fresh: int = 10) -> dict:
    model = SpacesModel(kind, seed=seed)
    fields = ("value", "ci_lo", "ci_hi", "excess", "excess_ci_lo", "excess_ci_hi", "p_value", "p_holm", "null_mean")
    rows: dict[str, dict[str, list]] = {}
    conditional: dict[str, list] = {}
    conditional_within: dict[str, list] = {}
    fw, fw_within = [], []
    started = time.perf_counter()
    for r in range(reps):
        X, Y, y = model.draw(n, np.random.default_rng([seed, r, 1]))
        res = compare_spaces(X, Y, strata=None if kind == "independent" else y, seed=r, n_permutations=n_permutations)
        for name, e in res["metrics"].items():
            row = rows.setdefault(name, {f: [] for f in (*fields, "kind", "w_p", "w_p_holm", "w_excess", "w_lo",
                                                          "w_hi", "w_null_mean")})
            for f in fields:
                row[f].append(e[f])
            row["kind"].append(e["kind"])
            w = e["null_within"] or {}
            for f, src in (("w_p", "p_value"), ("w_p_holm", "p_holm"), ("w_excess", "excess"),
                           ("w_lo", "excess_ci_lo"), ("w_hi", "excess_ci_hi"), ("w_null_mean", "null_mean")):
                row[f].append(w.get(src, np.nan))
        if kind != "independent":  # independent: the maps are useless, conditional = unconditional
            # label_only: the within-label excess is 0 given the maps (pairs independent given the label)
            cond_value, cond_within = retrieval_truth(model, X, Y, r, n_fresh, seed,
                                                      within_draws=99 if kind == "dependent" else 0)
            for name, v in cond_value.items():
                conditional.setdefault(name, []).append(v)
            for name, v in cond_within.items():
                conditional_within.setdefault(name, []).append(v)
        fw.append(min(e["p_holm"] for e in res["metrics"].values()) <= ALPHA)
        if kind != "independent":
            fw_within.append(min(e["null_within"]["p_holm"] for e in res["metrics"].values()) <= ALPHA)
    truth_pop = {"linear_cka_debiased": model.population_cka(), "rsa": model.population_rsa(n_big)}
    out = {"model": {"kind": kind, "n": n, "dim_x": model.dx, "dim_y": model.dy, "reps": reps,
                     "n_permutations": n_permutations, "population_cka": round(truth_pop["linear_cka_debiased"], 4),
                     "population_rsa": round(truth_pop["rsa"], 4)},
           "metrics": {}, "seconds": round(time.perf_counter() - started, 1)}
    for name, row in rows.items():
        a = {f: np.asarray(v, dtype=np.float64) for f, v in row.items() if f != "kind"}
        kind_m = row["kind"][0]
        entry = {"kind": kind_m}
        cond = np.asarray(conditional[name]) if name in conditional else None
        if kind_m != "biased":
            truth = (np.full(reps, truth_pop[name]) if kind_m == "population" else
                     cond if cond is not None else loo_mean(a["value"]))
            entry["coverage_ci"] = rate(cover(a["ci_lo"], a["ci_hi"], truth))
            entry["target"] = ("population value" if kind_m == "population" else
                               "expected value of the fitted maps on new test sets" if cond is not None else
                               "expected value at this N (leave-one-out mean)")
        if kind == "independent":
            truth_ex = np.zeros(reps)
        elif cond is not None:
            truth_ex = cond - np.mean(a["null_mean"])
        else:
            truth_ex = loo_mean(a["excess"])
        entry["coverage_excess_ci"] = rate(cover(a["excess_ci_lo"], a["excess_ci_hi"], truth_ex))
        entry["rejection_free"] = rate(a["p_value"] <= ALPHA)
        entry["rejection_free_holm"] = rate(a["p_holm"] <= ALPHA)
        if kind != "independent":
            # the pairing is independent given the label for label_only: within excess is 0 there
            if kind == "label_only":
                truth_w = np.zeros(reps)
            elif name in conditional_within:
                truth_w = np.asarray(conditional_within[name])
            else:
                truth_w = loo_mean(a["w_excess"])
            entry["coverage_excess_within_ci"] = rate(cover(a["w_lo"], a["w_hi"], truth_w))
            entry["rejection_within"] = rate(a["w_p"] <= ALPHA)
            entry["rejection_within_holm"] = rate(a["w_p_holm"] <= ALPHA)
        out["metrics"][name] = entry
    out["familywise_free"] = rate(np.asarray(fw))
    if fw_within:
        out["familywise_within"] = rate(np.asarray(fw_within))
    return out


# ---------------------------------------------------------------------------------------------- summary
def summary(result: dict) -> dict:
    """Worst figures against the done-when thresholds (coverage >= 0.90, rejection <= 0.06)."""
    cover, reject = [], []
    for scen, res in result["spaces"].items():
        for name, e in res["metrics"].items():
            for key in ("coverage_ci", "coverage_excess_ci", "coverage_excess_within_ci"):
                if key in e:
                    cover.append((e[key]["rate"], f"spaces.{scen}.{name}.{key}"))
            if scen == "independent":
                reject.append((e["rejection_free"]["rate"], f"spaces.independent.{name}.rejection_free"))
            if scen == "label_only":
                reject.append((e["rejection_within"]["rate"], f"spaces.label_only.{name}.rejection_within"))
    for scen, res in result["labels"].items():
        for name, e in {**res["differences"], **res["media"]}.items():
            if "coverage_ci" in e:
                cover.append((e["coverage_ci"]["rate"], f"labels.{scen}.{name}.coverage_ci"))
            if scen in ("none", "equal") and "rejection" in e and name in res["differences"]:
                reject.append((e["rejection"]["rate"], f"labels.{scen}.{name}.rejection"))
            if scen == "none" and name.endswith("label_rdm") and "rejection" in e:
                reject.append((e["rejection"]["rate"], f"labels.none.{name}.rejection"))
    for scen, res in result["paired"].items():
        if scen == "sweep_family":
            continue
        for key, e in res.items():
            # items_conditional: the sign-flip p given the trained models, not a test of the training
            # procedures the simulation's null is about (seed effects); reported, not used for verdicts
            if key in ("model", "items_conditional") or not isinstance(e, dict):
                continue
            if key.startswith("reject") or key == "mcnemar":
                if scen.endswith("equal"):
                    reject.append((e["rate"], f"paired.{scen}.{key}"))
            elif key not in ("a_wilson", "b_wilson", "a_t", "b_t"):  # parts of the reported (wider) interval
                cover.append((e["rate"], f"paired.{scen}.{key}"))
    fw = [(result["labels"]["none"]["familywise"]["rate"], "labels.none.familywise"),
          (result["paired"]["sweep_family"]["familywise_holm"]["rate"], "paired.sweep_family.familywise_holm")]
    # family-wise error: only where the family's nulls are all true (label_only's free null is false)
    if "independent" in result.get("familywise", {}):
        fw.append((result["familywise"]["independent"]["familywise_free_holm"]["rate"], "familywise.independent.free_holm"))
    if "label_only" in result.get("familywise", {}):
        fw.append((result["familywise"]["label_only"]["familywise_within_holm"]["rate"],
                   "familywise.label_only.within_holm"))
    rates = [r for r, _ in reject]
    return {"min_coverage": min(cover), "max_rejection": max(reject), "mean_rejection": round(float(np.mean(rates)), 4),
            "max_familywise": max(fw), "n_intervals": len(cover), "n_tests": len(reject),
            "coverage_below_0.90": sorted(c for c in cover if c[0] < 0.9),
            "rejection_above_0.06": sorted(r for r in reject if r[0] > 0.06)}


def merge(results: list[dict]) -> dict:
    """One result from runs of different parts: sections joined (a later run's scenario replaces an
    earlier one's), summary redone; each run's settings are kept in ``settings_by_part``."""
    out = {"benchmark": "interval_coverage", "machine": results[0]["machine"], "alpha": ALPHA, "level": 0.95,
           "settings": results[0]["settings"], "parts_run_separately": [r["settings"].get("parts") for r in results],
           "settings_by_part": [r["settings"] for r in results],
           "seconds": round(sum(r["seconds"] for r in results), 1)}
    for section in ("spaces", "labels", "paired", "familywise"):
        out[section] = {k: v for r in results for k, v in r.get(section, {}).items()}
    out["summary"] = summary(out)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few seconds: few datasets, small N (what the tests run)")
    ap.add_argument("--reps", type=int, default=1000, help="datasets per scenario")
    ap.add_argument("--reps-rejection", type=int, default=2000,
                    help="datasets for the scenarios whose rejection rates are checked (independent, label_only)")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--n-permutations", type=int, default=199)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reps-dependent", type=int, default=None, help="datasets for the dependent scenario (default --reps)")
    ap.add_argument("--reps-familywise", type=int, default=250)
    ap.add_argument("--familywise-permutations", type=int, default=599,
                    help="enough for Holm over 29 tests to reject (>= 579)")
    ap.add_argument("--parts", default="spaces,labels,paired,familywise")
    ap.add_argument("--spaces-scenarios", default="independent,dependent,label_only")
    ap.add_argument("--merge", nargs="+", default=None,
                    help="combine the JSON outputs of runs of different --parts (run side by side) into one")
    args = ap.parse_args(argv)
    if args.merge:
        finish(merge([json.loads(Path(p).read_text()) for p in args.merge]))
        return
    if args.quick:
        args.reps, args.reps_rejection, args.n, args.n_permutations = 4, 4, 40, 19
        args.reps_familywise, args.familywise_permutations = 2, 19
    reps_dependent = args.reps if args.reps_dependent is None else args.reps_dependent
    parts = set(args.parts.split(","))
    started = time.perf_counter()
    result = {"benchmark": "interval_coverage", "machine": machine(), "alpha": ALPHA, "level": 0.95,
              "settings": {"reps": args.reps, "reps_rejection": args.reps_rejection, "reps_dependent": reps_dependent,
                           "reps_familywise": args.reps_familywise,
                           "familywise_permutations": args.familywise_permutations, "n": args.n,
                           "n_permutations": args.n_permutations, "seed": args.seed, "quick": args.quick,
                           "parts": args.parts},
              "spaces": {}, "labels": {}, "paired": {}, "familywise": {}}
    if "spaces" in parts:
        for kind in args.spaces_scenarios.split(","):
            reps = reps_dependent if kind == "dependent" else args.reps_rejection
            result["spaces"][kind] = run_spaces(kind, reps, args.n, args.n_permutations, args.seed,
                                                n_big=400 if args.quick else 3000, n_fresh=2 if args.quick else 10)
    if "labels" in parts:
        for kind in ("none", "equal", "differ"):
            result["labels"][kind] = run_labels(kind, args.reps, args.n, args.n_permutations, args.seed)
    if "paired" in parts:
        n_items, seeds = (30, 3) if args.quick else (100, 3)
        for kind in ("equal", "differ"):
            reps = args.reps_rejection if kind == "equal" else args.reps
            result["paired"][f"classification_{kind}"] = run_paired_classification(kind, reps, n_items, seeds,
                                                                                     args.seed)
            result["paired"][f"regression_{kind}"] = run_paired_regression(kind, reps, n_items, seeds, args.seed)
        result["paired"]["sweep_family"] = run_sweep_family(args.reps, n_items, seeds, 3, args.seed)
    if "familywise" in parts:
        for kind in ("independent", "label_only"):
            result["familywise"][kind] = run_familywise(kind, args.reps_familywise, args.n,
                                                        args.familywise_permutations, args.seed)
    if parts >= {"spaces", "labels", "paired"}:
        result["summary"] = summary(result)
    result["seconds"] = round(time.perf_counter() - started, 1)
    finish(result)


if __name__ == "__main__":
    main()
