"""Embedding maps of the visualisation set: t-SNE per epoch, an interactive page and an animation.

Each epoch's t-SNE starts from the previous epoch's layout, so points move only as far as the
embeddings do and the animation across epochs is readable (independent runs would flip and rotate).
Pages embed plotly.js, so they open offline.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from embedders.store.atomic import atomic_path
from embedders.symbolic.midi_transformer.transformer import unwrap
from training.midi_datasets import collate

HOVER_COLUMNS_MAX = 8


@torch.no_grad()
def file_embeddings(model: torch.nn.Module, dataset, pad_id: int, device: str | torch.device,
                    batch_size: int = 8) -> np.ndarray:
    """(n_files, D): per file, the mean of its chunks' pooled vectors (files without chunks: NaN)."""
    net = unwrap(model)
    was_training = net.training
    net.eval()
    n_files, dim = len(dataset.files), net.config.embed_dim
    sums, counts = np.zeros((n_files, dim), np.float64), np.zeros(n_files, np.int64)
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))], pad_id)
        _, pooled = net.embed(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        for f, vec in zip(batch["file_index"].tolist(), pooled.float().cpu().numpy()):
            sums[f] += vec
            counts[f] += 1
    net.train(was_training)
    with np.errstate(invalid="ignore"):
        return (sums / counts[:, None]).astype(np.float32)


def tsne_2d(x: np.ndarray, seed: int, init: np.ndarray | None = None) -> np.ndarray:
    """2-D t-SNE of (n, D) rows; perplexity scaled down for small n (it must stay below n)."""
    from sklearn.manifold import TSNE

    n = x.shape[0]
    if n < 4:
        raise ValueError(f"t-SNE needs at least 4 files in the visualisation set, got {n}")
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
    start = "pca" if init is None else np.asarray(init, dtype=np.float32)
    return TSNE(n_components=2, perplexity=perplexity, init=start, random_state=seed,
                learning_rate="auto").fit_transform(x.astype(np.float64)).astype(np.float32)


def _hover(meta: pd.DataFrame, color_by: str) -> list[str]:
    columns = ["id"] + [c for c in meta.columns if c not in ("id", "audio_filename", "midi_filename")]
    columns = columns[:HOVER_COLUMNS_MAX]
    return ["<br>".join(f"{c}: {row[c]}" for c in columns) for _, row in meta.iterrows()]


def _color_values(meta: pd.DataFrame, color_by: str) -> pd.Series:
    if color_by not in meta.columns:
        raise ValueError(f"mlflow.color_by: no column '{color_by}'; info.csv has {list(meta.columns)}")
    return meta[color_by]


def _palette(classes: Sequence[str]) -> dict[str, str]:
    """A fixed colour per class; 24 distinct colours before any repeats (plotly's default has 10)."""
    from plotly.colors import qualitative

    colours = qualitative.Dark24 + qualitative.Light24
    return {c: colours[i % len(colours)] for i, c in enumerate(classes)}


def _write(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.write_html(tmp, include_plotlyjs=True, full_html=True)
    return path


def scatter_page(coords: np.ndarray, meta: pd.DataFrame, color_by: str, title: str, path: Path) -> Path:
    """One interactive map: a trace per class of ``color_by`` (so the legend toggles classes)."""
    import plotly.graph_objects as go

    colors, hover = _color_values(meta, color_by), _hover(meta, color_by)
    palette = _palette(sorted(colors.astype(str).unique()))
    fig = go.Figure()
    for value, colour in palette.items():
        keep = (colors.astype(str) == value).to_numpy()
        fig.add_trace(go.Scatter(x=coords[keep, 0], y=coords[keep, 1], mode="markers", name=value,
                                 text=[h for h, k in zip(hover, keep) if k], hoverinfo="text",
                                 marker={"size": 8, "opacity": 0.8, "color": colour}))
    fig.update_layout(title=title, xaxis_title="t-SNE 1", yaxis_title="t-SNE 2", legend_title=color_by,
                      template="plotly_white")
    return _write(fig, path)


def animation_page(frames: Sequence[tuple[int, np.ndarray]], meta: pd.DataFrame, color_by: str,
                   title: str, path: Path) -> Path:
    """Points moving across epochs: one animation frame per (epoch, coords), play button and slider."""
    import plotly.graph_objects as go

    colors, hover = _color_values(meta, color_by).astype(str), _hover(meta, color_by)
    palette = _palette(sorted(colors.unique()))
    all_xy = np.concatenate([c for _, c in frames])
    pad = 0.05 * (all_xy.max(0) - all_xy.min(0) + 1e-9)
    lo, hi = all_xy.min(0) - pad, all_xy.max(0) + pad

    def traces(coords):
        out = []
        for value, colour in palette.items():
            keep = (colors == value).to_numpy()
            out.append(go.Scatter(x=coords[keep, 0], y=coords[keep, 1], mode="markers", name=value,
                                  text=[h for h, k in zip(hover, keep) if k], hoverinfo="text",
                                  marker={"size": 8, "opacity": 0.8, "color": colour}))
        return out

    fig = go.Figure(data=traces(frames[0][1]),
                    frames=[go.Frame(data=traces(c), name=f"epoch {e}") for e, c in frames])
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
    return _write(fig, path)
