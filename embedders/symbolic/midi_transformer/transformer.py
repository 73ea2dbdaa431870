"""The seed's MIDI transformer: ``MIDITransformerEncoder``, BERT-style masking, MLM loss, checkpoints.

Shapes: B batch, L sequence length (<= max_seq_len), D embed_dim, V vocab_size, N masked positions.
Padding is on the right; ``attention_mask`` is True on real tokens. Padded positions never influence
real ones (key padding mask), and pooling ignores them, so an embedding does not depend on how much
padding its batch needed.

Checkpoint format (``format_version`` 1): a plain dict that ``torch.load(..., weights_only=True)``
reads: ``model_state`` (state dict of the unwrapped module: no DDP ``module.`` / torch.compile
``_orig_mod.`` prefixes), ``model_config`` (``asdict(MIDITransformerConfig)``), ``tokenizer`` (the
MidiTok tokenizer as a JSON string, so a checkpoint alone can embed MIDI), ``format_version``, plus
the caller's extras (epoch, val_loss, optimizer_state, ...).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embedders.base import CheckpointError
from embedders.store.atomic import atomic_path

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "model_state", "model_config", "tokenizer")
_PREFIXES = ("module.", "_orig_mod.")  # DDP, torch.compile
IGNORE = -100  # label of positions that are not predicted


@dataclass(frozen=True)
class MIDITransformerConfig:
    vocab_size: int
    max_seq_len: int = 2048
    embed_dim: int = 384
    nhead: int = 4
    num_layers: int = 2
    dropout: float = 0.2
    pad_id: int = 0
    mask_id: int = 3
    ff_mult: int = 4
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self) -> None:
        if self.embed_dim % self.nhead:
            raise ValueError(f"embed_dim ({self.embed_dim}) must be divisible by nhead ({self.nhead})")
        if min(self.vocab_size, self.max_seq_len, self.num_layers, self.ff_mult) < 1:
            raise ValueError(f"invalid transformer config {self}")

    @property
    def special_ids(self) -> tuple[int, ...]:
        """Ids never masked nor used as random replacements."""
        return (self.pad_id, self.bos_id, self.eos_id, self.mask_id)


class MIDITransformerEncoder(nn.Module):
    """Token + learned position embeddings -> pre-norm GELU encoder layers -> LayerNorm; tied MLM head."""

    def __init__(self, config: MIDITransformerConfig):
        super().__init__()
        self.config = config
        d = config.embed_dim
        self.token_emb = nn.Embedding(config.vocab_size, d, padding_idx=config.pad_id)
        self.pos_emb = nn.Embedding(config.max_seq_len, d)
        self.drop = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(d, config.nhead, d * config.ff_mult, config.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        # Nested tensors are off: they do not support norm_first and would only warn.
        self.encoder = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        # MLM head: logits = h @ token_emb.weight.T + bias (weights tied, only the bias is its own).
        self.mlm_bias = nn.Parameter(torch.zeros(config.vocab_size))
        nn.init.normal_(self.token_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        with torch.no_grad():
            self.token_emb.weight[config.pad_id].zero_()

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, L) ids, (B, L) bool -> (B, L, D) contextual states (values at padded positions are junk).

        ``attention_mask`` None means no padding: attention then runs without a mask, which lets
        CUDA use its fused kernels (a padding mask rules out flash attention).
        """
        length = input_ids.shape[1]
        if length > self.config.max_seq_len:
            raise ValueError(f"sequence length {length} exceeds max_seq_len {self.config.max_seq_len}")
        pos = torch.arange(length, device=input_ids.device)  # (L,)
        x = self.drop(self.token_emb(input_ids) + self.pos_emb(pos)[None])  # (B, L, D)
        padding = None if attention_mask is None else ~attention_mask.bool()
        x = self.encoder(x, src_key_padding_mask=padding)  # (B, L, D)
        return self.norm(x)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                positions: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Logits (B, L, V); with ``positions``, only those rows: (N, V). ``positions`` is a (B, L) bool
        mask or a (rows (N,), cols (N,)) pair of index tensors (its size is known without a device sync).

        Selecting inside forward saves the (B, L, V) projection in training and keeps DDP's
        forward hooks in the path (calling another method on a DDP module would bypass them).
        """
        h = self.encode(input_ids, attention_mask)  # (B, L, D)
        if positions is not None:
            h = h[positions]  # (N, D)
        return F.linear(h, self.token_emb.weight, self.mlm_bias)  # (B, L, V) or (N, V)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (sequence (B, L, D), pooled (B, D) float32): pooled = mean over the real (non-pad) positions,
        summed in float32 even under autocast (a bf16 sum over thousands of tokens loses digits)."""
        h = self.encode(input_ids, attention_mask)  # (B, L, D)
        keep = attention_mask.bool()[..., None]  # (B, L, 1)
        # where, not multiply: padded rows may hold NaN on the inference fast path, and NaN * 0 = NaN
        total = torch.where(keep, h.float(), torch.zeros((), device=h.device)).sum(1)  # (B, D)
        pooled = total / keep.sum(1).clamp(min=1)  # (B, D)
        return h, pooled


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        inner = getattr(model, "module", None) if inner is None else inner
        if not isinstance(inner, nn.Module):
            return model
        model = inner


