"""musicnn (Pons & Serra, 2019) in PyTorch, loaded from the TF1 checkpoints inside the ``musicnn`` wheel.

``load_musicnn(name)`` returns the network of ``musicnn.models.build_musicnn`` with the weights of
``name`` (``MTT_musicnn``: MagnaTagATune, ``MSD_musicnn``: Million Song Dataset; 50 tags each), in
eval mode on CPU. Its forward takes a (B, 187, 96) float32 log-mel batch (3 s patches at 16 kHz:
187 frames of 256 samples, 96 mel bands, log10(10000 x + 1); ``embedders.audio.musicnn.log_mel``)
and returns a dict of float32 tensors:

==============  ========  ===================================================================
key             shape     what (musicnn.extractor's feature of the same name)
==============  ========  ===================================================================
taggram         (B, 50)   sigmoid of the logits: tag probabilities (labels: ``MTT_LABELS`` ...)
penultimate     (B, 200)  the dense layer before the logits, after ReLU and batch-norm
mean_pool       (B, 753)  mean over time of the mid-end features (561 front end + 3 x 64)
max_pool        (B, 753)  max over time of the same features
==============  ========  ===================================================================

Architecture (musicnn/models.py, ``build_musicnn`` with 1.6 front-end filters, 64 mid-end filters,
200 back-end units): input batch-norm; timbral convolutions 7x38 and 7x67 (204 filters each, time
zero-padded by 3) and temporal convolutions 128x1, 64x1, 32x1 (51 filters each, TensorFlow "same"
padding: one more row after than before for even lengths), each ReLU -> batch-norm -> max over
frequency; the 561 channels go through three 7-tap convolutions over time (64 filters, ReLU ->
batch-norm, the second and third residual); the 753 concatenated channels are max- and mean-pooled
over time and interleaved [max_0, mean_0, max_1, ...] (TensorFlow's flatten of (753, 2)) -> batch-norm
-> dense 200 + ReLU -> batch-norm -> dense 50. Batch-norm uses the stored moving statistics with
epsilon 1e-3 (``tf.compat.v1.layers.batch_normalization``'s default); dropout is off at inference.
The vgg models in the same wheel (``MTT_vgg``, ``MSD_vgg``) are a different network with other
outputs (pool1..pool5) and are not ported.

Weights: TensorFlow tensor bundles ``<wheel>/musicnn/<name>/.index`` + ``.data-00000-of-00001``,
read by ``embedders.audio.tf_checkpoint`` (no TensorFlow). Every tensor is mapped by its TensorFlow
variable name (``TF_NAMES``); a missing or mis-shaped tensor raises ``CheckpointError``.
Licence: musicnn and its weights are ISC-licensed (Jordi Pons), see the wheel's metadata.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embedders.audio.tf_checkpoint import TensorBundle
from embedders.base import CheckpointError

MODEL_NAMES = ("MTT_musicnn", "MSD_musicnn")
WHEEL = "musicnn==0.1.0"
INSTALL_HINT = (f"pip install --no-deps {WHEEL} -c constraints.txt (--no-deps: its metadata pins numpy<1.17 and "
                "tensorflow, neither of which this port uses; only the checkpoint files inside it are read)")


@dataclasses.dataclass(frozen=True)
class MusicnnConfig:
    """Sizes of ``build_musicnn`` as the wheel's MTT_musicnn / MSD_musicnn use them."""

    n_frames: int = 187  # 3 s at 16 kHz, hop 256
    n_mels: int = 96
    timbral_filters: int = 204  # int(1.6 * 128)
    timbral_widths: tuple[int, ...] = (38, 67)  # int(0.4 * 96), int(0.7 * 96) mel bands, 7 frames long
    temporal_filters: int = 51  # int(1.6 * 32)
    temporal_lengths: tuple[int, ...] = (128, 64, 32)  # frames, 1 mel band wide
    midend_filters: int = 64
    backend_units: int = 200
    num_classes: int = 50
    bn_eps: float = 1e-3

    @property
    def frontend_channels(self) -> int:
        return len(self.timbral_widths) * self.timbral_filters + len(self.temporal_lengths) * self.temporal_filters

    @property
    def pooled_channels(self) -> int:
        return self.frontend_channels + 3 * self.midend_filters


def _same_time_padding(length: int) -> tuple[int, int, int, int]:
    """F.pad argument for TensorFlow's "same" padding along time (dim -2) of an NCHW tensor."""
    before = (length - 1) // 2
    return (0, 0, before, length - 1 - before)


