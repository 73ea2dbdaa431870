"""Pages of the pretraining's embedding maps (t-SNE of the visualisation set): one epoch, or an animation.

Both return a whole HTML page with plotly.js inlined, so it opens offline; the caller writes it.
``meta`` holds one row per point (an ``id`` column and any info.csv columns, shown on hover);
each class of ``color_by`` is one trace, so clicking its legend entry hides it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.report.plots import hover_text


def _palette(classes: Sequence[str]) -> dict[str, str]:
    """A fixed colour per class; 24 distinct colours before any repeats (plotly's default has 10)."""
    from plotly.colors import qualitative

    colours = qualitative.Dark24 + qualitative.Light24
    return {c: colours[i % len(colours)] for i, c in enumerate(classes)}


def _classes(meta: pd.DataFrame, color_by: str) -> pd.Series:
    if color_by not in meta.columns:
        raise ValueError(f"color_by: no column '{color_by}'; the metadata has {list(meta.columns)}")
    return meta[color_by].astype(str)


def _traces(coords: np.ndarray, classes: pd.Series, hover: list[str], palette: dict[str, str]) -> list:
    import plotly.graph_objects as go

    out = []
    for value, colour in palette.items():
        keep = (classes == value).to_numpy()
        out.append(go.Scatter(x=coords[keep, 0], y=coords[keep, 1], mode="markers", name=value,
                              text=[h for h, k in zip(hover, keep) if k], hoverinfo="text",
                              marker={"size": 8, "opacity": 0.8, "color": colour}))
    return out


def _page(fig) -> str:
    return fig.to_html(include_plotlyjs=True, full_html=True)


def scatter_page(coords: np.ndarray, meta: pd.DataFrame, color_by: str, title: str) -> str:
    """One map: ``coords`` (N, 2) t-SNE coordinates of the N rows of ``meta``."""
    import plotly.graph_objects as go

    classes = _classes(meta, color_by)
    fig = go.Figure(_traces(coords, classes, hover_text(meta["id"], meta), _palette(sorted(classes.unique()))))
    fig.update_layout(title=title, xaxis_title="t-SNE 1", yaxis_title="t-SNE 2", legend_title=color_by,
                      template="plotly_white")
    return _page(fig)


def animation_page(frames: Sequence[tuple[int, np.ndarray]], meta: pd.DataFrame, color_by: str, title: str) -> str:
    """Points moving across epochs: one animation frame per (epoch, (N, 2) coords), a play button and a slider;
    the axes hold every frame's range, so points move and the view stays."""
    import plotly.graph_objects as go

    classes = _classes(meta, color_by)
    hover, palette = hover_text(meta["id"], meta), _palette(sorted(classes.unique()))
    all_xy = np.concatenate([c for _, c in frames])
    pad = 0.05 * (all_xy.max(0) - all_xy.min(0) + 1e-9)
    lo, hi = all_xy.min(0) - pad, all_xy.max(0) + pad
    fig = go.Figure(data=_traces(frames[0][1], classes, hover, palette),
                    frames=[go.Frame(data=_traces(c, classes, hover, palette), name=f"epoch {e}") for e, c in frames])
    steps = [{"method": "animate", "label": str(e),
              "args": [[f"epoch {e}"], {"mode": "immediate", "frame": {"duration": 600, "redraw": True}}]}
             for e, _ in frames]
    fig.update_layout(
        title=title, template="plotly_white", legend_title=color_by,
        xaxis={"range": [float(lo[0]), float(hi[0])], "title": "t-SNE 1"},
        yaxis={"range": [float(lo[1]), float(hi[1])], "title": "t-SNE 2"},
        updatemenus=[{"type": "buttons", "showactive": False, "buttons": [
            {"label": "Play", "method": "animate",
             "args": [None, {"frame": {"duration": 800, "redraw": True}, "fromcurrent": True}]}]}],
        sliders=[{"currentvalue": {"prefix": "epoch "}, "steps": steps}],
    )
    return _page(fig)
