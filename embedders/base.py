"""The embedder contract shared by every model, and the named errors a batch job may catch per item.

An embedder turns recordings into frame sequences: ``embed(items)`` returns one float32 array of
shape (T_i, dim) per item. Each recording also has an ``average`` (dim,): by default the mean over
its frames, but a model whose authors define their own global vector returns that instead
(``Embedder.average``: CLaMP weights segments by length, OpenL3 leaves out frames past the end of
the audio). ``embed_items(..., with_average=True)`` hands the store both, so both of the seed's
embedding types exist for every embedder.

Audio items are mono float32 waveforms at the embedder's ``sample_rate`` (see ``embedders.io``).
Symbolic items are ``symusic.Score`` objects in tick time, as ``embedders.io.load_midi`` returns.

Two stages, for pipelines: ``prepare(item)`` is the per-item CPU work (validation, tokenisation,
patching) and ``forward(prepared_items)`` the batched model pass; ``embed(items)`` is
``forward([prepare(x) for x in items])``. A job may run ``prepare_items`` in its CPU decode stage
and ``embed_items(..., prepared=True)`` in its (GPU) actor. Embedders without a separate prepare
step keep the defaults (``prepare`` returns the item, ``forward`` calls ``embed``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import inspect
import json
import math
import sys
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

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


class ItemTooLargeError(ItemError):
    """The accelerator ran out of memory on this recording alone (its batch was split down to it)."""


ITEM_ERRORS: tuple[type[ItemError], ...] = (
    MissingFileError,
    AudioDecodeError,
    MidiDecodeError,
    EmptyInputError,
    EmbeddingFailedError,
    ItemTooLargeError,
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


class Embedding(NamedTuple):
    """One recording's frames (T, dim) float32 and its global vector (dim,) float32."""

    sequence: np.ndarray
    average: np.ndarray


