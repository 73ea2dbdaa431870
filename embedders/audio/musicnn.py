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

Compute (device, precision, model cache, weights identity, hashing: embedders/torch_embedder.py):
``prepare`` checks the waveform and computes the float32 log-mel and the patch starts on the CPU;
``forward`` batches the patches of every item in a call, ``batch_size`` per pass on the device (0:
64 on CUDA, 1 on CPU). ``precision`` auto = bf16 autocast on CUDA (fp16 without native bf16), fp32
on CPU. The weights' identity is the content of the checkpoint's index and data files together.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from embedders.base import CheckpointError, ConfigError, EmbedderConfig, FrameGrid, MissingDependencyError
from embedders.registry import register
from embedders.torch_embedder import TorchEmbedder, TorchEmbedderConfig, memo, validate_waveform

SAMPLE_RATE = 16000
FFT_SIZE, FFT_HOP, N_MELS = 512, 256, 96
PATCH_FRAMES = 187  # musicnn's input: 3 s rounded to whole mel frames
WINDOW_SECONDS = 3.0
MODELS = ("MTT_musicnn", "MSD_musicnn")
LAYERS = {"penultimate": 200, "mean_pool": 753, "max_pool": 753, "taggram": 50}


@dataclasses.dataclass(frozen=True)
class MusicnnEmbedderConfig(TorchEmbedderConfig):
    embedder: ClassVar[str] = "musicnn"

    # checkpoint: a TF checkpoint prefix (or the folder holding '.index'); "": the musicnn wheel's files for `model`
    # batch_size: 3 s patches per forward pass; 0: 64 on CUDA, 1 on CPU, where larger batches only cost (one
    # thread, bench/pretrained_cost.py: ~0.55 CPU s per audio minute at 1 and 2, ~0.9 at 4, ~1.35 at 16; one
    # patch's timbral activations are ~9 MB and outgrow the cache)
    model: str = "MTT_musicnn"  # MTT_musicnn | MSD_musicnn: which training data the weights come from
    layer: str = "penultimate"  # penultimate (200) | mean_pool (753) | max_pool (753) | taggram (50)
    hop_seconds: float = 3.0  # between patch starts; 3.0: non-overlapping 3 s patches

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.model not in MODELS:
            raise ConfigError(f"musicnn: model must be one of {list(MODELS)}, got {self.model!r} "
                              "(the wheel's vgg models are a different network and are not ported)")
        if self.layer not in LAYERS:
            raise ConfigError(f"musicnn: layer must be one of {list(LAYERS)}, got {self.layer!r}")
        if not (isinstance(self.hop_seconds, (int, float)) and self.hop_seconds >= FFT_HOP / SAMPLE_RATE):
            raise ConfigError(f"musicnn: hop_seconds must be >= {FFT_HOP / SAMPLE_RATE} (one mel frame), "
                              f"got {self.hop_seconds!r}")

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


def _librosa():
    try:
        import librosa
    except ModuleNotFoundError as exc:
        raise MissingDependencyError("musicnn", exc.name or "librosa", "musicnn") from None
    return librosa


