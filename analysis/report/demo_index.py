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

from analysis.report.html import document, esc, interval, number, p_value, table


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
            + f"<p>{performance_text(info)}</p>" + table(rows))


def _performance_levels(info_csv: Path) -> list[str]:
    """prepare_dataset's performance levels in info.csv other than none (empty: the MIDI itself was rendered)."""
    if not Path(info_csv).exists():
        return []
    info = pd.read_csv(info_csv, nrows=0)
    if "perf_level" not in info:
        return []
    levels = set(pd.read_csv(info_csv, usecols=["perf_level"])["perf_level"].dropna().astype(str))
    return sorted(levels - {"none"})


def performance_text(info: pd.DataFrame) -> str:
    """What the audio is: a rendered performance of the score (prepare_dataset's perf_* columns) or the MIDI itself."""
    levels = sorted(set(info["perf_level"].dropna().astype(str)) - {"none"}) if "perf_level" in info else []
    if not levels:
        return ("Audio: the paired MIDI itself, rendered (<code>--performance none</code>): audio and MIDI agree by "
                "construction.")
    families = info["perf_family"].astype(str).value_counts() if "perf_family" in info else pd.Series(dtype=int)
    drawn = ", ".join(f"{esc(name)} {n}" for name, n in families.items())
    return (f"Audio: a rendered <em>performance</em> of each score (<code>--performance {esc(', '.join(levels))}</code>"
            "): tempo curve, phrase dynamics, onset and velocity variation, and a General MIDI instrument family "
            f"drawn per work ({drawn}); the paired MIDI stays the score. Every drawn parameter is in info.csv.")


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


MEDIA = ("audio_embeddings", "symbolic_embeddings", "transcribed_embeddings")
SHORT = {"audio_embeddings": "audio", "symbolic_embeddings": "symbolic", "transcribed_embeddings": "transcribed"}


def embeddings_section(page: Path, h5: Path, performed: bool = False) -> str:
    """``performed``: the audio renders a performance (the transcription is then scored against a score
    played otherwise in time)."""
    if not h5.exists():
        return '<p class="muted">not run</p>'
    import h5py

    rows = []
    with h5py.File(h5, "r") as f:
        n = len(f["ids"])
        for medium in MEDIA:
            for name in sorted(f.get(medium, {})):
                g = f[medium][name]
                rows.append({"medium": medium, "embedder": esc(name), "dim": g["average"].shape[1],
                             "valid rows": f"{int(g['valid'][...].sum())} / {n}"})
    summary = h5.parent / "summary.json"
    errors = h5.parent / "errors.parquet"
    n_errors = len(pd.read_parquet(errors)) if errors.exists() else 0
    return (table(rows) + f"<p>Store: {_link(page, h5)}; job summary: {_link(page, summary)}; "
            f"errors table: {_link(page, errors)} ({n_errors} rows).</p>" + transcription_text(page, h5.parent, performed))


def transcription_text(page: Path, store: Path, performed: bool = False) -> str:
    """The transcribed medium's quality: mir_eval note-onset scores of each transcription against the paired MIDI."""
    path = store / "transcription_quality.parquet"
    if not path.exists():
        return ""
    q = pd.read_parquet(path)
    done = q[q["status"] == "transcribed"]
    scored = done[done["scored"].fillna(False).astype(bool)] if "scored" in done else done.iloc[:0]
    if scored.empty:
        return f"<p>Transcriptions: {len(done)} ({_link(page, path)}); none could be scored against a paired MIDI.</p>"
    name = esc(", ".join(sorted(set(done["transcriber"].astype(str)))))
    return (f"<p>Transcribed medium: {len(done)} recordings transcribed to MIDI by <code>{name}</code>; note-onset "
            f"F1 against the paired MIDI (the score; 50 ms tolerance) mean {number(scored['f1'].mean())}, median "
            f"{number(scored['f1'].median())} (precision {number(scored['precision'].mean())}, recall "
            f"{number(scored['recall'].mean())}) over {len(scored)} scored recordings: {_link(page, path)}."
            + (" The audio is a performance: its tempo and timing depart from the score, so many onsets fall "
               "outside the tolerance of the score's although the notes were played." if performed else "")
            + "</p>")


