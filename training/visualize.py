"""Embedding maps of the visualisation set: per-file embeddings and their t-SNE per epoch.

Each epoch's t-SNE starts from the previous epoch's layout, so points move only as far as the
embeddings do and the animation across epochs is readable (independent runs would flip and rotate).
The pages showing them are ``analysis.report.embedding_map_page``.
"""

from __future__ import annotations

import numpy as np
import torch

from embedders.symbolic.midi_transformer.transformer import unwrap
from training.midi_datasets import collate


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
