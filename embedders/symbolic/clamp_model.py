"""CLaMP 3's symbolic music encoder (the M3 patch encoder + its projection) in plain PyTorch.

Architecture (learned from the public reference code, github.com/sanderwood/clamp3 ``code/utils.py``;
written here from scratch, no ``transformers`` needed at run time):

- Input: patches of byte-level character ids, (B, L, P) int64 with P = ``patch_size`` (64) and
  L <= ``max_patches`` (512); ids < 128 (0 pad, 1 bos, 2 eos; text is ASCII).
- ``symbolic_model.patch_embedding``: Linear(P * 128 -> H) applied to the one-hot encoding of each
  patch, i.e. a sum of P weight columns plus the bias. Computed here as ``embedding_bag`` over a
  contiguous (P * 128, H) copy of the transposed weight (rows read whole, no strided gathers),
  made once per weight version: the same numbers without a (B, L, P * 128) one-hot tensor.
- ``symbolic_model.base``: a BERT encoder (HF ``BertModel`` layout and key names) fed with
  ``inputs_embeds``: + absolute position embedding + token-type-0 embedding, LayerNorm (eps 1e-12),
  ``num_layers`` post-LN layers with H / 64 heads, GELU (erf) MLP of width 4H. Its word embedding
  (vocab 1) and pooler are never used but are part of the state dict, so they exist here too.
- Global feature: mean of the last hidden states over real patches, then ``symbolic_proj``:
  Linear(H -> projection_dim). Shapes: B batch, L patches, P patch size, H hidden size, D projection.

State-dict layout of the published checkpoints (``torch.save`` of a plain dict, read with
``weights_only=True`` by the authors themselves): ``{"model": state_dict, "epoch", "best_epoch",
"min_eval_loss", "modality", optionally "optimizer", "lr_sched"}``; ``state_dict`` holds the whole
CLaMP model (``text_model.*`` XLM-R, ``text_proj.*``, ``audio_model.*``, ``audio_proj.*``) beside
the two parts read here. CLaMP 3 names them ``symbolic_model.*`` / ``symbolic_proj.*``; CLaMP 2
names the same modules ``music_model.*`` / ``music_proj.*``. Keys (no ``module.`` prefix; one is
stripped if present)::

    symbolic_model.patch_embedding.{weight (H, P*128), bias (H)}
    symbolic_model.base.embeddings.{word_embeddings (1, H), position_embeddings (max_patches, H),
                                    token_type_embeddings (2, H)}.weight, .LayerNorm.{weight, bias}
    symbolic_model.base.encoder.layer.{i}.attention.self.{query, key, value}.{weight, bias}
    symbolic_model.base.encoder.layer.{i}.attention.output.{dense, LayerNorm}.{weight, bias}
    symbolic_model.base.encoder.layer.{i}.intermediate.dense.{weight, bias}     (4H, H)
    symbolic_model.base.encoder.layer.{i}.output.{dense, LayerNorm}.{weight, bias}
    symbolic_model.base.pooler.dense.{weight, bias}
    symbolic_proj.{weight (D, H), bias (D)}

Older ``transformers`` versions also saved the buffers ``base.embeddings.position_ids`` /
``token_type_ids``; they are ignored if present.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from embedders.base import CheckpointError

CHAR_VOCAB = 128  # one-hot width of a character id (the authors' ``num_classes=128``)
HEAD_DIM = 64  # the authors build BertConfig(num_attention_heads=hidden_size // 64)
PREFIXES = {"clamp3": ("symbolic_model.", "symbolic_proj."), "clamp2": ("music_model.", "music_proj.")}
_OWN_PREFIXES = PREFIXES["clamp3"]
_IGNORED_BUFFERS = ("base.embeddings.position_ids", "base.embeddings.token_type_ids")


@dataclass(frozen=True)
class M3Config:
    """Sizes of the symbolic encoder; the defaults are the published CLaMP 3 / CLaMP 2 checkpoints'."""

    hidden_size: int = 768  # M3_HIDDEN_SIZE
    num_layers: int = 12  # PATCH_NUM_LAYERS
    patch_size: int = 64  # PATCH_SIZE: characters per patch, bos and eos included
    max_patches: int = 512  # PATCH_LENGTH: position embeddings, and the segment length
    projection_dim: int = 768  # CLAMP3_HIDDEN_SIZE (CLAMP2_HIDDEN_SIZE)
    layer_norm_eps: float = 1e-12  # BertConfig default

    def __post_init__(self) -> None:
        if self.hidden_size < HEAD_DIM or self.hidden_size % HEAD_DIM:
            raise ValueError(f"hidden_size must be a positive multiple of {HEAD_DIM} (heads = hidden_size // 64), "
                             f"got {self.hidden_size}")
        if min(self.num_layers, self.projection_dim, self.max_patches) < 1 or self.patch_size < 3:
            raise ValueError(f"invalid M3 config {self}")

    @property
    def num_heads(self) -> int:
        return self.hidden_size // HEAD_DIM

    @property
    def intermediate_size(self) -> int:
        return 4 * self.hidden_size