def _side_name(inputs: dict, i: int) -> str:
    media = inputs.get("media") or ["audio_embeddings", "symbolic_embeddings"]
    names = inputs.get("embedders") or [inputs["audio_embedder"], inputs["symbolic_embedder"]]
    return f"{esc(names[i])} ({esc(SHORT.get(media[i], media[i]))})"


def _excess(e: dict | None) -> str:
    """``excess [lo, hi]`` over a null (the reading of a biased statistic), empty when there is none."""
    if not e or e.get("excess") is None:
        return number(None)
    return f"{number(e['excess'])} {interval(e.get('excess_ci_lo'), e.get('excess_ci_hi'))}"


def _holm_note(spaces: dict) -> str:
    """Says when Holm cannot reject anything: too few permutations for the family's size."""
    settings = spaces.get("settings", {})
    need, have = settings.get("min_permutations_for_holm"), settings.get("n_permutations")
    if need is None or have is None or have >= need:
        return ""
    return f' <span class="warn">(Holm cannot reject: {have} permutations, {need} needed)</span>'


def compare_section(page: Path, compare_dirs: dict) -> str:
    """``compare_dirs``: {(comparison name, label or None): output folder of compare_embeddings}."""
    space_rows, within_rows, label_rows, notes = [], [], [], set()
    for (_, label), out in compare_dirs.items():
        path = Path(out) / "metrics.json"
        if not path.exists():
            continue
        m = json.loads(path.read_text())
        report = _link(page, Path(out) / "report.html", "report")
        inputs, spaces = m["inputs"], m["spaces"]
        s = spaces["metrics"]
        primary = s[spaces["primary"]["metric"]]
        pair = f"{_side_name(inputs, 0)} vs {_side_name(inputs, 1)}"
        holm_note = _holm_note(spaces)
        r1 = s.get("retrieval_ridge_x_to_y_recall@1", {})
        r1b = s.get("retrieval_ridge_y_to_x_recall@1", {})
        notes.add((spaces["primary"]["metric"], spaces["settings"].get("n_permutations"),
                   spaces["settings"].get("min_permutations_for_holm"), len(s)))
        if label is None:
            space_rows.append({
                "pair": pair, "n": m["counts"]["paired"],
                "debiased CKA [95% CI] (primary)": _ci(primary), "p (free null)": p_value(primary.get("p_value")),
                "linear CKA": number(s["linear_cka"]["value"]),
                "linear CKA excess over null [CI]": _excess(s["linear_cka"]),
                "R@1 x→y [CI]": _ci(r1), "R@1 y→x [CI]": _ci(r1b), "R@1 chance": number(r1.get("chance")),
                "R@1 x→y p (Holm)": p_value(r1.get("p_holm")) + holm_note,
                "mutual kNN excess [CI]": _excess(s.get("mutual_knn")), "": report})
            continue
        within = primary.get("null_within") or {}
        r1w = r1.get("null_within") or {}
        within_rows.append({
            "pair": pair, "label": esc(label), "debiased CKA (primary)": number(primary["value"]),
            "p (free null)": p_value(primary.get("p_value")),
            "excess over within-label null [CI]": _excess(within), "p (within label)": p_value(within.get("p_value")),
            "R@1 x→y excess over within-label null": _excess(r1w),
            "R@1 within-label p (Holm)": p_value(r1w.get("p_holm")) + holm_note, "": report})
        lab = m["labels"]
        if lab:
            diff = lab["difference_audio_minus_symbolic"].get("knn_by_recording", {})
            label_rows.append({
                "label": esc(label), "pair": pair,
                "kNN x [CI]": _ci(lab["audio"]["knn"]), "kNN y [CI]": _ci(lab["symbolic"]["knn"]),
                "chance": number(lab["audio"]["knn"].get("chance")),
                "x − y by recording [CI] (primary)": (f"{number(diff.get('mean_difference'))} "
                                                      f"{interval(diff.get('ci_lo'), diff.get('ci_hi'))}" if diff else ""),
                "p": p_value(diff.get("p_value")), "p (Holm)": p_value(diff.get("p_holm")), "": report})
    how = "".join(
        f"<p class=\"note\">Primary metric <code>{esc(metric)}</code>: its raw p is the one pre-declared test; every "
        f"other p named Holm is adjusted over the family of the comparison's {size} space metrics (and separately "
        f"over their within-label p-values). {number(perm)} permutations per null; Holm can reject at 0.05 only from "
        f"{number(need)} on. Biased statistics (linear CKA, mutual kNN) are read as excess over their null.</p>"
        for metric, perm, need, size in sorted(notes, key=str))
    return ("<h3>How the two spaces relate (no label)</h3>"
            "<p class=\"note\">x and y are the two media of each pair, in that order: audio against the score's "
            "symbolic embedding (the research question), and the symbolic embedding of the score against the same "
            "embedder on the audio's transcription (only the medium differs).</p>" + table(space_rows)
            + "<h3>Beyond the label: does each recording match its own counterpart?</h3>"
            "<p class=\"note\">The free null shuffles the pairing across all recordings (are the spaces related at "
            "all?); the within-label null shuffles it only among recordings of the same label (does a recording "
            "match its own counterpart beyond what the label explains?).</p>" + table(within_rows)
            + "<h3>Label structure in each space (k-NN cross-validated)</h3>" + table(label_rows) + how)


