"""``midi_transformer``: the project's own pretrained MIDI transformer as a symbolic embedder.

Needs a checkpoint from ``python -m ray_jobs.pretrain`` (passed to generate_embeddings as
``--symbolic_checkpoint PATH``). The checkpoint is self-contained: weights, model config and the
MidiTok tokenizer (as JSON), so no other file is needed; it is read with ``weights_only=True``.

Frames are CHUNKS, not a time grid (``hop_seconds = None``): a score is tokenized and cut into
chunks of at most ``max_seq_len`` tokens with the same context-preserving chunking as pretraining
(``chunking.tokenize_to_chunks``: each later chunk restarts with the time signature
and tempo in force), and each chunk becomes ONE vector, the mean of the encoder's final states over
its real tokens. So the output is (T = number of chunks, D = embed_dim). Per-token states would
be thousands of rows per piece (and per-token rows do not align with anything in the audio); the
store's ``average`` is then the unweighted mean over chunks, so a short last chunk weighs as much
as a full one (for most pieces T is 1 or 2 at max_seq_len 2048).

Batch invariance: chunks are padded only inside the batch, the key padding mask hides the padding
from real tokens and pooling ignores it; all in float32. A score's vectors are the same (within
float rounding) whether it is embedded alone or with others.

The config hash includes the SHA-256 of the checkpoint file, so new weights at the same path give
new store rows instead of silently mixing with the old ones.

Model, tokenizer and chunking are this package's siblings of this module; ``training`` imports them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from embedders.base import CheckpointError, ConfigError, Embedder, EmbedderConfig, EmbeddingFailedError, EmptyInputError
from embedders.registry import register

HOW_TO_GET = ("train one with `python -m ray_jobs.pretrain`, then pass its checkpoint file "
              "with --symbolic_checkpoint PATH (or checkpoint=PATH)")
MAX_BATCH_TOKENS = 16384  # chunks per forward pass are limited by padded tokens, to bound memory
_CACHE: dict[tuple[str, str, int, int], Any] = {}  # (what, path, size, mtime_ns) -> value


@dataclasses.dataclass(frozen=True)
class MIDITransformerEmbedderConfig(EmbedderConfig):
    checkpoint: str = ""
    device: str = "cpu"
    max_seq_len: int = 0  # 0: the model's max_seq_len

    def __post_init__(self) -> None:
        if self.max_seq_len < 0:
            raise ConfigError(f"midi_transformer: max_seq_len must be >= 0, got {self.max_seq_len}")


def _file_id(path: str) -> tuple[str, int, int]:
    if not path:
        raise CheckpointError(f"embedder 'midi_transformer' needs a checkpoint: {HOW_TO_GET}")
    try:
        st = os.stat(path)
    except OSError:
        raise CheckpointError(f"midi_transformer checkpoint not found: {path}; {HOW_TO_GET}") from None
    return os.path.abspath(path), int(st.st_size), int(st.st_mtime_ns)


def _cached(what: str, path: str, make):
    """Memoise per checkpoint file version (a rewritten file has a new mtime or size)."""
    key = (what, *_file_id(path))
    if key not in _CACHE:
        _CACHE[key] = make(key[1])
    return _CACHE[key]


def checkpoint_sha256(path: str) -> str:
    def digest(p: str) -> str:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    return _cached("sha256", path, digest)


def checkpoint_config(path: str):
    """The model config stored in the checkpoint (memory-mapped read: cheap even for big files)."""
    from embedders.symbolic.midi_transformer.transformer import config_from_checkpoint, read_checkpoint

    return _cached("config", path, lambda p: config_from_checkpoint(read_checkpoint(p, mmap=True), p))


@register
class MIDITransformerEmbedder(Embedder):
    name: ClassVar[str] = "midi_transformer"
    modality: ClassVar[str] = "symbolic"
    sample_rate: ClassVar[int | None] = None
    Config: ClassVar[type[EmbedderConfig]] = MIDITransformerEmbedderConfig
    hop_seconds = None  # frames are chunks of tokens
    default_batch_size: ClassVar[int] = 16

    def __init__(self, config: MIDITransformerEmbedderConfig | None = None):
        super().__init__(config)  # output_dim() validates the checkpoint path and reads its config
        import torch

        from embedders.symbolic.midi_transformer.tokenizer import special_ids, tokenizer_from_params
        from embedders.symbolic.midi_transformer.transformer import load_checkpoint

        cfg = self.config
        if cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"midi_transformer: device {cfg.device!r} requested but CUDA is not available")
        loaded = load_checkpoint(cfg.checkpoint, device=cfg.device)
        self.model, self.model_config = loaded.model, loaded.config
        self.tokenizer = tokenizer_from_params(loaded.tokenizer_params)
        self.pad_id = special_ids(self.tokenizer).pad
        self.max_seq_len = cfg.max_seq_len or self.model_config.max_seq_len
        if self.max_seq_len > self.model_config.max_seq_len:
            raise ConfigError(f"midi_transformer: max_seq_len {self.max_seq_len} exceeds the model's "
                              f"{self.model_config.max_seq_len} (its position embeddings stop there)")
        if len(self.tokenizer) != self.model_config.vocab_size:
            raise CheckpointError(f"checkpoint {cfg.checkpoint}: tokenizer has {len(self.tokenizer)} ids but the "
                                  f"model embeds {self.model_config.vocab_size}")

    # -- self-description --------------------------------------------------------------------
    @classmethod
    def output_dim(cls, config: EmbedderConfig) -> int:
        return int(checkpoint_config(config.checkpoint).embed_dim)  # type: ignore[attr-defined]

    @classmethod
    def source_hash(cls) -> str:
        """Also the model, tokenizer and chunking code: a change there changes outputs."""
        import inspect

        from embedders.symbolic.midi_transformer import chunking, tokenizer, transformer

        digest = hashlib.sha256(super().source_hash().encode())
        for module in (transformer, tokenizer, chunking):
            digest.update(inspect.getsource(module).encode())
        return digest.hexdigest()[:16]

    @classmethod
    def hash_config(cls, config: EmbedderConfig) -> str:
        base = super().hash_config(config)
        return hashlib.sha256(f"{base}:{checkpoint_sha256(config.checkpoint)}".encode()).hexdigest()[:16]  # type: ignore[attr-defined]

    @classmethod
    def describe_config(cls, config: EmbedderConfig) -> dict[str, Any]:
        out = super().describe_config(config)
        out["checkpoint_sha256"] = checkpoint_sha256(config.checkpoint)  # type: ignore[attr-defined]
        out["model_config"] = dataclasses.asdict(checkpoint_config(config.checkpoint))  # type: ignore[attr-defined]
        return out

    # -- embedding ---------------------------------------------------------------------------
    def _chunks(self, score: Any) -> list[np.ndarray]:
        from embedders.symbolic.midi_transformer.chunking import tokenize_to_chunks

        try:
            chunks = tokenize_to_chunks(self.tokenizer, score, self.max_seq_len)
        except (ValueError, IndexError, KeyError, RuntimeError) as exc:  # MidiTok on an odd score
            raise EmbeddingFailedError(None, f"tokenizer failed: {type(exc).__name__}: {exc}") from None
        if not chunks:
            raise EmptyInputError(None, "score yields no tokens (no notes in the tokenizer's range)")
        return chunks

    def embed(self, items: Sequence[Any]) -> list[np.ndarray]:
        import torch

        per_item = [self._chunks(score) for score in items]
        flat = [(i, c) for i, chunks in enumerate(per_item) for c in chunks]
        # Longest first, so each forward pass pads little; padding does not change results anyway.
        order = sorted(range(len(flat)), key=lambda k: -len(flat[k][1]))
        pooled = np.zeros((len(flat), self.dim), dtype=np.float32)
        device = torch.device(self.config.device)
        with torch.inference_mode():
            start = 0
            while start < len(order):
                width = len(flat[order[start]][1])
                take = order[start:start + max(1, MAX_BATCH_TOKENS // width)]
                ids = torch.full((len(take), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(take), width), dtype=torch.bool)
                for r, k in enumerate(take):
                    chunk = torch.from_numpy(flat[k][1].astype(np.int64))
                    ids[r, :len(chunk)], mask[r, :len(chunk)] = chunk, True
                _, vec = self.model.embed(ids.to(device), mask.to(device))  # (b, D)
                pooled[take] = vec.float().cpu().numpy()
                start += len(take)
        out, k = [], 0
        for chunks in per_item:
            out.append(self.check_output(None, pooled[k:k + len(chunks)]))
            k += len(chunks)
        return out
