"""``hear``: any installed HEAR 2021 module (PyTorch) as an audio embedder.

    --audio_embedder hear --audio_option module=hearbaseline.naive [--audio_option model_file=PATH]
                          [--audio_option layer=timestamp|scene]

The module is imported by name and its ``load_model(model_file)`` is called once per process
(``model_file`` "" calls ``load_model()`` without arguments, the module's default weights).
``layer=timestamp`` (default): the frames are the module's timestamp embeddings of the recording,
(T, timestamp_embedding_size), at the module's own timestamps (not the project's FrameGrid, so
``hop_seconds`` is None); ``layer=scene``: one frame, the module's scene embedding, (1,
scene_embedding_size). Each recording is its own batch of one (HEAR batches need equal lengths).

The job decodes audio at this class's ``sample_rate`` (48000 Hz, the highest rate HEAR allows) and
``embed`` resamples it (soxr, high quality) to the module's ``model.sample_rate``. The width is
known only from the loaded model, so describing a config loads the module once in that process.
Only PyTorch modules are supported: a TensorFlow module raises ConfigError, as do a module that
cannot be imported, lacks the HEAR functions, or whose ``load_model`` fails (the error names it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from embedders.base import AudioDecodeError, ConfigError, Embedder, EmbedderConfig, EmbeddingFailedError, EmptyInputError
from embedders.registry import register

LAYERS = ("timestamp", "scene")
HEAR_FUNCTIONS = ("load_model", "get_timestamp_embeddings", "get_scene_embeddings")
DECODE_RATE = 48000
_MODELS: dict[tuple, tuple[Any, Any]] = {}  # (module, model_file, its size and mtime, device) -> (module, model)


@dataclasses.dataclass(frozen=True)
class HearConfig(EmbedderConfig):
    module: str = ""
    model_file: str = ""
    layer: str = "timestamp"
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not self.module:
            raise ConfigError("hear: the option 'module' is required (a HEAR 2021 module, e.g. module=hearbaseline.naive)")
        if self.layer not in LAYERS:
            raise ConfigError(f"hear: layer must be one of {LAYERS}, got {self.layer!r}")
        if self.model_file and not os.path.isfile(self.model_file):
            raise ConfigError(f"hear: model_file not found: {self.model_file}")


def load(config: HearConfig) -> tuple[Any, Any]:
    """(module, model) for ``config``, once per process."""
    version = os.stat(config.model_file) if config.model_file else None  # a rewritten file is reloaded
    key = (config.module, config.model_file, version and (version.st_size, version.st_mtime_ns), config.device)
    if key in _MODELS:
        return _MODELS[key]
    try:
        module = importlib.import_module(config.module)
    except ImportError as exc:
        raise ConfigError(f"hear: cannot import HEAR module '{config.module}': {exc}") from None
    missing = [f for f in HEAR_FUNCTIONS if not callable(getattr(module, f, None))]
    if missing:
        raise ConfigError(f"hear: '{config.module}' is not a HEAR 2021 module: it lacks {missing}")
    import torch

    try:
        model = module.load_model(config.model_file) if config.model_file else module.load_model()
    except Exception as exc:  # third-party code: say whose load_model failed and how, in one line
        raise ConfigError(f"hear: {config.module}.load_model({config.model_file!r}) failed: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"hear: {config.module}.load_model returned a {type(model).__name__}; only PyTorch "
                          "HEAR modules are supported (TensorFlow conflicts with the project's pins)")
    for attr in ("sample_rate", "scene_embedding_size", "timestamp_embedding_size"):
        if not isinstance(getattr(model, attr, None), int):
            raise ConfigError(f"hear: {config.module}'s model lacks the integer attribute '{attr}'")
    model = model.to(config.device).eval()
    _MODELS[key] = (module, model)
    return _MODELS[key]


def module_identity(name: str) -> dict[str, str | None]:
    """The installed distribution (name==version) that owns the module's file, and the file's SHA-256."""
    import importlib.util
    from importlib.metadata import distribution, packages_distributions

    spec = importlib.util.find_spec(name)
    origin = os.path.realpath(spec.origin) if spec is not None and spec.origin else None
    owner = None
    for dist_name in packages_distributions().get(name.split(".")[0], []) if origin else []:
        dist = distribution(dist_name)
        if any(os.path.realpath(dist.locate_file(f)) == origin for f in dist.files or []):
            owner = f"{dist.metadata['Name']}=={dist.version}"
            break
    digest = None
    if origin and os.path.isfile(origin):
        with open(origin, "rb") as fh:
            digest = hashlib.sha256(fh.read()).hexdigest()
    return {"module_distribution": owner, "module_file_sha256": digest}


@register
class Hear(Embedder):
    name: ClassVar[str] = "hear"
    modality: ClassVar[str] = "audio"
    sample_rate: ClassVar[int] = DECODE_RATE
    Config: ClassVar[type[EmbedderConfig]] = HearConfig
    dim = 0  # known once the module's model is loaded (output_dim)
    hop_seconds = None
    default_batch_size: ClassVar[int] = 4

    def __init__(self, config: HearConfig | None = None):
        super().__init__(config)
        self.module, self.model = load(self.config)  # type: ignore[arg-type]
        self.model_rate = int(self.model.sample_rate)

    @classmethod
    def output_dim(cls, config: EmbedderConfig) -> int:
        _, model = load(config)  # type: ignore[arg-type]
        return int(model.scene_embedding_size if config.layer == "scene" else model.timestamp_embedding_size)  # type: ignore[attr-defined]

    @classmethod
    def hash_config(cls, config: EmbedderConfig, *, cuda: bool | None = None) -> str:
        """Also the module's distribution, its file's digest and the model file's digest."""
        ident = cls._identity(config)
        return hashlib.sha256(f"{super().hash_config(config)}:{sorted(ident.items())}".encode()).hexdigest()[:16]

    @classmethod
    def describe_config(cls, config: EmbedderConfig, *, cuda: bool | None = None) -> dict[str, Any]:
        _, model = load(config)  # type: ignore[arg-type]
        return {**super().describe_config(config), **cls._identity(config), "module_sample_rate": int(model.sample_rate)}

    @classmethod
    def _identity(cls, config: EmbedderConfig) -> dict[str, Any]:
        path = config.model_file  # type: ignore[attr-defined]
        digest = None
        if path:
            with open(path, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()
        return {**module_identity(config.module), "model_file_sha256": digest}  # type: ignore[attr-defined]

    def _embed_one(self, audio: np.ndarray) -> np.ndarray:
        import torch

        from embedders.io import resample

        x = np.asarray(audio, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"hear expects a mono 1-D waveform at {DECODE_RATE} Hz, got shape {x.shape}")
        if x.size == 0:
            raise EmptyInputError(None, "zero-length audio")
        if not np.isfinite(x).all():
            raise AudioDecodeError(None, "audio contains NaN or infinite samples")
        x = resample(x, DECODE_RATE, self.model_rate)
        batch = torch.from_numpy(np.ascontiguousarray(x))[None].to(self.config.device)  # type: ignore[attr-defined]
        with torch.inference_mode():
            if self.config.layer == "scene":  # type: ignore[attr-defined]
                out = self.module.get_scene_embeddings(batch, self.model)[0][None]
            else:
                out = self.module.get_timestamp_embeddings(batch, self.model)[0][0]
        out = out.detach().float().cpu().numpy()
        if out.ndim != 2 or out.shape[0] < 1:
            raise EmbeddingFailedError(None, f"{self.config.module} returned shape {out.shape} for one sound")  # type: ignore[attr-defined]
        return out

    def embed(self, items: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self.check_output(None, self._embed_one(a)) for a in items]
