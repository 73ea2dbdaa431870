"""The demo's results page (``<results_dir>/index.html``): one HTML string linking every output of the chain.

Reads only what the stages wrote (info.csv, embeddings.h5 attributes, test_metrics.json,
metrics.json of each comparison, the sweep's summary table, the MLflow store) and never recomputes
anything, so the page and the files it links cannot disagree. Links are relative to the page's
own path; a file that is not there shows as "(missing)". The caller writes the page.
"""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from analysis.report.html import document, esc, number, table


def _link(page: Path, target: Path, text: str | None = None) -> str:
    if not Path(target).exists():
        return f'<span class="muted">{esc(text or Path(target).name)} (missing)</span>'
    rel = os.path.relpath(Path(target).absolute(), Path(page).absolute().parent)
    return f'<a href="{esc(Path(rel).as_posix())}">{esc(text or Path(target).name)}</a>'


def _ci(m: dict | None) -> str:
    """``value [lo, hi]`` of a metric entry (empty when there is none)."""
    if not m:
        return ""
    text = number(m.get("value"))
    if m.get("ci_lo") is not None:
        text += f" [{number(m['ci_lo'])}, {number(m['ci_hi'])}]"
    return text


def dataset_section(page: Path, info_csv: Path) -> str:
    if not info_csv.exists():
        return '<p class="muted">no dataset</p>'
    info = pd.read_csv(info_csv)
    per = info.groupby("composer").size().rename("works").reset_index() if "composer" in info else None
    rows = [] if per is None else [{"composer": esc(r.composer), "works": r.works} for r in per.itertuples()]
    audio_min = info["duration"].sum() / 60 if "duration" in info else float("nan")
    return (f"<p>{len(info)} paired recordings ({audio_min:.1f} min of audio): {_link(page, info_csv)}</p>"
            + table(rows))


def pretrain_section(page: Path, model: Path) -> str:
    metrics_path = model.parent / "test_metrics.json"
    if not metrics_path.exists():
        return '<p class="muted">not run</p>'
    m = json.loads(metrics_path.read_text())
    rows = [{"": f"MIDI transformer (best epoch {m['best_epoch'] + 1} of {m['epochs_run']})",
             "test loss (nats)": number(m["test_loss"]), "test perplexity": number(m["test_perplexity"], 1)},
            {"": "unigram baseline, same masked positions", "test loss (nats)": number(m["unigram_test_loss"]),
             "test perplexity": number(m["unigram_test_perplexity"], 1)}]
    pages = sorted((model.parent / "viz").glob("*.html")) if (model.parent / "viz").is_dir() else []
    viz = ", ".join(_link(page, p) for p in pages[-3:])
    return (table(rows) + f"<p>{m['test_masked_tokens']} masked test tokens. Weights: {_link(page, model)}; "
            f"metrics: {_link(page, metrics_path)}" + (f"; embedding maps: {viz}" if viz else "") + "</p>")


def embeddings_section(page: Path, h5: Path) -> str:
    if not h5.exists():
        return '<p class="muted">not run</p>'
    import h5py

    rows = []
    with h5py.File(h5, "r") as f:
        n = len(f["ids"])
        for medium in ("audio_embeddings", "symbolic_embeddings"):
            for name in sorted(f.get(medium, {})):
                g = f[medium][name]
                rows.append({"medium": medium, "embedder": esc(name), "dim": g["average"].shape[1],
                             "valid rows": f"{int(g['valid'][...].sum())} / {n}"})
    summary = h5.parent / "summary.json"
    errors = h5.parent / "errors.parquet"
    n_errors = len(pd.read_parquet(errors)) if errors.exists() else 0
    return (table(rows) + f"<p>Store: {_link(page, h5)}; job summary: {_link(page, summary)}; "
            f"errors table: {_link(page, errors)} ({n_errors} rows).</p>")


