"""The per-worker pretraining loop run by Ray Train's TorchTrainer (DDP).

The training itself is plain PyTorch (training.pretrain_loop); the Ray touch points are few and all
here: ``get_context`` (rank, world size), ``prepare_model`` (DDP on the right device),
``prepare_data_loader`` (DistributedSampler), ``get_checkpoint`` (resume after a failure or a rerun
with the same run name) and ``report`` (metrics + a checkpoint every epoch, from rank 0).

Device and precision: the device is Ray Train's (a GPU with ``ray.use_gpu``); ``precision`` (the
config's ``train.precision``) picks the autocast dtype (``pretrain_loop.autocast_dtype``): auto is
bf16 on GPUs with native bf16, else fp32. ``loader_workers`` DataLoader processes read and collate
batches beside the training process (the job gives GPU workers 2, CPU workers none). A checkpoint
written on one device resumes on another (tensors are loaded to the CPU, then copied into the
model and the optimizer on theirs). ``test_evaluation`` scores the best checkpoint on the test
split; the job runs it as a Ray task on the same kind of device as the training workers.
"""

from __future__ import annotations

import functools
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Subset

from analysis.report.embedding_map_page import animation_page, scatter_page
from embedders.store.atomic import atomic_write_bytes, write_json
from embedders.symbolic.midi_transformer import tokenizer as tk
from embedders.symbolic.midi_transformer.transformer import MIDITransformerConfig, MIDITransformerEncoder, save_checkpoint, unwrap
from training.length_buckets import LengthBucketBatchSampler
from training.midi_datasets import MIDIDatasetDynamic, MIDIDatasetPresaved, collate
from training.pretrain_loop import autocast_dtype, evaluate, make_optimizer, make_scheduler, train_one_epoch
from training.visualize import file_embeddings, tsne_2d

MODEL_FILE = "model.pt"
STATE_FILE = "train_state.pt"


def loader_options(workers: int) -> dict[str, Any]:
    """DataLoader keyword arguments for ``workers`` reading processes (0: read in the training process)."""
    return {"num_workers": workers, "persistent_workers": True, "prefetch_factor": 4} if workers > 0 else {}


def resume_scheduler(scheduler, saved: dict[str, Any]) -> None:
    """Restore the step count of ``saved``, not its schedule: a rerun with more epochs stretches the
    cosine over the new total instead of staying at the old run's final learning rate (0)."""
    scheduler.load_state_dict({**saved, "lr_lambdas": [None] * len(scheduler.lr_lambdas)})


def make_dataset(cfg: dict[str, Any], files: list[str], tokenizer, chunks: str = "all"):
    if cfg["presaved"]:
        return MIDIDatasetPresaved(files, tokenizer, cfg["model"]["max_seq_len"], cfg["cache_dir"], chunks=chunks)
    return MIDIDatasetDynamic(files, tokenizer, cfg["model"]["max_seq_len"], chunks=chunks)


