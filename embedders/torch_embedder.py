"""The base of every torch-backed embedder: a pretrained model is its network plus a loader.

``TorchEmbedder`` owns what every such model would otherwise repeat:

- device: ``device`` auto | cpu | cuda | cuda:N; auto is CUDA when visible (a Ray actor with
  ``num_gpus``), else CPU. An explicit CUDA device without CUDA raises ConfigError.
- precision: ``precision`` auto | fp32 | bf16 | fp16. auto is bf16 autocast on CUDA where the GPU
  has native bf16 (compute capability >= 8; emulated bf16 on a T4/V100 is slow), fp16 autocast on
  older GPUs, fp32 on CPU. bf16/fp16 off CUDA raise ConfigError. fp32 on CUDA is IEEE fp32: TF32
  is off for convolutions and matmuls inside ``inference()``; front ends wrapped in
  ``fp32_module`` always run that way (a power spectrum in dB spans ~100 dB, which TF32, fp16 and
  bf16 inputs would bury under a noise floor 50-70 dB down).
- the per-process model cache: one load per (weights file version, network options, device),
  however often the embedder is rebuilt (a Ray actor rebuilds it per medium).
- checkpoint identity: a file version is (absolute path, size, mtime); its SHA-256 is computed once
  per version per process (hashing a multi-GB checkpoint for every config hash would cost seconds).
  Weights stored as several files (a TensorFlow checkpoint: index + data shards) name them all in
  ``weights_files``; their identity is then every file's version and digest.
- hashing and self-description: the config hash covers the embedder's options, the RESOLVED device
  class (cpu | cuda) and compute dtype (float32 | bfloat16 | float16), the weights by content
  (SHA-256; not their path, so a copy elsewhere or a re-downloaded URI reuses rows) and the code
  (``source_hash``, plus ``source_modules``); never the batch size. So CPU-fp32 and GPU-bf16 rows
  never share a hash, and ``device=cuda`` hashes like the ``auto`` that resolved to it.
- waveform validation (``validate_waveform``) and the prepare / forward split.

File identity, device/precision resolution and the fp32 helpers live in ``embedders.torch_runtime``.

How to add a model
------------------
1. Config: a frozen dataclass subclassing ``TorchEmbedderConfig`` (which has ``checkpoint``,
   ``device``, ``precision``, ``batch_size``) with the ClassVar ``embedder = "<name>"`` (it names
   the model in error messages). A ``__post_init__`` of its own calls ``super().__post_init__()``.
2. Class: subclass ``TorchEmbedder`` with ``@register`` and set ``name``, ``modality``, ``dim``
   (or ``output_dim``), ``sample_rate`` (audio), ``Config``; then implement
   - ``load_model(self, path) -> torch.nn.Module``: build the network and load the weights file
     strictly, on CPU, with ``torch.load(..., weights_only=True)``; raise CheckpointError naming the
     file. The base moves it to the device, sets eval mode, turns gradients off and caches it.
   - ``forward(self, prepared) -> list[np.ndarray]``: the batched pass over prepared items, one
     (T_i, dim) float32 array each. Use ``self.model``, ``self.device``, ``self.batch_size``
     (inputs per pass), ``self.to_device(tensor)`` and ``with self.inference():``.
   - ``prepare(self, item)`` if the model has CPU-side work per item (tokens, patches); for audio
     the default is ``validate_waveform``. It must not touch the network or the device.
   and, where it applies: ``average`` (the authors' own global vector), ``locate_weights`` (where
   weights come from when ``checkpoint`` is ""), ``weights_files`` (the files behind that location,
   when it is more than one file), ``check_dependencies`` (import the optional
   package, raising MissingDependencyError), class attributes ``network_fields`` (options that
   change the network: the model cache key), ``source_modules``, ``packages`` (versions to
   describe), ``how_to_get`` / ``weights_label`` (error messages), ``forward_batch`` (default
   inputs per pass by device type), ``channels_last`` / ``cudnn_benchmark`` (CNNs with fixed input
   shapes), ``presets``.
3. Add the module to ``registry.BUILTIN_MODULES`` and, to tests/test_registry_contract.py's
   ``CONFIG_FACTORIES``, a factory writing a small checkpoint in the model's true format.

For pipelines
-------------
``cls.for_prepare(config)`` builds an instance without loading the network or choosing a device
(a CPU decode task calls ``prepare_items`` on it); ``embed_items(ids, prepared, prepared=True,
with_average=True)`` in the GPU actor batches tensors only, splits batches on CUDA out-of-memory,
and returns ``Embedding(sequence, average)`` per item. ``embed(items)`` still takes raw items.
The driver hashes with ``cls.hash_config(config, cuda=<the actors get GPUs>)``; where the driver
sees no GPU, auto precision is assumed to resolve to bf16, so an actor on a GPU without native bf16
reports another ``config_hash()``: the instance's hash is the authoritative one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np

from embedders.base import CheckpointError, ConfigError, Embedder, EmbedderConfig
from embedders.torch_runtime import (  # noqa: F401  (re-exported: the models import them from here)
    DTYPES,
    Runtime,
    file_key,
    file_sha256,
    fp32_module,
    ieee_fp32,
    memo,
    native_bf16,
    resolve_runtime,
    validate_waveform,
)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_MODELS: dict[tuple, Any] = {}  # per process: loaded networks


# -- the base -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TorchEmbedderConfig(EmbedderConfig):
    #: Names the embedder in error messages; set by each subclass.
    embedder: ClassVar[str] = "torch embedder"

    checkpoint: str = ""  # weights file (--audio_checkpoint / --symbolic_checkpoint PATH)
    device: str = "auto"  # auto: cuda when visible (a Ray actor with num_gpus), else cpu; cpu | cuda | cuda:N
    precision: str = "auto"  # auto: bf16 autocast on CUDA (fp16 without native bf16), fp32 on CPU; fp32 | bf16 | fp16
    batch_size: int = 0  # model inputs (windows, segments, chunks) per forward pass; 0: the model's default

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"{self.embedder}: precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise ConfigError(f"{self.embedder}: device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.batch_size < 0:
            raise ConfigError(f"{self.embedder}: batch_size must be >= 0 (0: automatic), got {self.batch_size}")


class TorchEmbedder(Embedder):
    """A pretrained torch network plus its loader; see the module docstring for how to add one."""

    Config: ClassVar[type[EmbedderConfig]] = TorchEmbedderConfig
    uses_accelerator: ClassVar[bool] = True
    #: Options that change the network (its cache key); None: every option not in RUNTIME_FIELDS.
    network_fields: ClassVar[tuple[str, ...] | None] = None
    #: Options that are not part of the hash as given: the weights are hashed by content, device
    #: and precision as resolved, and the batch size not at all.
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("checkpoint", "device", "precision", "batch_size")
    #: Inputs per forward pass when batch_size is 0, by device type.
    forward_batch: ClassVar[dict[str, int]] = {"cpu": 1, "cuda": 64}
    #: Distributions whose versions the description records (torch's always is).
    packages: ClassVar[tuple[str, ...]] = ()
    how_to_get: ClassVar[str] = "pass a weights file with checkpoint=PATH"
    weights_label: ClassVar[str] = "checkpoint"  # "<label> not found: PATH"
    weights_term: ClassVar[str] = "checkpoint"  # description keys <term>_file, <term>_sha256
    channels_last: ClassVar[bool] = False  # on CUDA: 4-D weights in channels-last layout
    cudnn_benchmark: ClassVar[bool] = False  # on CUDA: let cuDNN pick kernels (inputs of fixed shape)

    def __init__(self, config: EmbedderConfig | None = None, *, load: bool = True):
        """``load``: resolve the device and load the network now (errors surface here); False defers
        both to the first ``model`` / ``forward`` (``for_prepare``)."""
        super().__init__(config)
        self.check_dependencies()  # a missing extra fails before the weights are looked for
        self.weights_path = self.locate_weights(self.config)
        self._runtime: Runtime | None = None
        self._model = None
        if load:
            self.model  # noqa: B018 - loads (and caches) the network

    @classmethod
    def for_prepare(cls, config: EmbedderConfig | None = None) -> TorchEmbedder:
        return cls(config, load=False)

    # -- hooks ------------------------------------------------------------------------------------
    def check_dependencies(self) -> None:
        """Import the optional packages the model needs; raise MissingDependencyError if absent."""

    @classmethod
    def locate_weights(cls, config: EmbedderConfig) -> str:
        """The weights file for ``config``: its ``checkpoint``, which must exist."""
        path = config.checkpoint  # type: ignore[attr-defined]
        if not path:
            raise CheckpointError(f"embedder '{cls.name}' needs a checkpoint: {cls.how_to_get}")
        if not os.path.isfile(path):
            raise CheckpointError(f"{cls.weights_label} not found: {path}; {cls.how_to_get}")
        return path

    @classmethod
    def weights_files(cls, path: str) -> tuple[str, ...]:
        """The files whose bytes are the weights at ``path`` (what ``locate_weights`` returned): the
        model cache key and the weights digest cover each of them. Default: ``path`` itself."""
        return (path,)

    @classmethod
    def weights_sha256(cls, path: str) -> str:
        """SHA-256 of the weights at ``path``: the file's own for one file (cached per file version),
        else the SHA-256 of the files' digests joined by ':' in ``weights_files`` order."""
        files = cls.weights_files(path)
        if len(files) == 1:
            return file_sha256(files[0])
        return hashlib.sha256(":".join(file_sha256(f) for f in files).encode()).hexdigest()

    def load_model(self, path: str):
        """The network with the weights in ``path`` loaded strictly, on CPU."""
        raise NotImplementedError(f"{type(self).__name__} must implement load_model(path)")

    def prepare(self, item: Any) -> Any:
        """Audio: the validated waveform. Symbolic: the item itself (override with tokenising etc.)."""
        if self.modality == "audio":
            return validate_waveform(self.name, item, self.sample_rate)  # type: ignore[arg-type]
        return item

    def forward(self, prepared: Sequence[Any]) -> list[np.ndarray]:
        raise NotImplementedError(f"{type(self).__name__} must implement forward(prepared)")

    def embed(self, items: Sequence[Any]) -> list[np.ndarray]:
        """Raw items: every item is prepared (and so validated) before any forward pass."""
        return [self.check_output(None, out) for out in self.forward([self.prepare(x) for x in items])]

    # -- device, precision, model --------------------------------------------------------------
    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            cfg = self.config
            self._runtime = resolve_runtime(self.name, cfg.device, cfg.precision)  # type: ignore[attr-defined]
        return self._runtime

    @property
    def device(self):
        import torch

        return torch.device(self.runtime.device)

    @property
    def autocast_dtype(self):
        """The autocast dtype (torch.bfloat16 / torch.float16), or None for fp32."""
        import torch

        return None if self.runtime.dtype == "float32" else getattr(torch, self.runtime.dtype)

    @property
    def batch_size(self) -> int:
        return self.config.batch_size or self.forward_batch[self.device.type]  # type: ignore[attr-defined]

    @property
    def model(self):
        """The network on ``device`` in eval mode, loaded once per process per file version."""
        if self._model is None:
            versions = tuple(file_key(f) for f in self.weights_files(self.weights_path))
            key = (type(self).__module__, type(self).__qualname__, versions,
                   self.network_key(self.config), self.runtime.device)
            if key not in _MODELS:
                _MODELS[key] = self._place(self.load_model(self.weights_path))
            self._model = _MODELS[key]
        return self._model

    def _place(self, model):
        import torch

        model = model.to(self.device).eval().requires_grad_(False)
        if self.device.type == "cuda":
            if self.channels_last:
                model = model.to(memory_format=torch.channels_last)
            if self.cudnn_benchmark:
                torch.backends.cudnn.benchmark = True
        return model

    @contextlib.contextmanager
    def inference(self) -> Iterator[None]:
        """inference mode + autocast to the resolved dtype (IEEE fp32, no TF32, when that is fp32)."""
        import torch

        dtype = self.autocast_dtype
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None), \
                ieee_fp32(self.device.type == "cuda" and dtype is None):
            yield

    def to_device(self, tensor):
        """A CPU tensor on ``device``; to CUDA through pinned memory, without blocking the host."""
        if self.device.type != "cuda":
            return tensor
        return tensor.pin_memory().to(self.device, non_blocking=True)

    # -- self-description ------------------------------------------------------------------------
    @classmethod
    def network_key(cls, config: EmbedderConfig) -> tuple:
        names = cls.network_fields if cls.network_fields is not None else tuple(
            f.name for f in dataclasses.fields(config) if f.name not in cls.RUNTIME_FIELDS)
        return tuple((n, getattr(config, n)) for n in names)

    @classmethod
    def hashed_options(cls, config: EmbedderConfig) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(config).items() if k not in cls.RUNTIME_FIELDS}

    @classmethod
    def runtime_for(cls, config: EmbedderConfig, *, cuda: bool | None = None) -> Runtime:
        """What device/precision resolve to in a process that has (``cuda``) a GPU; never raises."""
        return resolve_runtime(cls.name, config.device, config.precision, cuda=cuda, strict=False)  # type: ignore[attr-defined]

    @classmethod
    def hash_config(cls, config: EmbedderConfig, *, cuda: bool | None = None) -> str:
        runtime = cls.runtime_for(config, cuda=cuda)
        payload = {"name": cls.name, "config": cls.hashed_options(config),
                   "runtime": {"device": runtime.device_class, "dtype": runtime.dtype},
                   "weights_sha256": cls.weights_sha256(cls.locate_weights(config)), "source": cls.source_hash()}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @classmethod
    def describe_config(cls, config: EmbedderConfig, *, cuda: bool | None = None) -> dict[str, Any]:
        from importlib.metadata import PackageNotFoundError, version

        out = super().describe_config(config)
        runtime, path = cls.runtime_for(config, cuda=cuda), cls.locate_weights(config)
        out.update({"runtime": {"device": runtime.device_class, "dtype": runtime.dtype},
                    f"{cls.weights_term}_file": os.path.basename(os.path.normpath(path)),
                    f"{cls.weights_term}_sha256": cls.weights_sha256(path)})
        for package in ("torch", *cls.packages):
            try:
                out[f"{package}_version"] = version(package)
            except PackageNotFoundError:
                out[f"{package}_version"] = None
        return out

    # The instance's own description and hash use the device it resolved.
    def config_hash(self) -> str:
        return self.hash_config(self.config, cuda=self.runtime.device_class == "cuda")

    def describe(self) -> dict[str, Any]:
        return self.describe_config(self.config, cuda=self.runtime.device_class == "cuda")
