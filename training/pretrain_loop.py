"""Plain-PyTorch pretraining steps for the MIDI transformer (masked-token modelling); no Ray here.

The Ray Train wrapper (ray_jobs.pretrain) wraps the model in DDP, shards the loaders and calls
these per epoch. Losses are per masked token: each function returns ``loss_sum`` and
``masked_tokens`` besides the mean, so workers can all-reduce the two sums and divide once (the
mean of per-worker means would weight workers wrongly).

Evaluation masks each sequence with a generator seeded from (seed, its token ids), so the masked
positions are the same in every epoch, for every batch size and DDP sharding, and for the
unigram baseline that ``unigram_perplexity`` computes on exactly the same positions.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from embedders.symbolic.midi_transformer.transformer import IGNORE, mask_tokens, masked_lm_loss, mlm_loss, perplexity, unwrap


# ---------------------------------------------------------------------------------------------
# Optimiser and schedule
# ---------------------------------------------------------------------------------------------
def make_optimizer(model: nn.Module, lr: float, weight_decay: float,
                   betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.AdamW:
    """AdamW; weight decay only on matrices of linear/attention layers, not on norms, biases, embeddings
    (decaying those pulls rare tokens' embeddings and LayerNorm gains towards 0 for no benefit)."""
    decay, no_decay, seen = [], [], set()
    for module in unwrap(model).modules():
        for _, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            plain = isinstance(module, (nn.LayerNorm, nn.Embedding)) or p.ndim < 2
            (no_decay if plain else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas)


class WarmupCosine:
    """LR factor: linear warmup over ``warmup`` steps, then cosine from 1 to ``min_ratio`` at ``total_steps``."""

    def __init__(self, total_steps: int, warmup: int, min_ratio: float = 0.0):
        self.total_steps, self.warmup, self.min_ratio = max(1, int(total_steps)), max(0, int(warmup)), min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total_steps - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup: int,
                   min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Step it once per optimizer step (train_one_epoch does)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(total_steps, warmup, min_ratio))


# ---------------------------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------------------------
def _autocast(device: torch.device, amp_dtype: torch.dtype | None):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def train_one_epoch(model: nn.Module, loader: Iterable[dict[str, torch.Tensor]], optimizer: torch.optim.Optimizer,
                    scheduler: Any | None, device: str | torch.device, amp_dtype: torch.dtype | None = None,
                    grad_clip: float | None = 1.0, generator: torch.Generator | None = None,
                    max_steps: int | None = None) -> dict[str, float]:
    """One pass over ``loader`` (batches from ``collate``, on CPU; masked there with ``generator``).

    Returns loss (mean per masked token), tokens (real tokens seen), seconds, tokens_per_s, lr
    (after the last step), steps, loss_sum, masked_tokens.
    """
    device = torch.device(device)
    # float16 needs loss scaling against underflow; bfloat16 and float32 do not
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 and device.type == "cuda" else None
    model.train()
    loss_sum = torch.zeros((), device=device)
    masked = tokens = steps = 0
    start = time.perf_counter()
    for batch in loader:
        if max_steps is not None and steps >= max_steps:
            break
        with _autocast(device, amp_dtype):
            out = mlm_loss(model, batch, generator)
        tokens += int(batch["attention_mask"].sum())
        if out.n_masked == 0:
            continue
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(out.loss).backward()
            scaler.unscale_(optimizer)
        else:
            out.loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += out.loss_sum
        masked += out.n_masked
        steps += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    total = float(loss_sum)
    return {"loss": total / max(masked, 1), "tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds if seconds > 0 else 0.0, "lr": float(optimizer.param_groups[0]["lr"]),
            "steps": steps, "loss_sum": total, "masked_tokens": masked}


