"""LAION-CLAP's audio tower (HTSAT ``audio_branch`` + ``audio_projection``) and its checkpoints, without
the rest of laion_clap. The ``clap`` embedder (embedders/audio/clap.py) frames audio for it.

Import route. ``import laion_clap`` executes its package ``__init__``: hook.py and training/data.py
import torchvision (whose PyPI wheels do not load against this CPU torch), transformers, webdataset,
wget and braceexpand, and call ``{Bert,Roberta,Bart}Tokenizer.from_pretrained`` at import time
(network); building ``CLAP`` then calls ``RobertaModel.from_pretrained``. Audio needs none of it.
So the package is only located, with ``importlib.util.find_spec`` (which executes nothing), and
just ``clap_module/htsat.py`` and the ``feature_fusion.py`` it imports run, as submodules of a
private package whose ``__path__`` is laion_clap's ``clap_module`` folder: no ``__init__.py`` of
laion_clap runs. htsat.py's other relative import, ``from .utils import do_mixup, interpolate``,
would load utils.py and with it torchvision; the private package's ``utils`` holds those two names
instead (``interpolate`` repeats frames for HTSAT's frame-wise outputs, which the embedding does not
read; ``do_mixup`` is training-only and raises). Hyperparameters come from laion_clap's own
``model_configs/HTSAT-*.json``; ``audio_projection`` is rebuilt with CLAP's layout (Linear, ReLU,
Linear to 512), so a checkpoint's ``audio_branch.*`` and ``audio_projection.*`` load strictly.

Fusion. Non-fusion models read the log-mel HTSAT makes itself (torchlibrosa: Slaney mel, 64 bands,
50 Hz - 14 kHz, n_fft 1024, hop 480). Fusion models read the library's ``get_mel`` (torchaudio: HTK
mel without normalisation, power in dB with a 1e-10 floor), four copies of it for a clip of at most
10 s, of which HTSAT reads the first (the global view; the local views are for longer clips).
torchaudio does not import against this CPU torch either, so that mel is made here with torch.stft.

Checkpoints. The training script saves ``{"epoch", "name", "state_dict", "optimizer"[, "scaler"]}``
from a DistributedDataParallel model, so keys read ``module.audio_branch.*``; a bare state dict and
keys without ``module.`` load too, as in the library's ``load_state_dict``. Only ``audio_branch.*``
and ``audio_projection.*`` are read (the file is memory-mapped, so the rest of a 2 GB file is never
paged in); ``text_branch.*`` (and its ``position_ids``), ``text_projection.*``, ``text_transform.*``,
``audio_transform.*`` and ``logit_scale_*`` are ignored.
"""

from __future__ import annotations

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
from typing import Any

import numpy as np

from embedders.base import CheckpointError, MissingDependencyError
from embedders.torch_embedder import fp32_module

AMODELS = ("HTSAT-tiny", "HTSAT-base", "HTSAT-large")
JOINT_DIM = 512  # CLAP's joint embedding width: audio_projection's output
FUSION_TYPE = "aff_2d"  # what CLAP_Module(enable_fusion=True) builds
WEIGHTS_URL = "https://huggingface.co/lukewys/laion_clap"
PUBLISHED = {  # file -> (amodel, enable_fusion), as the LAION-CLAP README pairs them
    "630k-audioset-best.pt": ("HTSAT-tiny", False), "630k-best.pt": ("HTSAT-tiny", False),
    "630k-audioset-fusion-best.pt": ("HTSAT-tiny", True), "630k-fusion-best.pt": ("HTSAT-tiny", True),
    "music_audioset_epoch_15_esc_90.14.pt": ("HTSAT-base", False),
    "music_speech_epoch_15_esc_89.25.pt": ("HTSAT-base", False),
    "music_speech_audioset_epoch_15_esc_89.98.pt": ("HTSAT-base", False),
}
HOW_TO_GET = (f"download a LAION-CLAP checkpoint from {WEIGHTS_URL} ("
              + "; ".join(f"{name}: amodel={a}" + (" enable_fusion=true" if f else "") for name, (a, f) in PUBLISHED.items())
              + "; released by the LAION-CLAP project, whose code is CC0-1.0) and pass it with --audio_checkpoint "
              "PATH (embedder option checkpoint=PATH). This embedder never downloads")