def _all_reduce(values: list[float], op: str = "sum") -> list[float]:
    """Sum (or max) scalars over the DDP workers; a no-op with one worker."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t.cpu().tolist()


def _mlflow_client(cfg: dict[str, Any]):
    if not cfg["mlflow"]["run_id"]:
        return None
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=cfg["mlflow"]["tracking_uri"])


def _log_metrics(client, run_id: str, metrics: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items() if k != "epoch"])


def _visualise(cfg, model, viz_ds, device, pad_id, epoch, frames, run_dir: Path, client) -> None:
    meta = pd.DataFrame(cfg["viz_meta"])
    emb = file_embeddings(model, viz_ds, pad_id, device)
    ok = ~np.isnan(emb).any(1)
    init = np.asarray(frames[-1][1], dtype=np.float32) if frames else None
    coords = tsne_2d(emb[ok], seed=cfg["seed"], init=init if init is not None and len(init) == ok.sum() else None)
    frames.append([epoch, coords.tolist()])
    color = cfg["mlflow"]["color_by"]
    if color not in meta.columns:
        raise ValueError(f"mlflow.color_by: no column '{color}'; info.csv has {list(meta.columns)}")
    name, shown = cfg["model_name"], meta[ok].reset_index(drop=True)
    page = run_dir / "viz" / f"embeddings_epoch{epoch:03d}.html"
    anim = run_dir / "viz" / "embeddings_animation.html"
    atomic_write_bytes(page, scatter_page(coords, shown, color, f"{name}: file embeddings, epoch {epoch} "
                                                                f"(t-SNE, coloured by {color})").encode())
    atomic_write_bytes(anim, animation_page([(e, np.asarray(c)) for e, c in frames], shown, color,
                                            f"{name}: how file embeddings move across epochs").encode())
    if client is not None:
        for path in (page, anim):
            client.log_artifact(cfg["mlflow"]["run_id"], str(path), artifact_path="viz")


def train_loop_per_worker(cfg: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg["seed"])
    device = ray.train.torch.get_device()
    amp_dtype = autocast_dtype(cfg.get("precision", "auto"), device)
    workers = loader_options(int(cfg.get("loader_workers", 0)))
    tokenizer = tk.load_tokenizer(cfg["tokenizer_path"])
    model_cfg = MIDITransformerConfig(**cfg["model"])
    pad_id = model_cfg.pad_id
    run_dir = Path(cfg["run_dir"])

    train_ds = make_dataset(cfg, cfg["train_files"], tokenizer)
    val_ds = make_dataset(cfg, cfg["val_files"], tokenizer)
    if cfg.get("bucket_by_length"):
        # Items of similar length per batch (little padding); the sampler gives each rank its share.
        sampler = LengthBucketBatchSampler(train_ds.lengths(), cfg["batch_size"], num_replicas=world, rank=rank,
                                           seed=cfg["seed"])
        loader = DataLoader(train_ds, batch_sampler=sampler, collate_fn=functools.partial(collate, pad_id=pad_id),
                            **workers)
        loader = ray.train.torch.prepare_data_loader(loader, add_dist_sampler=False, move_to_device=False)
    else:
        loader = DataLoader(train_ds, batch_size=cfg["batch_size"], shuffle=True, drop_last=False,
                            collate_fn=functools.partial(collate, pad_id=pad_id),
                            generator=torch.Generator().manual_seed(cfg["seed"]), **workers)
        # Batches stay on the CPU: masking draws from a CPU generator, so masks do not depend on the device.
        loader = ray.train.torch.prepare_data_loader(loader, move_to_device=False)
    # Evaluation runs on the unwrapped module (DDP's forward would sync buffers, and shards may be
    # uneven), each worker on every world-th item; the sums are then added over workers.
    val_loader = DataLoader(Subset(val_ds, range(rank, len(val_ds), world)), batch_size=cfg["batch_size"],
                            collate_fn=functools.partial(collate, pad_id=pad_id), **workers)

    model = ray.train.torch.prepare_model(MIDITransformerEncoder(model_cfg))  # on the device, DDP-wrapped
    optimizer = make_optimizer(model, cfg["learning_rate"], cfg["weight_decay"])  # fused on CUDA
    scheduler = make_scheduler(optimizer, total_steps=max(1, len(loader)) * cfg["epochs"], warmup=cfg["warmup_steps"])

    start_epoch, best_val, history, frames = 0, math.inf, [], []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
            model_state = torch.load(Path(d) / MODEL_FILE, map_location="cpu", weights_only=True)["model_state"]
        unwrap(model).load_state_dict(model_state)
        optimizer.load_state_dict(state["optimizer"])
        resume_scheduler(scheduler, state["scheduler"])
        start_epoch, best_val = state["epoch"] + 1, state["best_val_loss"]
        history, frames = state["history"], state["viz_frames"]
        if rank == 0:
            print(f"resuming from the checkpoint of epoch {state['epoch']} (best val loss {best_val:.4f})")

    client = _mlflow_client(cfg) if rank == 0 else None
    viz_ds = make_dataset(cfg, cfg["viz_files"], tokenizer) if rank == 0 and cfg["viz_interval"] > 0 else None
    for epoch in range(start_epoch, cfg["epochs"]):
        for sampler in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
        gen = torch.Generator().manual_seed(cfg["seed"] * 100_003 + epoch * world + rank)
        tr = train_one_epoch(model, loader, optimizer, scheduler, device, amp_dtype, cfg["grad_clip"], gen)
        va = evaluate(unwrap(model), val_loader, device, generator_seed=cfg["seed"], amp_dtype=amp_dtype)
        tr_sum, tr_masked, tokens, va_sum, va_masked = _all_reduce(
            [tr["loss_sum"], tr["masked_tokens"], tr["tokens"], va["loss_sum"], va["masked_tokens"]])
        (seconds,) = _all_reduce([tr["seconds"]], op="max")
        val_loss = va_sum / max(va_masked, 1)
        metrics = {"epoch": epoch, "train_loss": tr_sum / max(tr_masked, 1), "val_loss": val_loss,
                   "val_perplexity": math.exp(min(val_loss, 50.0)), "tokens_per_s": tokens / max(seconds, 1e-9),
                   "train_tokens": tokens, "epoch_seconds": seconds, "lr": tr["lr"]}
        best_val = min(best_val, val_loss)
        history.append(metrics)
        if viz_ds is not None and ((epoch + 1) % cfg["viz_interval"] == 0 or epoch == cfg["epochs"] - 1):
            _visualise(cfg, model, viz_ds, device, pad_id, epoch, frames, run_dir, client)
        if client is not None:
            _log_metrics(client, cfg["mlflow"]["run_id"], metrics, epoch)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                save_checkpoint(Path(tmp) / MODEL_FILE, model, model_cfg, tk.tokenizer_params(tokenizer),
                                extra={"epoch": epoch, "val_loss": val_loss})
                torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                            "epoch": epoch, "best_val_loss": best_val, "history": history, "viz_frames": frames},
                           Path(tmp) / STATE_FILE)
                write_json(run_dir / "history.json", history)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)



def test_evaluation(model_path: str, ds_cfg: dict[str, Any], files: list[str], tokenizer_path: str, batch_size: int,
                    seed: int, precision: str = "auto", loader_workers: int = 0) -> dict[str, Any]:
    """Test loss of the checkpoint at ``model_path`` on ``files`` (fixed masks, ``evaluate``), on CUDA
    when this process sees a GPU (a Ray task with ``num_gpus``), else on the CPU.

    Returns loss, perplexity, tokens (masked tokens scored), device (``cuda (<name>)`` or ``cpu``)
    and precision (``bf16`` or ``fp32``: the autocast of ``precision`` there, as in validation).
    """
    from embedders.symbolic.midi_transformer.transformer import load_checkpoint

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loaded = load_checkpoint(model_path, device=device)
    tokenizer = tk.load_tokenizer(tokenizer_path)
    loader = DataLoader(make_dataset(ds_cfg, files, tokenizer), batch_size=batch_size,
                        collate_fn=functools.partial(collate, pad_id=loaded.config.pad_id),
                        **loader_options(loader_workers))
    amp_dtype = autocast_dtype(precision, device)
    out = evaluate(loaded.model, loader, device, generator_seed=seed, amp_dtype=amp_dtype)
    name = f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "cpu"
    return {"loss": out["loss"], "perplexity": out["perplexity"], "tokens": out["tokens"], "device": name,
            "precision": "bf16" if amp_dtype == torch.bfloat16 else "fp32"}
