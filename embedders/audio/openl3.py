"""``openl3``: OpenL3 audio embeddings (Cramer et al., ICASSP 2019) through torchopenl3's PyTorch port.

Input: mono float32 waveforms at 48 kHz (OpenL3's rate; the job decodes to it). OpenL3 embeds 1 s
windows. Frame t covers [t * hop_seconds, t * hop_seconds + 1 s) by default (``center=False``),
which with the default hop of 0.5 s is the project's ``FrameGrid(0.5, 1.0)``, the grid of
``melstats`` and ``pianoroll``, so OpenL3 frames line up with the other embedders' frame by frame.
``center=True`` is OpenL3's own convention: frame t is centred on t * hop_seconds and covers
[t * hop - 0.5 s, t * hop + 0.5 s). Either way T = FrameGrid.n_frames(duration) = ceil(duration /
hop) (>= 1), and windows reaching past either end of the recording are zero-padded, as OpenL3 pads
(so a recording shorter than 1 s gives frames of padded audio rather than an error).
torchopenl3's ``get_audio_embedding`` frames the same way but stops one window earlier with
``center=False`` (its last window must start within duration - 1 s, rounded up to a hop): its
frames are a prefix of ours, equal up to float rounding; with ``center=True`` and hop 0.5 s the
frame counts agree too.

Model: ``torchopenl3.models.PytorchOpenl3(content_type, input_repr, embedding_size)``: a fixed
spectrogram front end (``linear``: 257-bin STFT; ``mel128`` / ``mel256``: mel bands; dB scaled,
each 1 s window normalised to its own maximum, floor -80 dB) and a 4.7M-parameter CNN whose final
max-pooling gives 512 or 6144 values per window. ``content_type`` (music / env) selects the
training data of the weights; the architecture does not depend on it.

Weights (never downloaded here): the file torchopenl3 fetches on first use,
``torchopenl3_<input_repr>_<content_type>_<embedding_size>.pth.tar`` (a ``torch.save``d flat state
dict of ``PytorchOpenl3``: conv/batch-norm tensors plus the front end's DFT kernels and mel basis)
from ``WEIGHTS_URL``, read from ``checkpoint`` (``--audio_checkpoint PATH``) or from torch hub's
cache, ``torch.hub.get_dir()/checkpoints/`` (``$TORCH_HOME/hub/checkpoints``, by default
``~/.cache/torch/hub/checkpoints``), where torchopenl3 keeps it. The stored front-end buffers are
loaded too: they hold the mel basis of the librosa version that made the weights, which current
librosa no longer reproduces (its ``norm=1`` changed meaning). OpenL3 trained one network per
(input_repr, content_type); 512 and 6144 differ only in the final pooling, so a file named for
either size loads for both, while a file named for another input_repr or content_type is refused
(music and env weights have the same shapes: only the name tells them apart).

Average: the store's ``average`` is the mean over the frames OpenL3 itself would compute, those up
to and including the first window that reaches the end of the audio (with ``center`` its start is
padded by half a window). The grid keeps later frames so it lines up with the other embedders, but
they only see the same tail again under more zero padding. These are exactly torchopenl3's frames,
so the average equals the mean of ``get_audio_embedding``'s output.

Presets: ``preset=reference`` (``--audio_option preset=reference``) is torchopenl3's defaults:
mel256, music, 6144-d, hop 0.1 s, centred windows. The default (no preset) is 512-d on the
project's 0.5 s grid, frames starting at their time stamp.

Compute (device, precision, model cache, hashing: embedders/torch_embedder.py): windows of every
item in a call are batched together, ``batch_size`` per forward (0: 128 on CUDA, 1 on CPU), framed
on the host and copied to the device one batch at a time, so a long recording costs device memory
for one batch only. ``precision`` auto = bf16 autocast on CUDA (fp16 without native bf16), fp32 on
CPU; the dB front end always runs in IEEE fp32 (its power spectrum overflows fp16, its 1e-10
floor underflows it, and TF32 would move dB values), only the CNN runs in reduced precision.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from embedders.base import CheckpointError, ConfigError, EmbedderConfig, FrameGrid, MissingDependencyError
from embedders.registry import register
from embedders.torch_embedder import TorchEmbedder, TorchEmbedderConfig, fp32_module

SAMPLE_RATE = 48000
WINDOW_SECONDS = 1.0
CONTENT_TYPES = ("music", "env")
INPUT_REPRS = ("mel256", "mel128", "linear")
EMBEDDING_SIZES = (512, 6144)
WEIGHTS_URL = "https://github.com/torchopenl3/torchopenl3-models/raw/master/"
WEIGHTS_LICENCE = ("the torchopenl3-models repository releases these ports of the OpenL3 weights under "
                   "Apache-2.0; the original OpenL3 release (github.com/marl/openl3) is MIT-licensed")
_NAME_RE = re.compile(r"^torchopenl3_(linear|mel128|mel256)_(music|env)_(512|6144)\.pth\.tar$")
#: torchopenl3's ``get_audio_embedding`` defaults (OpenL3's own, but for the sampler).
REFERENCE = {"input_repr": "mel256", "content_type": "music", "embedding_size": 6144, "hop_seconds": 0.1,
             "center": True}


@dataclasses.dataclass(frozen=True)
class OpenL3Config(TorchEmbedderConfig):
    embedder: ClassVar[str] = "openl3"

    content_type: str = "music"  # music | env: which training data the weights come from
    input_repr: str = "mel256"  # mel256 | mel128 | linear: OpenL3's default is mel256
    # 512 | 6144. 512 by default: 6144 floats per half second is ~176 MB per hour of audio in the
    # store, and the two differ only in the last pooling of the same network.
    embedding_size: int = 512
    hop_seconds: float = 0.5  # 0.5: the project's FrameGrid (same frames as melstats)
    center: bool = False  # False: frame t starts at t * hop; True: centred on it (OpenL3's default)
    # checkpoint: "" = torch hub's cache, where torchopenl3 keeps it. batch_size: 1 s windows per
    # forward pass; 0: 128 on CUDA, 1 on CPU, where larger batches only cost (one thread, mel256:
    # 45 CPU s per audio minute at 1, 46 at 2, 59 at 4, 67 at 16; activations outgrow the cache)

    def __post_init__(self) -> None:
        super().__post_init__()
        for field, value, choices in (("content_type", self.content_type, CONTENT_TYPES),
                                      ("input_repr", self.input_repr, INPUT_REPRS),
                                      ("embedding_size", self.embedding_size, EMBEDDING_SIZES)):
            if value not in choices:
                raise ConfigError(f"openl3: {field} must be one of {list(choices)}, got {value!r}")
        if not self.hop_seconds > 0:
            raise ConfigError(f"openl3: hop_seconds must be > 0, got {self.hop_seconds}")
        if abs(self.hop_seconds * SAMPLE_RATE - round(self.hop_seconds * SAMPLE_RATE)) > 1e-6:
            raise ConfigError(f"openl3: hop_seconds * {SAMPLE_RATE} must be a whole number of samples, "
                              f"got hop_seconds={self.hop_seconds}")
        if not isinstance(self.center, bool):
            raise ConfigError(f"openl3: center must be true or false, got {self.center!r}")

    @property
    def window_seconds(self) -> float:
        """OpenL3's window is fixed at 1 s."""
        return WINDOW_SECONDS

    @property
    def weights_file_name(self) -> str:
        return f"torchopenl3_{self.input_repr}_{self.content_type}_{self.embedding_size}.pth.tar"


