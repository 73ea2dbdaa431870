"""``basic_pitch`` transcriber: the basic-pitch model through onnxruntime, decoded to notes by basic-pitch's
own code (``basic_pitch.note_creation.output_to_notes_polyphonic``: onset peaks over a threshold, notes
followed along the note posteriorgram until it stays below the frame threshold, then the "melodia
trick" for notes without an onset) and timed by its own ``model_frames_to_time``.

The defaults are basic-pitch 0.4.0's ``predict()`` defaults: onset threshold 0.5, frame threshold
0.3, minimum note length 127.70 ms (11 frames), no frequency limits, melodia trick on, onsets
inferred from the note posteriorgram as well. Velocity = round(127 * mean note activation), as
basic-pitch. Pitch bends are not written: the ground-truth files have none, and a tokeniser would
read them as extra events. So the notes equal those of ``basic_pitch.inference.predict`` on the same
22050 Hz audio (tests/test_transcribe.py checks it).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, ClassVar

import numpy as np

from embedders.audio import basic_pitch_model as bpm
from embedders.base import ConfigError
from embedders.transcribe.base import Transcriber, TranscriberConfig, register
from embedders.transcribe.midi import NOTE_DTYPE, sort_notes


@dataclasses.dataclass(frozen=True)
class BasicPitchTranscriberConfig(TranscriberConfig):
    onset_threshold: float = 0.5
    frame_threshold: float = 0.3
    minimum_note_length_ms: float = 127.70
    minimum_frequency: float | None = None  # Hz; None: no limit
    maximum_frequency: float | None = None
    melodia_trick: bool = True
    checkpoint: str = ""  # an nmp.onnx; "": the one in the basic-pitch wheel
    threads: int = 0  # onnxruntime intra-op threads (embedders.audio.basic_pitch_model.resolve_threads)

    def __post_init__(self) -> None:
        for name in ("onset_threshold", "frame_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"basic_pitch transcriber: {name} must lie in [0, 1], got {getattr(self, name)}")
        if self.minimum_note_length_ms < 0 or self.threads < 0:
            raise ConfigError("basic_pitch transcriber: minimum_note_length_ms and threads must be >= 0")

    @property
    def min_note_frames(self) -> int:
        """basic-pitch's conversion: round(ms / 1000 * 22050 / 256)."""
        return int(np.round(self.minimum_note_length_ms / 1000 * (bpm.SAMPLE_RATE / bpm.FFT_HOP)))


@register
class BasicPitchTranscriber(Transcriber):
    name: ClassVar[str] = "basic_pitch"
    sample_rate: ClassVar[int] = bpm.SAMPLE_RATE
    Config: ClassVar[type[TranscriberConfig]] = BasicPitchTranscriberConfig
    hash_exempt: ClassVar[tuple[str, ...]] = ("threads",)

    def __init__(self, config: BasicPitchTranscriberConfig | None = None):
        super().__init__(config)
        cfg: BasicPitchTranscriberConfig = self.config  # type: ignore[assignment]
        self.note_creation = bpm.import_note_creation("basic_pitch transcriber")
        self.model_path = bpm.model_path(cfg.checkpoint, "basic_pitch transcriber")
        self.session = bpm.load_session(self.model_path, cfg.threads, "basic_pitch transcriber")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "weights_sha256": bpm.weights_sha256(self.model_path), "versions": bpm.versions()}

    def config_hash(self) -> str:
        return hashlib.sha256(f"{super().config_hash()}:{bpm.weights_sha256(self.model_path)}".encode()).hexdigest()[:16]

    def posteriorgrams(self, audio: np.ndarray) -> bpm.Posteriorgrams:
        return bpm.posteriorgrams(self.session, audio, "basic_pitch transcriber")

    def notes_from_posteriorgrams(self, grams: bpm.Posteriorgrams) -> np.ndarray:
        """basic-pitch's decoding of one recording's posteriorgrams to NOTE_DTYPE notes."""
        cfg: BasicPitchTranscriberConfig = self.config  # type: ignore[assignment]
        nc = self.note_creation
        # Silence makes basic-pitch rescale inferred onsets by 0/0 (NaN: no notes); that is the answer.
        with np.errstate(divide="ignore", invalid="ignore"):
            events = nc.output_to_notes_polyphonic(
                grams.note.copy(), grams.onset.copy(), onset_thresh=cfg.onset_threshold,
                frame_thresh=cfg.frame_threshold, min_note_len=cfg.min_note_frames, infer_onsets=True,
                max_freq=cfg.maximum_frequency, min_freq=cfg.minimum_frequency, melodia_trick=cfg.melodia_trick)
        times = nc.model_frames_to_time(grams.contour.shape[0])
        notes = np.empty(len(events), dtype=NOTE_DTYPE)
        for i, (start, end, pitch, amplitude) in enumerate(events):
            notes[i] = (times[start], times[end], pitch, int(np.round(127 * amplitude)))
        return sort_notes(notes)

    def note_events(self, audio: np.ndarray) -> np.ndarray:
        return self.notes_from_posteriorgrams(self.posteriorgrams(audio))
