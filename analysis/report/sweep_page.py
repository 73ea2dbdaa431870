"""summary.md of a sweep: the audio-vs-symbolic table of ``analysis.sweep_table.build_table`` as Markdown.

Per label: both media's test scores with their test-sampling interval and the seed interval, the
baseline and shuffled-label control, flags, the item-level paired difference with its Holm-adjusted p
and the verdict; then the best configuration of each medium. :data:`NOTE` says what the intervals cover.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.sweep_table import BASELINE_NAMES

METRIC_NAMES = {"accuracy": "accuracy", "r2": "R^2"}
NOTE = ("Each medium's bracketed interval includes test-sampling error (method beside it); 'seeds' is the Student-t "
        "interval over training seeds on the one test set (training variability only). Audio - symbolic is an "
        "item-level paired test on the same test items crossed with seeds (a crossed random-effects t: interval "
        "and p); p_holm adjusts it by Holm over every row of this table, and only p_holm <= 0.05 names a "
        "winner. A flagged medium did not clearly beat its shuffled-label control or majority baseline, so its "
        "score says nothing about the label.")


def _fmt(value: float, digits: int = 3) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _cell(row: pd.Series, side: str) -> str:
    if not row[f"{side}_embedder"]:
        return "not swept"
    text = (f"**{_fmt(row[f'{side}_mean'])}** [{_fmt(row[f'{side}_ci_lo'])}, {_fmt(row[f'{side}_ci_hi'])}]"
            f" ({row[f'{side}_ci_method']})<br>seeds [{_fmt(row[f'{side}_seed_lo'])}, {_fmt(row[f'{side}_seed_hi'])}]")
    if np.isfinite(row[f"{side}_sampling_lo"]):
        text += (f"<br>sampling [{_fmt(row[f'{side}_sampling_lo'])}, {_fmt(row[f'{side}_sampling_hi'])}], "
                 f"n = {int(row[f'{side}_n_test'])}")
    text += f"<br>baseline {_fmt(row[f'{side}_baseline'])}, shuffled {_fmt(row[f'{side}_shuffled'])}"
    if row[f"{side}_flags"]:
        text += f"<br>⚠ {row[f'{side}_flags']}"
    return text


def table_markdown(table: pd.DataFrame, title: str = "Audio vs symbolic: test scores of the best configuration") -> str:
    """The table as Markdown: scores with intervals and controls, the difference, then the configurations."""
    lines = [f"## {title}", "",
             "| label | metric | audio | symbolic | audio - symbolic | verdict |",
             "| --- | --- | --- | --- | --- | --- |"]
    for _, row in table.iterrows():
        names = f"{row['audio_embedder'] or '-'} / {row['symbolic_embedder'] or '-'}"
        diff = (f"{_fmt(row['difference'], 3)} [{_fmt(row['difference_ci_lo'])}, {_fmt(row['difference_ci_hi'])}]"
                f"<br>p = {_fmt(row['p_value'], 3)}, Holm p = {_fmt(row['p_holm'], 3)}"
                f"<br>{row['difference_method'] or '-'}: {int(row['n_seeds'])} seeds"
                + (f" x {int(row['n_items'])} items" if np.isfinite(row["n_items"]) else ""))
        lines.append(f"| {row['label']} ({names}) | test {METRIC_NAMES.get(row['metric'], row['metric'])} "
                     f"| {_cell(row, 'audio')} | {_cell(row, 'symbolic')} | {diff} | {row['verdict']} |")
    lines += ["", f"Baseline: {BASELINE_NAMES['classification']} for classification, "
              f"{BASELINE_NAMES['regression']} (R^2 about 0) for regression. {NOTE}", "",
              "### Best configurations (chosen on validation, scored once on test)", "",
              "| label | medium | embedder | configuration | best validation |", "| --- | --- | --- | --- | --- |"]
    for _, row in table.iterrows():
        for side in ("audio", "symbolic"):
            if row[f"{side}_embedder"]:
                lines.append(f"| {row['label']} | {side} | {row[f'{side}_embedder']} | {row[f'{side}_config']} "
                             f"| {_fmt(row[f'{side}_best_val'])} |")
    return "\n".join(lines) + "\n"
