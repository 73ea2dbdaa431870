"""``clap``: LAION-CLAP audio embeddings (Wu et al., ICASSP 2023), from the audio branch alone.

Input: mono float32 waveforms at 48 kHz. Every published CLAP audio encoder was trained on 10 s
clips (480000 samples). Frame t covers [t * hop_seconds, t * hop_seconds + window_seconds)
(``FrameGrid``; default hop = window = 10 s, so T = ceil(duration / 10 s)); window_seconds may be
shorter than 10 s but not longer. Each window is prepared exactly as the library prepares a clip of
at most 10 s in ``CLAP_Module.get_audio_embedding_from_data``: the recording is quantised to int16
and back (``quantize_int16``), and a window shorter than 10 s (the recording's tail, or every window
when window_seconds < 10) is filled to 10 s by ``data_filling`` (``repeatpad``, the library's choice:
repeat whole copies, then zero-pad; or ``pad`` / ``repeat``, the library's other modes). The
library's random crop of clips longer than 10 s (``rand_trunc``) and fusion's random chunks never
apply: no window exceeds 10 s, so every frame is deterministic. Frame t equals the library's
embedding of ``audio[t * hop : t * hop + window]`` (tests/test_clap.py checks this against
``CLAP_Module`` itself): the 512-d output of ``audio_projection`` (Linear, ReLU, Linear), L2-normalised.

Models (``amodel`` / ``enable_fusion`` per published file, on https://huggingface.co/lukewys/laion_clap):
``630k-best.pt``, ``630k-audioset-best.pt`` (the library's default): HTSAT-tiny, no fusion.
``630k-fusion-best.pt``, ``630k-audioset-fusion-best.pt``: HTSAT-tiny, ``enable_fusion=true``.
``music_audioset_epoch_15_esc_90.14.pt``, ``music_speech_epoch_15_esc_89.25.pt``,
``music_speech_audioset_epoch_15_esc_89.98.pt``: ``amodel=HTSAT-base``, no fusion.
Non-fusion models read a log-mel spectrogram made inside HTSAT (torchlibrosa: Slaney mel, 64 bands,
50 Hz - 14 kHz, n_fft 1024, hop 480). Fusion models were trained on the library's ``get_mel``
(torchaudio: HTK mel without normalisation, power to dB with a 1e-10 floor); for a clip of at most
10 s fusion stacks four copies of it and HTSAT reads only the first (the global view). torchaudio
does not import against this project's CPU torch, so that mel is computed here with torch.stft
(tests compare it with librosa's ``melspectrogram(htk=True, norm=None)``, the alignment the library
itself names). A checkpoint that does not match amodel / enable_fusion is refused with the values
that fit it.

Import route. ``import laion_clap`` executes its package ``__init__``: hook.py and training/data.py
import torchvision (whose PyPI wheels do not load against this CPU torch), transformers, webdataset,
wget and braceexpand, and call ``BertTokenizer/RobertaTokenizer/BartTokenizer.from_pretrained`` at import time
(network); building ``CLAP`` then calls ``RobertaModel.from_pretrained``. None of that is needed for
audio. So the package is located with ``importlib.util.find_spec`` (which runs nothing) and only
``clap_module/htsat.py`` and the ``feature_fusion.py`` it imports are executed, as submodules of a
private package whose ``__path__`` is laion_clap's ``clap_module`` folder, so no ``__init__.py`` of
laion_clap runs. htsat.py's one other relative import, ``from .utils import do_mixup, interpolate``,
would load utils.py and with it torchvision; the private package's ``utils`` provides those two
functions instead (``interpolate`` repeats frames for HTSAT's frame-wise outputs, which the
embedding does not use; ``do_mixup`` is training-only and raises). Architecture hyperparameters come
from laion_clap's own ``model_configs/HTSAT-*.json``; the projection is rebuilt here with CLAP's
layout, so the checkpoint's ``audio_branch.*`` and ``audio_projection.*`` load strictly. Hence the
[clap] extra is laion-clap installed with ``--no-deps`` plus torchlibrosa and librosa.

Weights (never downloaded here): ``checkpoint`` (``--audio_checkpoint PATH``). The training script
saves ``{"epoch", "name", "state_dict", "optimizer"[, "scaler"]}`` from a DistributedDataParallel
model, so keys read ``module.audio_branch.*``; a bare state dict and keys without ``module.`` load
too (as in the library's ``load_state_dict``). Only ``audio_branch.*`` and ``audio_projection.*`` are
read (with ``mmap`` the rest of a 2 GB file is never paged in); ``text_branch.*`` (incl. its
``position_ids``), ``text_projection.*``, ``text_transform.*``, ``audio_transform.*`` and
``logit_scale_*`` are ignored.

Compute: windows of every item in a call are batched, ``batch_size`` per forward, on CUDA when
visible (a Ray actor with ``num_gpus``). ``precision`` auto = bf16 autocast on CUDA (fp16 where bf16
is unsupported), fp32 on CPU; the spectrogram front end always runs in fp32 (dB of a power spectrum).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import os
import pickle
import sys
import types
import warnings
import zipfile
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np

from embedders.base import (AudioDecodeError, CheckpointError, ConfigError, Embedder, EmbedderConfig,
                            EmptyInputError, FrameGrid, MissingDependencyError)
from embedders.registry import register

SAMPLE_RATE = 48000
CLIP_SAMPLES = 480000  # 10 s: the input length of every published CLAP audio encoder
JOINT_DIM = 512  # CLAP's joint embedding width (audio_projection output)
AMODELS = ("HTSAT-tiny", "HTSAT-base", "HTSAT-large")
FILLINGS = ("repeatpad", "pad", "repeat")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
FUSION_TYPE = "aff_2d"  # what CLAP_Module(enable_fusion=True) builds
WEIGHTS_URL = "https://huggingface.co/lukewys/laion_clap"
PUBLISHED = {  # file name -> (amodel, enable_fusion), from the LAION-CLAP README
    "630k-best.pt": ("HTSAT-tiny", False), "630k-audioset-best.pt": ("HTSAT-tiny", False),
    "630k-fusion-best.pt": ("HTSAT-tiny", True), "630k-audioset-fusion-best.pt": ("HTSAT-tiny", True),
    "music_audioset_epoch_15_esc_90.14.pt": ("HTSAT-base", False),
    "music_speech_epoch_15_esc_89.25.pt": ("HTSAT-base", False),
    "music_speech_audioset_epoch_15_esc_89.98.pt": ("HTSAT-base", False),
}
HOW_TO_GET = (f"download a LAION-CLAP checkpoint from {WEIGHTS_URL} (files: 630k-audioset-best.pt and 630k-best.pt "
              "-> amodel=HTSAT-tiny; 630k-audioset-fusion-best.pt and 630k-fusion-best.pt -> amodel=HTSAT-tiny "
              "enable_fusion=true; music_audioset_epoch_15_esc_90.14.pt, music_speech_epoch_15_esc_89.25.pt, "
              "music_speech_audioset_epoch_15_esc_89.98.pt -> amodel=HTSAT-base; released by the LAION-CLAP "
              "project, whose code is CC0-1.0) and pass it with --audio_checkpoint PATH (embedder option checkpoint=PATH). "
              "This embedder never downloads")
_PRIVATE = "embedders_audio_clap_laion"  # laion_clap/clap_module, loaded without laion_clap's __init__ files
_CACHE: dict[tuple, Any] = {}  # per process: models and file digests, keyed by file version


@dataclasses.dataclass(frozen=True)
class CLAPConfig(EmbedderConfig):
    checkpoint: str = ""  # a LAION-CLAP .pt file (--audio_checkpoint); required
    amodel: str = "HTSAT-tiny"  # HTSAT-base for the music_* checkpoints
    enable_fusion: bool = False  # true for the *fusion-best.pt checkpoints
    window_seconds: float = 10.0  # at most 10 (the clip length CLAP was trained on)
    hop_seconds: float = 10.0  # 10: each instant in one frame; 5: half-overlapping windows
    data_filling: str = "repeatpad"  # how a window shorter than 10 s is filled, as the library names it
    quantize_int16: bool = True  # round-trip through int16 first, as the library does with numpy input
    batch_size: int = 0  # 10 s windows per forward pass; 0: 64 on CUDA, 8 on CPU
    device: str = "auto"  # auto: cuda when visible (a Ray actor with num_gpus), else cpu
    precision: str = "auto"  # auto: bf16 (fp16 without bf16) autocast on CUDA, fp32 on CPU; fp32 | bf16 | fp16

    def __post_init__(self) -> None:
        for field, value, choices in (("amodel", self.amodel, AMODELS), ("data_filling", self.data_filling, FILLINGS),
                                      ("precision", self.precision, PRECISIONS)):
            if value not in choices:
                raise ConfigError(f"clap: {field} must be one of {list(choices)}, got {value!r}")
        FrameGrid(self.hop_seconds, self.window_seconds)  # both > 0
        if self.window_seconds * SAMPLE_RATE > CLIP_SAMPLES + 1e-6:
            raise ConfigError(f"clap: window_seconds must be at most {CLIP_SAMPLES / SAMPLE_RATE:g} (CLAP's clip "
                              f"length; longer input is randomly cropped by the library), got {self.window_seconds}")
        for field, value in (("hop_seconds", self.hop_seconds), ("window_seconds", self.window_seconds)):
            if abs(value * SAMPLE_RATE - round(value * SAMPLE_RATE)) > 1e-6:
                raise ConfigError(f"clap: {field} * {SAMPLE_RATE} must be a whole number of samples, got {value}")
        if self.batch_size < 0:
            raise ConfigError(f"clap: batch_size must be >= 0 (0: automatic), got {self.batch_size}")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise ConfigError(f"clap: device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


# -- laion_clap's HTSAT, without laion_clap's package __init__ --------------------------------
def _interpolate(x, ratio: int):
    """(B, T, C) -> (B, T * ratio, C), each frame repeated ``ratio`` times (laion_clap utils.interpolate)."""
    return x.repeat_interleave(ratio, dim=1)


def _do_mixup(x, mixup_lambda):
    raise NotImplementedError("mixup is a training augmentation; the clap embedder only runs inference")


def clap_module_dir() -> str:
    """laion_clap's ``clap_module`` folder, found without importing (executing) laion_clap."""
    spec = importlib.util.find_spec("laion_clap")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("clap", "laion-clap (install it with --no-deps; see README)", "clap")
    folder = os.path.join(list(spec.submodule_search_locations)[0], "clap_module")
    for name in ("htsat.py", "feature_fusion.py", os.path.join("model_configs", "HTSAT-tiny.json")):
        if not os.path.isfile(os.path.join(folder, name)):
            raise MissingDependencyError("clap", f"laion-clap with clap_module/{name} (found a laion_clap without it "
                                         f"at {folder}; tested with laion-clap 1.1.7)", "clap")
    return folder


