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
from real tokens and pooling (in float32) ignores it. A score's vectors are the same (within float
rounding) whether it is embedded alone or with others.

Stages: ``prepare`` tokenises and chunks a score on the CPU (a list of int32 id arrays, no model
needed: the tokenizer comes from the checkpoint); ``forward`` batches the chunks of all items,
longest first, at most ``MAX_BATCH_TOKENS`` padded tokens (and ``batch_size`` chunks, if set) per
pass. Device (auto: CUDA when visible), precision (auto: bf16 autocast on CUDA, fp32 on CPU),
model cache and hashing (the config hash includes the checkpoint's SHA-256, so new weights at the
same path give new store rows) are embedders/torch_embedder.py's.

Model, tokenizer and chunking are this package's siblings of this module; ``training`` imports them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from embedders.base import CheckpointError, ConfigError, EmbedderConfig, EmbeddingFailedError, EmptyInputError
from embedders.registry import register
from embedders.torch_embedder import TorchEmbedder, TorchEmbedderConfig, memo

HOW_TO_GET = ("train one with `python -m ray_jobs.pretrain`, then pass its checkpoint file "
              "with --symbolic_checkpoint PATH (or checkpoint=PATH)")
MAX_BATCH_TOKENS = 16384  # chunks per forward pass are limited by padded tokens, to bound memory


@dataclasses.dataclass(frozen=True)
class MIDITransformerEmbedderConfig(TorchEmbedderConfig):
    embedder: ClassVar[str] = "midi_transformer"

    max_seq_len: int = 0  # 0: the model's max_seq_len

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_seq_len < 0:
            raise ConfigError(f"midi_transformer: max_seq_len must be >= 0, got {self.max_seq_len}")


def checkpoint_config(path: str):
    """The model config stored in the checkpoint (memory-mapped read: cheap even for big files)."""
    from embedders.symbolic.midi_transformer.transformer import config_from_checkpoint, read_checkpoint

    return memo("midi_transformer_config", path, lambda p: config_from_checkpoint(read_checkpoint(p, mmap=True), p))


def checkpoint_tokenizer_params(path: str) -> str:
    from embedders.symbolic.midi_transformer.transformer import read_checkpoint

    return memo("midi_transformer_tokenizer", path, lambda p: str(read_checkpoint(p, mmap=True)["tokenizer"]))


@register
class MIDITransformerEmbedder(TorchEmbedder):
    name: ClassVar[str] = "midi_transformer"
    modality: ClassVar[str] = "symbolic"
    sample_rate: ClassVar[int | None] = None
    Config: ClassVar[type[EmbedderConfig]] = MIDITransformerEmbedderConfig
    hop_seconds = None  # frames are chunks of tokens
    default_batch_size: ClassVar[int] = 16
    network_fields: ClassVar[tuple[str, ...]] = ()  # the checkpoint alone defines the network
    source_modules: ClassVar[tuple[str, ...]] = tuple(
        f"embedders.symbolic.midi_transformer.{m}" for m in ("transformer", "tokenizer", "chunking"))
    forward_batch: ClassVar[dict[str, int]] = {"cpu": MAX_BATCH_TOKENS, "cuda": MAX_BATCH_TOKENS}  # tokens bound it
    packages: ClassVar[tuple[str, ...]] = ("miditok", "symusic")
    how_to_get: ClassVar[str] = HOW_TO_GET
    weights_label: ClassVar[str] = "midi_transformer checkpoint"

    def __init__(self, config: MIDITransformerEmbedderConfig | None = None, *, load: bool = True):
        super().__init__(config, load=load)  # output_dim() validates the checkpoint path and reads its config
        from embedders.symbolic.midi_transformer.tokenizer import special_ids, tokenizer_from_params

        cfg: MIDITransformerEmbedderConfig = self.config  # type: ignore[assignment]
        self.model_config = checkpoint_config(self.weights_path)
        self.tokenizer = tokenizer_from_params(checkpoint_tokenizer_params(self.weights_path))
        self.pad_id = special_ids(self.tokenizer).pad
        self.max_seq_len = cfg.max_seq_len or self.model_config.max_seq_len
        if self.max_seq_len > self.model_config.max_seq_len:
            raise ConfigError(f"midi_transformer: max_seq_len {self.max_seq_len} exceeds the model's "
                              f"{self.model_config.max_seq_len} (its position embeddings stop there)")
        if len(self.tokenizer) != self.model_config.vocab_size:
            raise CheckpointError(f"checkpoint {cfg.checkpoint}: tokenizer has {len(self.tokenizer)} ids but the "
                                  f"model embeds {self.model_config.vocab_size}")

    def load_model(self, path: str):
        from embedders.symbolic.midi_transformer.transformer import load_checkpoint

        return load_checkpoint(path).model

    # -- self-description --------------------------------------------------------------------
    @classmethod
    def output_dim(cls, config: EmbedderConfig) -> int:
        return int(checkpoint_config(cls.locate_weights(config)).embed_dim)

    @classmethod
    def describe_config(cls, config: EmbedderConfig, *, cuda: bool | None = None) -> dict[str, Any]:
        out = super().describe_config(config, cuda=cuda)
        out["model_config"] = dataclasses.asdict(checkpoint_config(cls.locate_weights(config)))
        return out

    # -- embedding ---------------------------------------------------------------------------
    def prepare(self, score: Any) -> list[np.ndarray]:
        """One score's chunks of token ids (int32 arrays of at most ``max_seq_len``)."""
        from embedders.symbolic.midi_transformer.chunking import tokenize_to_chunks

        try:
            chunks = tokenize_to_chunks(self.tokenizer, score, self.max_seq_len)
        except (ValueError, IndexError, KeyError, RuntimeError) as exc:  # MidiTok on an odd score
            raise EmbeddingFailedError(None, f"tokenizer failed: {type(exc).__name__}: {exc}") from None
        if not chunks:
            raise EmptyInputError(None, "score yields no tokens (no notes in the tokenizer's range)")
        return chunks

    def forward(self, prepared: Sequence[list[np.ndarray]]) -> list[np.ndarray]:
        """Chunks per item -> (T_i = chunks, D) mean-pooled final states."""
        import torch

        flat = [c for chunks in prepared for c in chunks]
        # Longest first, so each forward pass pads little; padding does not change results anyway.
        order = sorted(range(len(flat)), key=lambda k: -len(flat[k]))
        pooled = np.zeros((len(flat), self.dim), dtype=np.float32)
        start = 0
        while start < len(order):
            width = len(flat[order[start]])
            take = order[start:start + max(1, min(self.batch_size, MAX_BATCH_TOKENS // width))]
            ids = torch.full((len(take), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(take), width), dtype=torch.bool)
            for r, k in enumerate(take):
                chunk = torch.from_numpy(np.asarray(flat[k], dtype=np.int64))
                ids[r, :len(chunk)], mask[r, :len(chunk)] = chunk, True
            with self.inference():
                _, vec = self.model.embed(self.to_device(ids), self.to_device(mask))  # (b, D)
            pooled[take] = vec.float().cpu().numpy()
            start += len(take)
        bounds = np.cumsum([0, *(len(chunks) for chunks in prepared)])
        return [pooled[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
