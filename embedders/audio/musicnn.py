"""``musicnn``: the pretrained musicnn tagger (Pons & Serra, 2019) as an audio embedder, no TensorFlow.

Input: mono float32 waveforms at 16 kHz (musicnn's rate; the job decodes and resamples with soxr HQ,
as librosa.load does for musicnn). Output frame t is musicnn's 3 s patch starting at t * hop_seconds,
embedded by one layer of the network (``embedders.audio.musicnn_model``):

============  ====  =====================================================================
layer         dim   what
============  ====  =====================================================================
penultimate   200   the last hidden layer (default: the most compact embedding, one step
                    before the tags)
mean_pool     753   mean over the patch's 187 frames of the mid-end features
max_pool      753   max over the same
taggram       50    tag probabilities (labels: ``tag_labels(model)``)
============  ====  =====================================================================

Front end (``log_mel``), as musicnn.extractor.batch_data computes it but in float32: librosa's
power mel spectrogram (n_fft 512, hop 256, 96 Slaney mel bands 0-8 kHz, centred frames, zero
padding as librosa >= 0.10 pads) -> log10(10000 x + 1). The original casts the mel spectrogram to
float16 first, so 10000 x overflows to inf as soon as a band's power exceeds 6.55 (a pure tone of
amplitude above ~0.12 does it) and its pooled features on loud audio are non-finite; in float32
nothing overflows, and on audio that stays finite in float16 the two front ends agree within
float16's rounding.

Framing: mel frame j is centred on sample 256 j. Patch t is mel frames s_t .. s_t + 186 with
s_t = floor(t * hop_seconds * 62.5 + 0.5), i.e. it starts within 8 ms (half a mel hop) of
t * hop_seconds and covers about 3 s (``window_seconds``). T = ceil(duration / hop_seconds) >= 1
(``FrameGrid``); patches reaching past the end see the recording followed by silence (the
waveform is zero-padded; musicnn itself drops a tail shorter than a patch and refuses audio
shorter than 3 s). The default hop of 3.0 s gives non-overlapping patches (musicnn's own default
hop is 187 frames = 2.992 s; ``hop_seconds=2.992`` reproduces its patches exactly).

Weights: the TF1 checkpoints inside the ``musicnn`` 0.1.0 wheel (``model``: MTT_musicnn, trained on
MagnaTagATune, or MSD_musicnn, Million Song Dataset), read without TensorFlow by
``embedders.audio.tf_checkpoint``. Install the wheel with ``pip install --no-deps musicnn==0.1.0``
(its metadata pins numpy<1.17 and tensorflow, which this port does not use); ``checkpoint`` may name
another checkpoint prefix of the same network. Licence: ISC (musicnn, code and weights, by Jordi Pons).

How the port was checked: tests/data/make_musicnn_reference.py ran the original package
(TensorFlow 2.21 + tf_keras) on fixed log-mel patches and waveforms; tests/test_musicnn.py requires
all four outputs of MTT_musicnn and MSD_musicnn within 1e-4 of the original (max |diff| / max |ref|;
measured <= 5.1e-6) and the float32 front end within float16 rounding of the original's (end to end,
waveform to embedding, the two front ends move the outputs by <= 1e-3 relative).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from embedders import checkpoint_files
from embedders.base import (
    AudioDecodeError,
    CheckpointError,
    ConfigError,
    Embedder,
    EmbedderConfig,
    EmptyInputError,
    FrameGrid,
    MissingDependencyError,
)
from embedders.registry import register

SAMPLE_RATE = 16000
FFT_SIZE, FFT_HOP, N_MELS = 512, 256, 96
PATCH_FRAMES = 187  # musicnn's input: 3 s rounded to whole mel frames
WINDOW_SECONDS = 3.0
MODELS = ("MTT_musicnn", "MSD_musicnn")
LAYERS = {"penultimate": 200, "mean_pool": 753, "max_pool": 753, "taggram": 50}
_CACHE: dict[tuple, Any] = {}  # per process: loaded networks, keyed by weights file version and device


@dataclasses.dataclass(frozen=True)
class MusicnnEmbedderConfig(EmbedderConfig):
    model: str = "MTT_musicnn"  # MTT_musicnn | MSD_musicnn: which training data the weights come from
    layer: str = "penultimate"  # penultimate (200) | mean_pool (753) | max_pool (753) | taggram (50)
    hop_seconds: float = 3.0  # between patch starts; 3.0: non-overlapping 3 s patches
    checkpoint: str = ""  # TF checkpoint prefix; "": the musicnn wheel's files for `model`
    # patches per forward pass; 0: 64 on CUDA, 1 on CPU, where larger batches only cost (one thread,
    # bench/pretrained_cost.py: ~0.55 CPU s per audio minute at 1 and 2, ~0.9 at 4, ~1.35 at 16; one
    # patch's timbral activations are ~9 MB and outgrow the cache)
    batch_size: int = 0
    device: str = "auto"  # auto: cuda when visible, else cpu

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"musicnn: model must be one of {list(MODELS)}, got {self.model!r} "
                              "(the wheel's vgg models are a different network and are not ported)")
        if self.layer not in LAYERS:
            raise ConfigError(f"musicnn: layer must be one of {list(LAYERS)}, got {self.layer!r}")
        if not (isinstance(self.hop_seconds, (int, float)) and self.hop_seconds >= FFT_HOP / SAMPLE_RATE):
            raise ConfigError(f"musicnn: hop_seconds must be >= {FFT_HOP / SAMPLE_RATE} (one mel frame), "
                              f"got {self.hop_seconds!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 0:
            raise ConfigError(f"musicnn: batch_size must be an integer >= 0 (0: automatic), got {self.batch_size!r}")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise ConfigError(f"musicnn: device must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    @property
    def window_seconds(self) -> float:
        """A patch covers 187 mel frames: about 3 s."""
        return WINDOW_SECONDS


def load_musicnn(name: str = "MTT_musicnn", checkpoint: str | None = None):
    """The musicnn network ``name`` (MTT_musicnn | MSD_musicnn) as a torch.nn.Module in eval mode:
    (B, 187, 96) float32 log-mel -> dict taggram (B, 50), penultimate (B, 200), mean_pool (B, 753),
    max_pool (B, 753). See ``embedders.audio.musicnn_model``; raises CheckpointError without weights."""
    from embedders.audio import musicnn_model

    return musicnn_model.load_musicnn(name, checkpoint)


def tag_labels(model: str) -> list[str]:
    """The 50 tag names of ``model``'s taggram columns, from the musicnn package (no TensorFlow import)."""
    from musicnn import configuration  # plain lists; importing it does not import tensorflow

    return list(configuration.MTT_LABELS if model.startswith("MTT") else configuration.MSD_LABELS)