def htsat_module() -> types.ModuleType:
    """laion_clap's ``clap_module/htsat.py``, executed as a submodule of a private package (see module note)."""
    name = f"{_PRIVATE}.htsat"
    if name in sys.modules:
        return sys.modules[name]
    folder = clap_module_dir()
    package = types.ModuleType(_PRIVATE, "laion_clap/clap_module, without its __init__.py")
    package.__spec__ = importlib.machinery.ModuleSpec(_PRIVATE, None, is_package=True)
    package.__spec__.submodule_search_locations = [folder]
    package.__path__ = [folder]
    utils = types.ModuleType(f"{_PRIVATE}.utils", "the two names htsat.py imports from laion_clap's utils.py")
    utils.interpolate, utils.do_mixup = _interpolate, _do_mixup
    sys.modules[_PRIVATE], sys.modules[utils.__name__] = package, utils
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        for key in [k for k in sys.modules if k == _PRIVATE or k.startswith(_PRIVATE + ".")]:
            del sys.modules[key]
        if isinstance(exc, ModuleNotFoundError) and exc.name and not exc.name.startswith(_PRIVATE):
            raise MissingDependencyError("clap", exc.name.split(".")[0], "clap") from None
        raise MissingDependencyError("clap", f"a laion-clap whose htsat.py loads on its own ({exc}; tested with "
                                     "laion-clap 1.1.7)", "clap") from None