# -- BERT pieces; attribute names are HF BertModel's so state-dict keys match one to one ------------
class _Embeddings(nn.Module):
    def __init__(self, c: M3Config):
        super().__init__()
        self.word_embeddings = nn.Embedding(1, c.hidden_size)  # unused: inputs arrive as embeddings
        self.position_embeddings = nn.Embedding(c.max_patches, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(2, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, H) -> (B, L, H)
        pos = self.position_embeddings.weight[: x.shape[1]]
        return self.LayerNorm(x + pos + self.token_type_embeddings.weight[0])


class _SelfAttention(nn.Module):
    def __init__(self, c: M3Config):
        super().__init__()
        self.heads = c.num_heads
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:  # (B, L, H), (B, 1, 1, L) bool
        b, n, h = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:  # (B, L, H) -> (B, heads, L, H / heads)
            return t.view(b, n, self.heads, h // self.heads).transpose(1, 2)

        ctx = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)),
                                             attn_mask=keep)
        return ctx.transpose(1, 2).reshape(b, n, h)


class _DenseNorm(nn.Module):
    """dense -> + residual -> LayerNorm (BertSelfOutput / BertOutput)."""

    def __init__(self, d_in: int, c: M3Config):
        super().__init__()
        self.dense = nn.Linear(d_in, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self, c: M3Config):
        super().__init__()
        self.self = _SelfAttention(c)
        self.output = _DenseNorm(c.hidden_size, c)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, keep), x)


class _Intermediate(nn.Module):
    def __init__(self, c: M3Config):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # exact (erf) GELU, BERT's "gelu"


class _Layer(nn.Module):
    def __init__(self, c: M3Config):
        super().__init__()
        self.attention = _Attention(c)
        self.intermediate = _Intermediate(c)
        self.output = _DenseNorm(c.intermediate_size, c)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        a = self.attention(x, keep)
        return self.output(self.intermediate(a), a)


class _LayerStack(nn.Module):
    def __init__(self, c: M3Config):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(c) for _ in range(c.num_layers))


class _Pooler(nn.Module):
    """Present for the state dict only; CLaMP pools by masked mean, not through this layer."""

    def __init__(self, c: M3Config):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)


class _Bert(nn.Module):
    def __init__(self, c: M3Config):
        super().__init__()
        self.embeddings = _Embeddings(c)
        self.encoder = _LayerStack(c)
        self.pooler = _Pooler(c)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # (B, L, H), (B, L) bool
        keep = mask[:, None, None, :]  # real patches are attended to, padding never
        h = self.embeddings(x)
        for layer in self.encoder.layer:
            h = layer(h, keep)
        return h  # last_hidden_state (B, L, H)


