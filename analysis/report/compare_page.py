"""report.html of compare_embeddings: the run's header, the metric tables and the figures, as one HTML string.

Everything shown comes from the payload the job writes to metrics.json (its ``inputs``,
``counts``, ``spaces``, ``labels``), the metric rows of ``compare_rows`` and the permutation
draws, plus the feature matrices for the maps. The page is self-contained: plotly.js is inlined
once in the head, so it opens offline. Columns follow ``compare_rows.FIELDS``: a new field or
metric needs no code here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from analysis.report import compare_rows, plots
from analysis.report.compare_rows import CSV_COLUMNS, Field
from analysis.report.html import document, esc, interval, kv_table, number, p_value, table

RDM_ROWS = 120
MAP_POINTS = 5000  # points drawn per 2-D map: PCA is fit on all rows, a page of 50,000 hover points is not readable

GUIDE = ("How to read: each metric has its value, a bootstrap 95% CI and a permutation null (the same metric after "
         "shuffling which symbolic row belongs to which audio row). A value far outside the null range (small p) means "
         "the spaces share structure beyond chance; the CI says how precisely it is known. In-sample fits (mean CCA, "
         "SVCCA, Procrustes) are biased upwards: compare them with their null mean, not with 0. Retrieval maps one "
         "medium into the other (ridge or CCA fitted on the training rows) and ranks the true partner among all test "
         "rows; compare recall@k with its chance level (x = audio, y = symbolic: x_to_y queries with audio and searches "
         "the symbolic test rows). The smallest possible p is 1 / (1 + permutations): no null draw reached the observed "
         "value. CIs of the linear family and RBF CKA are bias-corrected percentile intervals (see analysis/compare.py).")
LABEL_METRICS = {"silhouette": "silhouette (cosine)", "label_rdm": "embedding RDM vs label RDM (Spearman, Mantel)"}


# ---------------------------------------------------------------------------------------------- tables
def _show(field: Field, values: dict) -> str:
    """One field of a row or entry as text: an interval, a p-value or a number (a dash when missing)."""
    if field.kind == "interval":
        return interval(values.get(field.key), values.get(field.hi))
    return p_value(values.get(field.key)) if field.kind == "p" else number(values.get(field.key))


def _cell(field: Field, row: dict) -> str:
    text = _show(field, row)
    if field.kind == "value":
        return f"<b>{text}</b>"
    if field.kind == "count" and row.get("subsampled"):
        text += " <span class='sub'>(subsample)</span>"
    return text


def metrics_table(rows: Sequence[dict]) -> str:
    """One line per row; a column per FIELDS entry: metrics.csv's first columns always, others when some row has one."""
    shown = [f for f in compare_rows.FIELDS if f.key in CSV_COLUMNS or any(r.get(k) is not None for r in rows for k in f.keys)]
    lines = [{"metric": f"<span class='name'>{esc(r['name'])}</span>", **{f.heading: _cell(f, r) for f in shown}}
             for r in rows]
    return table(lines, ["metric", *(f.heading for f in shown)], "metrics")


def entry_text(entry: dict) -> str:
    """One label-metric entry in a line: value [CI], p, then any FIELDS beyond metrics.csv's first columns."""
    text = number(entry.get("value"))
    if entry.get("r2_pooled") is not None:  # regression kNN: the interval is on the pooled out-of-fold R^2
        text += f" (pooled {number(entry['r2_pooled'])}, 95% CI {interval(entry.get('ci_lo'), entry.get('ci_hi'))})"
    elif entry.get("ci_lo") is not None:
        text += " " + interval(entry["ci_lo"], entry.get("ci_hi"))
    if entry.get("p_value") is not None:
        text += f", p = {p_value(entry['p_value'])}"
    for f in compare_rows.FIELDS:
        if f.key not in CSV_COLUMNS and entry.get(f.key) is not None:
            text += f", {f.heading} {_show(f, entry)}"
    return text


def paired_test_text(test: dict) -> str:
    return (f"{number(test['mean_difference'])} {interval(test['ci_lo'], test['ci_hi'])}, p = {p_value(test['p_value'])} "
            f"(Wilcoxon p = {p_value(test.get('wilcoxon_p'))}, {test['n_units']} units)")