# -- weights ----------------------------------------------------------------------------------
def hub_checkpoint_dir() -> str:
    """Where ``torch.hub.load_state_dict_from_url`` (and so torchopenl3) caches weight files."""
    import torch

    return os.path.join(torch.hub.get_dir(), "checkpoints")


def how_to_get(config: OpenL3Config) -> str:
    name = config.weights_file_name
    return (f"download {WEIGHTS_URL}{name} ({WEIGHTS_LICENCE}) and pass it with --audio_checkpoint PATH "
            f"(embedder option checkpoint=PATH), or put it in torch hub's cache as "
            f"{os.path.join(hub_checkpoint_dir(), name)} (set TORCH_HOME to move the cache), where torchopenl3 "
            f"itself stores it on first use. This embedder never downloads")


def weights_path(config: OpenL3Config) -> str:
    """The weights file for ``config``: its ``checkpoint``, else the file in torch hub's cache."""
    if config.checkpoint:
        if not os.path.isfile(config.checkpoint):
            raise CheckpointError(f"OpenL3 weights not found: {config.checkpoint}; {how_to_get(config)}")
        match = _NAME_RE.match(os.path.basename(config.checkpoint))
        if match and match.groups()[:2] != (config.input_repr, config.content_type):
            # music and env weights have identical shapes: only the name tells them apart. The
            # embedding size is not checked: OpenL3 has one set of weights per (input_repr,
            # content_type), and 512 / 6144 differ only in the final pooling.
            raise CheckpointError(
                f"OpenL3 weights {config.checkpoint} are named for input_repr={match[1]}, content_type={match[2]}, "
                f"but the embedder is configured for input_repr={config.input_repr}, "
                f"content_type={config.content_type}; set the options to match the file "
                f"(--audio_option KEY=VALUE) or pass {config.weights_file_name}")
        return config.checkpoint
    path = os.path.join(hub_checkpoint_dir(), config.weights_file_name)
    if not os.path.isfile(path):
        raise CheckpointError(f"OpenL3 weights {config.weights_file_name} are neither given (checkpoint / "
                              f"--audio_checkpoint) nor in torch hub's cache at {path}; {how_to_get(config)}")
    return path


