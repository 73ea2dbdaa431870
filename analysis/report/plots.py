"""Figures: arrays in, plotly figures (or PNG bytes) out; no files, no state.

* ``pca_2d``: 2-D PCA of z-scored features (each feature scaled to unit variance first, so no
  single large-valued feature decides the map).
* ``embedding_maps``: the two media side by side, one marker per recording, coloured by a label.
* ``rdm_heatmaps``: cosine-distance RDMs of both media on the same rows, as within-medium ranks
  (RSA compares ranks, so both panels share one 0-1 colour scale).
* ``null_histograms``: per metric, the permutation null as a histogram and the observed value.
* ``confusion_png``: a classifier's confusion matrix as a PNG image (matplotlib), rows as shares.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pandas as pd

HOVER_COLUMNS_MAX = 8
_SKIP_HOVER = ("id", "audio_filename", "midi_filename")


def pca_2d(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coords (N, 2), explained variance ratio (2,)) of the z-scored rows of X."""
    X = np.asarray(X, dtype=np.float64)
    sd = X.std(axis=0)
    Z = (X - X.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    _, s, vt = np.linalg.svd(Z, full_matrices=False)
    k = min(2, vt.shape[0])
    coords = np.zeros((X.shape[0], 2))
    coords[:, :k] = Z @ vt[:k].T
    total = float((s ** 2).sum())
    ratio = np.zeros(2)
    ratio[:k] = (s[:k] ** 2) / total if total > 0 else 0.0
    return coords, ratio


def hover_text(ids: Sequence[str], metadata: pd.DataFrame | None) -> list[str]:
    """'id: ...' then up to HOVER_COLUMNS_MAX - 1 metadata columns, one line each."""
    if metadata is None or metadata.empty:
        return [f"id: {i}" for i in ids]
    cols = [c for c in metadata.columns if c not in _SKIP_HOVER][:HOVER_COLUMNS_MAX - 1]
    rows = metadata[cols].astype(str).to_numpy()
    return ["<br>".join([f"id: {i}"] + [f"{c}: {v}" for c, v in zip(cols, row)]) for i, row in zip(ids, rows)]


def embedding_maps(coords_a: np.ndarray, coords_s: np.ndarray, hover: Sequence[str], color=None,
                   color_name: str | None = None, numeric: bool = False,
                   titles: tuple[str, str] = ("audio", "symbolic"),
                   explained: tuple[Sequence[float], Sequence[float]] | None = None):
    """Side-by-side scatter maps; categorical colours get one legend entry per class (both panels)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=list(titles), horizontal_spacing=0.08)
    hover = np.asarray(list(hover), dtype=object)
    marker = {"size": 7, "opacity": 0.8}
    if color is None:
        for col, xy in ((1, coords_a), (2, coords_s)):
            fig.add_trace(go.Scatter(x=xy[:, 0], y=xy[:, 1], mode="markers", text=hover, hoverinfo="text",
                                     marker={**marker, "color": "#4c72b0"}, showlegend=False,
                                     name=titles[col - 1]), 1, col)
    elif numeric:
        values = np.asarray(color, dtype=np.float64)
        for col, xy in ((1, coords_a), (2, coords_s)):
            fig.add_trace(go.Scatter(
                x=xy[:, 0], y=xy[:, 1], mode="markers", text=hover, hoverinfo="text", showlegend=False,
                marker={**marker, "color": values, "colorscale": "Viridis", "showscale": col == 2,
                        "colorbar": {"title": {"text": color_name or ""}}}), 1, col)
    else:
        from plotly.colors import qualitative

        values = np.asarray([str(v) for v in color], dtype=object)
        classes = sorted(set(values))
        palette = qualitative.Plotly if len(classes) <= 10 else qualitative.Dark24 + qualitative.Light24
        for j, value in enumerate(classes):
            keep = values == value
            for col, xy in ((1, coords_a), (2, coords_s)):
                fig.add_trace(go.Scatter(x=xy[keep, 0], y=xy[keep, 1], mode="markers", text=hover[keep],
                                         hoverinfo="text", name=value, legendgroup=value, showlegend=col == 1,
                                         marker={**marker, "color": palette[j % len(palette)]}), 1, col)
    for col in (1, 2):
        ev = explained[col - 1] if explained is not None else None
        suffix = ["" if ev is None else f" ({100 * ev[j]:.0f}% var.)" for j in (0, 1)]
        fig.update_xaxes(title_text="PC 1" + suffix[0], row=1, col=col)
        fig.update_yaxes(title_text="PC 2" + suffix[1], row=1, col=col)
    fig.update_layout(template="plotly_white", height=520, legend_title_text=color_name or "",
                      margin={"t": 60, "l": 60, "r": 20, "b": 50})
    return fig


def _rank01(d: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    r = rankdata(d)
    return (r - 1) / max(1, r.size - 1)


def rdm_heatmaps(Xa: np.ndarray, Xs: np.ndarray, ids: Sequence[str], labels=None,
                 titles: tuple[str, str] = ("audio", "symbolic")):
    """Cosine-distance RDMs (columns centred first) of the same rows, shown as ranks in [0, 1].

    Rows are shown in the order given (the caller sorts by label); with ``labels`` the axis ticks
    are the labels, and the hover shows both ids.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    from scipy.spatial.distance import pdist, squareform

    names = [str(i) for i in ids]
    n = len(names)
    tags = names if labels is None else [f"{lab} | {i}" for lab, i in zip(labels, names)]
    text = [[f"{tags[r]}<br>{tags[c]}" for c in range(n)] for r in range(n)]
    tickvals, ticktext, bounds = [], [], []
    if labels is not None:  # one tick per label block (rows arrive sorted by label), lines between blocks
        labs = [str(v) for v in labels]
        starts = [0] + [i for i in range(1, n) if labs[i] != labs[i - 1]] + [n]
        for a, b in zip(starts[:-1], starts[1:]):
            tickvals.append((a + b - 1) / 2)
            ticktext.append(labs[a])
        bounds = [b - 0.5 for b in starts[1:-1]]
    fig = make_subplots(rows=1, cols=2, subplot_titles=list(titles), horizontal_spacing=0.14)
    for col, X in ((1, Xa), (2, Xs)):
        X = np.asarray(X, dtype=np.float64)
        d = np.nan_to_num(pdist(X - X.mean(axis=0), "cosine"))
        R = squareform(_rank01(d))
        fig.add_trace(go.Heatmap(z=R, text=text, zmin=0, zmax=1, colorscale="Viridis", showscale=col == 2,
                                 colorbar={"title": {"text": "distance rank"}},
                                 hovertemplate="%{text}<br>rank %{z:.2f}<extra></extra>"), 1, col)
        axis = {"tickmode": "array", "tickvals": tickvals, "ticktext": ticktext, "showgrid": False,
                "showticklabels": bool(tickvals), "tickfont": {"size": 10}}
        fig.update_xaxes(**axis, tickangle=-60, row=1, col=col)
        fig.update_yaxes(**axis, autorange="reversed", row=1, col=col)
        for b in bounds:
            for coords in (dict(x0=b, x1=b, y0=-0.5, y1=n - 0.5), dict(y0=b, y1=b, x0=-0.5, x1=n - 0.5)):
                fig.add_shape(type="line", **coords, line={"color": "white", "width": 1}, row=1, col=col)
    fig.update_layout(template="plotly_white", height=620, margin={"t": 60, "l": 110, "r": 20, "b": 110})
    return fig


def null_histograms(items: Sequence[tuple[str, np.ndarray, float, float]], cols: int = 4, bins: int = 30):
    """items: (name, null draws, observed, p-value); one panel each, observed as a red line."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    items = [it for it in items if it[1] is not None and np.size(it[1]) > 0]
    if not items:
        return None
    rows = (len(items) + cols - 1) // cols
    titles = [f"{name}<br>p = {p:.2g}" if np.isfinite(p) else name for name, _, _, p in items]
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, vertical_spacing=0.5 / rows,
                        horizontal_spacing=0.06)
    for k, (_, null, observed, _) in enumerate(items):
        r, c = k // cols + 1, k % cols + 1
        null = np.asarray(null, dtype=np.float64)
        null = null[np.isfinite(null)]
        lo = min(null.min(), observed) if null.size else observed
        hi = max(null.max(), observed) if null.size else observed
        span = (hi - lo) or 1.0
        counts, edges = np.histogram(null, bins=bins, range=(lo - 0.02 * span, hi + 0.02 * span))
        fig.add_trace(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, width=np.diff(edges), marker_color="#8da0cb",
                             name="null", showlegend=k == 0, legendgroup="null",
                             hovertemplate="%{x:.4g}: %{y}<extra>null</extra>"), r, c)
        top = max(1, int(counts.max()))
        fig.add_trace(go.Scatter(x=[observed, observed], y=[0, top], mode="lines", line={"color": "#d62728", "width": 3},
                                 name="observed", showlegend=k == 0, legendgroup="obs",
                                 hovertemplate=f"observed {observed:.4g}<extra></extra>"), r, c)
    fig.update_annotations(font_size=11)
    fig.update_layout(template="plotly_white", height=max(300, 230 * rows), bargap=0,
                      margin={"t": 60, "l": 40, "r": 20, "b": 30}, legend={"orientation": "h", "y": 1.02 + 0.1 / rows})
    return fig


def confusion_png(matrix: Sequence[Sequence[int]], class_names: Sequence[str], title: str) -> bytes:
    """PNG of a (C, C) confusion matrix (rows: true class, columns: predicted), coloured by each row's
    share of its true class and annotated with the counts (empty cells left blank)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix, dtype=np.float64)
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    size = 2.5 + 0.45 * len(class_names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if m[i, j]:
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, label="share of the true class")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=120, format="png")
    plt.close(fig)
    return buf.getvalue()
