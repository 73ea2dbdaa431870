"""``basic_pitch``: the basic-pitch model's posteriorgrams (real weights from its wheel) pooled onto the frame grid.

Input: mono float32 waveforms at 22050 Hz. The model (``embedders.audio.basic_pitch_model``, run by
onnxruntime with basic-pitch's own windowing) gives per posteriorgram frame (~86 per second) the
note (88), onset (88) and contour (264) activations in [0, 1]. Output frame t covers
[t * hop_seconds, t * hop_seconds + window_seconds) (``FrameGrid``; default hop 0.5 s, window 1.0 s,
the project's grid, so frames line up with melstats, openl3 and pianoroll) and holds the mean and
the max of the posteriorgram frames whose start lies in that span; a span holding none (past the
model's last frame, which stops 0.7% before the end) uses the nearest earlier frame.
T = FrameGrid.n_frames(len(audio) / 22050).

Columns (D = 880), ``feature_names()`` spells them out:

    [0, 88)     mean of note k      (MIDI pitch 21 + k)
    [88, 176)   mean of onset k
    [176, 440)  mean of contour b   (3 bins per semitone, bin 3k + 1 on MIDI pitch 21 + k)
    [440, 880)  the same 440 as maxima

Options: ``checkpoint`` (an ``nmp.onnx``; "" = the one in the basic-pitch wheel), ``hop_seconds``,
``window_seconds``, ``threads`` (onnxruntime intra-op threads; 0 = OMP_NUM_THREADS when set, as Ray
sets it per actor, else one per core; speed only, so it is not part of the config hash).
Raises EmptyInputError (zero-length audio), AudioDecodeError (non-finite samples),
MissingDependencyError (onnxruntime or the wheel absent), CheckpointError (a bad model file).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from embedders.audio import basic_pitch_model as bpm
from embedders.base import ConfigError, Embedder, EmbedderConfig, FrameGrid
from embedders.registry import register

_HASH_EXEMPT = ("threads",)  # change speed, not values


@dataclasses.dataclass(frozen=True)
class BasicPitchConfig(EmbedderConfig):
    checkpoint: str = ""
    hop_seconds: float = 0.5
    window_seconds: float = 1.0
    threads: int = 0

    def __post_init__(self) -> None:
        FrameGrid(self.hop_seconds, self.window_seconds)  # validates both
        if self.threads < 0:
            raise ConfigError(f"basic_pitch: threads must be >= 0, got {self.threads}")


@register
class BasicPitch(Embedder):
    name: ClassVar[str] = "basic_pitch"
    modality: ClassVar[str] = "audio"
    sample_rate: ClassVar[int] = bpm.SAMPLE_RATE
    Config: ClassVar[type[EmbedderConfig]] = BasicPitchConfig
    dim = 2 * (2 * bpm.N_NOTES + bpm.N_CONTOUR)
    hop_seconds = 0.5
    default_batch_size: ClassVar[int] = 4

    def __init__(self, config: BasicPitchConfig | None = None):
        super().__init__(config)
        cfg: BasicPitchConfig = self.config  # type: ignore[assignment]
        bpm.import_onnxruntime(self.name)
        self.grid = FrameGrid(cfg.hop_seconds, cfg.window_seconds)
        self.hop_seconds = cfg.hop_seconds
        self.model_path = bpm.model_path(cfg.checkpoint, self.name)
        self.session = bpm.load_session(self.model_path, cfg.threads, self.name)

    # -- self-description ------------------------------------------------------------------
    @classmethod
    def feature_names(cls) -> list[str]:
        per = ([f"note_{k}" for k in range(bpm.N_NOTES)] + [f"onset_{k}" for k in range(bpm.N_NOTES)]
               + [f"contour_{b}" for b in range(bpm.N_CONTOUR)])
        return [f"{n}_mean" for n in per] + [f"{n}_max" for n in per]

    @classmethod
    def hash_config(cls, config: EmbedderConfig, *, cuda: bool | None = None) -> str:
        """Config less ``threads``, code, and the model file's digest (other weights, other hash)."""
        kept = {k: v for k, v in dataclasses.asdict(config).items() if k not in _HASH_EXEMPT}
        path = bpm.model_path(config.checkpoint, cls.name)  # type: ignore[attr-defined]
        payload = f"{cls.name}:{sorted(kept.items())}:{cls.source_hash()}:{bpm.weights_sha256(path)}"
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @classmethod
    def describe_config(cls, config: EmbedderConfig, *, cuda: bool | None = None) -> dict[str, Any]:
        out = super().describe_config(config)
        path = bpm.model_path(config.checkpoint, cls.name)  # type: ignore[attr-defined]
        out.update(window_seconds=config.window_seconds, weights_file=os.path.basename(path),  # type: ignore[attr-defined]
                   weights_sha256=bpm.weights_sha256(path), versions=bpm.versions(),
                   pooling="mean and max of the posteriorgram frames starting in each window")
        return out

    # -- embedding -------------------------------------------------------------------------
    def pool(self, grams: bpm.Posteriorgrams, duration_seconds: float) -> np.ndarray:
        """(T, 880): mean and max of the posteriorgram frames per output frame (module docstring)."""
        feats = grams.stacked()
        n_out = self.grid.n_frames(duration_seconds)
        starts = self.grid.starts(n_out)
        lo = np.searchsorted(grams.times, starts - 1e-9, side="left")
        hi = np.searchsorted(grams.times, starts + self.grid.window_seconds - 1e-9, side="left")
        out = np.empty((n_out, self.dim), dtype=np.float32)
        half = self.dim // 2
        for t in range(n_out):
            a, b = lo[t], hi[t]
            if b <= a:  # no frame starts in the span: the nearest earlier one
                a = max(min(a, len(feats)) - 1, 0)
                b = a + 1
            seg = feats[a:b]
            out[t, :half] = seg.mean(axis=0, dtype=np.float64)
            out[t, half:] = seg.max(axis=0)
        return out

    def posteriorgrams(self, audio: np.ndarray) -> bpm.Posteriorgrams:
        return bpm.posteriorgrams(self.session, audio, self.name)

    def embed(self, items: Sequence[np.ndarray]) -> list[np.ndarray]:
        # One item at a time: windows never mix recordings, so outputs never depend on the batch.
        return [self.check_output(None, self.pool(self.posteriorgrams(a), len(a) / self.sample_rate)) for a in items]