_PRIVATE = "embedders_audio_clap_laion"  # laion_clap/clap_module, loaded without laion_clap's __init__ files


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
    """laion_clap's ``model_configs/<amodel>.json``: embed_dim (HTSAT's output width) and audio_cfg."""
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
    """CLAP's audio side, randomly initialised, named as in CLAP: ``audio_branch`` + ``audio_projection``."""
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
                self.audio_branch = htsat.create_htsat_model(audio_cfg, enable_fusion,
                                                             FUSION_TYPE if enable_fusion else "None")
            self.audio_projection = torch.nn.Sequential(torch.nn.Linear(cfg["embed_dim"], JOINT_DIM),
                                                        torch.nn.ReLU(), torch.nn.Linear(JOINT_DIM, JOINT_DIM))
            a = audio_cfg
            self.register_buffer("stft_window", torch.hann_window(a.window_size), persistent=False)
            self.register_buffer("mel_basis", torch.from_numpy(htk_mel_filterbank(
                a.sample_rate, a.window_size, a.mel_bins, a.fmin, a.fmax)).T.contiguous(), persistent=False)

        def fusion_mel(self, wave: torch.Tensor) -> torch.Tensor:
            """(B, N) -> (B, 1, N // hop + 1, mel_bins) dB: the library's get_mel (torchaudio), in torch."""
            spec = torch.stft(wave, audio_cfg.window_size, audio_cfg.hop_size, window=self.stft_window,
                              center=True, pad_mode="reflect", return_complex=True)  # (B, n_fft/2+1, frames)
            mel = torch.matmul(self.mel_basis, spec.real ** 2 + spec.imag ** 2)  # (B, mel_bins, frames)
            return (10.0 * torch.log10(torch.clamp(mel, min=1e-10))).transpose(1, 2)[:, None]

        def forward(self, wave: torch.Tensor) -> torch.Tensor:
            """(B, 480000) float32 -> (B, 512) float32 of unit norm, as CLAP.get_audio_embedding."""
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


# -- checkpoints ------------------------------------------------------------------------------
def read_audio_state(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(``audio_branch.*`` + ``audio_projection.*`` tensors without ``module.``, facts about the file)."""
    import torch

    if not os.path.isfile(path):
        raise CheckpointError(f"LAION-CLAP checkpoint not found: {path}; {HOW_TO_GET}")
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


def _diagnose(path: str, amodel: str, enable_fusion: bool, audio: dict[str, Any]) -> None:
    """Refuse a file made for another amodel / enable_fusion, naming the values that fit it."""
    fused = any(k.startswith(("audio_branch.patch_embed.mel_conv2d.", "audio_branch.patch_embed.fusion_model."))
                for k in audio)
    width = audio.get("audio_projection.0.weight")
    by_width = {model_config(m)["embed_dim"]: m for m in AMODELS}
    fits = by_width.get(int(width.shape[1])) if width is not None and width.ndim == 2 else None
    problems = []
    if fused != enable_fusion:
        problems.append(f"enable_fusion={str(fused).lower()} (its audio_branch.patch_embed "
                        f"{'has' if fused else 'lacks'} the fusion layers mel_conv2d / fusion_model)")
    if fits is not None and fits != amodel:
        problems.append(f"amodel={fits} (its audio_projection.0.weight takes {width.shape[1]} HTSAT features)")
    if problems:
        raise CheckpointError(f"LAION-CLAP checkpoint {path} does not fit amodel={amodel} enable_fusion="
                              f"{str(enable_fusion).lower()}: set {' and '.join(problems)} (--audio_option KEY=VALUE)")


def load_tower(path: str, amodel: str, enable_fusion: bool):
    """(the audio tower with the checkpoint's weights loaded strictly, in eval mode on CPU, facts about the file)."""
    audio, meta = read_audio_state(path)
    _diagnose(path, amodel, enable_fusion, audio)
    tower = build_tower(amodel, enable_fusion)
    expected = {k: tuple(v.shape) for k, v in tower.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in audio.items()}
    missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"LAION-CLAP checkpoint {path} does not fit {amodel} (enable_fusion={str(enable_fusion).lower()}): "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {[(k, got[k], expected[k]) for k in wrong[:3]]} "
            f"({len(missing)}/{len(unexpected)}/{len(wrong)} in all)")
    tower.load_state_dict(audio, strict=True)
    branch = tower.audio_branch
    # Wrapped after loading, so the keys above stay the library's; the front end always runs in IEEE
    # fp32 (a power spectrum in dB spans ~100 dB; fp16 / bf16 / TF32 inputs would put a noise floor
    # some 50-70 dB down).
    branch.spectrogram_extractor = fp32_module(branch.spectrogram_extractor)
    branch.logmel_extractor = fp32_module(branch.logmel_extractor)
    return tower.eval().requires_grad_(False), meta