def _is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA out-of-memory error (torch is only consulted when something already imported it)."""
    torch = sys.modules.get("torch")
    oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    return oom is not None and isinstance(exc, oom)


def _release_accelerator_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def class_sources_digest(cls: type) -> Any:
    """sha256 of the source modules of ``cls`` and its bases (else their names): code identity for hashes."""
    digest = hashlib.sha256()
    for klass in cls.__mro__:
        if klass in (object, ABC):
            continue
        try:
            digest.update(inspect.getsource(inspect.getmodule(klass)).encode())
        except (OSError, TypeError):
            digest.update(klass.__qualname__.encode())
    return digest


class Embedder(ABC):
    """One model that turns recordings into (T, dim) float32 frame sequences.

    Subclasses set ``name``, ``modality``, ``dim`` (an instance may refine it from its config),
    ``sample_rate`` for audio, a frozen ``Config`` dataclass, and implement ``embed`` (or, torch
    models, ``prepare`` + ``forward``: see embedders/torch_embedder.py).
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
    #: Whether the model runs on an accelerator when one is visible: the job requests GPUs only
    #: for the media whose embedder says True.
    uses_accelerator: ClassVar[bool] = False
    #: Named option sets: ``make_config(preset=NAME, **options)`` starts from ``presets[NAME]``,
    #: options given explicitly win.
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    #: Modules (dotted names) besides those of the class and its bases whose code decides the
    #: output (the network definition, a tokenizer): their source is part of ``source_hash``.
    source_modules: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: EmbedderConfig | None = None):
        self.config = config if config is not None else self.Config()
        if not isinstance(self.config, self.Config):
            raise ConfigError(
                f"embedder '{self.name}' expects a {self.Config.__name__}, got {type(self.config).__name__}"
            )
        self.dim = self.output_dim(self.config)

    @classmethod
    def for_prepare(cls, config: EmbedderConfig | None = None) -> Embedder:
        """An instance whose ``prepare`` works, built as cheaply as possible: for a CPU decode stage.

        Embedders with weights override it to skip loading the network and choosing a device.
        """
        return cls(config)

    @classmethod
    def make_config(cls, **kwargs: Any) -> EmbedderConfig:
        preset = kwargs.pop("preset", None)
        if preset is not None:
            if preset not in cls.presets:
                raise ConfigError(f"embedder '{cls.name}' has no preset {preset!r}; its presets are "
                                  f"{sorted(cls.presets) or 'none'}")
            kwargs = {**cls.presets[preset], **kwargs}
        fields = {f.name for f in dataclasses.fields(cls.Config)}
        unknown = sorted(set(kwargs) - fields)
        if unknown:
            options = sorted(fields | ({"preset"} if cls.presets else set()))
            raise ConfigError(
                f"embedder '{cls.name}' has no option(s) {unknown}; its options are {options}"
            )
        return cls.Config(**kwargs)

    @abstractmethod
    def embed(self, items: Sequence[Any]) -> list[np.ndarray]:
        """Return one float32 array of shape (T_i, dim), T_i >= 1, per item, in order."""

    # -- the two stages (defaults for embedders that have no separate CPU step) ---------------
    def prepare(self, item: Any) -> Any:
        """CPU-side work for one raw item; the result is what ``forward`` takes. Raises ItemError."""
        return item

    def forward(self, prepared: Sequence[Any]) -> list[np.ndarray]:
        """The batched model pass over prepared items: one (T_i, dim) array per item, in order."""
        return self.embed(prepared)

    def average(self, prepared: Any, sequence: np.ndarray) -> np.ndarray:
        """The recording's global vector (dim,) float32: the mean over frames unless the model's
        authors define another (override it then; ``prepared`` is what ``forward`` received)."""
        return sequence.mean(axis=0, dtype=np.float64).astype(np.float32)

    # -- self-description (classmethods, so the driver can describe a model without loading it) --
    @classmethod
    def output_dim(cls, config: EmbedderConfig) -> int:
        """Width of the output for ``config``; override when it depends on the config."""
        return int(cls.dim)

    @classmethod
    def describe_config(cls, config: EmbedderConfig, *, cuda: bool | None = None) -> dict[str, Any]:
        """Everything an artifact needs to say what made it. ``cuda``: whether the process that will
        run the model has a GPU (None: this one's); only models that use one read it."""
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
    def hash_config(cls, config: EmbedderConfig, *, cuda: bool | None = None) -> str:
        """Identifies embedder, config and code: rows with the same hash are interchangeable.
        ``cuda`` as in ``describe_config``."""
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
        """Hash of the source modules of the class, its bases and ``source_modules``: changes when
        the code changes. ``source_modules`` are read from their files, not imported."""
        digest = class_sources_digest(cls)
        for module in cls.source_modules:
            spec = importlib.util.find_spec(module)
            if spec is None or not spec.origin:
                raise EmbedderError(f"{cls.name}: source module {module} not found (source_modules)")
            with open(spec.origin, "rb") as fh:
                digest.update(fh.read())
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

    def prepare_items(self, ids: Sequence[str], items: Sequence[Any]) -> list[Any]:
        """``prepare`` per item; an item that fails gets its ItemError (with its id) in its slot."""
        out: list[Any] = []
        for item_id, item in zip(ids, items):
            try:
                out.append(self.prepare(item))
            except ITEM_ERRORS as exc:
                exc.item_id = exc.item_id if exc.item_id is not None else item_id
                out.append(exc)
        return out

    def embed_items(self, ids: Sequence[str], items: Sequence[Any], *, prepared: bool = False,
                    with_average: bool = False) -> list[np.ndarray | Embedding | ItemError]:
        """Embed a batch; one bad item yields its ItemError in its slot instead of failing the batch.

        ``prepared``: the items are ``prepare`` outputs (from ``prepare_items``; ItemErrors in their
        slots pass through). ``with_average``: a success is an ``Embedding(sequence, average)``
        instead of the bare sequence. A CUDA out-of-memory error splits the batch in halves and
        retries each; a single item that still does not fit becomes its ItemTooLargeError.
        """
        ready = list(items) if prepared else self.prepare_items(ids, items)
        results: list[Any] = list(ready)
        todo = [k for k, p in enumerate(ready) if not isinstance(p, ItemError)]
        outputs = self._forward_isolating([ids[k] for k in todo], [ready[k] for k in todo])
        for k, out in zip(todo, outputs):
            if isinstance(out, ItemError):
                results[k] = out
                continue
            try:
                seq = self.check_output(ids[k], out)
                results[k] = Embedding(seq, self._checked_average(ids[k], ready[k], seq)) if with_average else seq
            except EmbeddingFailedError as exc:
                results[k] = exc
        return results

    def _checked_average(self, item_id: str, prepared: Any, sequence: np.ndarray) -> np.ndarray:
        avg = np.asarray(self.average(prepared, sequence), dtype=np.float32)
        if avg.shape != (self.dim,) or not np.isfinite(avg).all():
            raise EmbeddingFailedError(item_id, f"{self.name} returned an average of shape {avg.shape} "
                                       f"(finite: {bool(np.isfinite(avg).all())}), expected ({self.dim},)")
        return avg

    def _forward_isolating(self, ids: list[str], prepared: list[Any]) -> list[np.ndarray | ItemError]:
        """``forward`` with per-item errors isolated and out-of-memory batches halved (see embed_items)."""
        if not prepared:
            return []
        try:
            outputs = self.forward(prepared)
        except ITEM_ERRORS as exc:
            if len(prepared) > 1:  # isolate the culprit, keep the rest of the batch
                return [r for i, p in zip(ids, prepared) for r in self._forward_isolating([i], [p])]
            exc.item_id = exc.item_id if exc.item_id is not None else ids[0]
            return [exc]
        except Exception as exc:
            if not _is_out_of_memory(exc):
                raise
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            outputs = None  # retried below, outside the handler, so the failed pass's tensors are freed
        if outputs is None:
            _release_accelerator_memory()
            if len(prepared) == 1:
                return [ItemTooLargeError(ids[0], f"{self.name}: out of accelerator memory on this item alone "
                                                  f"({message[:200]})")]
            half = len(prepared) // 2
            return (self._forward_isolating(ids[:half], prepared[:half])
                    + self._forward_isolating(ids[half:], prepared[half:]))
        if len(outputs) != len(prepared):
            raise EmbedderError(f"{self.name}.forward returned {len(outputs)} outputs for {len(prepared)} items "
                                "(contract bug)")
        return list(outputs)
