"""LAION-CLAP checkpoints in the authors' published format, with seeded random weights.

LAION-CLAP's training script (laion_clap/training/main.py) saves ``{"epoch", "name", "state_dict":
model.state_dict(), "optimizer": optimizer.state_dict()}`` (plus ``"scaler"`` under AMP) from a
DistributedDataParallel model, so every key starts with ``module.``; the library's loader
(``clap_module.factory.load_state_dict``) also takes a bare state dict and keys without the prefix.
The state dict covers the whole CLAP: ``audio_branch`` (HTSAT), ``audio_projection``,
``audio_transform``, ``text_branch`` (RoBERTa, with ``embeddings.position_ids``, which that loader
deletes for transformers >= 4.31), ``text_projection``, ``text_transform``, ``logit_scale_a`` and
``logit_scale_t``. The audio side here is the real architecture, HTSAT-tiny (the smallest published
one), with every trainable tensor redrawn from a seeded normal; the text side is small stand-ins
with the real names (TEXT_BRANCH_STANDINS), so a loader must pick the audio part out by name.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from pathlib import Path

import pytest
import torch

from embedders.store.atomic import atomic_path

PUBLISHED_NAME = "630k-audioset-best.pt"  # HTSAT-tiny, no fusion: the library's default checkpoint
FUSION_NAME = "630k-audioset-fusion-best.pt"
# RoBERTa's key names with shrunken shapes (the real ones hold 50265 tokens, 514 positions, 12 layers).
TEXT_BRANCH_STANDINS = {
    "embeddings.word_embeddings.weight": (8, 768),
    "embeddings.position_embeddings.weight": (10, 768),
    "embeddings.token_type_embeddings.weight": (1, 768),
    "embeddings.LayerNorm.weight": (768,),
    "embeddings.LayerNorm.bias": (768,),
    "encoder.layer.0.attention.self.query.weight": (768, 768),
    "encoder.layer.0.attention.self.query.bias": (768,),
    "pooler.dense.weight": (768, 768),
    "pooler.dense.bias": (768,),
}
POSITION_IDS = "text_branch.embeddings.position_ids"
# CLAP's other non-audio tensors, at their real shapes (joint width 512, RoBERTa width 768).
HEADS = {
    "text_projection.0.weight": (512, 768), "text_projection.0.bias": (512,),
    "text_projection.2.weight": (512, 512), "text_projection.2.bias": (512,),
    "text_transform.sequential.0.weight": (512, 512), "text_transform.sequential.0.bias": (512,),
    "text_transform.sequential.3.weight": (512, 512), "text_transform.sequential.3.bias": (512,),
    "audio_transform.sequential.0.weight": (512, 512), "audio_transform.sequential.0.bias": (512,),
    "audio_transform.sequential.3.weight": (512, 512), "audio_transform.sequential.3.bias": (512,),
    "logit_scale_a": (), "logit_scale_t": (),
}
FIXED_FRONT_END = ("audio_branch.spectrogram_extractor.", "audio_branch.logmel_extractor.")
EXTRA = ("laion_clap", "torchlibrosa", "librosa")


def require_extra() -> None:
    """Skip without the [clap] extra, except under CI=true, which installs it (then fail)."""
    missing = [m for m in EXTRA if importlib.util.find_spec(m) is None]
    if missing and os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {missing} not installed; CI installs the [clap] extra and laion-clap --no-deps")
    if missing:
        pytest.skip(f"{missing} not installed: pip install '.[clap]' -c constraints.txt && "
                    "pip install --no-deps laion-clap==1.1.7")


def randomize(tower: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Redraw every trainable tensor from a seeded normal (norm gains near 1); keep the STFT and mel
    filters (fixed, not learnt) and give bn0 running statistics of log-mel dB values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in tower.named_parameters():
            if name.startswith(FIXED_FRONT_END):
                continue
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1 and name.endswith("weight") and ("norm" in name or "bn0" in name):
                p.copy_(1.0 + 0.1 * noise)
            elif p.ndim >= 2:
                p.copy_(noise / math.sqrt(p[0].numel()))
            else:
                p.copy_(0.02 * noise)
        bn0 = tower.audio_branch.bn0
        bn0.running_mean.copy_(-30.0 + 5.0 * torch.randn(bn0.running_mean.shape, generator=gen))
        bn0.running_var.copy_(300.0 + 50.0 * torch.rand(bn0.running_var.shape, generator=gen))
    return tower.eval()


@functools.lru_cache(maxsize=4)
def random_tower(amodel: str = "HTSAT-tiny", enable_fusion: bool = False, seed: int = 0):
    """CLAP's audio side (``audio_branch`` + ``audio_projection``) with seeded random weights; cached."""
    from embedders.audio.clap_model import build_tower

    return randomize(build_tower(amodel, enable_fusion), seed)


def _optimizer_state(seed: int) -> dict:
    """A real AdamW state after one step (the published files carry the optimizer of the last epoch)."""
    param = torch.nn.Parameter(torch.randn(3, generator=torch.Generator().manual_seed(seed)))
    opt = torch.optim.AdamW([param], lr=1e-4)
    param.sum().backward()
    opt.step()
    return opt.state_dict()


def clap_state_dict(tower, seed: int = 0) -> dict[str, torch.Tensor]:
    """The whole-CLAP state dict, unprefixed: the tower's audio tensors plus text-side stand-ins."""
    state = {k: v.detach().clone() for k, v in tower.state_dict().items()}
    gen = torch.Generator().manual_seed(seed + 1)
    for key, shape in TEXT_BRANCH_STANDINS.items():
        state[f"text_branch.{key}"] = 0.02 * torch.randn(shape, generator=gen)
    state[POSITION_IDS] = torch.arange(TEXT_BRANCH_STANDINS["embeddings.position_embeddings.weight"][0])[None]
    for key, shape in HEADS.items():
        state[key] = (torch.full(shape, math.log(1 / 0.07)) if key.startswith("logit_scale")
                      else 0.05 * torch.randn(shape, generator=gen))
    return state


def published_dict(tower, seed: int = 0, prefix: str = "module.", nested: bool = True) -> dict:
    """The file's contents: ``{"epoch", "name", "state_dict", "optimizer"}`` with ``module.`` keys by default."""
    state = {prefix + k: v for k, v in clap_state_dict(tower, seed).items()}
    if not nested:
        return state
    return {"epoch": 45, "name": "2022_12_04-12_00_00-model_HTSAT-tiny-lr_0.0001-b_96-j_6-p_fp32",
            "state_dict": state, "optimizer": _optimizer_state(seed)}


def write_checkpoint(path, amodel: str = "HTSAT-tiny", enable_fusion: bool = False, seed: int = 0,
                     prefix: str = "module.", nested: bool = True) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(published_dict(random_tower(amodel, enable_fusion, seed), seed, prefix, nested), tmp)
    return path


def clap_contract_config(tmp_path_factory) -> dict:
    """Embedder options for the registry contract test: an HTSAT-tiny checkpoint in the published format,
    on the CPU (fp32; a GPU would run bf16 under device=auto)."""
    require_extra()
    return {"checkpoint": str(write_checkpoint(tmp_path_factory.mktemp("clap") / PUBLISHED_NAME)), "device": "cpu"}