def mel_power(audio: np.ndarray) -> np.ndarray:
    """(n,) waveform at 16 kHz -> (1 + n // 256, 96) float32 mel power, as musicnn asks librosa for it."""
    try:
        import librosa
    except ModuleNotFoundError as exc:
        raise MissingDependencyError("musicnn", exc.name or "librosa", "musicnn") from None
    mel = librosa.feature.melspectrogram(y=np.asarray(audio, dtype=np.float32), sr=SAMPLE_RATE, n_fft=FFT_SIZE,
                                         hop_length=FFT_HOP, n_mels=N_MELS, pad_mode="constant")
    return np.ascontiguousarray(mel.T, dtype=np.float32)


def log_mel(audio: np.ndarray) -> np.ndarray:
    """musicnn's front end in float32: (n,) waveform at 16 kHz -> (1 + n // 256, 96) log10(10000 mel + 1)."""
    return np.log10(np.float32(10000) * mel_power(audio) + np.float32(1))


def weights_prefix(config: MusicnnEmbedderConfig) -> str:
    """The checkpoint prefix to read: ``checkpoint`` (a directory stands for the files inside it, as
    musicnn saves them), else the wheel's. Raises CheckpointError when there is no index file."""
    from embedders.audio.musicnn_model import wheel_checkpoint_prefix

    if not config.checkpoint:
        return wheel_checkpoint_prefix(config.model)
    prefix = os.path.join(config.checkpoint, "") if os.path.isdir(config.checkpoint) else config.checkpoint
    if not os.path.isfile(prefix + ".index"):
        raise CheckpointError(f"musicnn: checkpoint={config.checkpoint!r} names no TensorFlow checkpoint (no file "
                              f"{prefix}.index); give the prefix the checkpoint was saved under, or a folder holding "
                              "'.index' and '.data-00000-of-00001' as in the musicnn wheel")
    return prefix


def weights_digest(prefix: str) -> str:
    """SHA-256 over the checkpoint's index and data files (cached per file version)."""
    from embedders.audio.tf_checkpoint import TensorBundle

    bundle = TensorBundle(prefix)
    files = [bundle.index_path] + [bundle.data_path(i) for i in range(bundle.num_shards)]
    return hashlib.sha256(":".join(checkpoint_files.file_sha256(f) for f in files).encode()).hexdigest()


