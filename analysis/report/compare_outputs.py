"""The comparison's outputs: metrics.json, metrics.csv, null_distributions.npz and report.html.

The one module in ``analysis`` that writes files; every file is written to a temporary name in
the output folder and moved into place (``os.replace``), so a reader never sees half a file.
The page is self-contained: plotly.js is inlined once in the head, so it opens offline.
"""

from __future__ import annotations

import copy
import csv
import html
import io
import json
import math
import os
import uuid
from collections.abc import Sequence
from pathlib import Path, PurePath
from typing import Any

import numpy as np

CSV_COLUMNS = ("name", "value", "ci_lo", "ci_hi", "null_mean", "null_lo", "null_hi", "p_value", "n_used",
               "subsampled", "chance")


def json_safe(obj: Any) -> Any:
    """numpy scalars/arrays -> Python; NaN/inf -> None (strict JSON); paths -> strings."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, PurePath):
        return str(obj)
    return obj


def split_nulls(payload: dict) -> tuple[dict, dict[str, np.ndarray]]:
    """(payload without the permutation draws, {metric name: draws}) for the .npz file."""
    out = copy.deepcopy(payload)
    nulls: dict[str, np.ndarray] = {}
    for name, entry in (out.get("spaces") or {}).get("metrics", {}).items():
        null = entry.pop("null", None)
        if null is not None:
            nulls[name] = np.asarray(null, dtype=np.float64)
    labels = out.get("labels")
    for medium in ("audio", "symbolic"):
        rdm = (labels or {}).get(medium, {}).get("label_rdm") or {}
        null = rdm.pop("null", None)
        if null is not None:
            nulls[f"label_{medium}_label_rdm"] = np.asarray(null, dtype=np.float64)
    return out, nulls


def _row(name: str, value, ci=(None, None), null=None, p=None, n_used=None, subsampled=False, chance=None) -> dict:
    null = null or {}
    return {"name": name, "value": value, "ci_lo": ci[0], "ci_hi": ci[1], "null_mean": null.get("null_mean"),
            "null_lo": null.get("null_lo"), "null_hi": null.get("null_hi"), "p_value": p, "n_used": n_used,
            "subsampled": bool(subsampled), "chance": chance}


def metric_rows(spaces: dict | None, labels: dict | None) -> list[dict]:
    """One row per metric (CSV_COLUMNS): every space metric, then per-medium and paired label metrics."""
    rows = []
    for name, e in ((spaces or {}).get("metrics") or {}).items():
        rows.append(_row(name, e["value"], (e["ci_lo"], e["ci_hi"]), e, e["p_value"], e["n_used"], e["subsampled"],
                         e.get("chance")))
    if labels:
        score = "r2" if labels["task"] == "regression" else "accuracy"
        for medium in ("audio", "symbolic"):
            m = labels[medium]
            knn = m["knn"]
            ci = (knn["ci_lo"], knn["ci_hi"])
            rows.append(_row(f"label_{medium}_knn_{score}", knn["value"], ci,
                             n_used=knn["n_used"], subsampled=knn["subsampled"], chance=knn.get("chance")))
            if m.get("silhouette"):
                s = m["silhouette"]
                rows.append(_row(f"label_{medium}_silhouette", s["value"], n_used=s["n_used"],
                                 subsampled=s["subsampled"]))
            r = m["label_rdm"]
            rows.append(_row(f"label_{medium}_label_rdm", r["value"], null=r, p=r["p_value"], n_used=r["n_used"],
                             subsampled=r["subsampled"]))
        diff = labels["difference_audio_minus_symbolic"]
        for unit in ("knn_by_fold", "knn_by_recording"):
            d = diff[unit]
            rows.append(_row(f"label_diff_{unit}", d["mean_difference"], (d["ci_lo"], d["ci_hi"]), p=d["p_value"],
                             n_used=d["n_units"]))
        for name in ("silhouette", "label_rdm"):
            if diff.get(name) is not None:
                rows.append(_row(f"label_diff_{name}", diff[name], n_used=labels["n"]))
    return json_safe(rows)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_outputs(output_dir, payload: dict, nulls: dict[str, np.ndarray], rows: Sequence[dict],
                  page: str) -> dict[str, Path]:
    """Write the four files atomically; returns {kind: path}."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "metrics.json", "csv": out / "metrics.csv", "npz": out / "null_distributions.npz",
             "html": out / "report.html"}
    _atomic_write(paths["json"], json.dumps(json_safe(payload), indent=2, allow_nan=False).encode())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: ("" if r[k] is None else r[k]) for k in CSV_COLUMNS} for r in rows])
    _atomic_write(paths["csv"], buf.getvalue().encode())
    npz = io.BytesIO()
    np.savez_compressed(npz, **nulls)
    _atomic_write(paths["npz"], npz.getvalue())
    _atomic_write(paths["html"], page.encode())
    return paths


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------
def fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "&ndash;"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    v = float(v)
    return f"{v:.{digits}g}" if (abs(v) < 1e-3 and v != 0) or abs(v) >= 1e4 else f"{v:.{digits}f}"