def model_config(amodel: str) -> dict[str, Any]:
    """laion_clap's ``model_configs/<amodel>.json``: embed_dim (HTSAT output width) and audio_cfg."""
    with open(os.path.join(clap_module_dir(), "model_configs", f"{amodel}.json")) as fh:
        return json.load(fh)


def htk_mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """(n_fft//2+1, n_mels) HTK-scale triangles without area normalisation (torchaudio's MelSpectrogram default)."""
    freqs = np.linspace(0.0, sr // 2, n_fft // 2 + 1)
    mel = lambda f: 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)  # noqa: E731
    edges = 700.0 * (10.0 ** (np.linspace(mel(fmin), mel(fmax), n_mels + 2) / 2595.0) - 1.0)
    rising = (freqs[:, None] - edges[None, :-2]) / np.diff(edges)[None, :-1]
    falling = (edges[None, 2:] - freqs[:, None]) / np.diff(edges)[None, 1:]
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def build_tower(amodel: str, enable_fusion: bool):
    """CLAP's audio side, randomly initialised: ``audio_branch`` (laion_clap's HTSAT) + ``audio_projection``."""
    import torch
    import torch.nn.functional as F

    htsat = htsat_module()
    cfg = model_config(amodel)
    audio_cfg = types.SimpleNamespace(**cfg["audio_cfg"])

    class ClapAudioTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            with warnings.catch_warnings():  # htsat.py calls torch.meshgrid without indexing=
                warnings.filterwarnings("ignore", message="torch.meshgrid", category=UserWarning)
                self.audio_branch = htsat.create_htsat_model(audio_cfg, enable_fusion, FUSION_TYPE if enable_fusion
                                                             else "None")
            self.audio_projection = torch.nn.Sequential(torch.nn.Linear(cfg["embed_dim"], JOINT_DIM),
                                                        torch.nn.ReLU(), torch.nn.Linear(JOINT_DIM, JOINT_DIM))
            a = audio_cfg
            self.register_buffer("stft_window", torch.hann_window(a.window_size), persistent=False)
            self.register_buffer("mel_basis", torch.from_numpy(htk_mel_filterbank(
                a.sample_rate, a.window_size, a.mel_bins, a.fmin, a.fmax)).T.contiguous(), persistent=False)

        def fusion_mel(self, wave: torch.Tensor) -> torch.Tensor:
            """(B, N) -> (B, 1, frames, mel_bins) dB: the library's get_mel (torchaudio), in torch."""
            spec = torch.stft(wave, audio_cfg.window_size, audio_cfg.hop_size, window=self.stft_window,
                              center=True, pad_mode="reflect", return_complex=True)  # (B, F, frames)
            mel = torch.matmul(self.mel_basis, spec.real ** 2 + spec.imag ** 2)  # (B, mel_bins, frames)
            return (10.0 * torch.log10(torch.clamp(mel, min=1e-10))).transpose(1, 2)[:, None]

        def forward(self, wave: torch.Tensor) -> torch.Tensor:
            """(B, 480000) float32 -> (B, 512) float32, unit norm (CLAP.get_audio_embedding)."""
            if enable_fusion:
                with torch.autocast(wave.device.type, enabled=False):
                    mel = self.fusion_mel(wave.float())
                longer = torch.zeros((len(wave), 1), dtype=torch.bool, device=wave.device)
                inputs = {"longer": longer, "mel_fusion": mel.expand(-1, 4, -1, -1)}  # 4 views, as get_audio_features
            else:
                inputs = {"waveform": wave}  # the wrapped front end makes the log-mel in fp32
            out = self.audio_branch(inputs, device=wave.device)["embedding"]  # (B, embed_dim)
            return F.normalize(self.audio_projection(out).float(), dim=-1)

    return ClapAudioTower()


