"""What every torch embedder needs besides its network: file identity, device and precision, fp32 front ends.

- file identity: a file version is (absolute path, size, mtime); values derived from it (its
  SHA-256, a parsed config) are computed once per version per process (``memo``, ``file_sha256``).
- device and precision: ``resolve_runtime`` turns the ``device`` / ``precision`` options into the
  torch device and compute dtype where the model runs (rules: ``embedders.torch_embedder``).
- ``fp32_module`` / ``ieee_fp32``: front ends in true IEEE fp32 on CUDA (no TF32, no autocast).
- ``validate_waveform``: the checks every audio model makes on its input.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from embedders.base import AudioDecodeError, ConfigError, EmptyInputError

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
_MEMO: dict[tuple, Any] = {}  # per process: values derived from one file version (digest, config, ...)


# -- checkpoint identity --------------------------------------------------------------------------
def file_key(path: str) -> tuple[str, int, int]:
    """(absolute path, size, mtime in ns): one version of a file. Raises OSError when it is missing."""
    st = os.stat(path)
    return os.path.abspath(path), int(st.st_size), int(st.st_mtime_ns)


def memo(kind: str, path: str, make):
    """``make(path)`` computed once per version of the file at ``path`` (a rewrite is a new version)."""
    key = (kind, *file_key(path))
    if key not in _MEMO:
        _MEMO[key] = make(path)
    return _MEMO[key]


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str) -> str:
    """SHA-256 of the file's bytes, cached per file version."""
    return memo("sha256", path, _sha256)


# -- device and precision -------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Runtime:
    device: str  # torch device string: cpu | cuda | cuda:N
    dtype: str  # the network's compute dtype: float32 (no autocast) | bfloat16 | float16 (autocast)

    @property
    def device_class(self) -> str:
        return self.device.split(":")[0]


def native_bf16(device: Any = "cuda") -> bool:
    """Whether the CUDA ``device`` computes bf16 natively (compute capability >= 8, or ROCm), not by
    emulation, which ``torch.cuda.is_bf16_supported()`` also counts."""
    import torch

    if torch.version.hip:
        return True
    return torch.cuda.get_device_properties(torch.device(device)).major >= 8


def resolve_runtime(embedder: str, device: str, precision: str, *, cuda: bool | None = None,
                    strict: bool = True) -> Runtime:
    """The device and dtype that ``device`` / ``precision`` resolve to where the model runs.

    ``cuda``: whether that process has a GPU (None: this one's). ``strict`` (building a model):
    CUDA asked for but absent, and bf16/fp16 off CUDA, raise ConfigError naming ``embedder``;
    otherwise (hashing on a driver that may differ from the actors) nothing is refused. Without a
    visible GPU to ask, auto precision on CUDA is taken to be bf16 (every GPU since Ampere).
    """
    import torch

    visible = torch.cuda.is_available()
    has_cuda = visible if cuda is None else cuda
    name = device if device != "auto" else ("cuda" if has_cuda else "cpu")
    if strict and name.startswith("cuda") and not visible:
        raise ConfigError(f"{embedder}: device {device!r} requested but CUDA is not available here")
    on_cuda = name.startswith("cuda")
    if strict and precision in ("bf16", "fp16") and not on_cuda:
        raise ConfigError(f"{embedder}: precision={precision} is autocast on CUDA only, and this embedder runs on "
                          f"{name}; use precision=fp32 or auto")
    if precision == "auto":
        bf16 = not (on_cuda and visible) or native_bf16(name)
        dtype = ("bfloat16" if bf16 else "float16") if on_cuda else "float32"
    else:
        dtype = DTYPES[precision]
    return Runtime(name, dtype)


@contextlib.contextmanager
def ieee_fp32(active: bool) -> Iterator[None]:
    """While active: cuDNN convolutions and CUDA matmuls in true fp32, not TF32 (cuDNN's default)."""
    if not active:
        yield
        return
    import torch

    conv, matmul = getattr(torch.backends.cudnn, "conv", None), torch.backends.cuda.matmul
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9
        saved = conv.fp32_precision, matmul.fp32_precision
        conv.fp32_precision = matmul.fp32_precision = "ieee"
        try:
            yield
        finally:
            conv.fp32_precision, matmul.fp32_precision = saved
    else:
        saved = torch.backends.cudnn.allow_tf32, matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, matmul.allow_tf32 = saved


@functools.cache
def _fp32_class():
    import torch

    class FP32Module(torch.nn.Module):
        """Runs ``inner`` on float32 input outside autocast, without TF32 on CUDA."""

        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(x.device.type, enabled=False), ieee_fp32(x.is_cuda):
                return self.inner(x.float())

    return FP32Module


def fp32_module(inner):
    """Wrap a front end (spectrogram, mel) to always run in IEEE fp32; wrap after loading weights,
    since the wrapper adds ``inner.`` to the state-dict keys."""
    return _fp32_class()(inner)


# -- waveforms ------------------------------------------------------------------------------------
def validate_waveform(embedder: str, audio: Any, sample_rate: int) -> np.ndarray:
    """A mono float32 waveform as a writable C-contiguous array (``torch.from_numpy`` wants one).

    Raises ValueError for a shape other than 1-D (a caller's bug), EmptyInputError for zero
    samples and AudioDecodeError for NaN or infinite samples.
    """
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"{embedder} expects a mono 1-D waveform at {sample_rate} Hz, got shape {x.shape}")
    if x.size == 0:
        raise EmptyInputError(None, "zero-length audio")
    if not np.isfinite(x).all():
        raise AudioDecodeError(None, "audio contains NaN or infinite samples")
    return np.require(x, requirements=["C", "W"])