# ---------------------------------------------------------------------------------------------
# Masked language modelling
# ---------------------------------------------------------------------------------------------
def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, mask_id: int, vocab_size: int,
                special_ids: tuple[int, ...] | list[int], prob: float = 0.15,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: pick ~``prob`` of the real, non-special tokens (at least one per sequence that has
    any); of those 80% -> MASK, 10% -> a random non-special token, 10% unchanged.

    Returns (masked_ids (B, L), labels (B, L): the original id at picked positions, -100 elsewhere).
    Random numbers come from ``generator`` on its own device, so a CPU generator gives the same
    masks whatever device the ids live on.
    """
    device = input_ids.device
    gdev = generator.device if generator is not None else device
    shape = input_ids.shape
    special = torch.tensor(sorted(set(int(s) for s in special_ids)), device=device)
    eligible = attention_mask.bool() & ~torch.isin(input_ids, special)  # (B, L)
    r_pick = torch.rand(shape, generator=generator, device=gdev).to(device)
    r_fallback = torch.rand(shape, generator=generator, device=gdev).to(device)
    r_action = torch.rand(shape, generator=generator, device=gdev).to(device)
    keep = torch.ones(vocab_size, dtype=torch.bool, device=device)
    keep[special[special < vocab_size]] = False
    allowed = keep.nonzero().squeeze(1)  # (V - specials,) ids a random replacement may take
    r_token = torch.randint(len(allowed), shape, generator=generator, device=gdev).to(device)

    picked = (r_pick < prob) & eligible
    # a sequence with no pick would contribute nothing: pick its highest-scoring eligible token
    lacking = ~picked.any(1) & eligible.any(1)  # (B,)
    fallback = torch.where(eligible, r_fallback, torch.full_like(r_fallback, -1.0)).argmax(1)  # (B,)
    picked[lacking, fallback[lacking]] = True

    labels = torch.where(picked, input_ids, torch.full_like(input_ids, IGNORE))
    masked = input_ids.clone()
    masked[picked & (r_action < 0.8)] = mask_id
    swap = picked & (r_action >= 0.8) & (r_action < 0.9)
    masked[swap] = allowed[r_token][swap]
    return masked, labels


class MLMLoss(NamedTuple):
    loss: torch.Tensor  # mean cross-entropy per masked token (for backward)
    loss_sum: torch.Tensor  # summed over masked tokens, detached (for exact aggregation)
    n_masked: int


def masked_lm_loss(model: nn.Module, masked_ids: torch.Tensor, attention_mask: torch.Tensor,
                   labels: torch.Tensor) -> MLMLoss:
    """Cross-entropy of ``model`` at the positions where labels != -100."""
    positions = labels != IGNORE  # (B, L)
    logits = model(masked_ids, attention_mask, positions)  # (N, V)
    targets = labels[positions]  # (N,)
    loss_sum = F.cross_entropy(logits.float(), targets, reduction="sum")
    n = int(targets.numel())
    return MLMLoss(loss_sum / max(n, 1), loss_sum.detach(), n)


def mlm_loss(model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None,
             prob: float = 0.15) -> MLMLoss:
    """Mask ``batch`` (where its tensors live) and score ``model`` on the masked tokens (on its device)."""
    cfg = unwrap(model).config
    device = next(model.parameters()).device
    masked, labels = mask_tokens(batch["input_ids"], batch["attention_mask"], cfg.mask_id, cfg.vocab_size,
                                 cfg.special_ids, prob, generator)
    return masked_lm_loss(model, masked.to(device), batch["attention_mask"].to(device), labels.to(device))


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------
def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        while key.startswith(_PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def _plain(value: Any, where: str) -> Any:
    """Check (and convert numpy scalars in) a value so that weights_only loading accepts it."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):
        return {k: _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"checkpoint value {where} has type {type(value).__name__}; only tensors, dicts, lists, "
                    "str, int, float, bool and None can be loaded with weights_only=True")


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, config: MIDITransformerConfig,
                    tokenizer_params: dict | str, extra: dict[str, Any] | None = None) -> Path:
    """Write the checkpoint atomically (tmp file in the same folder + os.replace)."""
    import json

    extra = dict(extra or {})
    clash = sorted(set(extra) & set(REQUIRED_KEYS))
    if clash:
        raise ValueError(f"extra keys {clash} are reserved by the checkpoint format")
    own = getattr(unwrap(model), "config", config)
    if own != config:  # the checkpoint would not load: catch it when saving, not months later
        raise ValueError(f"save_checkpoint: config {config} differs from the model's own {own}")
    state = {k: v.detach().cpu().clone() for k, v in strip_prefixes(unwrap(model).state_dict()).items()}
    ckpt = {"format_version": FORMAT_VERSION, "model_state": state,
            "model_config": _plain(dataclasses.asdict(config), "model_config"),
            "tokenizer": tokenizer_params if isinstance(tokenizer_params, str)
            else json.dumps(tokenizer_params, sort_keys=True),
            **{k: _plain(v, k) for k, v in extra.items()}}
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return path