def read_state_dict(path: str) -> dict[str, Any]:
    """The state dict in a weights file, read as ``torch.hub`` reads its cache (weights only)."""
    import torch

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                members = zf.infolist()
                if len(members) == 1 and not members[0].is_dir():  # torch.hub's legacy zipped checkpoint
                    return torch.load(io.BytesIO(zf.read(members[0])), map_location="cpu", weights_only=True)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"OpenL3 weights {path} are not a readable torch state dict: "
                              f"{type(exc).__name__}: {str(exc)[:300]}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"OpenL3 weights {path} hold a {type(state).__name__}, not a flat state dict of "
                              "tensors as torchopenl3 publishes them")
    return state


def dependency_error(exc: ModuleNotFoundError) -> MissingDependencyError:
    """What to install when importing torchopenl3 failed on the module ``exc.name``."""
    if exc.name == "pkg_resources":  # setuptools >= 81 dropped it; resampy < 0.3 still imports it
        return MissingDependencyError("openl3", "setuptools<81 (resampy, which torchopenl3 imports, needs its "
                                      "pkg_resources module)", "openl3")
    return MissingDependencyError("openl3", exc.name or "torchopenl3", "openl3")


def _import_torchopenl3():
    """torchopenl3's model module; its package imports resampy, which imports pkg_resources."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            from torchopenl3 import models
    except ModuleNotFoundError as exc:
        raise dependency_error(exc) from None
    return models


def build_model(config: OpenL3Config, state: dict[str, Any]):
    """torchopenl3's network for ``config`` with ``state`` loaded strictly, in eval mode, on CPU."""
    models = _import_torchopenl3()
    with warnings.catch_warnings():  # current librosa warns about empty mel filters; the file's basis replaces them
        warnings.filterwarnings("ignore", message="Empty filters detected", category=UserWarning)
        model = models.PytorchOpenl3(content_type=config.content_type, input_repr=config.input_repr,
                                     embedding_size=config.embedding_size)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"OpenL3 weights do not fit torchopenl3's {config.input_repr} network: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shape {[(k, got[k], expected[k]) for k in wrong[:3]]} "
            f"({len(missing)}/{len(unexpected)}/{len(wrong)} in all); is input_repr right for this file?")
    model.load_state_dict(state, strict=True)
    model.speclayer = fp32_module(model.speclayer)  # after loading: keys stay torchopenl3's
    return model.eval().requires_grad_(False)


