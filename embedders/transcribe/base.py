"""The transcriber contract (audio -> notes -> MIDI), its result, and the small registry of transcribers."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from embedders.base import ConfigError, class_sources_digest
from embedders.transcribe.midi import NOTE_DTYPE, notes_to_midi, tempo_bpm

# name -> module defining it (imported on first use: listing names loads no model)
TRANSCRIBER_MODULES = {"basic_pitch": "embedders.transcribe.basic_pitch"}
_REGISTRY: dict[str, type[Transcriber]] = {}


@dataclasses.dataclass(frozen=True)
class Transcription:
    """One recording's transcription.

    ``notes``: NOTE_DTYPE array (start, end in seconds; pitch; velocity), sorted by onset then pitch.
    ``midi``: the Standard MIDI File bytes (``embedders.transcribe.midi.notes_to_midi``) at ``bpm``.
    """

    notes: np.ndarray
    midi: bytes
    bpm: float

    def score(self, item_id: str | None = None):
        """The MIDI as a ``symusic.Score`` (what symbolic embedders take); EmptyInputError when no notes."""
        from embedders.io import decode_midi

        return decode_midi(self.midi, item_id)


@dataclasses.dataclass(frozen=True)
class TranscriberConfig:
    """Base for a transcriber's frozen config."""


class Transcriber(ABC):
    """Audio -> notes. Subclasses set ``name``, ``sample_rate`` and ``Config`` and implement ``note_events``."""

    name: ClassVar[str]
    sample_rate: ClassVar[int]
    Config: ClassVar[type[TranscriberConfig]] = TranscriberConfig
    #: Config fields that change speed, not notes (left out of the config hash).
    hash_exempt: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: TranscriberConfig | None = None):
        self.config = config if config is not None else self.Config()
        if not isinstance(self.config, self.Config):
            raise ConfigError(f"transcriber '{self.name}' expects a {self.Config.__name__}, got {type(self.config).__name__}")

    @classmethod
    def make_config(cls, **kwargs: Any) -> TranscriberConfig:
        fields = {f.name for f in dataclasses.fields(cls.Config)}
        unknown = sorted(set(kwargs) - fields)
        if unknown:
            raise ConfigError(f"transcriber '{cls.name}' has no option(s) {unknown}; its options are {sorted(fields)}")
        return cls.Config(**kwargs)

    @abstractmethod
    def note_events(self, audio: np.ndarray) -> np.ndarray:
        """NOTE_DTYPE notes of one mono float32 waveform at ``sample_rate``."""

    def transcribe(self, audio: np.ndarray, sr: int | None = None, *, bpm: float | None = None,
                   program: int = 0) -> Transcription:
        """Transcribe one mono waveform (at ``sr``, resampled when it differs from ``sample_rate``) to
        notes and MIDI written at ``bpm`` (None/NaN: 120). Raises what ``note_events`` raises
        (EmptyInputError, AudioDecodeError) and ConfigError on a bad bpm."""
        from embedders.io import resample

        tempo = tempo_bpm(bpm)  # a bad bpm fails before the model runs
        x = np.asarray(audio, dtype=np.float32)
        if sr is not None and int(sr) != self.sample_rate:
            if x.ndim != 1:
                raise ValueError(f"{self.name} expects a mono 1-D waveform, got shape {x.shape}")
            x = resample(x, int(sr), self.sample_rate)
        notes = np.asarray(self.note_events(x), dtype=NOTE_DTYPE)
        return Transcription(notes=notes, midi=notes_to_midi(notes, bpm=tempo, program=program, track_name=self.name),
                             bpm=tempo)

    # -- self-description --------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {"transcriber": self.name, "sample_rate": self.sample_rate, "config": dataclasses.asdict(self.config),
                "source_hash": self.source_hash()}

    def config_hash(self) -> str:
        kept = {k: v for k, v in dataclasses.asdict(self.config).items() if k not in self.hash_exempt}
        payload = json.dumps({"name": self.name, "config": kept, "source": self.source_hash()}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @classmethod
    def source_hash(cls) -> str:
        return class_sources_digest(cls).hexdigest()[:16]


def register(cls: type[Transcriber]) -> type[Transcriber]:
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise ConfigError(f"a transcriber named '{cls.name}' is already registered ({existing.__module__})")
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    return sorted(set(TRANSCRIBER_MODULES) | set(_REGISTRY))


def get_transcriber_class(name: str) -> type[Transcriber]:
    if name not in _REGISTRY and name in TRANSCRIBER_MODULES:
        importlib.import_module(TRANSCRIBER_MODULES[name])
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown transcriber '{name}'; available: {', '.join(available())}") from None


def get_transcriber(name: str, **options: Any) -> Transcriber:
    cls = get_transcriber_class(name)
    return cls(cls.make_config(**options))
