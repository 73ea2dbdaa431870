"""The demo's results page: one self-contained HTML file linking every output of the chain.

Reads only what the stages wrote (info.csv, embeddings.h5 attributes, test_metrics.json,
metrics.json of each comparison, the sweep's summary table, the MLflow store) and never recomputes
anything, so the page and the files it links cannot disagree.
"""

from __future__ import annotations

import html
import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from embedders.store.atomic import atomic_write_bytes

STYLE = """
body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}
th{background:#f3f3f3}code{background:#f3f3f3;padding:0 .2rem}.muted{color:#666}.warn{color:#a40}
"""


def _esc(value) -> str:
    return html.escape(str(value))


def _link(page: Path, target: Path, text: str | None = None) -> str:
    if not Path(target).exists():
        return f'<span class="muted">{_esc(text or Path(target).name)} (missing)</span>'
    rel = os.path.relpath(Path(target).absolute(), Path(page).absolute().parent)
    return f'<a href="{_esc(Path(rel).as_posix())}">{_esc(text or Path(target).name)}</a>'


def _table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return '<p class="muted">nothing to show</p>'
    columns = columns or list(rows[0])
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{r.get(c, '')}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(x, digits: int = 3) -> str:
    return "" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else _esc(x)


def _ci(m: dict, digits: int = 3) -> str:
    if not m:
        return ""
    text = _fmt(m.get("value"), digits)
    if m.get("ci_lo") is not None:
        text += f" [{_fmt(m['ci_lo'], digits)}, {_fmt(m['ci_hi'], digits)}]"
    return text


def dataset_section(page: Path, info_csv: Path) -> str:
    if not info_csv.exists():
        return '<p class="muted">no dataset</p>'
    info = pd.read_csv(info_csv)
    per = info.groupby("composer").size().rename("works").reset_index() if "composer" in info else None
    rows = [] if per is None else [{"composer": _esc(r.composer), "works": r.works} for r in per.itertuples()]
    audio_min = info["duration"].sum() / 60 if "duration" in info else float("nan")
    return (f"<p>{len(info)} paired recordings ({audio_min:.1f} min of audio): {_link(page, info_csv)}</p>"
            + _table(rows))


def pretrain_section(page: Path, model: Path) -> str:
    metrics_path = model.parent / "test_metrics.json"
    if not metrics_path.exists():
        return '<p class="muted">not run</p>'
    m = json.loads(metrics_path.read_text())
    rows = [{"": "MIDI transformer (best epoch %d of %d)" % (m["best_epoch"] + 1, m["epochs_run"]),
             "test loss (nats)": _fmt(m["test_loss"]), "test perplexity": _fmt(m["test_perplexity"], 1)},
            {"": "unigram baseline, same masked positions", "test loss (nats)": _fmt(m["unigram_test_loss"]),
             "test perplexity": _fmt(m["unigram_test_perplexity"], 1)}]
    pages = sorted((model.parent / "viz").glob("*.html")) if (model.parent / "viz").is_dir() else []
    viz = ", ".join(_link(page, p) for p in pages[-3:])
    return (_table(rows) + f"<p>{m['test_masked_tokens']} masked test tokens. Weights: {_link(page, model)}; "
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
                rows.append({"medium": medium, "embedder": _esc(name), "dim": g["average"].shape[1],
                             "valid rows": f"{int(g['valid'][...].sum())} / {n}"})
    summary = h5.parent / "summary.json"
    errors = h5.parent / "errors.parquet"
    n_errors = len(pd.read_parquet(errors)) if errors.exists() else 0
    return (_table(rows) + f"<p>Store: {_link(page, h5)}; job summary: {_link(page, summary)}; "
            f"errors table: {_link(page, errors)} ({n_errors} rows).</p>")


def compare_section(page: Path, compare_dirs: dict) -> str:
    space_rows, label_rows = [], []
    for (symbolic, label), out in compare_dirs.items():
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
                "pair": f"{_esc(inputs['audio_embedder'])} vs {_esc(inputs['symbolic_embedder'])}",
                "n": m["counts"]["paired"], "linear CKA [95% CI]": _ci(s["linear_cka"]),
                "CKA null mean": _fmt(s["linear_cka"].get("null_mean")), "p": _fmt(s["linear_cka"].get("p_value"), 4),
                "mutual kNN": _ci(s["mutual_knn"]), "R@1 audio→MIDI": _ci(r1),
                "R@1 MIDI→audio": _ci(r1b), "R@1 chance": _fmt(r1.get("chance")), "": report})
        else:
            lab = m["labels"]
            diff = lab["difference_audio_minus_symbolic"].get("knn_by_fold", {})
            label_rows.append({
                "label": _esc(label), "symbolic": _esc(inputs["symbolic_embedder"]),
                "kNN audio": _ci(lab["audio"]["knn"]), "kNN symbolic": _ci(lab["symbolic"]["knn"]),
                "chance": _fmt(lab["audio"]["knn"].get("chance")),
                "audio − symbolic [95% CI]": (f"{_fmt(diff.get('mean_difference'))} [{_fmt(diff.get('ci_lo'))}, "
                                              f"{_fmt(diff.get('ci_hi'))}]" if diff else ""),
                "p (folds)": _fmt(diff.get("p_value"), 4), "": report})
    return ("<h3>How the two spaces relate (no labels)</h3>" + _table(space_rows)
            + "<h3>Label structure in each space (k-NN cross-validated)</h3>" + _table(label_rows))


