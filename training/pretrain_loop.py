"""Plain-PyTorch pretraining steps for the MIDI transformer (masked-token modelling); no Ray here.

The Ray Train wrapper (ray_jobs.pretrain) wraps the model in DDP, shards the loaders and calls
these per epoch. Losses are per masked token: each function returns ``loss_sum`` and
``masked_tokens`` besides the mean, so workers can all-reduce the two sums and divide once (the
mean of per-worker means would weight workers wrongly).

Evaluation masks each sequence with a generator seeded from (seed, its token ids), so the masked
positions are the same in every epoch, for every batch size and DDP sharding, and for the
unigram baseline that ``unigram_perplexity`` computes on exactly the same positions.

The GPU path (the same code, with the model on CUDA) avoids host synchronisation per step: masks,
scored positions and targets are computed on the CPU, where the batch is (so their sizes are
known without asking the device), and copied in one go from pinned memory without blocking
(``StepBatch``); losses are summed on the device and read once per epoch; a batch without padding
goes to the model without a padding mask, so attention can take the fused kernels
(``scaled_dot_product_attention`` with no mask); AdamW is the fused CUDA kernel. Every batch runs
backward, also one without a masked token: a DDP rank that skipped it would leave the others
waiting in the gradient all-reduce. On the CPU the numbers are the same as before these changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embedders.symbolic.midi_transformer.transformer import IGNORE, mask_tokens, perplexity, unwrap

PRECISIONS = ("auto", "fp32", "bf16")


# ---------------------------------------------------------------------------------------------
# Optimiser and schedule
# ---------------------------------------------------------------------------------------------
def make_optimizer(model: nn.Module, lr: float, weight_decay: float,
                   betas: tuple[float, float] = (0.9, 0.999), fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW; weight decay only on matrices of linear/attention layers, not on norms, biases, embeddings
    (decaying those pulls rare tokens' embeddings and LayerNorm gains towards 0 for no benefit).

    ``fused`` None: the fused kernel (one launch for all parameters) when every parameter is on
    CUDA, the default implementation elsewhere (so CPU runs keep their numbers). Build it after
    the model is on its device."""
    decay, no_decay, seen = [], [], set()
    for module in unwrap(model).modules():
        for _, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            plain = isinstance(module, (nn.LayerNorm, nn.Embedding)) or p.ndim < 2
            (no_decay if plain else decay).append(p)
    if fused is None:
        fused = all(p.is_cuda for p in decay + no_decay)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas,
                             **({"fused": True} if fused else {}))


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
def autocast_dtype(precision: str, device: str | torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``: None means plain fp32.

    ``auto``: bf16 on a CUDA device that runs it natively (Ampere and later), fp32 elsewhere
    (``torch.cuda.is_bf16_supported()`` alone also counts emulated bf16, slow on V100/T4);
    ``fp32``: None; ``bf16``: bf16 wherever asked (CPU autocast included). ValueError otherwise.
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16
    return None


def _autocast(device: torch.device, amp_dtype: torch.dtype | None):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


class StepBatch(NamedTuple):
    """One step's tensors on the model's device; the counts are host integers (no device sync)."""

    input_ids: torch.Tensor  # (B, L) masked ids
    attention_mask: torch.Tensor | None  # (B, L) bool, True on real tokens; None: no padding in the batch
    positions: tuple[torch.Tensor, torch.Tensor]  # (rows (N,), cols (N,)): the scored positions, row-major
    targets: torch.Tensor  # (N,) original ids at those positions
    n_masked: int  # N
    tokens: int  # real (non-pad) tokens in the batch


def step_batch(masked_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
               device: str | torch.device, skip_full_mask: bool | None = None) -> StepBatch:
    """Move one masked CPU batch to ``device``: pinned memory and non-blocking copies on CUDA.

    Positions and targets are taken on the CPU (their number N is then known on the host; a boolean
    index on the device would wait for it). ``skip_full_mask`` (None: on CUDA only) drops the padding
    mask of a batch without padding; that changes nothing but the attention kernel (on the CPU the
    fused inference path rounds differently with and without a mask, hence CUDA only by default).
    """
    device = torch.device(device)
    attention_mask = attention_mask.bool()
    rows, cols = (labels != IGNORE).nonzero(as_tuple=True)  # (N,), (N,) in the order of boolean indexing
    targets = labels[rows, cols]
    skip = device.type == "cuda" if skip_full_mask is None else skip_full_mask
    mask = None if skip and bool(attention_mask.all()) else attention_mask
    host = [masked_ids, rows, cols, targets] + ([mask] if mask is not None else [])
    if device.type == "cuda":
        moved = [t.pin_memory().to(device, non_blocking=True) for t in host]
    else:
        moved = [t.to(device) for t in host]
    return StepBatch(moved[0], moved[4] if mask is not None else None, (moved[1], moved[2]), moved[3],
                     int(targets.numel()), int(attention_mask.sum()))


def step_loss(model: nn.Module, step: StepBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy per masked token for backward, its detached sum) of ``model`` on ``step``."""
    logits = model(step.input_ids, step.attention_mask, step.positions)  # (N, V)
    loss_sum = F.cross_entropy(logits.float(), step.targets, reduction="sum")
    return loss_sum / max(step.n_masked, 1), loss_sum.detach()


def train_one_epoch(model: nn.Module, loader: Iterable[dict[str, torch.Tensor]], optimizer: torch.optim.Optimizer,
                    scheduler: Any | None, device: str | torch.device, amp_dtype: torch.dtype | None = None,
                    grad_clip: float | None = 1.0, generator: torch.Generator | None = None,
                    max_steps: int | None = None, skip_full_mask: bool | None = None) -> dict[str, float]:
    """One pass over ``loader`` (batches from ``collate``, on CPU; masked there with ``generator``).

    Returns loss (mean per masked token), tokens (real tokens seen), seconds, tokens_per_s, lr
    (after the last step), steps, loss_sum, masked_tokens. The device is read once, at the end.
    """
    device = torch.device(device)
    cfg = unwrap(model).config
    # float16 needs loss scaling against underflow; bfloat16 and float32 do not
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 and device.type == "cuda" else None
    model.train()
    loss_sum = torch.zeros((), device=device)
    masked = tokens = steps = 0
    start = time.perf_counter()
    for batch in loader:
        if max_steps is not None and steps >= max_steps:
            break
        ids, labels = mask_tokens(batch["input_ids"], batch["attention_mask"], cfg.mask_id, cfg.vocab_size,
                                  cfg.special_ids, 0.15, generator)
        step = step_batch(ids, batch["attention_mask"], labels, device, skip_full_mask)
        with _autocast(device, amp_dtype):
            loss, step_sum = step_loss(model, step)
        # backward on every batch, even one without a masked token (its loss is 0 and so are its
        # gradients): under DDP every rank must take part in each gradient all-reduce
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += step_sum
        masked += step.n_masked
        tokens += step.tokens
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
             generator_seed: int = 0, prob: float = 0.15, amp_dtype: torch.dtype | None = None,
             skip_full_mask: bool | None = None) -> dict[str, float]:
    """Masked-token loss per masked token and its perplexity, on fixed masks; tokens = masked tokens scored.

    The loss is summed on the device in float64 (as Python floats summed it before) and read once.
    """
    device = torch.device(device)
    cfg = unwrap(model).config
    was_training = model.training
    model.eval()
    loss_sum, masked_n = torch.zeros((), dtype=torch.float64, device=device), 0
    for batch in loader:
        masked, labels = eval_mask(batch, generator_seed, cfg.mask_id, cfg.vocab_size, cfg.special_ids, prob)
        step = step_batch(masked, batch["attention_mask"], labels, device, skip_full_mask)
        with _autocast(device, amp_dtype):
            _, step_sum = step_loss(model, step)
        loss_sum += step_sum.double()
        masked_n += step.n_masked
    model.train(was_training)
    total = float(loss_sum)
    loss = total / max(masked_n, 1)
    return {"loss": loss, "perplexity": perplexity(loss), "tokens": masked_n, "loss_sum": total,
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
