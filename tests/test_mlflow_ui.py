"""The sweep's MLflow store in the real MLflow UI: server on loopback, headless Chromium, runs found in the DOM."""

from __future__ import annotations

import json
import re
import urllib.parse

import pytest

from tests.browser import chromium_or_skip, load_url
from tests.mlflow_server import api, mlflow_server
from tests.sweep_factory import A, S, tiny_sweep

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _text(dom: str) -> str:
    """Visible text of a dumped DOM: scripts and styles dropped, tags to spaces, whitespace squeezed."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


def _render_until(url: str, expected: list[str], attempts: int = 4) -> str:
    """Load ``url`` until every expected string is in the rendered text (the UI is a React SPA that
    fetches after load); each attempt gives the page a longer virtual-time budget."""
    text, errors = "", []
    for attempt in range(attempts):
        dom, errors = load_url(url, budget_ms=8000 * (attempt + 1), window_size="1600,2400")
        text = _text(dom)
        if all(e in text for e in expected):
            return text
    missing = [e for e in expected if e not in text]
    raise AssertionError(f"{url}: {missing} not in the rendered page after {attempts} loads; "
                         f"page text: {text[:1500]!r}; console: {errors[:5]}")


def test_mlflow_ui_shows_the_sweep_experiment_and_its_runs(ray_session, tmp_path_factory):
    chromium_or_skip()
    run = tiny_sweep(tmp_path_factory)
    assert run.exit_code == 0
    recorded = json.loads((run.output_dir / "sweep.json").read_text())
    experiment_name = recorded["experiment_name"]
    searches = {p.parent.name: json.loads(p.read_text()) for p in (run.output_dir / "tasks").glob("*/search.json")}
    task_names = sorted("{medium}/{embedder}/{label}".format(**s["task"]) for s in searches.values())

    with mlflow_server(recorded["tracking_uri"]) as url:
        found = api(url, "experiments/get-by-name?" + urllib.parse.urlencode({"experiment_name": experiment_name}))
        experiment_id = found["experiment"]["experiment_id"]
        # cross-check through the REST API: as many trial runs as the sweep's own records list
        trials = api(url, "runs/search", {"experiment_ids": [experiment_id], "filter": "tags.`avs.role` = 'trial'",
                                          "max_results": 1000})["runs"]
        assert len(trials) == sum(len(s["trials"]) for s in searches.values()) == 16   # 4 tasks x 4 configurations

        # the experiment list names the sweep
        _render_until(f"{url}/#/experiments", [experiment_name])
        # its runs page lists every task's parent run and the summary run
        _render_until(f"{url}/#/experiments/{experiment_id}/runs", [*task_names, "summary: audio vs symbolic"])
        # a trial's page: its name, parent task, hyperparameters and per-epoch metric. One page per kind of
        # trial proves what all 16 would (every page is the same React view of the same run fields; the REST
        # count above covers every trial run): a classification trial of one medium, a regression trial of
        # the other, so both selection metrics (val_accuracy, val_r2) and both media are rendered
        kinds = {(s["task"]["medium"], s["task"]["task"]): s for s in searches.values()}
        shown = [kinds[(A, "classification")], kinds[(S, "regression")]]
        for search in shown:
            trial = search["trials"][0]
            task = search["task"]
            parent = f"{task['medium']}/{task['embedder']}/{task['label']}"
            name = f"{trial['config']['model']}-{trial['trial_id']}"
            page = _render_until(f"{url}/#/experiments/{experiment_id}/runs/{trial['run_id']}",
                                 [name, parent, "learning_rate", search["selection_metric"]])
            assert "Finished" in page
        best = next(iter(searches.values()))
        _render_until(f"{url}/#/experiments/{experiment_id}/runs/{best['best_run_id']}/artifacts", ["best_model.pth"])