def compare_section(page: Path, compare_dirs: dict) -> str:
    """``compare_dirs``: {(symbolic embedder, label or None): output folder of compare_embeddings}."""
    space_rows, label_rows = [], []
    for (_, label), out in compare_dirs.items():
        path = Path(out) / "metrics.json"
        if not path.exists():
            continue
        m = json.loads(path.read_text())
        report = _link(page, Path(out) / "report.html", "report")
        inputs = m["inputs"]
        if label is None:
            s = m["spaces"]["metrics"]
            r1 = s.get("retrieval_ridge_x_to_y_recall@1", {})
            r1b = s.get("retrieval_ridge_y_to_x_recall@1", {})
            space_rows.append({
                "pair": f"{esc(inputs['audio_embedder'])} vs {esc(inputs['symbolic_embedder'])}",
                "n": m["counts"]["paired"], "linear CKA [95% CI]": _ci(s["linear_cka"]),
                "CKA null mean": number(s["linear_cka"].get("null_mean")),
                "p": number(s["linear_cka"].get("p_value"), 4),
                "mutual kNN": _ci(s["mutual_knn"]), "R@1 audio→MIDI": _ci(r1),
                "R@1 MIDI→audio": _ci(r1b), "R@1 chance": number(r1.get("chance")), "": report})
        else:
            lab = m["labels"]
            diff = lab["difference_audio_minus_symbolic"].get("knn_by_fold", {})
            label_rows.append({
                "label": esc(label), "symbolic": esc(inputs["symbolic_embedder"]),
                "kNN audio": _ci(lab["audio"]["knn"]), "kNN symbolic": _ci(lab["symbolic"]["knn"]),
                "chance": number(lab["audio"]["knn"].get("chance")),
                "audio − symbolic [95% CI]": (f"{number(diff.get('mean_difference'))} [{number(diff.get('ci_lo'))}, "
                                              f"{number(diff.get('ci_hi'))}]" if diff else ""),
                "p (folds)": number(diff.get("p_value"), 4), "": report})
    return ("<h3>How the two spaces relate (no labels)</h3>" + table(space_rows)
            + "<h3>Label structure in each space (k-NN cross-validated)</h3>" + table(label_rows))


def sweep_section(page: Path, sweep_dir: Path) -> str:
    csv = sweep_dir / "summary.csv"
    if not csv.exists():
        return '<p class="muted">not run</p>'
    summary = pd.read_csv(csv, keep_default_na=False)

    def interval(r, prefix):
        return f"{number(r[prefix + '_mean'])} [{number(r[prefix + '_ci_lo'])}, {number(r[prefix + '_ci_hi'])}]"

    rows = []
    for r in summary.to_dict("records"):
        row = {"label": esc(r["label"]), "metric": esc(r["metric"])}
        for side in ("audio", "symbolic"):
            row[side] = f"{esc(r[side + '_embedder'])}: {interval(r, side)}"
            row[f"{side} baseline / shuffled"] = f"{number(r[side + '_baseline'])} / {number(r[side + '_shuffled'])}"
            if r.get(side + "_flags"):
                row[side] += f' <span class="warn">({esc(r[side + "_flags"])})</span>'
        row["audio − symbolic"] = interval({"d_mean": r["difference"], "d_ci_lo": r["difference_ci_lo"],
                                            "d_ci_hi": r["difference_ci_hi"]}, "d")
        row["p"] = number(r["p_value"], 4)
        row["verdict"] = esc(r.get("verdict", ""))
        rows.append(row)
    links = ", ".join(_link(page, p) for p in sorted(sweep_dir.glob("summary.*")))
    return table(rows) + f"<p>Files: {links}</p>"


def mlflow_section(tracking_uri: str) -> str:
    rows = []
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri)
        for exp in client.search_experiments():
            n = len(client.search_runs([exp.experiment_id], max_results=5000))
            rows.append({"experiment": esc(exp.name), "id": esc(exp.experiment_id), "runs": n})
    except Exception as exc:  # the page must still be written when the store cannot be read
        rows.append({"experiment": f'<span class="warn">store unreadable: {esc(exc)}</span>'})
    command = f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1"
    return (f"<p>Open the tracking UI with <code>{esc(command)}</code>, then "
            "<a href=\"http://127.0.0.1:5000\">http://127.0.0.1:5000</a>.</p>" + table(rows))


def render(page: Path, *, info_csv: Path, h5: Path, model: Path, compare_dirs: dict, sweep_dir: Path,
           tracking_uri: str, timings: dict[str, float]) -> str:
    """The page that will live at ``page`` (links are relative to it); ``timings``: {stage: seconds}, 0 = skipped."""
    page = Path(page)
    timing_rows = [{"stage": esc(k), "wall time (s)": "skipped (output present)" if v == 0 else v}
                   for k, v in timings.items()]
    sections = [
        ("Stages of this run", table(timing_rows)),
        ("Dataset", dataset_section(page, info_csv)),
        ("Pretrained MIDI transformer", pretrain_section(page, model)),
        ("Embeddings", embeddings_section(page, h5)),
        ("Comparison of the embedding spaces", compare_section(page, compare_dirs)),
        ("Classifier sweeps: audio against symbolic per label", sweep_section(page, sweep_dir)),
        ("MLflow", mlflow_section(tracking_uri)),
    ]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = "".join(f"<h2>{esc(title)}</h2>{content}" for title, content in sections)
    return document("audio-vs-symbolic demo results",
                    f"<h1>audio-vs-symbolic: demo results</h1><p class=\"muted\">Written {stamp} on "
                    f"{esc(platform.node())} ({os.cpu_count()} CPUs). Every number links to the file it comes "
                    f"from; intervals are 95%.</p>{body}")