@contextlib.contextmanager
def _ieee_fp32_convolutions(active: bool):
    """cuDNN convolutions in true fp32 (not TF32, cuDNN's default) while active."""
    import torch

    conv = getattr(torch.backends.cudnn, "conv", None)
    if not active:
        yield
    elif conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9
        previous, conv.fp32_precision = conv.fp32_precision, "ieee"
        try:
            yield
        finally:
            conv.fp32_precision = previous
    else:
        previous, torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.allow_tf32, False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32 = previous


def _fp32(inner):
    """Run a front-end module in fp32: outside autocast, and without TF32 for its STFT convolution (a power
    spectrum in dB spans ~100 dB; fp16 / bf16 / TF32 inputs would put a noise floor some 50-70 dB down)."""
    import torch

    class FP32FrontEnd(torch.nn.Module):
        def __init__(self, wrapped: torch.nn.Module):
            super().__init__()
            self.inner = wrapped

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(x.device.type, enabled=False), _ieee_fp32_convolutions(x.is_cuda):
                return self.inner(x.float())

    return FP32FrontEnd(inner)


# -- checkpoints ------------------------------------------------------------------------------
def _file_key(path: str) -> tuple[str, int, int]:
    if not path:
        raise CheckpointError(f"embedder 'clap' needs a checkpoint: {HOW_TO_GET}")
    try:
        st = os.stat(path)
    except OSError:
        raise CheckpointError(f"LAION-CLAP checkpoint not found: {path}; {HOW_TO_GET}") from None
    return os.path.abspath(path), int(st.st_size), int(st.st_mtime_ns)