def read_checkpoint(path: str | os.PathLike[str], mmap: bool = False) -> dict[str, Any]:
    """The raw checkpoint dict, checked for the required keys; ``mmap`` makes reading the config cheap."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # unpickling, zip and EOF errors all mean: not a readable checkpoint
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(ckpt).__name__}, expected a dict")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks key(s) {missing} (has {sorted(ckpt)}); "
                              "it was not written by save_checkpoint of embedders.symbolic.midi_transformer.transformer")
    if ckpt["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format_version {ckpt['format_version']}, "
                              f"this code reads {FORMAT_VERSION}")
    return ckpt


def config_from_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike[str] = "<checkpoint>") -> MIDITransformerConfig:
    fields = {f.name for f in dataclasses.fields(MIDITransformerConfig)}
    cfg = dict(ckpt["model_config"])
    unknown = sorted(set(cfg) - fields)
    if unknown:
        raise CheckpointError(f"checkpoint {path}: model_config has unknown key(s) {unknown}")
    try:
        return MIDITransformerConfig(**cfg)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path}: invalid model_config: {exc}") from None


@dataclass
class LoadedCheckpoint:
    model: MIDITransformerEncoder  # in eval mode
    config: MIDITransformerConfig
    tokenizer_params: str
    extra: dict[str, Any]
    path: Path


def load_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Rebuild the model from a checkpoint; every mismatch raises CheckpointError naming ``path``."""
    ckpt = read_checkpoint(path)
    config = config_from_checkpoint(ckpt, path)
    model = MIDITransformerEncoder(config)
    try:
        model.load_state_dict(strip_prefixes(ckpt["model_state"]), strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise CheckpointError(f"checkpoint {path} does not fit MIDITransformerEncoder({config}): "
                              f"{detail[:1500]}") from None
    extra = {k: v for k, v in ckpt.items() if k not in REQUIRED_KEYS}
    return LoadedCheckpoint(model.to(device).eval(), config, str(ckpt["tokenizer"]), extra, Path(path))


def perplexity(loss: float) -> float:
    """exp(loss), inf instead of an overflow."""
    return math.exp(loss) if loss < 700 else math.inf
