"""``clap``: LAION-CLAP audio embeddings (Wu et al., ICASSP 2023), from the audio branch alone.

Input: mono float32 waveforms at 48 kHz. Every published CLAP audio encoder was trained on 10 s
clips (480000 samples). Frame t covers [t * hop_seconds, t * hop_seconds + window_seconds)
(``FrameGrid``; default hop = window = 10 s, so T = ceil(duration / 10 s)); a window may be shorter
than 10 s, not longer. Each window is prepared as the library prepares a clip of at most 10 s in
``CLAP_Module.get_audio_embedding_from_data``: the recording goes through int16 and back
(``quantize_int16``), and a window shorter than 10 s (the recording's tail, or every window when
window_seconds < 10) is filled to 10 s by ``data_filling`` (``repeatpad``, the library's choice:
whole copies, then zeros; or its other modes ``pad`` / ``repeat``). The library's random crop of
longer clips (``rand_trunc``) and fusion's random chunks never apply, so every frame is
deterministic, and frame t equals the library's embedding of ``audio[t * hop : t * hop + window]``
(tests/test_clap.py checks this against ``CLAP_Module`` itself): 512 values of unit L2 norm.

Which model: ``amodel`` and ``enable_fusion`` must match the checkpoint (the README of LAION-CLAP
pairs them: ``clap_model.PUBLISHED``); HTSAT-tiny without fusion (``630k-audioset-best.pt``, the
library's default) is the default, the music checkpoints need ``amodel=HTSAT-base``, the
``*fusion-best.pt`` ones ``enable_fusion=true``. A checkpoint that does not fit is refused with the
values that do. How the audio tower is built and loaded without importing laion_clap's package
(and so without torchvision, transformers or any download) is in embedders/audio/clap_model.py.

Compute (device, precision, model cache, hashing: embedders/torch_embedder.py): ``prepare`` checks
the waveform and does the int16 round trip; windows of every item in a call are batched,
``batch_size`` per forward pass (0: 64 on CUDA, 8 on CPU). ``precision`` auto = bf16 autocast on
CUDA (fp16 without native bf16), fp32 on CPU; the spectrogram front end always runs in IEEE fp32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np

from embedders.audio import clap_model
from embedders.audio.clap_model import AMODELS, HOW_TO_GET, JOINT_DIM
from embedders.base import ConfigError, EmbedderConfig, FrameGrid
from embedders.registry import register
from embedders.torch_embedder import TorchEmbedder, TorchEmbedderConfig, validate_waveform

SAMPLE_RATE = 48000
CLIP_SAMPLES = 480000  # 10 s: the input length of every published CLAP audio encoder
FILLINGS = ("repeatpad", "pad", "repeat")


@dataclasses.dataclass(frozen=True)
class CLAPConfig(TorchEmbedderConfig):
    embedder: ClassVar[str] = "clap"

    # checkpoint: a LAION-CLAP .pt file (--audio_checkpoint); required.
    # batch_size: 10 s windows per forward pass; 0: 64 on CUDA, 8 on CPU
    amodel: str = "HTSAT-tiny"  # HTSAT-base for the music_* checkpoints
    enable_fusion: bool = False  # true for the *fusion-best.pt checkpoints
    window_seconds: float = 10.0  # at most 10 (the clip length CLAP was trained on)
    hop_seconds: float = 10.0  # 10: each instant in one frame; 5: half-overlapping windows
    data_filling: str = "repeatpad"  # how a window shorter than 10 s is filled, as the library names it
    quantize_int16: bool = True  # int16 round trip first, as the library does with numpy input

    def __post_init__(self) -> None:
        super().__post_init__()
        for field, value, choices in (("amodel", self.amodel, AMODELS), ("data_filling", self.data_filling, FILLINGS)):
            if value not in choices:
                raise ConfigError(f"clap: {field} must be one of {list(choices)}, got {value!r}")
        FrameGrid(self.hop_seconds, self.window_seconds)  # both > 0
        if self.window_seconds * SAMPLE_RATE > CLIP_SAMPLES + 1e-6:
            raise ConfigError(f"clap: window_seconds must be at most {CLIP_SAMPLES / SAMPLE_RATE:g} (CLAP's clip "
                              f"length; the library crops longer input at random), got {self.window_seconds}")
        for field, value in (("hop_seconds", self.hop_seconds), ("window_seconds", self.window_seconds)):
            if abs(value * SAMPLE_RATE - round(value * SAMPLE_RATE)) > 1e-6:
                raise ConfigError(f"clap: {field} * {SAMPLE_RATE} must be a whole number of samples, got {value}")


def quantize_int16(x: np.ndarray) -> np.ndarray:
    """The library's float32_to_int16 then int16_to_float32 (clip to [-1, 1], truncate to steps of 1/32767)."""
    q = (np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16)
    return (q / 32767.0).astype(np.float32)