def checkpoint_sha256(path: str) -> str:
    key = ("sha256", *_file_key(path))
    if key not in _CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
        _CACHE[key] = digest.hexdigest()
    return _CACHE[key]


def read_audio_state(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(``audio_branch.*`` + ``audio_projection.*`` tensors without ``module.``, facts about the file)."""
    import torch

    _file_key(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"LAION-CLAP checkpoint {path} is not a readable torch file (weights only): "
                              f"{type(exc).__name__}: {str(exc)[:300]}") from None
    nested = isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict)
    state = obj["state_dict"] if nested else obj
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        found = sorted(map(str, obj))[:10] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"LAION-CLAP checkpoint {path}: expected {{'state_dict': {{name: tensor}}, ...}} or a "
                              f"bare state dict, found {found}; {HOW_TO_GET}")
    names = {k[len("module."):] if k.startswith("module.") else k: k for k in state}
    audio = {k: state[raw] for k, raw in names.items() if k.startswith(("audio_branch.", "audio_projection."))}
    if not any(k.startswith("audio_branch.") for k in audio) or not any(k.startswith("audio_projection.") for k in audio):
        groups = sorted({k.split(".")[0] for k in names})
        raise CheckpointError(f"LAION-CLAP checkpoint {path}: expected keys audio_branch.* and audio_projection.* "
                              f"(optionally prefixed module.), found key groups {groups[:12]}; {HOW_TO_GET}")
    meta = {"nested": nested, "module_prefix": any(k.startswith("module.") for k in state),
            "epoch": obj.get("epoch") if nested else None, "ignored_keys": len(state) - len(audio)}
    return audio, meta


def _diagnose(path: str, config: CLAPConfig, audio: dict[str, Any]) -> None:
    """Refuse a file made for another amodel / enable_fusion, naming the values that fit it."""
    fused = any(k.startswith(("audio_branch.patch_embed.mel_conv2d.", "audio_branch.patch_embed.fusion_model."))
                for k in audio)
    width = audio.get("audio_projection.0.weight")
    by_width = {model_config(m)["embed_dim"]: m for m in AMODELS}
    amodel = by_width.get(int(width.shape[1])) if width is not None and width.ndim == 2 else None
    problems = []
    if fused != config.enable_fusion:
        problems.append(f"enable_fusion={str(fused).lower()} (its audio_branch.patch_embed "
                        f"{'has' if fused else 'lacks'} the fusion layers mel_conv2d / fusion_model)")
    if amodel is not None and amodel != config.amodel:
        problems.append(f"amodel={amodel} (its audio_projection.0.weight takes {width.shape[1]} HTSAT features)")
    if problems:
        raise CheckpointError(f"LAION-CLAP checkpoint {path} does not fit amodel={config.amodel} "
                              f"enable_fusion={str(config.enable_fusion).lower()}: set {' and '.join(problems)} "
                              f"(--audio_option KEY=VALUE)")


def load_tower(config: CLAPConfig):
    """The audio tower for ``config`` with the checkpoint's weights loaded strictly, eval mode, on CPU."""
    path = config.checkpoint
    audio, meta = read_audio_state(path)
    _diagnose(path, config, audio)
    tower = build_tower(config.amodel, config.enable_fusion)
    expected = {k: tuple(v.shape) for k, v in tower.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in audio.items()}
    missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"LAION-CLAP checkpoint {path} does not fit {config.amodel} (enable_fusion="
            f"{str(config.enable_fusion).lower()}): missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape "
            f"{[(k, got[k], expected[k]) for k in wrong[:3]]} ({len(missing)}/{len(unexpected)}/{len(wrong)} in all)")
    tower.load_state_dict(audio, strict=True)
    branch = tower.audio_branch  # wrapped after loading, so the keys above stay the library's
    branch.spectrogram_extractor, branch.logmel_extractor = _fp32(branch.spectrogram_extractor), _fp32(branch.logmel_extractor)
    return tower.eval().requires_grad_(False), meta


