"""The embedder contract shared by every model, and the named errors a batch job may catch per item.

An embedder turns recordings into frame sequences: ``embed(items)`` returns one float32 array of
shape (T_i, dim) per item. The store derives the per-recording ``average`` from the sequence, so
both of the seed's embedding types exist for every embedder.

Audio items are mono float32 waveforms at the embedder's ``sample_rate`` (see ``embedders.io``).
Symbolic items are ``symusic.Score`` objects in tick time, as ``embedders.io.load_midi`` returns.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

MODALITIES = ("audio", "symbolic")
MEDIUM_BY_MODALITY = {"audio": "audio_embeddings", "symbolic": "symbolic_embeddings"}
PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


# ---------------------------------------------------------------------------------------------
# Errors. Per-item errors carry the item id so a batch job can record them and go on; anything
# else (a bug, out of memory) is not caught by the job and stops it loudly.
# ---------------------------------------------------------------------------------------------
class EmbedderError(Exception):
    """Base class for errors raised by embedders and their io."""


class ItemError(EmbedderError):
    """One recording could not be processed. The batch job records it and continues."""

    def __init__(self, item_id: str | None, message: str):
        self.item_id = item_id
        self.reason = message
        super().__init__(f"[{item_id}] {message}" if item_id is not None else message)


class MissingFileError(ItemError):
    """The file named in info.csv does not exist."""


class AudioDecodeError(ItemError):
    """The audio file exists but cannot be decoded (corrupt, unsupported format)."""


class MidiDecodeError(ItemError):
    """The MIDI file exists but cannot be parsed."""


class EmptyInputError(ItemError):
    """Decodable but nothing to embed: zero-length or silent audio, MIDI with no notes."""


class EmbeddingFailedError(ItemError):
    """The model produced an output that breaks the contract (wrong shape, NaN, ...)."""


ITEM_ERRORS: tuple[type[ItemError], ...] = (
    MissingFileError,
    AudioDecodeError,
    MidiDecodeError,
    EmptyInputError,
    EmbeddingFailedError,
)


class MissingDependencyError(EmbedderError, ImportError):
    """An optional package for this embedder is not installed."""

    def __init__(self, embedder: str, package: str, extra: str):
        super().__init__(
            f"embedder '{embedder}' needs the package '{package}', which is not installed. "
            f"Install it with: pip install 'audio-vs-symbolic[{extra}]' -c constraints.txt"
        )


class CheckpointError(EmbedderError):
    """A checkpoint is missing or does not match the model it is loaded into."""


class ConfigError(EmbedderError, ValueError):
    """An embedder was given an unknown or invalid configuration value."""


# ---------------------------------------------------------------------------------------------
# Frame grid: audio and symbolic embedders that share one (hop, window) in seconds produce
# sequences whose frame t covers the same span of the recording, so they can be compared frame
# by frame.
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FrameGrid:
    hop_seconds: float = 0.5
    window_seconds: float = 1.0

    def __post_init__(self) -> None:
        if not (self.hop_seconds > 0 and self.window_seconds > 0):
            raise ConfigError(
                f"hop_seconds and window_seconds must be > 0, got {self.hop_seconds}, {self.window_seconds}"
            )

    def n_frames(self, duration_seconds: float) -> int:
        """Frames needed so every instant of [0, duration) falls inside one frame start span; >= 1."""
        return max(1, math.ceil(max(duration_seconds, 0.0) / self.hop_seconds - 1e-9))

    def starts(self, n_frames: int) -> np.ndarray:
        """Frame start times in seconds; frame t covers [starts[t], starts[t] + window_seconds)."""
        return np.arange(n_frames, dtype=np.float64) * self.hop_seconds

    def window_index(self, n_items: int, n_frames: int, unit_seconds: float) -> tuple[np.ndarray, np.ndarray]:
        """Gather indices (T, L) and mask of the items at times k * unit_seconds inside each window.

        A window holding no item (a tail shorter than one unit) gets the nearest earlier item, so
        every frame summarises something.
        """
        starts = self.starts(n_frames)
        pos = np.arange(n_items, dtype=np.float64) * unit_seconds
        j0 = np.minimum(np.searchsorted(pos, starts, side="left"), n_items - 1)
        j1 = np.maximum(np.minimum(np.searchsorted(pos, starts + self.window_seconds, side="left"), n_items), j0 + 1)
        idx = j0[:, None] + np.arange(int((j1 - j0).max()))[None, :]
        mask = idx < j1[:, None]
        return np.minimum(idx, n_items - 1), mask


# ---------------------------------------------------------------------------------------------
# The contract.
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class EmbedderConfig:
    """Base for an embedder's frozen config. Subclasses add fields with defaults."""


