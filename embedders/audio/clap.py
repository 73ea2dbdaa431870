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

Compute: windows of every item in a call are batched, ``batch_size`` per forward pass, on CUDA when
visible (a Ray actor with ``num_gpus``). ``precision`` auto = bf16 autocast on CUDA (fp16 where bf16
is unsupported), fp32 on CPU; the spectrogram front end always runs in fp32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import os
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np

from embedders.audio import clap_model
from embedders.audio.clap_model import AMODELS, JOINT_DIM, checkpoint_sha256, file_key
from embedders.base import AudioDecodeError, ConfigError, Embedder, EmbedderConfig, EmptyInputError, FrameGrid
from embedders.devices import cuda_autocast_dtype, torch_device
from embedders.registry import register

SAMPLE_RATE = 48000
CLIP_SAMPLES = 480000  # 10 s: the input length of every published CLAP audio encoder
FILLINGS = ("repeatpad", "pad", "repeat")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_MODELS: dict[tuple, Any] = {}  # per process (Ray actor): loaded towers, keyed by file version and device


@dataclasses.dataclass(frozen=True)
class CLAPConfig(EmbedderConfig):
    checkpoint: str = ""  # a LAION-CLAP .pt file (--audio_checkpoint); required
    amodel: str = "HTSAT-tiny"  # HTSAT-base for the music_* checkpoints
    enable_fusion: bool = False  # true for the *fusion-best.pt checkpoints
    window_seconds: float = 10.0  # at most 10 (the clip length CLAP was trained on)
    hop_seconds: float = 10.0  # 10: each instant in one frame; 5: half-overlapping windows
    data_filling: str = "repeatpad"  # how a window shorter than 10 s is filled, as the library names it
    quantize_int16: bool = True  # int16 round trip first, as the library does with numpy input
    batch_size: int = 0  # 10 s windows per forward pass; 0: 64 on CUDA, 8 on CPU
    device: str = "auto"  # auto: cuda when visible (a Ray actor with num_gpus), else cpu
    precision: str = "auto"  # auto: bf16 (fp16 without bf16) autocast on CUDA, fp32 on CPU; fp32 | bf16 | fp16

    def __post_init__(self) -> None:
        for field, value, choices in (("amodel", self.amodel, AMODELS), ("data_filling", self.data_filling, FILLINGS),
                                      ("precision", self.precision, PRECISIONS)):
            if value not in choices:
                raise ConfigError(f"clap: {field} must be one of {list(choices)}, got {value!r}")
        FrameGrid(self.hop_seconds, self.window_seconds)  # both > 0
        if self.window_seconds * SAMPLE_RATE > CLIP_SAMPLES + 1e-6:
            raise ConfigError(f"clap: window_seconds must be at most {CLIP_SAMPLES / SAMPLE_RATE:g} (CLAP's clip "
                              f"length; the library crops longer input at random), got {self.window_seconds}")
        for field, value in (("hop_seconds", self.hop_seconds), ("window_seconds", self.window_seconds)):
            if abs(value * SAMPLE_RATE - round(value * SAMPLE_RATE)) > 1e-6:
                raise ConfigError(f"clap: {field} * {SAMPLE_RATE} must be a whole number of samples, got {value}")
        if self.batch_size < 0:
            raise ConfigError(f"clap: batch_size must be >= 0 (0: automatic), got {self.batch_size}")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise ConfigError(f"clap: device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


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
class CLAP(Embedder):
    name: ClassVar[str] = "clap"
    modality: ClassVar[str] = "audio"
    sample_rate: ClassVar[int] = SAMPLE_RATE
    Config: ClassVar[type[EmbedderConfig]] = CLAPConfig
    dim = JOINT_DIM
    hop_seconds = 10.0
    default_batch_size: ClassVar[int] = 8  # recordings per call; their windows are batched together

    def __init__(self, config: CLAPConfig | None = None):
        super().__init__(config)
        cfg: CLAPConfig = self.config  # type: ignore[assignment]
        clap_model.htsat_module()  # a missing extra fails before the checkpoint is looked for
        self.device = torch_device("clap", cfg.device)
        self.autocast_dtype = cuda_autocast_dtype("clap", cfg.precision, self.device)
        self.batch_size = cfg.batch_size or (64 if self.device.type == "cuda" else 8)
        self.grid = FrameGrid(cfg.hop_seconds, cfg.window_seconds)
        self.hop_seconds = cfg.hop_seconds
        self.hop_samples = int(round(cfg.hop_seconds * SAMPLE_RATE))
        self.window_samples = int(round(cfg.window_seconds * SAMPLE_RATE))
        key = (*file_key(cfg.checkpoint), cfg.amodel, cfg.enable_fusion, str(self.device))
        if key not in _MODELS:  # one load per process, however often the embedder is rebuilt
            tower, meta = clap_model.load_tower(cfg.checkpoint, cfg.amodel, cfg.enable_fusion)
            _MODELS[key] = (tower.to(self.device), meta)
        self.model, self.checkpoint_meta = _MODELS[key]

    # -- self-description --------------------------------------------------------------------
    @classmethod
    def source_hash(cls) -> str:
        """Also the model file: a change there changes outputs."""
        digest = hashlib.sha256(super().source_hash().encode())
        digest.update(inspect.getsource(clap_model).encode())
        return digest.hexdigest()[:16]

    @classmethod
    def hash_config(cls, config: EmbedderConfig) -> str:
        """Also the checkpoint's digest: other weights at the same path give a new hash."""
        base = super().hash_config(config)
        return hashlib.sha256(f"{base}:{checkpoint_sha256(config.checkpoint)}".encode()).hexdigest()[:16]  # type: ignore[attr-defined]

    @classmethod
    def describe_config(cls, config: EmbedderConfig) -> dict[str, Any]:
        from importlib.metadata import PackageNotFoundError, version

        out = super().describe_config(config)
        path = config.checkpoint  # type: ignore[attr-defined]
        out.update(window_seconds=config.window_seconds, clip_samples=CLIP_SAMPLES,  # type: ignore[attr-defined]
                   checkpoint_file=os.path.basename(path), checkpoint_sha256=checkpoint_sha256(path))
        for package in ("laion-clap", "torchlibrosa", "librosa"):
            try:
                out[f"{package}_version"] = version(package)
            except PackageNotFoundError:
                out[f"{package}_version"] = None
        return out

    # -- embedding ---------------------------------------------------------------------------
    def _waveform(self, audio: np.ndarray) -> np.ndarray:
        x = np.asarray(audio, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"clap expects a mono 1-D waveform at {SAMPLE_RATE} Hz, got shape {x.shape}")
        if x.size == 0:
            raise EmptyInputError(None, "zero-length audio")
        if not np.isfinite(x).all():
            raise AudioDecodeError(None, "audio contains NaN or infinite samples")
        return quantize_int16(x) if self.config.quantize_int16 else x  # type: ignore[attr-defined]

    def windows(self, audio: np.ndarray) -> Iterator[np.ndarray]:
        """One recording's frames as (480000,) float32 model inputs, in order (T = FrameGrid.n_frames)."""
        return self._windows(self._waveform(audio))

    def _windows(self, x: np.ndarray) -> Iterator[np.ndarray]:
        for t in range(self.grid.n_frames(len(x) / SAMPLE_RATE)):
            start = t * self.hop_samples
            yield fill_window(x[start:start + self.window_samples], self.config.data_filling)  # type: ignore[attr-defined]

    def _forward(self, batch: list[np.ndarray]) -> np.ndarray:
        import torch

        wave = torch.from_numpy(np.stack(batch)).to(self.device)  # (B, 480000)
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            return self.model(wave).cpu().numpy()  # (B, 512) float32

    def embed(self, items: Sequence[np.ndarray]) -> list[np.ndarray]:
        waves = [self._waveform(a) for a in items]  # every item is validated before any forward pass
        counts = [self.grid.n_frames(len(x) / SAMPLE_RATE) for x in waves]
        out = np.empty((sum(counts), self.dim), dtype=np.float32)
        batch, row = [], 0
        for x in waves:  # windows of consecutive items share forward passes; at most batch_size are held
            for window in self._windows(x):
                batch.append(window)
                if len(batch) == self.batch_size:
                    out[row:row + len(batch)] = self._forward(batch)
                    row, batch = row + len(batch), []
        if batch:
            out[row:row + len(batch)] = self._forward(batch)
        bounds = np.cumsum([0, *counts])
        return [self.check_output(None, out[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