def label_table(labels: dict) -> str:
    """Audio | symbolic | audio - symbolic (paired) for every label metric both media report."""
    a, s, diff = labels["audio"], labels["symbolic"], labels["difference_audio_minus_symbolic"]
    lines = []
    for key, entry in a.items():
        if not isinstance(entry, dict) or not isinstance(s.get(key), dict):
            continue
        if key == "knn":
            name = (f"{'kNN R&sup2;' if labels['task'] == 'regression' else 'kNN accuracy'} "
                    f"({entry['n_splits']}-fold CV, k={entry['k']})"
                    + (f", chance {number(entry['chance'])}" if entry.get("chance") is not None else ""))
        else:
            name = LABEL_METRICS.get(key, esc(key))
        tests = [(k[len(key) + 4:].replace("_", " "), v) for k, v in diff.items()
                 if k.startswith(f"{key}_by_") and isinstance(v, dict)]
        if tests:
            difference = "<br>".join(f"by {unit}: {paired_test_text(t)}" for unit, t in tests)
        else:
            difference = number(diff.get(key))
        lines.append({"metric": name, "audio": entry_text(entry), "symbolic": entry_text(s[key]),
                      "audio &minus; symbolic (paired)": difference})
    return table(lines, css_class="metrics")


def media_names(inputs: dict) -> tuple[str, str]:
    """Short names of the two compared media, x first: ``audio``, ``symbolic``, ``transcribed``."""
    media = inputs.get("media") or ("audio_embeddings", "symbolic_embeddings")
    return tuple(m.removesuffix("_embeddings") for m in media)  # type: ignore[return-value]


def header(payload: dict) -> list[tuple[str, str]]:
    """(key, HTML value) pairs describing the run: inputs, rows used and dropped, resampling, subsamples."""
    inp, c, s = payload["inputs"], payload["counts"], payload["spaces"]
    mx, my = media_names(inp)
    subs = [f"{k}: {e['n_used']} rows" for k, e in s["metrics"].items() if e["subsampled"]]
    subs += [f"{k} null: {e['null_n_used']} queries" for k, e in s["metrics"].items()
             if e["null_n_used"] != e["n_used"] and k.endswith("recall@1")]
    pooling = ("average (mean over frames)" if inp["embedding_type"] == "average"
               else "sequence, pooled: mean and std over frames concatenated (2D)")
    rows = [("h5 file", inp["h5_path"]), ("dataset", str(inp.get("dataset") or "?")),
            ("embedders", f"{mx} <b>{inp['audio_embedder']}</b> ({s['dim_x']}-d), {my} "
                          f"<b>{inp['symbolic_embedder']}</b> ({s['dim_y']}-d)"),
            ("embedding type", pooling),
            ("standardisation", "each feature z-scored over the paired rows" if inp["standardize"] == "zscore"
             else "none (raw coordinates)"),
            ("recordings", f"<b>{c['paired']}</b> paired of {c['rows_in_file']} in the file; dropped {c['dropped']} "
                           f"(valid {mx} {c.get('valid_' + mx, '?')}, valid {my} {c.get('valid_' + my, '?')}, "
                           f"missing label {c['missing_label']})"),
            ("retrieval split", payload["retrieval_split"]),
            ("resampling", f"seed {inp['seed']}; {inp['n_permutations']} permutations, {inp['n_boot']} bootstrap "
                           f"replicates per metric; 95% intervals"),
            (f"subsampled (max_n_kernel {inp['max_n_kernel']})", "; ".join(subs) or "nothing")]
    if inp["label"]:
        lab = payload["labels"]
        rows.append(("label", f"<b>{inp['label']}</b> ({lab['task']}; {lab['n_splits']}-fold CV"
                              + (f", grouped by {inp['group_column']}" if inp["group_column"] else "") + ")"))
    rows.append(("compute time", f"{payload['wall_time_s']:.1f} s (loading and statistics; figures not included)"))
    return rows


