"""bench/interval_coverage.py at its --quick size (a few seconds): every reported interval and test is simulated.

The full run (bench/results/interval_coverage.json) is what shows coverage >= 0.90 and rejection <= 0.06;
with 4 datasets per scenario this test checks that the script covers every interval and test the
analysis reports, that the truths it scores them against are right, and that intervals whose
truth is known exactly (every excess under independence is 0) are not broken.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import interval_coverage as coverage
from bench.interval_coverage import SpacesModel


@pytest.fixture(scope="module")
def quick():
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        coverage.main(["--quick"])
    return json.loads(out.getvalue())


def test_merge_joins_parts_and_redoes_the_summary(quick):
    a = {**quick, "spaces": {}, "familywise": {}, "settings": {**quick["settings"], "parts": "labels,paired"}}
    b = {**quick, "labels": {}, "paired": {}, "settings": {**quick["settings"], "parts": "spaces,familywise"}}
    merged = coverage.merge([a, b])
    assert json.loads(json.dumps(merged["summary"])) == quick["summary"] and merged["spaces"] == quick["spaces"]
    assert merged["parts_run_separately"] == ["labels,paired", "spaces,familywise"]


def test_population_cka_of_the_models():
    assert SpacesModel("independent").population_cka() == 0.0
    dep = SpacesModel("dependent")
    sxx, syy, sxy = dep.covariances()
    assert np.allclose(sxy, dep.A.T @ dep.B) and dep.population_cka() > 0.2
    # the closed form agrees with debiased CKA on a large sample
    from analysis.similarity import linear_cka

    X, Y, _ = dep.draw(20000, np.random.default_rng(0))
    assert linear_cka(X, Y, debiased=True)["value"] == pytest.approx(dep.population_cka(), abs=0.02)
    lab = SpacesModel("label_only")
    X, Y, _ = lab.draw(20000, np.random.default_rng(1))
    assert linear_cka(X, Y, debiased=True)["value"] == pytest.approx(lab.population_cka(), abs=0.02)


def test_quick_run_covers_every_reported_interval_and_test(quick):
    spaces = quick["spaces"]
    assert set(spaces) == {"independent", "dependent", "label_only"}
    names = set(spaces["independent"]["metrics"])
    assert {"linear_cka", "linear_cka_debiased", "mean_cca", "rbf_cka", "rsa", "mutual_knn",
            "retrieval_ridge_x_to_y_median_rank", "retrieval_cca_y_to_x_recall@1"} <= names and len(names) == 29
    for kind, res in spaces.items():
        for name, e in res["metrics"].items():
            assert "coverage_excess_ci" in e and "rejection_free" in e, (kind, name)
            assert ("coverage_ci" in e) == (e["kind"] != "biased"), (kind, name)
            if kind != "independent":
                assert {"coverage_excess_within_ci", "rejection_within"} <= set(e), (kind, name)
        assert "familywise_free" in res
    # the truth of every excess under independence is exactly 0: 4 datasets, a 95% interval misses
    # it 3 times with probability < 0.001 (a broken interval, e.g. se = 0 or centred on the biased value, does)
    for name, e in spaces["independent"]["metrics"].items():
        assert e["coverage_excess_ci"]["rate"] >= 0.5, name
    assert set(quick["labels"]) == {"none", "equal", "differ"}
    assert set(quick["labels"]["equal"]["differences"]) == {"knn_by_fold", "knn_by_recording", "silhouette_test",
                                                            "label_rdm_test"}
    assert {"classification_equal", "regression_differ", "sweep_family"} <= set(quick["paired"])
    assert set(quick["familywise"]) == {"independent", "label_only"}
    assert "familywise_within_holm" in quick["familywise"]["label_only"]
    s = quick["summary"]
    assert s["n_intervals"] > 100 and s["n_tests"] > 60 and 0 <= s["max_familywise"][0] <= 1