@register
class MusicnnEmbedder(Embedder):
    name: ClassVar[str] = "musicnn"
    modality: ClassVar[str] = "audio"
    sample_rate: ClassVar[int] = SAMPLE_RATE
    Config: ClassVar[type[EmbedderConfig]] = MusicnnEmbedderConfig
    dim = LAYERS["penultimate"]
    hop_seconds = 3.0
    default_batch_size: ClassVar[int] = 8  # recordings per call; patches are batched across them

    def __init__(self, config: MusicnnEmbedderConfig | None = None):
        super().__init__(config)
        cfg: MusicnnEmbedderConfig = self.config  # type: ignore[assignment]
        self.hop_seconds = cfg.hop_seconds
        self.grid = FrameGrid(cfg.hop_seconds, WINDOW_SECONDS)
        self.weights_prefix = weights_prefix(cfg)
        # -- device and model cache: what the torch-embedder base (branch torchbase) will own --
        from embedders.devices import torch_device

        self.device = torch_device("musicnn", cfg.device)
        self.batch_size = cfg.batch_size or (64 if self.device.type == "cuda" else 1)
        key = ("musicnn", *checkpoint_files.file_key(self.weights_prefix + ".index"), cfg.model, str(self.device))
        if key not in _CACHE:  # one load per process, however often the embedder is rebuilt
            _CACHE[key] = load_musicnn(cfg.model, self.weights_prefix).to(self.device)
        self.model = _CACHE[key]

    # -- self-description ------------------------------------------------------------------
    @classmethod
    def output_dim(cls, config: EmbedderConfig) -> int:
        return LAYERS[config.layer]  # type: ignore[attr-defined]

    @classmethod
    def hash_config(cls, config: EmbedderConfig) -> str:
        """Also the weights' digest: other weights under the same name give a new hash."""
        base = super().hash_config(config)
        return hashlib.sha256(f"{base}:{weights_digest(weights_prefix(config))}".encode()).hexdigest()[:16]  # type: ignore[arg-type]

    @classmethod
    def describe_config(cls, config: EmbedderConfig) -> dict[str, Any]:
        from importlib.metadata import PackageNotFoundError, version

        out = super().describe_config(config)
        prefix = weights_prefix(config)  # type: ignore[arg-type]
        out.update(window_seconds=WINDOW_SECONDS, weights=os.path.abspath(prefix), weights_sha256=weights_digest(prefix),
                   licence="ISC (musicnn by Jordi Pons: code and weights)")
        try:
            out["musicnn_version"] = version("musicnn")
        except PackageNotFoundError:
            out["musicnn_version"] = None
        if config.layer == "taggram":  # type: ignore[attr-defined]
            out["columns"] = tag_labels(config.model)  # type: ignore[attr-defined]
        return out

    # -- embedding -------------------------------------------------------------------------
    def patch_starts(self, n_samples: int) -> np.ndarray:
        """First mel frame of each output frame's patch, for a recording of ``n_samples``."""
        n_frames = self.grid.n_frames(n_samples / SAMPLE_RATE)
        return np.floor(np.arange(n_frames) * self.hop_seconds * SAMPLE_RATE / FFT_HOP + 0.5).astype(np.int64)

    def item_log_mel(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(log-mel (F, 96), patch starts (T,)) of one waveform, zero-padded so every patch is whole."""
        x = np.asarray(audio, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"musicnn expects a mono 1-D waveform at {SAMPLE_RATE} Hz, got shape {x.shape}")
        if x.size == 0:
            raise EmptyInputError(None, "zero-length audio")
        if not np.isfinite(x).all():
            raise AudioDecodeError(None, "audio contains NaN or infinite samples")
        starts = self.patch_starts(x.size)
        needed = (int(starts[-1]) + PATCH_FRAMES - 1) * FFT_HOP  # librosa gives 1 + n // 256 centred frames
        if x.size < needed:
            x = np.concatenate([x, np.zeros(needed - x.size, dtype=np.float32)])
        return log_mel(x), starts

    def _forward(self, patches: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model(torch.from_numpy(patches).to(self.device))
        return out[self.config.layer].float().cpu().numpy()  # type: ignore[attr-defined]

    def embed(self, items: Sequence[np.ndarray]) -> list[np.ndarray]:
        prepared = [self.item_log_mel(a) for a in items]  # validates every item before any forward pass
        jobs = [(i, int(s)) for i, (_, starts) in enumerate(prepared) for s in starts]
        out = np.empty((len(jobs), self.dim), dtype=np.float32)
        for begin in range(0, len(jobs), self.batch_size):  # patches of consecutive items share passes
            chunk = jobs[begin:begin + self.batch_size]
            out[begin:begin + len(chunk)] = self._forward(np.stack([prepared[i][0][s:s + PATCH_FRAMES] for i, s in chunk]))
        bounds = np.cumsum([0] + [len(starts) for _, starts in prepared])
        return [self.check_output(None, out[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]

