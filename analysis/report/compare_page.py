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

GUIDE = ("How to read: every metric has its value on all paired rows, an interval, and a permutation null (the same "
         "metric after shuffling which symbolic row belongs to which audio row). Intervals are delete-a-group jackknife t "
         "intervals (no row duplicated), checked for coverage by simulation (bench/results/interval_coverage.json); 'estimates' "
         "says what the value targets: a population value (debiased CKA, RSA), the expected value at this N (mutual kNN, "
         "retrieval), or nothing useful on its own (biased: plain and RBF CKA, CCA, SVCCA, Procrustes are above 0 for "
         "unrelated spaces, so they get no interval: read their excess over the null mean instead). The free null asks "
         "'are the spaces related at all?'; with a label, the within-label null (pairing shuffled only among recordings "
         "with the same label) asks 'does each recording match its own counterpart beyond what the label explains?'. "
         "p-values of one table are one family: 'Holm p' controls the chance of any false claim; only the declared "
         "primary metric may be read on its raw p. The smallest possible p is 1 / (1 + permutations).")
LABEL_METRICS = {"silhouette": "silhouette (cosine)", "label_rdm": "embedding RDM vs label RDM (Spearman, Mantel)"}


# ---------------------------------------------------------------------------------------------- tables
def _show(field: Field, values: dict) -> str:
    """One field of a row or entry as text: an interval, a p-value or a number (a dash when missing)."""
    if field.kind == "interval":
        return interval(values.get(field.key), values.get(field.hi))
    if field.kind == "text":
        return esc(values.get(field.key) or "-")
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
    """A paired difference: value [CI], p, Holm p, and what it was computed over."""
    text = (f"{number(compare_rows.difference_value(test))} {interval(test['ci_lo'], test['ci_hi'])}, "
            f"p = {p_value(test['p_value'])}")
    if test.get("p_holm") is not None:
        text += f", Holm p = {p_value(test['p_holm'])}"
    if test.get("n_units") is not None:
        return text + f" (Wilcoxon p = {p_value(test.get('wilcoxon_p'))}, {test['n_units']} units)"
    return text + f" ({esc(test.get('method', 'paired test'))})"


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
        tests = [("by " + k[len(key) + 4:].replace("_", " "), v) for k, v in diff.items()
                 if k.startswith(f"{key}_by_") and isinstance(v, dict)]
        if isinstance(diff.get(f"{key}_test"), dict):
            tests.append(("paired jackknife", diff[f"{key}_test"]))
        if tests:
            difference = "<br>".join(f"{unit}: {paired_test_text(t)}" for unit, t in tests)
        else:
            difference = number(diff.get(key))
        lines.append({"metric": name, "audio": entry_text(entry), "symbolic": entry_text(s[key]),
                      "audio &minus; symbolic (paired)": difference})
    return table(lines, css_class="metrics")


def primary_block(payload: dict) -> str:
    """The declared primary analyses, one line each: the answer a reader should quote."""
    if "primary" not in payload["spaces"]:
        return ""
    mx, my = media_names(payload["inputs"])
    m = payload["spaces"]["metrics"][payload["spaces"]["primary"]["metric"]]
    line = (f"<b>Are the spaces related?</b> {esc(payload['spaces']['primary']['metric'])} = <b>{number(m['value'])}</b> "
            f"{interval(m.get('ci_lo'), m.get('ci_hi'))}, free-null p = {p_value(m['p_value'])}")
    within = m.get("null_within")
    if within:
        line += (f"; beyond the {esc(payload['inputs'].get('strata') or 'label')} (within-stratum null): excess "
                 f"{number(within.get('excess'))} "
                 f"{interval(within.get('excess_ci_lo'), within.get('excess_ci_hi'))}, p = {p_value(within['p_value'])}")
    lines = [line]
    labels = payload.get("labels")
    if labels:
        d = labels["difference_audio_minus_symbolic"][labels["primary"]["metric"]]
        lines.append(f"<b>Which medium carries the label better?</b> {mx} &minus; {my} kNN score, paired by recording: "
                     f"<b>{number(compare_rows.difference_value(d))}</b> {interval(d['ci_lo'], d['ci_hi'])}, "
                     f"p = {p_value(d['p_value'])}")
    settings = payload["spaces"].get("settings") or {}
    need = settings.get("min_permutations_for_holm")
    if need and payload["inputs"]["n_permutations"] < need:
        lines.append(f"<span class='warn'>With {payload['inputs']['n_permutations']} permutations no Holm-adjusted p "
                     f"can reach 0.05 (needs {need}); rerun with --n_permutations {need} or more.</span>")
    return "<h2>Primary analysis (declared before the data)</h2><p>" + "<br>".join(lines) + "</p>"


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
            ("resampling", f"seed {inp['seed']}; {inp['n_permutations']} permutations per null; delete-a-group "
                           f"jackknife over {s.get('settings', {}).get('n_blocks', '?')} groups of rows; 95% intervals"
                           + (f"; within-stratum nulls by {esc(inp['strata'])}" if inp.get("strata") else "")),
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
            p = e["p_value"]
        else:
            e = payload["spaces"]["metrics"][name.removesuffix(compare_rows.WITHIN_SUFFIX)]
            if e["null_n_used"] != e["n_used"]:  # retrieval null on a query subsample: its observed value differs
                continue
            p = e["null_within"]["p_value"] if name.endswith(compare_rows.WITHIN_SUFFIX) else e["p_value"]
            name = name.replace(compare_rows.WITHIN_SUFFIX, " (within label)")
        if e["value"] is not None and np.isfinite(e["value"]):
            items.append((name, null, e["value"], p))
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
    parts = [f"<h1>{esc(title)}</h1>", kv_table(header(payload)), primary_block(payload),
             f"<p class='note'>{GUIDE}</p>"]
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