class M3PatchEncoder(nn.Module):
    def __init__(self, c: M3Config):
        super().__init__()
        self.config = c
        self.patch_embedding = nn.Linear(c.patch_size * CHAR_VOCAB, c.hidden_size)
        self.base = _Bert(c)
        # Offsets that turn character j with id v into row j * 128 + v of the one-hot layout.
        self.register_buffer("_offsets", torch.arange(c.patch_size) * CHAR_VOCAB, persistent=False)

    def _embedding_table(self) -> torch.Tensor:
        """The (P * 128, H) contiguous transpose of the patch-embedding weight, cached per weight version."""
        w = self.patch_embedding.weight
        if w.requires_grad:  # training: keep the copy in the autograd graph
            return w.t().contiguous()
        key = (w.data_ptr(), w._version, w.device, w.dtype)
        if getattr(self, "_table_key", None) != key:
            self._table, self._table_key = w.t().contiguous(), key
        return self._table

    def embed_patches(self, patches: torch.Tensor) -> torch.Tensor:  # (B, L, P) int64 -> (B, L, H) float32
        b, n, p = patches.shape
        rows = (patches + self._offsets).reshape(b * n, p)
        # Linear(one_hot(patches)) == bias + sum of the P selected weight columns.
        out = F.embedding_bag(rows, self._embedding_table(), mode="sum")
        return (out + self.patch_embedding.bias).reshape(b, n, -1)

    def forward(self, patches: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # -> (B, L, H)
        return self.base(self.embed_patches(patches), mask)


class CLaMPSymbolicModel(nn.Module):
    """``symbolic_model`` + ``symbolic_proj`` of CLaMP 3: patches -> one D-dim vector per sequence."""

    def __init__(self, config: M3Config):
        super().__init__()
        self.config = config
        self.symbolic_model = M3PatchEncoder(config)
        self.symbolic_proj = nn.Linear(config.hidden_size, config.projection_dim)

    def forward(self, patches: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L, P) int64 patches, (B, L) bool mask (True on real patches) -> (B, D) float32."""
        hidden = self.symbolic_model(patches, mask).float()  # pooled in fp32 even under autocast
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(dim=1) / m.sum(dim=1)  # (B, H) masked mean
        return self.symbolic_proj(pooled).float()


# -- checkpoints ---------------------------------------------------------------------------------
def read_state_dict(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(flat state dict, other top-level entries) of a CLaMP checkpoint, loaded with weights_only=True.

    Accepts the published ``{"model": state_dict, ...}`` dict and a bare state dict. Memory-mapped
    where the file format allows it, so a multi-GB checkpoint costs only the tensors later copied.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"CLaMP checkpoint not found: {path}")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # legacy (non-zip) torch.save files cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling, zip and EOF errors all mean: not a readable checkpoint
        first = str(exc).splitlines()[0] if str(exc) else ""
        hint = (" (it stores objects other than tensors and plain containers, which weights_only=True refuses "
                "to unpickle)" if "weights_only" in str(exc) or "Unsupported global" in str(exc) else "")
        raise CheckpointError(f"cannot read CLaMP checkpoint {path}: {type(exc).__name__}: {first}{hint}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"CLaMP checkpoint {path} holds a {type(obj).__name__}; expected a dict "
                              "{'model': state_dict, 'epoch': ..., ...} as the authors save it")
    if "model" in obj:
        state, extra = obj["model"], {k: v for k, v in obj.items() if k != "model"}
        if not isinstance(state, dict):
            raise CheckpointError(f"CLaMP checkpoint {path}: 'model' holds a {type(state).__name__}, expected a state dict")
    else:
        state, extra = obj, {}
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):  # saved from a DDP wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    return state, extra


def detect_variant(state: dict[str, torch.Tensor], path: str = "<checkpoint>") -> str:
    for variant, (enc, _) in PREFIXES.items():
        if any(k.startswith(enc) for k in state):
            return variant
    tops = sorted({k.split(".", 1)[0] for k in state})
    raise CheckpointError(
        f"CLaMP checkpoint {path} holds no symbolic encoder: expected keys starting with "
        f"{' or '.join(repr(p[0]) for p in PREFIXES.values())}; found top-level names {tops[:12]}")


def symbolic_state(state: dict[str, torch.Tensor], variant: str) -> dict[str, torch.Tensor]:
    """The encoder + projection entries of ``state``, renamed to this module's (CLaMP 3) key names."""
    enc, proj = PREFIXES[variant]
    out = {}
    for key, value in state.items():
        for theirs, ours in zip((enc, proj), _OWN_PREFIXES):
            if key.startswith(theirs):
                rest = key[len(theirs):]
                if rest not in _IGNORED_BUFFERS:
                    out[ours + rest] = value
    return out


def infer_config(sym: dict[str, torch.Tensor]) -> dict[str, int]:
    """Sizes a (renamed) symbolic state dict implies, as far as its tensors tell; for error messages."""
    found: dict[str, int] = {}
    w = sym.get("symbolic_model.patch_embedding.weight")
    if w is not None and w.ndim == 2:
        found["hidden_size"] = int(w.shape[0])
        found["patch_size"] = int(w.shape[1]) // CHAR_VOCAB
    pos = sym.get("symbolic_model.base.embeddings.position_embeddings.weight")
    if pos is not None and pos.ndim == 2:
        found["max_patches"] = int(pos.shape[0])
    layers = {int(m.group(1)) for k in sym if (m := re.match(r"symbolic_model\.base\.encoder\.layer\.(\d+)\.", k))}
    if layers:
        found["num_layers"] = max(layers) + 1
    p = sym.get("symbolic_proj.weight")
    if p is not None and p.ndim == 2:
        found["projection_dim"] = int(p.shape[0])
    return found


def load_symbolic_model(path: str | os.PathLike[str], config: M3Config, variant: str = "auto"
                        ) -> tuple[CLaMPSymbolicModel, str, dict[str, Any]]:
    """Build the encoder for ``config`` and fill it from a CLaMP 3 (or CLaMP 2) checkpoint file.

    Returns (model in eval mode on CPU, the variant read, the checkpoint's other top-level entries).
    Every mismatch raises CheckpointError naming the file, the missing / unexpected keys, shape
    mismatches and the sizes the checkpoint implies.
    """
    path = os.fspath(path)
    state, extra = read_state_dict(path)
    found_variant = detect_variant(state, path) if variant == "auto" else variant
    if found_variant not in PREFIXES:
        raise CheckpointError(f"unknown CLaMP variant {variant!r}; expected one of {sorted(PREFIXES)} or 'auto'")
    sym = symbolic_state(state, found_variant)
    model = CLaMPSymbolicModel(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    enc, proj = PREFIXES[found_variant]
    missing = sorted(set(expected) - set(sym))
    unexpected = sorted(set(sym) - set(expected))
    wrong = [f"{k}: expected {expected[k]}, found {tuple(sym[k].shape)}"
             for k in sorted(set(expected) & set(sym)) if tuple(sym[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        implied = infer_config(sym)
        differs = {k: v for k, v in implied.items() if getattr(config, k) != v}
        parts = [f"CLaMP checkpoint {path} ({found_variant}: keys '{enc}*', '{proj}*') does not fit the "
                 f"configured encoder {config}."]
        if missing:
            parts.append(f"Missing {len(missing)} of {len(expected)} expected keys, e.g. "
                         f"{[k.replace(_OWN_PREFIXES[0], enc, 1).replace(_OWN_PREFIXES[1], proj, 1) for k in missing[:6]]}.")
        if unexpected:
            parts.append(f"Unexpected {len(unexpected)} keys, e.g. {unexpected[:6]}.")
        if wrong:
            parts.append(f"Shape mismatches: {wrong[:6]}.")
        if differs:
            parts.append("The checkpoint's tensors imply " + ", ".join(f"{k}={v}" for k, v in differs.items())
                         + ": set these options (e.g. --symbolic_option hidden_size=...).")
        raise CheckpointError(" ".join(parts))
    # Copy out of the memory map: the file may be replaced later, and the rest of it is never paged in.
    model.load_state_dict({k: v.detach().clone().float() for k, v in sym.items()}, strict=True)
    meta = {k: v for k, v in extra.items() if isinstance(v, (int, float, str, bool))}
    return model.eval(), found_variant, meta

