"""Every audio embedder of the registry as a HEAR 2021 module (the common API of the HEAR benchmark).

    model = load_model(model_file_path="", embedder="melstats", **options)
    get_timestamp_embeddings(audio, model) -> (embeddings (n_sounds, T, D) float32, timestamps (n_sounds, T) ms)
    get_scene_embeddings(audio, model)     -> (n_sounds, D) float32
    model.sample_rate, model.scene_embedding_size, model.timestamp_embedding_size

``audio`` is a torch tensor (n_sounds, n_samples) of mono audio in [-1, 1] at ``model.sample_rate``
(HEAR pads every sound of a batch to one length). Outputs are torch tensors on ``audio``'s device.
Timestamp t is the centre of the embedder's frame t, (t * hop_seconds + window_seconds / 2) * 1000
ms (openl3 with ``center=True``: t * hop_seconds * 1000), so frames are evenly spaced as HEAR
requires; T is the embedder's, FrameGrid.n_frames(n_samples / sample_rate) for every grid embedder.
The scene embedding is the mean of the timestamp embeddings: the store's ``average``.

Which embedder and options: the keyword arguments of ``load_model`` (``embedder=<name>`` plus the
embedder's options; heareval passes them from ``--model-options '{"embedder": "openl3", ...}'``).
``model_file_path`` is either "" (nothing), a JSON file ``{"embedder": name, <option>: value, ...}``
(so ``hear-validator embedders.hear_module -m spec.json`` can name any configuration; keyword
arguments override it), or a weights file, passed as the embedder's ``checkpoint`` option.
HEAR's validator accepts 16000, 22050, 44100 and 48000 Hz models, which covers every audio embedder
here. Raises ConfigError for a symbolic or unknown embedder, an unreadable spec, or a weights file
for an embedder that takes none.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np
import torch

from embedders.base import ConfigError, Embedder, FrameGrid
from embedders.registry import get_embedder

DEFAULT_EMBEDDER = "melstats"


class HearModel(torch.nn.Module):
    """A registry embedder behind HEAR's model attributes (a torch Module, as HEAR's validator requires).

    It holds no parameters of its own: the embedder runs where its config says (``device`` option
    for the torch embedders), and ``.to()`` moves nothing.
    """

    def __init__(self, embedder: Embedder):
        super().__init__()
        if embedder.modality != "audio":
            raise ConfigError(f"HEAR modules take audio; embedder '{embedder.name}' is {embedder.modality}")
        if embedder.hop_seconds is None:
            raise ConfigError(f"embedder '{embedder.name}' has no fixed frame hop; HEAR timestamps need one")
        self.embedder = embedder
        self.sample_rate = int(embedder.sample_rate)
        self.scene_embedding_size = int(embedder.dim)
        self.timestamp_embedding_size = int(embedder.dim)
        window = getattr(embedder.config, "window_seconds", None)
        if window is None:
            window = getattr(type(embedder), "window_seconds", embedder.hop_seconds)
        self.grid = FrameGrid(float(embedder.hop_seconds), float(window))
        # openl3 with center=True centres frame t on t * hop: its frames start half a window earlier
        self.offset_seconds = float(embedder.describe().get("frame_offset_seconds") or 0.0)

    def extra_repr(self) -> str:
        return f"embedder={self.embedder.name}, config={dataclasses.asdict(self.embedder.config)}"

    def timestamps_ms(self, n_frames: int) -> np.ndarray:
        """Centre of each of the first ``n_frames`` frames, in milliseconds."""
        centres = self.grid.starts(n_frames) + self.offset_seconds + self.grid.window_seconds / 2
        return (centres * 1000.0).astype(np.float32)


def read_spec(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            spec = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"HEAR model spec {path}: cannot read it as JSON ({exc})") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"HEAR model spec {path}: expected a JSON object, got {type(spec).__name__}")
    return spec


def load_model(model_file_path: str = "", **config: Any) -> HearModel:
    """HEAR's ``load_model`` (module docstring)."""
    options: dict[str, Any] = {}
    if model_file_path and str(model_file_path).endswith(".json"):
        options.update(read_spec(str(model_file_path)))
    options.update(config)
    name = options.pop("embedder", DEFAULT_EMBEDDER)
    if model_file_path and not str(model_file_path).endswith(".json"):
        if not os.path.exists(model_file_path):
            raise ConfigError(f"HEAR model file not found: {model_file_path}")
        options["checkpoint"] = str(model_file_path)
    embedder = get_embedder(name, **options)
    return HearModel(embedder)


def _check(audio: torch.Tensor, model: HearModel) -> None:
    if not isinstance(model, HearModel):
        raise ValueError(f"model must come from {__name__}.load_model, got {type(model).__name__}")
    if not isinstance(audio, torch.Tensor) or audio.ndim != 2:
        raise ValueError(f"audio must be a 2-D tensor (n_sounds, n_samples), got {getattr(audio, 'shape', type(audio))}")


def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """HEAR's ``get_timestamp_embeddings`` (module docstring)."""
    _check(audio, model)
    waves = list(audio.detach().to("cpu", torch.float32).numpy())
    frames = model.embedder.embed(waves) if waves else []
    n_frames = frames[0].shape[0] if frames else model.grid.n_frames(audio.shape[1] / model.sample_rate)
    stamps = model.timestamps_ms(n_frames)
    embeddings = np.stack(frames) if frames else np.zeros((0, n_frames, model.timestamp_embedding_size), np.float32)
    timestamps = np.tile(stamps, (audio.shape[0], 1))
    return (torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32)).to(audio.device),
            torch.from_numpy(np.ascontiguousarray(timestamps)).to(audio.device))


def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """HEAR's ``get_scene_embeddings``: the mean over each sound's frames (the store's ``average``)."""
    embeddings, _ = get_timestamp_embeddings(audio, model)
    return embeddings.mean(dim=1)