class Embedder(ABC):
    """One model that turns recordings into (T, dim) float32 frame sequences.

    Subclasses set ``name``, ``modality``, ``dim`` (an instance may refine it from its config),
    ``sample_rate`` for audio, a frozen ``Config`` dataclass, and implement ``embed``.
    Heavy imports (torch models, optional packages) belong inside ``__init__``/``embed`` so that
    importing the registry stays cheap.
    """

    name: ClassVar[str]
    modality: ClassVar[str]
    dim: int
    sample_rate: ClassVar[int | None] = None
    Config: ClassVar[type[EmbedderConfig]] = EmbedderConfig
    #: Seconds between frame starts; None when frames are not on a fixed time grid (e.g. segments).
    hop_seconds: float | None = None
    #: Preferred batch size on CPU; the job may override.
    default_batch_size: ClassVar[int] = 8

    def __init__(self, config: EmbedderConfig | None = None):
        self.config = config if config is not None else self.Config()
        if not isinstance(self.config, self.Config):
            raise ConfigError(
                f"embedder '{self.name}' expects a {self.Config.__name__}, got {type(self.config).__name__}"
            )
        self.dim = self.output_dim(self.config)

    @classmethod
    def make_config(cls, **kwargs: Any) -> EmbedderConfig:
        fields = {f.name for f in dataclasses.fields(cls.Config)}
        unknown = sorted(set(kwargs) - fields)
        if unknown:
            raise ConfigError(
                f"embedder '{cls.name}' has no option(s) {unknown}; its options are {sorted(fields)}"
            )
        return cls.Config(**kwargs)

    @abstractmethod
    def embed(self, items: Sequence[Any]) -> list[np.ndarray]:
        """Return one float32 array of shape (T_i, dim), T_i >= 1, per item, in order."""

    # -- self-description (classmethods, so the driver can describe a model without loading it) --
    @classmethod
    def output_dim(cls, config: EmbedderConfig) -> int:
        """Width of the output for ``config``; override when it depends on the config."""
        return int(cls.dim)

    @classmethod
    def describe_config(cls, config: EmbedderConfig) -> dict[str, Any]:
        """Everything an artifact needs to say what made it."""
        return {
            "embedder": cls.name,
            "modality": cls.modality,
            "dim": cls.output_dim(config),
            "sample_rate": cls.sample_rate,
            "hop_seconds": getattr(config, "hop_seconds", cls.hop_seconds),
            "config": dataclasses.asdict(config),
            "source_hash": cls.source_hash(),
        }

    @classmethod
    def hash_config(cls, config: EmbedderConfig) -> str:
        """Identifies embedder, config and code: rows with the same hash are interchangeable."""
        payload = json.dumps(
            {"name": cls.name, "config": dataclasses.asdict(config), "source": cls.source_hash()},
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        return self.describe_config(self.config)

    def config_hash(self) -> str:
        return self.hash_config(self.config)

    @classmethod
    def source_hash(cls) -> str:
        """Hash of the source modules of the class and its bases: changes when the code changes."""
        digest = hashlib.sha256()
        for klass in cls.__mro__:
            if klass in (object, ABC):
                continue
            try:
                digest.update(inspect.getsource(inspect.getmodule(klass)).encode())
            except (OSError, TypeError):
                digest.update(klass.__qualname__.encode())
        return digest.hexdigest()[:16]

    # -- contract enforcement ----------------------------------------------------------------
    def check_output(self, item_id: str | None, out: np.ndarray) -> np.ndarray:
        """Raise EmbeddingFailedError unless ``out`` is a finite (T >= 1, dim) float32 array."""
        arr = np.asarray(out)
        if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] != self.dim:
            raise EmbeddingFailedError(
                item_id, f"{self.name} returned shape {arr.shape}, expected (T>=1, {self.dim})"
            )
        if not np.isfinite(arr).all():
            raise EmbeddingFailedError(item_id, f"{self.name} returned non-finite values")
        return np.ascontiguousarray(arr, dtype=np.float32)

    def embed_items(self, ids: Sequence[str], items: Sequence[Any]) -> list[np.ndarray | ItemError]:
        """Embed a batch; one bad item yields its ItemError in its slot instead of failing the batch."""
        try:
            outputs = self.embed(items)
        except ITEM_ERRORS as exc:
            if len(items) > 1:  # isolate the culprit, keep the rest of the batch
                return [r for i, item in zip(ids, items) for r in self.embed_items([i], [item])]
            exc.item_id = exc.item_id if exc.item_id is not None else ids[0]
            return [exc]
        if len(outputs) != len(items):
            raise EmbedderError(f"{self.name}.embed returned {len(outputs)} outputs for {len(items)} items (contract bug)")
        results: list[np.ndarray | ItemError] = []
        for item_id, out in zip(ids, outputs):
            try:
                results.append(self.check_output(item_id, out))
            except EmbeddingFailedError as exc:
                results.append(exc)
        return results