# -- the embedder -----------------------------------------------------------------------------
def quantize_int16(x: np.ndarray) -> np.ndarray:
    """The library's float32_to_int16 then int16_to_float32 (clip to [-1, 1], truncate to 1/32767 steps)."""
    q = (np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16)
    return (q / 32767.0).astype(np.float32)


def fill_window(x: np.ndarray, mode: str) -> np.ndarray:
    """A window of at most 10 s filled to 480000 samples with the library's ``data_filling`` ``mode``."""
    if len(x) >= CLIP_SAMPLES:
        return x[:CLIP_SAMPLES]
    repeats = CLIP_SAMPLES // len(x)
    if mode == "repeat":
        return np.tile(x, repeats + 1)[:CLIP_SAMPLES]
    body = np.tile(x, repeats) if mode == "repeatpad" else x
    return np.pad(body, (0, CLIP_SAMPLES - len(body)))


@register
class CLAP(Embedder):
    name: ClassVar[str] = "clap"
    modality: ClassVar[str] = "audio"
    sample_rate: ClassVar[int] = SAMPLE_RATE
    Config: ClassVar[type[EmbedderConfig]] = CLAPConfig
    dim = JOINT_DIM
    hop_seconds = 10.0
    default_batch_size: ClassVar[int] = 8  # recordings per call; their windows are batched together

    def __init__(self, config: CLAPConfig | None = None):
        super().__init__(config)
        cfg: CLAPConfig = self.config  # type: ignore[assignment]
        htsat_module()  # a missing extra fails before the checkpoint is looked for
        import torch

        device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"clap: device {cfg.device!r} requested but CUDA is not available here")
        self.device = torch.device(device)
        if cfg.precision in ("bf16", "fp16") and self.device.type != "cuda":
            raise ConfigError(f"clap: precision={cfg.precision} is autocast on CUDA only, and this embedder runs on "
                              f"{self.device}; use precision=fp32 or auto")
        self.autocast_dtype = None
        if cfg.precision == "auto" and self.device.type == "cuda":
            self.autocast_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        elif cfg.precision in ("bf16", "fp16"):
            self.autocast_dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float16
        self.batch_size = cfg.batch_size or (64 if self.device.type == "cuda" else 8)
        self.grid = FrameGrid(cfg.hop_seconds, cfg.window_seconds)
        self.hop_seconds = cfg.hop_seconds
        self.hop_samples = int(round(cfg.hop_seconds * SAMPLE_RATE))
        self.window_samples = int(round(cfg.window_seconds * SAMPLE_RATE))
        key = ("model", *_file_key(cfg.checkpoint), cfg.amodel, cfg.enable_fusion, str(self.device))
        if key not in _CACHE:  # one load per process (Ray actor), however often the embedder is rebuilt
            tower, meta = load_tower(cfg)
            _CACHE[key] = (tower.to(self.device), meta)
        self.model, self.checkpoint_meta = _CACHE[key]

    # -- self-description --------------------------------------------------------------------
    @classmethod
    def hash_config(cls, config: EmbedderConfig) -> str:
        """Also the checkpoint's digest: other weights at the same path give a new hash."""
        base = super().hash_config(config)
        return hashlib.sha256(f"{base}:{checkpoint_sha256(config.checkpoint)}".encode()).hexdigest()[:16]  # type: ignore[attr-defined]

    @classmethod
    def describe_config(cls, config: EmbedderConfig) -> dict[str, Any]:
        from importlib.metadata import PackageNotFoundError, version

        out = super().describe_config(config)
        path = config.checkpoint  # type: ignore[attr-defined]
        out.update(window_seconds=config.window_seconds, clip_samples=CLIP_SAMPLES,  # type: ignore[attr-defined]
                   checkpoint_file=os.path.basename(path), checkpoint_sha256=checkpoint_sha256(path))
        for package in ("laion-clap", "torchlibrosa", "librosa"):
            try:
                out[f"{package}_version"] = version(package)
            except PackageNotFoundError:
                out[f"{package}_version"] = None
        return out

    # -- embedding ---------------------------------------------------------------------------
    def _waveform(self, audio: np.ndarray) -> np.ndarray:
        x = np.asarray(audio, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"clap expects a mono 1-D waveform at {SAMPLE_RATE} Hz, got shape {x.shape}")
        if x.size == 0:
            raise EmptyInputError(None, "zero-length audio")
        if not np.isfinite(x).all():
            raise AudioDecodeError(None, "audio contains NaN or infinite samples")
        return quantize_int16(x) if self.config.quantize_int16 else x  # type: ignore[attr-defined]

    def windows(self, audio: np.ndarray) -> Iterator[np.ndarray]:
        """One recording's frames as (480000,) float32 model inputs, in order (T = FrameGrid.n_frames)."""
        return self._windows(self._waveform(audio))

    def _windows(self, x: np.ndarray) -> Iterator[np.ndarray]:
        for t in range(self.grid.n_frames(len(x) / SAMPLE_RATE)):
            start = t * self.hop_samples
            yield fill_window(x[start:start + self.window_samples], self.config.data_filling)  # type: ignore[attr-defined]

    def _forward(self, batch: list[np.ndarray]) -> np.ndarray:
        import torch

        wave = torch.from_numpy(np.stack(batch)).to(self.device)
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            return self.model(wave).cpu().numpy()  # (B, 512) float32

    def embed(self, items: Sequence[np.ndarray]) -> list[np.ndarray]:
        waves = [self._waveform(a) for a in items]  # every item is validated before any forward pass
        counts = [self.grid.n_frames(len(x) / SAMPLE_RATE) for x in waves]
        out = np.empty((sum(counts), self.dim), dtype=np.float32)
        batch, row = [], 0
        for x in waves:  # windows of consecutive items share forward passes; at most batch_size held
            for window in self._windows(x):
                batch.append(window)
                if len(batch) == self.batch_size:
                    out[row:row + len(batch)] = self._forward(batch)
                    row, batch = row + len(batch), []
        if batch:
            out[row:row + len(batch)] = self._forward(batch)
        bounds = np.cumsum([0, *counts])
        return [self.check_output(None, out[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