def _p(p) -> str:
    return "&ndash;" if p is None or not math.isfinite(p) else f"{p:.2g}"


def _kv_table(items: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in items)
    return f'<table class="kv">{body}</table>'


def metrics_table(rows: Sequence[dict]) -> str:
    head = ("<tr><th>metric</th><th>value</th><th>95% CI</th><th>null mean</th><th>null 95% range</th>"
            "<th>p</th><th>chance</th><th>n used</th></tr>")
    body = []
    for r in rows:
        ci = "&ndash;" if r["ci_lo"] is None else f"[{fmt(r['ci_lo'])}, {fmt(r['ci_hi'])}]"
        nr = "&ndash;" if r["null_lo"] is None else f"[{fmt(r['null_lo'])}, {fmt(r['null_hi'])}]"
        sub = " <span class='sub'>(subsample)</span>" if r["subsampled"] else ""
        body.append(f"<tr><td class='name'>{html.escape(r['name'])}</td><td><b>{fmt(r['value'])}</b></td><td>{ci}</td>"
                    f"<td>{fmt(r['null_mean'])}</td><td>{nr}</td><td>{_p(r['p_value'])}</td>"
                    f"<td>{fmt(r['chance'])}</td><td>{fmt(r['n_used'])}{sub}</td></tr>")
    return f'<table class="metrics">{head}{"".join(body)}</table>'


def label_table(labels: dict) -> str:
    """Audio | symbolic | audio - symbolic (paired test) for the label metrics."""
    a, s, d = labels["audio"], labels["symbolic"], labels["difference_audio_minus_symbolic"]
    score = "kNN R&sup2;" if labels["task"] == "regression" else "kNN accuracy"

    def ci(e):
        if labels["task"] == "regression":  # the interval is on the pooled out-of-fold R^2
            return (f"{fmt(e['value'])} (pooled {fmt(e['r2_pooled'])}, 95% CI "
                    f"[{fmt(e['ci_lo'])}, {fmt(e['ci_hi'])}])")
        return f"{fmt(e['value'])} [{fmt(e['ci_lo'])}, {fmt(e['ci_hi'])}]"

    def test(t):
        return (f"{fmt(t['mean_difference'])} [{fmt(t['ci_lo'])}, {fmt(t['ci_hi'])}], p = {_p(t['p_value'])} "
                f"(Wilcoxon p = {_p(t['wilcoxon_p'])}, {t['n_units']} units)")

    chance = a["knn"].get("chance")
    rows = [(f"{score} ({a['knn']['n_splits']}-fold CV, k={a['knn']['k']})"
             + (f", chance {fmt(chance)}" if chance is not None else ""), ci(a["knn"]), ci(s["knn"]),
             "by fold: " + test(d["knn_by_fold"]) + "<br>by recording: " + test(d["knn_by_recording"]))]
    if a.get("silhouette"):
        rows.append(("silhouette (cosine)", fmt(a["silhouette"]["value"]), fmt(s["silhouette"]["value"]),
                     fmt(d["silhouette"])))
    ra, rs = a["label_rdm"], s["label_rdm"]
    rows.append(("embedding RDM vs label RDM (Spearman, Mantel)", f"{fmt(ra['value'])}, p = {_p(ra['p_value'])}",
                 f"{fmt(rs['value'])}, p = {_p(rs['p_value'])}", fmt(d["label_rdm"])))
    head = "<tr><th>metric</th><th>audio</th><th>symbolic</th><th>audio &minus; symbolic (paired)</th></tr>"
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="metrics">{head}{body}</table>'


_CSS = """body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1300px;color:#222;line-height:1.4}
h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;font-size:14px;vertical-align:top}
table.metrics tr:nth-child(even){background:#f7f7f7}th{background:#eef}td.name{font-family:monospace}
.sub{color:#a60;font-size:12px}.note{color:#555;font-size:14px;max-width:1100px}"""


def build_page(*, title: str, header: Sequence[tuple[str, str]], guide: str, rows: Sequence[dict],
               label_html: str | None, figures: Sequence[tuple[str, str, Any]]) -> str:
    """header: (key, html value) pairs; figures: (heading, caption html, plotly figure or None)."""
    from plotly.offline import get_plotlyjs

    parts = [f"<h1>{html.escape(title)}</h1>", _kv_table(header), f"<p class='note'>{guide}</p>"]
    if label_html:
        parts += ["<h2>Label structure per medium</h2>", label_html]
    parts += ["<h2>How the two spaces relate</h2>",
              metrics_table([r for r in rows if not r["name"].startswith("label_")])]
    for heading, caption, fig in figures:
        if fig is None:
            continue
        parts += [f"<h2>{html.escape(heading)}</h2>", f"<p class='note'>{caption}</p>",
                  fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})]
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style><script type='text/javascript'>{get_plotlyjs()}</script></head>"
            f"<body>{''.join(parts)}</body></html>")