# ---------------------------------------------------------------------------------------------- figures
def figures(Xa: np.ndarray, Xs: np.ndarray, ids: Sequence[str], metadata: pd.DataFrame, labels: np.ndarray | None,
            payload: dict, nulls: dict[str, np.ndarray]) -> list[tuple[str, str, Any]]:
    """(heading, caption HTML, plotly figure or None): PCA maps, RDM heatmaps, permutation-null histograms.

    ``Xa``, ``Xs``: (N, D) features as compared; ``ids``, ``metadata``, ``labels``: the same N rows.
    """
    inp = payload["inputs"]
    label, numeric, seed = inp["label"], inp["task"] == "regression", inp["seed"]
    ids = [str(i) for i in ids]
    (ca, ea), (cs, es) = plots.pca_2d(Xa), plots.pca_2d(Xs)
    mx, my = media_names(inp)
    names = (f"{mx}: {inp['audio_embedder']} ({Xa.shape[1]}-d)", f"{my}: {inp['symbolic_embedder']} ({Xs.shape[1]}-d)")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    shown = np.sort(rng.choice(len(ids), size=min(MAP_POINTS, len(ids)), replace=False))
    hover = plots.hover_text([ids[i] for i in shown], metadata.iloc[shown].reset_index(drop=True))
    maps = plots.embedding_maps(ca[shown], cs[shown], hover, None if label is None else labels[shown], label,
                                numeric, names, (ea, es))
    idx = np.sort(rng.choice(len(ids), size=min(RDM_ROWS, len(ids)), replace=False))
    if label is not None:
        keys = pd.DataFrame({"y": labels[idx], "id": np.asarray(ids, dtype=object)[idx]})
        idx = idx[keys.sort_values(["y", "id"], kind="stable").index.to_numpy()]
    ticks = None if label is None or numeric else labels[idx]  # numeric labels: sorted, no block ticks
    rdm = plots.rdm_heatmaps(Xa[idx], Xs[idx], [ids[i] for i in idx], ticks, names)
    items = []
    for name, null in nulls.items():
        if name.startswith("label_"):
            e = payload["labels"][name.split("_")[1]]["label_rdm"]
        else:
            e = payload["spaces"]["metrics"][name]
            if e["null_n_used"] != e["n_used"]:  # retrieval null on a query subsample: its observed value differs
                continue
        if e["value"] is not None and np.isfinite(e["value"]):
            items.append((name, null, e["value"], e["p_value"]))
    hist = plots.null_histograms(items)
    sub_note = (f"{len(idx)} of {len(ids)} recordings (seeded)" + (f", sorted by {label}" if label else ""))
    return [
        ("2-D maps (PCA)", f"PCA of z-scored features, per medium (fit on all rows; at most {MAP_POINTS} random rows "
         "drawn); hover shows the recording's id and metadata"
         + (f"; colour: {label} (click a legend entry to hide a class in both panels)." if label else "."), maps),
        ("Representational dissimilarity matrices", "Cosine distances between recordings after centring, shown as "
         f"ranks within each medium (RSA compares ranks): {sub_note}. Similar block structure in both panels "
         "means the two spaces group recordings alike.", rdm),
        ("Permutation nulls", "Histogram: the metric with the audio-symbolic pairing shuffled (label-RDM: labels "
         "shuffled); red line: observed value. Retrieval panels are omitted where the null was computed on a query "
         "subsample (its observed value differs from the table's).", hist),
    ]


# ---------------------------------------------------------------------------------------------- the page
def render(payload: dict, rows: Sequence[dict], figs: Sequence[tuple[str, str, Any]]) -> str:
    """The whole page. ``payload``: metrics.json's content; ``rows``: ``compare_rows.metric_rows``;
    ``figs``: :func:`figures`."""
    from plotly.offline import get_plotlyjs

    inp = payload["inputs"]
    mx, my = media_names(inp)
    title = f"{mx.capitalize()} vs {my}: {inp['audio_embedder']} vs {inp['symbolic_embedder']}"
    parts = [f"<h1>{esc(title)}</h1>", kv_table(header(payload)), f"<p class='note'>{GUIDE}</p>"]
    if payload.get("labels"):
        parts += ["<h2>Label structure per medium</h2>", label_table(payload["labels"])]
    parts += ["<h2>How the two spaces relate</h2>",
              metrics_table([r for r in rows if not r["name"].startswith("label_")])]
    for heading, caption, fig in figs:
        if fig is None:
            continue
        parts += [f"<h2>{esc(heading)}</h2>", f"<p class='note'>{caption}</p>",
                  fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})]
    return document(title, "".join(parts), f"<script type='text/javascript'>{get_plotlyjs()}</script>")