# -- the embedder ----------------------------------------------------------------------------
def averaged_frames(n_samples: int, n_frames: int, hop: int, window: int, center: bool) -> int:
    """How many leading frames enter the average: up to the first window reaching the audio's end."""
    end = n_samples + (window // 2 if center else 0)  # in the (left-padded) frame coordinates
    first_at_end = max(0, math.ceil((end - window) / hop))
    return min(n_frames, first_at_end + 1)


@register
class OpenL3(TorchEmbedder):
    name: ClassVar[str] = "openl3"
    modality: ClassVar[str] = "audio"
    sample_rate: ClassVar[int] = SAMPLE_RATE
    Config: ClassVar[type[EmbedderConfig]] = OpenL3Config
    dim = 512  # default config; 6144 with embedding_size=6144
    hop_seconds = 0.5
    default_batch_size: ClassVar[int] = 8  # recordings per call; frames are batched across them
    presets: ClassVar[dict[str, dict[str, Any]]] = {"reference": REFERENCE}
    network_fields: ClassVar[tuple[str, ...]] = ("content_type", "input_repr", "embedding_size")
    forward_batch: ClassVar[dict[str, int]] = {"cpu": 1, "cuda": 128}
    packages: ClassVar[tuple[str, ...]] = ("torchopenl3",)
    weights_term: ClassVar[str] = "weights"
    channels_last: ClassVar[bool] = True  # a 2-D CNN over (B, 1, bands, frames) spectrograms
    cudnn_benchmark: ClassVar[bool] = True  # every window is (1, 48000)

    def __init__(self, config: OpenL3Config | None = None, *, load: bool = True):
        super().__init__(config, load=load)
        cfg: OpenL3Config = self.config  # type: ignore[assignment]
        self.grid = FrameGrid(cfg.hop_seconds, WINDOW_SECONDS)
        self.hop_seconds = cfg.hop_seconds
        self.hop_samples = int(round(cfg.hop_seconds * SAMPLE_RATE))
        self.window_samples = int(WINDOW_SECONDS * SAMPLE_RATE)

    def check_dependencies(self) -> None:
        _import_torchopenl3()

    @classmethod
    def locate_weights(cls, config: EmbedderConfig) -> str:
        return weights_path(config)  # type: ignore[arg-type]

    def load_model(self, path: str):
        return build_model(self.config, read_state_dict(path))  # type: ignore[arg-type]

    # -- self-description ------------------------------------------------------------------
    @classmethod
    def output_dim(cls, config: EmbedderConfig) -> int:
        return int(config.embedding_size)  # type: ignore[attr-defined]

    @classmethod
    def describe_config(cls, config: EmbedderConfig, *, cuda: bool | None = None) -> dict[str, Any]:
        out = super().describe_config(config, cuda=cuda)
        out.update(window_seconds=WINDOW_SECONDS, frame_offset_seconds=-WINDOW_SECONDS / 2 if config.center else 0.0)  # type: ignore[attr-defined]
        return out

    # -- embedding -------------------------------------------------------------------------
    def frames(self, audio: np.ndarray):
        """(T, 48000) CPU view of one waveform's windows, zero-padded at both ends."""
        return self._frames(self.prepare(audio))

    def _frames(self, x: np.ndarray):
        import torch
        import torch.nn.functional as F

        n_frames = self.grid.n_frames(len(x) / SAMPLE_RATE)
        left = self.window_samples // 2 if self.config.center else 0  # type: ignore[attr-defined]
        needed = (n_frames - 1) * self.hop_samples + self.window_samples
        x = np.require(x, np.float32, ["C", "W"])  # a prepared item from another process may be read-only
        padded = F.pad(torch.from_numpy(x), (left, max(0, needed - left - len(x))))
        return padded.unfold(0, self.window_samples, self.hop_samples)[:n_frames]

    def _forward_windows(self, windows) -> np.ndarray:
        with self.inference():
            out = self.model(self.to_device(windows)[:, None, :])  # (B, 1, 48000) -> (B, embedding_size)
        return out.float().cpu().numpy()

    def forward(self, prepared: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Validated waveforms (``prepare``) -> (T_i, dim) per item; windows batched across items."""
        import torch

        views = [self._frames(x) for x in prepared]
        counts = [len(v) for v in views]
        out = np.empty((sum(counts), self.dim), dtype=np.float32)
        pending, filled, row = [], 0, 0
        for view in views:  # windows of consecutive items share forward passes
            start = 0
            while start < len(view):
                take = min(self.batch_size - filled, len(view) - start)
                pending.append(view[start:start + take])
                filled, start = filled + take, start + take
                if filled == self.batch_size:
                    out[row:row + filled] = self._forward_windows(torch.cat(pending))
                    pending, row, filled = [], row + filled, 0
        if filled:
            out[row:row + filled] = self._forward_windows(torch.cat(pending))
        bounds = np.cumsum([0, *counts])
        return [out[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def average(self, prepared: np.ndarray, sequence: np.ndarray) -> np.ndarray:
        """Mean over the frames torchopenl3 computes (see the module note), not those past the end."""
        n = averaged_frames(len(prepared), len(sequence), self.hop_samples, self.window_samples,
                            self.config.center)  # type: ignore[attr-defined]
        return sequence[:n].mean(axis=0, dtype=np.float64).astype(np.float32)