def fill_window(x: np.ndarray, mode: str) -> np.ndarray:
    """A window of 1 to 480000 samples filled to 480000 with the library's ``data_filling`` ``mode``."""
    if len(x) >= CLIP_SAMPLES:
        return x[:CLIP_SAMPLES]
    repeats = CLIP_SAMPLES // len(x)
    if mode == "repeat":
        return np.tile(x, repeats + 1)[:CLIP_SAMPLES]
    body = np.tile(x, repeats) if mode == "repeatpad" else x
    return np.pad(body, (0, CLIP_SAMPLES - len(body)))


@register
class CLAP(TorchEmbedder):
    name: ClassVar[str] = "clap"
    modality: ClassVar[str] = "audio"
    sample_rate: ClassVar[int] = SAMPLE_RATE
    Config: ClassVar[type[EmbedderConfig]] = CLAPConfig
    dim = JOINT_DIM
    hop_seconds = 10.0
    default_batch_size: ClassVar[int] = 8  # recordings per call; their windows are batched together
    network_fields: ClassVar[tuple[str, ...]] = ("amodel", "enable_fusion")
    source_modules: ClassVar[tuple[str, ...]] = ("embedders.audio.clap_model",)
    forward_batch: ClassVar[dict[str, int]] = {"cpu": 8, "cuda": 64}
    packages: ClassVar[tuple[str, ...]] = ("laion-clap", "torchlibrosa", "librosa")
    how_to_get: ClassVar[str] = HOW_TO_GET
    weights_label: ClassVar[str] = "LAION-CLAP checkpoint"
    cudnn_benchmark: ClassVar[bool] = True  # every window is 480000 samples

    def __init__(self, config: CLAPConfig | None = None, *, load: bool = True):
        super().__init__(config, load=load)
        cfg: CLAPConfig = self.config  # type: ignore[assignment]
        self.grid = FrameGrid(cfg.hop_seconds, cfg.window_seconds)
        self.hop_seconds = cfg.hop_seconds
        self.hop_samples = int(round(cfg.hop_seconds * SAMPLE_RATE))
        self.window_samples = int(round(cfg.window_seconds * SAMPLE_RATE))

    def check_dependencies(self) -> None:
        clap_model.htsat_module()

    def load_model(self, path: str):
        cfg: CLAPConfig = self.config  # type: ignore[assignment]
        tower, meta = clap_model.load_tower(path, cfg.amodel, cfg.enable_fusion)
        tower.checkpoint_meta = meta
        return tower

    @property
    def checkpoint_meta(self) -> dict[str, Any]:
        return self.model.checkpoint_meta

    @classmethod
    def describe_config(cls, config: EmbedderConfig, *, cuda: bool | None = None) -> dict[str, Any]:
        out = super().describe_config(config, cuda=cuda)
        out.update(window_seconds=config.window_seconds, clip_samples=CLIP_SAMPLES)  # type: ignore[attr-defined]
        return out

    # -- embedding ---------------------------------------------------------------------------
    def prepare(self, audio: np.ndarray) -> np.ndarray:
        """The validated waveform, through int16 and back as the library does (``quantize_int16``)."""
        x = validate_waveform(self.name, audio, SAMPLE_RATE)
        return quantize_int16(x) if self.config.quantize_int16 else x  # type: ignore[attr-defined]

    def windows(self, audio: np.ndarray) -> Iterator[np.ndarray]:
        """One recording's frames as (480000,) float32 model inputs, in order (T = FrameGrid.n_frames)."""
        return self._windows(self.prepare(audio))

    def _windows(self, x: np.ndarray) -> Iterator[np.ndarray]:
        for t in range(self.grid.n_frames(len(x) / SAMPLE_RATE)):
            start = t * self.hop_samples
            yield fill_window(x[start:start + self.window_samples], self.config.data_filling)  # type: ignore[attr-defined]

    def _forward_windows(self, batch: list[np.ndarray]) -> np.ndarray:
        import torch

        wave = self.to_device(torch.from_numpy(np.stack(batch)))  # (B, 480000)
        with self.inference():
            return self.model(wave).float().cpu().numpy()  # (B, 512)

    def forward(self, prepared: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Prepared waveforms -> (T_i, 512) per item; at most ``batch_size`` windows are held at once."""
        counts = [self.grid.n_frames(len(x) / SAMPLE_RATE) for x in prepared]
        out = np.empty((sum(counts), self.dim), dtype=np.float32)
        batch, row = [], 0
        for x in prepared:  # windows of consecutive items share forward passes
            for window in self._windows(x):
                batch.append(window)
                if len(batch) == self.batch_size:
                    out[row:row + len(batch)] = self._forward_windows(batch)
                    row, batch = row + len(batch), []
        if batch:
            out[row:row + len(batch)] = self._forward_windows(batch)
        bounds = np.cumsum([0, *counts])
        return [out[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