def eval_mask(batch: dict[str, torch.Tensor], seed: int, mask_id: int, vocab_size: int,
              special_ids: Iterable[int], prob: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic masking per sequence: generator seeded by (seed, the sequence's real ids).

    Independent of batch composition, padding, order and device, so eval numbers are comparable
    across epochs, batch sizes and workers.
    """
    ids, attn = batch["input_ids"].cpu(), batch["attention_mask"].cpu().bool()
    masked, labels = ids.clone(), torch.full_like(ids, IGNORE)
    special = tuple(special_ids)
    for r in range(ids.shape[0]):
        n = int(attn[r].sum())
        row = ids[r:r + 1, :n]
        digest = hashlib.sha256(f"{seed}:".encode() + row.numpy().astype(np.int64).tobytes()).digest()
        g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        m, lab = mask_tokens(row, attn[r:r + 1, :n], mask_id, vocab_size, special, prob, g)
        masked[r, :n], labels[r, :n] = m[0], lab[0]
    return masked, labels


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[dict[str, torch.Tensor]], device: str | torch.device,
             generator_seed: int = 0, prob: float = 0.15, amp_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Masked-token loss per masked token and its perplexity, on fixed masks; tokens = masked tokens scored."""
    device = torch.device(device)
    cfg = unwrap(model).config
    was_training = model.training
    model.eval()
    loss_sum, masked_n = 0.0, 0
    for batch in loader:
        masked, labels = eval_mask(batch, generator_seed, cfg.mask_id, cfg.vocab_size, cfg.special_ids, prob)
        with _autocast(device, amp_dtype):
            out = masked_lm_loss(model, masked.to(device), batch["attention_mask"].to(device), labels.to(device))
        loss_sum += float(out.loss_sum)
        masked_n += out.n_masked
    model.train(was_training)
    loss = loss_sum / max(masked_n, 1)
    return {"loss": loss, "perplexity": perplexity(loss), "tokens": masked_n, "loss_sum": loss_sum,
            "masked_tokens": masked_n}


# ---------------------------------------------------------------------------------------------
# Unigram baseline
# ---------------------------------------------------------------------------------------------
def count_tokens(sequences: Iterable[Any], vocab_size: int, special_ids: Iterable[int] = ()) -> np.ndarray:
    """Token frequencies (V,) int64 over ``sequences`` (arrays/tensors of ids), special ids left at 0."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for seq in sequences:
        arr = seq.numpy() if isinstance(seq, torch.Tensor) else np.asarray(seq)
        counts += np.bincount(arr.ravel().astype(np.int64), minlength=vocab_size)[:vocab_size]
    counts[[s for s in special_ids if 0 <= s < vocab_size]] = 0
    return counts


def unigram_log_probs(train_token_counts: np.ndarray, special_ids: Iterable[int] = ()) -> np.ndarray:
    """log p(t) = log((c_t + 1) / (sum c + V')) over the V' non-special ids (never targets); -inf for specials."""
    counts = np.asarray(train_token_counts, dtype=np.float64).copy()
    special = [s for s in special_ids if 0 <= s < len(counts)]
    allowed = np.ones(len(counts), dtype=bool)
    allowed[special] = False
    counts[special] = 0.0
    denom = counts.sum() + allowed.sum()
    with np.errstate(divide="ignore"):
        return np.where(allowed, np.log(counts + 1.0) - np.log(denom), -np.inf)


def unigram_perplexity(train_token_counts: np.ndarray, eval_batches: Iterable[dict[str, torch.Tensor]],
                       mask_id: int, special_ids: Iterable[int], generator_seed: int = 0,
                       prob: float = 0.15) -> dict[str, float]:
    """Perplexity of the add-one-smoothed unigram model on the positions ``evaluate`` masks with the same
    seed: the context-free baseline the model's test perplexity is set against."""
    special = tuple(special_ids)
    vocab_size = len(train_token_counts)
    logp = unigram_log_probs(train_token_counts, special)
    nll, n = 0.0, 0
    for batch in eval_batches:
        _, labels = eval_mask(batch, generator_seed, mask_id, vocab_size, special, prob)
        targets = labels[labels != IGNORE].numpy()
        nll -= float(logp[targets].sum())
        n += len(targets)
    loss = nll / max(n, 1)
    return {"loss": loss, "perplexity": perplexity(loss), "tokens": n}
