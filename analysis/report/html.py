"""What every page shares: escaping, number formatting, tables and one stylesheet.

Cells and headings passed to :func:`table` are HTML already (callers escape text with
:func:`esc`), so a cell can hold a link or a line break.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

import numpy as np

DASH = "&ndash;"   # shown for a missing or undefined number

STYLE = """body{font-family:system-ui,sans-serif;margin:24px auto;padding:0 1rem;max-width:1300px;color:#222;line-height:1.4}
h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}table{border-collapse:collapse;margin:8px 0 1.2em}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;font-size:14px;vertical-align:top}th{background:#eef}
table.metrics tr:nth-child(even){background:#f7f7f7}.name{font-family:monospace}code{background:#f3f3f3;padding:0 .2rem}
.sub{color:#a60;font-size:12px}.warn{color:#a40}.muted{color:#666}.note{color:#555;font-size:14px;max-width:1100px}"""


def esc(value) -> str:
    return html.escape(str(value))


def number(value, digits: int = 3) -> str:
    """A number for a table cell: ``digits`` decimals, or significant digits when tiny (< 1e-3) or
    large (>= 1e4); integers as they are; booleans as yes/no; None and NaN as a dash."""
    if value is None:
        return DASH
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, str):
        return esc(value)
    value = float(value)
    if not math.isfinite(value):
        return DASH
    return f"{value:.{digits}g}" if (abs(value) < 1e-3 and value != 0) or abs(value) >= 1e4 else f"{value:.{digits}f}"


def p_value(p) -> str:
    """A p-value to two significant digits (a dash when missing)."""
    return DASH if p is None or not math.isfinite(p) else f"{p:.2g}"


def interval(lo, hi, digits: int = 3) -> str:
    """``[lo, hi]``, or a dash when the interval is missing."""
    if lo is None or (isinstance(lo, float) and not math.isfinite(lo)):
        return DASH
    return f"[{number(lo, digits)}, {number(hi, digits)}]"


def kv_table(items: Sequence[tuple[str, str]]) -> str:
    """Two columns: an escaped key and an HTML value per row."""
    body = "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in items)
    return f'<table class="kv">{body}</table>'


def table(rows: Sequence[Mapping[str, str]], columns: Sequence[str] | None = None, css_class: str | None = None) -> str:
    """One row per mapping {heading: cell}; columns default to the first row's keys (a missing cell is empty)."""
    if not rows:
        return '<p class="muted">nothing to show</p>'
    columns = list(columns or rows[0])
    head = "".join(f"<th>{c}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{r.get(c, '')}</td>" for c in columns) + "</tr>" for r in rows)
    cls = f' class="{css_class}"' if css_class else ""
    return f"<table{cls}><tr>{head}</tr>{body}</table>"


def document(title: str, body: str, head: str = "") -> str:
    """A whole page: the shared stylesheet, ``head`` (e.g. an inlined script), then ``body``."""
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{STYLE}</style>{head}</head><body>{body}</body></html>")