def sweep_section(page: Path, sweep_dir: Path) -> str:
    csv = sweep_dir / "summary.csv"
    if not csv.exists():
        return '<p class="muted">not run</p>'
    table = pd.read_csv(csv, keep_default_na=False)

    def interval(r, prefix):
        return f"{_fmt(r[prefix + '_mean'])} [{_fmt(r[prefix + '_ci_lo'])}, {_fmt(r[prefix + '_ci_hi'])}]"

    rows = []
    for r in table.to_dict("records"):
        row = {"label": _esc(r["label"]), "metric": _esc(r["metric"])}
        for side in ("audio", "symbolic"):
            row[side] = f"{_esc(r[side + '_embedder'])}: {interval(r, side)}"
            row[f"{side} baseline / shuffled"] = f"{_fmt(r[side + '_baseline'])} / {_fmt(r[side + '_shuffled'])}"
            if r.get(side + "_flags"):
                row[side] += f' <span class="warn">({_esc(r[side + "_flags"])})</span>'
        row["audio − symbolic"] = interval({"d_mean": r["difference"], "d_ci_lo": r["difference_ci_lo"],
                                            "d_ci_hi": r["difference_ci_hi"]}, "d")
        row["p"] = _fmt(r["p_value"], 4)
        row["verdict"] = _esc(r.get("verdict", ""))
        rows.append(row)
    links = ", ".join(_link(page, p) for p in sorted(sweep_dir.glob("summary.*")))
    return _table(rows) + f"<p>Files: {links}</p>"


def mlflow_section(tracking_uri: str) -> str:
    rows = []
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri)
        for exp in client.search_experiments():
            n = len(client.search_runs([exp.experiment_id], max_results=5000))
            rows.append({"experiment": _esc(exp.name), "id": _esc(exp.experiment_id), "runs": n})
    except Exception as exc:  # the page must still be written when the store cannot be read
        rows.append({"experiment": f'<span class="warn">store unreadable: {_esc(exc)}</span>'})
    command = f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1"
    return (f"<p>Open the tracking UI with <code>{_esc(command)}</code>, then "
            "<a href=\"http://127.0.0.1:5000\">http://127.0.0.1:5000</a>.</p>" + _table(rows))


def write(path: Path, *, info_csv: Path, h5: Path, model: Path, compare_dirs: dict, sweep_dir: Path,
          tracking_uri: str, timings: dict[str, float]) -> Path:
    path = Path(path)
    timing_rows = [{"stage": _esc(k), "wall time (s)": "skipped (output present)" if v == 0 else v}
                   for k, v in timings.items()]
    sections = [
        ("Stages of this run", _table(timing_rows)),
        ("Dataset", dataset_section(path, info_csv)),
        ("Pretrained MIDI transformer", pretrain_section(path, model)),
        ("Embeddings", embeddings_section(path, h5)),
        ("Comparison of the embedding spaces", compare_section(path, compare_dirs)),
        ("Classifier sweeps: audio against symbolic per label", sweep_section(path, sweep_dir)),
        ("MLflow", mlflow_section(tracking_uri)),
    ]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = "".join(f"<h2>{_esc(title)}</h2>{content}" for title, content in sections)
    doc = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>audio-vs-symbolic demo results</title>"
           f"<style>{STYLE}</style></head><body><h1>audio-vs-symbolic: demo results</h1>"
           f"<p class=\"muted\">Written {stamp} on {_esc(platform.node())} ({os.cpu_count()} CPUs). "
           f"Every number links to the file it comes from; intervals are 95%.</p>{body}</body></html>")
    atomic_write_bytes(path, doc.encode("utf-8"))
    return path
