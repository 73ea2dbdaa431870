"""Tiny embeddings.h5 stores with a known answer for the classifier tests (real layout, written by the store code).

``separable_store``: ``n`` recordings, ``style`` in 8 balanced classes (8, so that a shuffled-label
control, which can only map whole clusters to labels, lands near chance with little spread) whose audio frames sit around
well-separated centres (every frame, so the average and every sequence probe can find them);
``tempo`` is a linear function of two audio features plus small noise; ``player`` is a grouping
column (4 recordings per player, one style per player); ``drummer`` (with ``drummers=k``) a coarse
one: k groups that each play every style, as GMD's 10 drummers do; variable-length sequences (2 to 6 frames).
The symbolic medium is pure noise. Optional extras: a ``split`` column, a rare class, empty labels.
``MeanPoolNet`` is a custom model in the seed's interface, for ``--model tests.classifier_factory:MeanPoolNet``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from embedders.store.h5 import consolidate
from embedders.store.parts import ShardWriter

A, S = "audio_embeddings", "symbolic_embeddings"
STYLES = ("blues", "folk", "funk", "jazz", "metal", "pop", "rock", "soul")
DIM_A, DIM_S = 8, 5


def separable_store(root: Path, n: int = 160, *, with_split: bool = False, rare_rows: int = 0,
                    empty_labels: int = 0, seed: int = 0, drummers: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root = Path(root)
    styles = np.array(STYLES)[np.arange(n) // 4 % len(STYLES)]            # players of 4 rows share a style
    centres = {s: rng.standard_normal(DIM_A) * 3 for s in STYLES}
    lengths = rng.integers(2, 7, n + rare_rows)
    rows = []
    wa = ShardWriter(root, A, "toy_audio", "h", {"embedder": "toy_audio"}, 64)
    ws = ShardWriter(root, S, "toy_symbolic", "h", {"embedder": "toy_symbolic"}, 64)
    for i in range(n + rare_rows):
        style = styles[i] if i < n else "polka"                   # the rare class: too small to split
        centre = centres.get(style, np.full(DIM_A, 3.0))
        frames = centre + 0.5 * rng.standard_normal((lengths[i], DIM_A))
        tempo = 100 + 10 * frames.mean(0)[0] - 7 * frames.mean(0)[1] + rng.normal(0, 0.5)
        label = "" if i < empty_labels else style
        row = {"id": f"r{i:04d}", "audio_filename": f"a/{i}.wav", "midi_filename": f"m/{i}.mid", "style": label,
               "tempo": round(float(tempo), 3), "player": f"p{i // 4:03d}",
               "drummer": f"d{i // 4 % drummers}" if drummers else ""}
        if with_split:
            row["split"] = ("train", "train", "train", "val", "test")[i // 4 % 5] if i < n else "train"
        rows.append(row)
        wa.add(row["id"], frames.astype(np.float32))
        ws.add(row["id"], rng.standard_normal((lengths[i], DIM_S)).astype(np.float32))
    wa.flush()
    ws.flush()
    info = pd.DataFrame(rows)
    consolidate(root, info, root / "embeddings.h5", provenance={"dataset": "classifier-test"})
    return root / "embeddings.h5"


class MeanPoolNet(nn.Module):
    """A user's own model: ``(input_dim, num_classes, **kwargs)``, mean over the real frames, two layers."""

    def __init__(self, input_dim: int, num_classes: int, width: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(input_dim, width), nn.ReLU(), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:   # (B, T, D), (B,) -> (B, C)
        mask = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).unsqueeze(-1)
        return self.net((x * mask).sum(1) / lengths.clamp(min=1)[:, None].to(x.dtype))