class FrequencyPooledConv(nn.Module):
    """conv2d (1 -> filters) -> ReLU -> batch-norm -> max over the remaining mel bands.

    (B, 1, T', M) -> (B, filters, T); the caller pads time so that T is the input's frame count.
    """

    def __init__(self, filters: int, kernel: tuple[int, int], eps: float):
        super().__init__()
        self.conv = nn.Conv2d(1, filters, kernel)
        self.bn = nn.BatchNorm2d(filters, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.relu(self.conv(x))).amax(dim=3)


class TimeConv(nn.Module):
    """7-tap convolution over time with zero padding 3 -> ReLU -> batch-norm: (B, C, T) -> (B, filters, T).

    musicnn writes it as a conv2d whose kernel spans all C channels as the frequency axis.
    """

    def __init__(self, channels: int, filters: int, eps: float):
        super().__init__()
        self.conv = nn.Conv1d(channels, filters, 7, padding=3)
        self.bn = nn.BatchNorm1d(filters, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.relu(self.conv(x)))


class Musicnn(nn.Module):
    """The musicnn network; see the module docstring for its outputs."""

    def __init__(self, config: MusicnnConfig | None = None):
        super().__init__()
        cfg = self.config = config or MusicnnConfig()
        self.input_bn = nn.BatchNorm2d(1, eps=cfg.bn_eps)
        self.timbral = nn.ModuleList(FrequencyPooledConv(cfg.timbral_filters, (7, w), cfg.bn_eps) for w in cfg.timbral_widths)
        self.temporal = nn.ModuleList(FrequencyPooledConv(cfg.temporal_filters, (k, 1), cfg.bn_eps)
                                      for k in cfg.temporal_lengths)
        self.midend = nn.ModuleList([TimeConv(cfg.frontend_channels, cfg.midend_filters, cfg.bn_eps),
                                     TimeConv(cfg.midend_filters, cfg.midend_filters, cfg.bn_eps),
                                     TimeConv(cfg.midend_filters, cfg.midend_filters, cfg.bn_eps)])
        self.pool_bn = nn.BatchNorm1d(2 * cfg.pooled_channels, eps=cfg.bn_eps)
        self.dense = nn.Linear(2 * cfg.pooled_channels, cfg.backend_units)
        self.dense_bn = nn.BatchNorm1d(cfg.backend_units, eps=cfg.bn_eps)
        self.logits = nn.Linear(cfg.backend_units, cfg.num_classes)

    def forward(self, logmel: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.config
        if logmel.ndim != 3 or tuple(logmel.shape[1:]) != (cfg.n_frames, cfg.n_mels):
            raise ValueError(f"musicnn expects a (B, {cfg.n_frames}, {cfg.n_mels}) log-mel batch, got {tuple(logmel.shape)}")
        x = self.input_bn(logmel.unsqueeze(1))  # (B, 1, 187, 96)
        padded = F.pad(x, (0, 0, 3, 3))  # (B, 1, 193, 96): time only, as musicnn pads before "valid" 7-frame kernels
        front = [block(padded) for block in self.timbral]  # 2 x (B, 204, 187)
        front += [block(F.pad(x, _same_time_padding(block.conv.kernel_size[0]))) for block in self.temporal]  # 3 x (B, 51, 187)
        features = [torch.cat(front, dim=1)]  # (B, 561, 187)
        h = self.midend[0](features[0])  # (B, 64, 187)
        features.append(h)
        for conv in self.midend[1:]:  # residual: conv2 + conv1, conv3 + (conv2 + conv1)
            h = conv(h) + h
            features.append(h)
        midend = torch.cat(features, dim=1)  # (B, 753, 187)
        max_pool, mean_pool = midend.amax(dim=2), midend.mean(dim=2)  # (B, 753) each
        pooled = torch.stack([max_pool, mean_pool], dim=2).flatten(1)  # (B, 1506): [max_0, mean_0, max_1, ...]
        penultimate = self.dense_bn(F.relu(self.dense(self.pool_bn(pooled))))  # (B, 200)
        logits = self.logits(penultimate)  # (B, 50)
        return {"taggram": torch.sigmoid(logits), "penultimate": penultimate, "mean_pool": mean_pool,
                "max_pool": max_pool}


# -- loading --------------------------------------------------------------------------------------
def tf_names(config: MusicnnConfig | None = None) -> dict[str, str]:
    """Torch module path -> TensorFlow layer name, in the order musicnn creates its layers (which is
    what numbers them: ``conv2d``, ``conv2d_1``, ...; ``batch_normalization``, ``batch_normalization_1``, ...)."""
    cfg = config or MusicnnConfig()
    convs = [f"timbral.{i}" for i in range(len(cfg.timbral_widths))] + [f"temporal.{i}" for i in range(len(cfg.temporal_lengths))]
    convs += [f"midend.{i}" for i in range(3)]
    names = {"input_bn": "batch_normalization"}
    for i, path in enumerate(convs):
        names[f"{path}.conv"] = "conv2d" + (f"_{i}" if i else "")
        names[f"{path}.bn"] = f"batch_normalization_{i + 1}"
    names.update({"pool_bn": f"batch_normalization_{len(convs) + 1}", "dense": "dense",
                  "dense_bn": f"batch_normalization_{len(convs) + 2}", "logits": "dense_1"})
    return names


def _torch_layout(module: nn.Module, kernel: np.ndarray) -> np.ndarray:
    """TensorFlow kernel -> torch weight: conv2d (kh, kw, in, out) -> (out, in, kh, kw); the mid-end's
    (7, C, 1, out) -> Conv1d (out, C, 7); dense (in, out) -> (out, in)."""
    if isinstance(module, nn.Conv1d):
        return kernel[:, :, 0, :].transpose(2, 1, 0)
    if isinstance(module, nn.Conv2d):
        return kernel.transpose(3, 2, 0, 1)
    return kernel.T


def state_dict_from_checkpoint(bundle: TensorBundle, model: Musicnn) -> dict[str, torch.Tensor]:
    """The torch state dict of ``model`` filled from the TF tensors, each found by its TF name."""
    modules = dict(model.named_modules())
    state: dict[str, torch.Tensor] = {}
    for path, tf_name in tf_names(model.config).items():
        module = modules[path]
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            pairs = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
            tensors = {key: bundle.read(f"{tf_name}/{var}") for key, var in pairs.items()}
            tensors["num_batches_tracked"] = np.array(0, dtype=np.int64)
        else:
            tensors = {"weight": _torch_layout(module, bundle.read(f"{tf_name}/kernel")),
                       "bias": bundle.read(f"{tf_name}/bias")}
        for key, value in tensors.items():
            expected = tuple(getattr(module, key).shape)
            if value.shape != expected:
                raise CheckpointError(f"{bundle.index_path}: '{tf_name}' gives {key} of shape {value.shape}, but "
                                      f"musicnn's {path}.{key} has {expected}; is this a musicnn (not vgg) checkpoint?")
            state[f"{path}.{key}"] = torch.from_numpy(np.asarray(value, order="C"))
    return state


def wheel_checkpoint_prefix(name: str) -> str:
    """Prefix of the checkpoint ``name`` inside the installed ``musicnn`` package (no TensorFlow import:
    the package is located, not imported). Raises CheckpointError when the package is missing."""
    if name not in MODEL_NAMES:
        raise CheckpointError(f"unknown musicnn model '{name}'; available: {', '.join(MODEL_NAMES)}")
    spec = importlib.util.find_spec("musicnn")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"musicnn's weights come from the musicnn wheel, which is not installed: {INSTALL_HINT}")
    prefix = os.path.join(list(spec.submodule_search_locations)[0], name) + os.sep
    if not os.path.isfile(prefix + ".index"):
        raise CheckpointError(f"the installed musicnn package has no {name} checkpoint at {prefix}.index; "
                              f"reinstall it: {INSTALL_HINT}")
    return prefix


def load_musicnn(name: str = "MTT_musicnn", checkpoint: str | None = None) -> Musicnn:
    """The musicnn network ``name`` with its weights, eval mode, CPU, no gradients.

    ``checkpoint``: a TF checkpoint prefix to read instead of the wheel's (e.g. ``.../MTT_musicnn/``,
    the directory that holds ``.index``); it must have the same layer names and shapes.
    Raises CheckpointError when the weights are missing or do not fit.
    """
    prefix = checkpoint if checkpoint else wheel_checkpoint_prefix(name)
    model = Musicnn()
    model.load_state_dict(state_dict_from_checkpoint(TensorBundle(prefix), model), strict=True)
    return model.eval().requires_grad_(False)