def mel_power(audio: np.ndarray) -> np.ndarray:
    """(n,) waveform at 16 kHz -> (1 + n // 256, 96) float32 mel power, as musicnn asks librosa for it."""
    mel = _librosa().feature.melspectrogram(y=np.asarray(audio, dtype=np.float32), sr=SAMPLE_RATE, n_fft=FFT_SIZE,
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


def _bundle_files(index_path: str) -> tuple[str, ...]:
    from embedders.audio.tf_checkpoint import TensorBundle

    bundle = TensorBundle(index_path[:-len(".index")])
    return (bundle.index_path, *(bundle.data_path(i) for i in range(bundle.num_shards)))


def checkpoint_files(prefix: str) -> tuple[str, ...]:
    """The index and data files of the TF checkpoint at ``prefix`` (the index is read once per
    version). Raises CheckpointError naming a data file that is missing."""
    files = memo("tf_checkpoint_files", prefix + ".index", _bundle_files)
    for path in files[1:]:
        if not os.path.isfile(path):
            raise CheckpointError(f"musicnn: checkpoint {files[0]} lists the data file {path}, which is missing")
    return files


@register
class MusicnnEmbedder(TorchEmbedder):
    name: ClassVar[str] = "musicnn"
    modality: ClassVar[str] = "audio"
    sample_rate: ClassVar[int] = SAMPLE_RATE
    Config: ClassVar[type[EmbedderConfig]] = MusicnnEmbedderConfig
    dim = LAYERS["penultimate"]
    hop_seconds = 3.0
    default_batch_size: ClassVar[int] = 8  # recordings per call; patches are batched across them
    network_fields: ClassVar[tuple[str, ...]] = ()  # one network; `model` only picks the weights file
    source_modules: ClassVar[tuple[str, ...]] = ("embedders.audio.musicnn_model", "embedders.audio.tf_checkpoint")
    forward_batch: ClassVar[dict[str, int]] = {"cpu": 1, "cuda": 64}  # CPU: see the config's batch_size
    packages: ClassVar[tuple[str, ...]] = ("musicnn", "librosa")
    how_to_get: ClassVar[str] = ("leave checkpoint empty to use the musicnn wheel's weights "
                                 "(pip install --no-deps musicnn==0.1.0 -c constraints.txt), or give a TF checkpoint prefix")
    weights_label: ClassVar[str] = "musicnn checkpoint"
    weights_term: ClassVar[str] = "weights"
    cudnn_benchmark: ClassVar[bool] = True  # every patch is (187, 96)

    def __init__(self, config: MusicnnEmbedderConfig | None = None, *, load: bool = True):
        super().__init__(config, load=load)
        cfg: MusicnnEmbedderConfig = self.config  # type: ignore[assignment]
        self.hop_seconds = cfg.hop_seconds
        self.grid = FrameGrid(cfg.hop_seconds, WINDOW_SECONDS)

    # -- weights -----------------------------------------------------------------------------
    def check_dependencies(self) -> None:
        _librosa()

    @classmethod
    def locate_weights(cls, config: EmbedderConfig) -> str:
        return weights_prefix(config)  # type: ignore[arg-type]

    @classmethod
    def weights_files(cls, path: str) -> tuple[str, ...]:
        return checkpoint_files(path)

    def load_model(self, path: str):
        return load_musicnn(self.config.model, path)  # type: ignore[attr-defined]

    # -- self-description ------------------------------------------------------------------
    @classmethod
    def output_dim(cls, config: EmbedderConfig) -> int:
        return LAYERS[config.layer]  # type: ignore[attr-defined]

    @classmethod
    def describe_config(cls, config: EmbedderConfig, *, cuda: bool | None = None) -> dict[str, Any]:
        out = super().describe_config(config, cuda=cuda)
        out.update(window_seconds=WINDOW_SECONDS, licence="ISC (musicnn by Jordi Pons: code and weights)")
        if config.layer == "taggram":  # type: ignore[attr-defined]
            out["columns"] = tag_labels(config.model)  # type: ignore[attr-defined]
        return out

    # -- embedding -------------------------------------------------------------------------
    def patch_starts(self, n_samples: int) -> np.ndarray:
        """First mel frame of each output frame's patch, for a recording of ``n_samples``."""
        n_frames = self.grid.n_frames(n_samples / SAMPLE_RATE)
        return np.floor(np.arange(n_frames) * self.hop_seconds * SAMPLE_RATE / FFT_HOP + 0.5).astype(np.int64)

    def prepare(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(log-mel (F, 96) float32, patch starts (T,)) of one waveform, zero-padded so every patch is
        whole; CPU only. Raises ValueError (not 1-D), EmptyInputError, AudioDecodeError (NaN/inf)."""
        x = validate_waveform(self.name, audio, SAMPLE_RATE)
        starts = self.patch_starts(x.size)
        needed = (int(starts[-1]) + PATCH_FRAMES - 1) * FFT_HOP  # librosa gives 1 + n // 256 centred frames
        if x.size < needed:
            x = np.concatenate([x, np.zeros(needed - x.size, dtype=np.float32)])
        return log_mel(x), starts

    def _forward_patches(self, patches: np.ndarray) -> np.ndarray:
        import torch

        batch = self.to_device(torch.from_numpy(patches))  # (B, 187, 96)
        with self.inference():
            return self.model(batch)[self.config.layer].float().cpu().numpy()  # type: ignore[attr-defined]

    def forward(self, prepared: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """Prepared items -> (T_i, dim) per item; the patches of consecutive items share passes of
        ``batch_size``, so at most that many patches are on the device at once."""
        jobs = [(i, int(s)) for i, (_, starts) in enumerate(prepared) for s in starts]
        out = np.empty((len(jobs), self.dim), dtype=np.float32)
        for begin in range(0, len(jobs), self.batch_size):
            chunk = jobs[begin:begin + self.batch_size]
            out[begin:begin + len(chunk)] = self._forward_patches(
                np.stack([prepared[i][0][s:s + PATCH_FRAMES] for i, s in chunk]))
        bounds = np.cumsum([0] + [len(starts) for _, starts in prepared])
        return [out[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