def sweep_section(page: Path, sweep_dir: Path) -> str:
    csv = sweep_dir / "summary.csv"
    if not csv.exists():
        return '<p class="muted">not run</p>'
    summary = pd.read_csv(csv, keep_default_na=False)

    def value(r, key):
        return pd.to_numeric(r.get(key), errors="coerce")

    rows = []
    for r in summary.to_dict("records"):
        row = {"label": esc(r["label"]), "metric": esc(r["metric"])}
        for side in ("audio", "symbolic"):
            row[side] = (f"{esc(r[side + '_embedder'])}: {number(value(r, side + '_mean'))} "
                         f"{interval(value(r, side + '_ci_lo'), value(r, side + '_ci_hi'))}")
            row[f"{side} baseline / shuffled"] = (f"{number(value(r, side + '_baseline'))} / "
                                                  f"{number(value(r, side + '_shuffled'))}")
            if r.get(side + "_flags"):
                row[side] += f' <span class="warn">({esc(r[side + "_flags"])})</span>'
        row["audio − symbolic [CI]"] = (f"{number(value(r, 'difference'))} "
                                        f"{interval(value(r, 'difference_ci_lo'), value(r, 'difference_ci_hi'))}")
        row["test"] = esc(r.get("difference_method", ""))
        row["p"] = p_value(value(r, "p_value"))
        row["p (Holm)"] = p_value(value(r, "p_holm"))
        row["verdict"] = esc(r.get("verdict", ""))
        rows.append(row)
    links = ", ".join(_link(page, p) for p in sorted(sweep_dir.glob("summary.*")))
    return (table(rows) + "<p class=\"note\">Intervals include test-sampling error (items x seeds, or Wilson, the "
            "wider) and stay in the metric's range. The verdict is an item-level paired test over the shared test "
            "recordings crossed with seeds (<em>items x seeds</em>), Holm-adjusted over the rows of this table; a "
            "flagged medium is not above its shuffled-label control or majority baseline.</p>"
            + f"<p>Files: {links}</p>")


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
        ("Embeddings", embeddings_section(page, h5, performed=bool(_performance_levels(info_csv)))),
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
