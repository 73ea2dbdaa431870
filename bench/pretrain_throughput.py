"""Pretraining throughput: tokens/s and samples/s on 1 and 2 CPU workers (Ray Train), and on a GPU
fp32 against bf16 autocast with model FLOPs utilisation.

    python bench/pretrain_throughput.py --source data/raw/music21 [--workers 1,2] [--bucket off,on]
        [--epochs 2] [--limit 64] [--embed_dim 128] [--num_layers 2] [--max_seq_len 512] [--batch_size 8]

CPU part: the real pretraining path, ``ray_jobs.pretrain.run`` (tokenizer, token cache, Ray Train
TorchTrainer with DDP over gloo, MLflow), short runs on a small model, once per (workers,
bucketing) setting. tokens/s counts real (non-pad) tokens only, as the job logs it; the last
epoch's figures are reported (the first one includes warm-up). ``bucket`` off is the plain
shuffled batching (each batch padded to its longest chunk), on is ``train.bucket_by_length``
(``training.length_buckets``); the padding share of each is reported beside it.

GPU part (only where ``torch.cuda.is_available()``; otherwise reported as "no GPU"): one process,
the model at ``--gpu_*`` sizes, ``--gpu_steps`` optimizer steps on full-length random batches,
fp32 against bf16 autocast. Attention goes through ``F.scaled_dot_product_attention`` in both
(``nn.TransformerEncoderLayer`` calls it); MFU = achieved model FLOPs/s (6 x non-embedding
parameters + 12 x layers x width x length per token, the PaLM estimate) over the GPU's dense
bf16 peak (the table ``PEAK_TFLOPS``; fp32 runs use TF32 tensor cores where PyTorch enables them).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, CpuMeter, finish, machine, stdout_to_stderr  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets.
PEAK_TFLOPS = {"H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0,
               "L40S": 362.0, "A10G": 125.0, "L4": 121.0, "RTX 4090": 165.0, "V100": 125.0, "T4": 65.0}


# ---------------------------------------------------------------------------------------------
# CPU: the real job on Ray Train
# ---------------------------------------------------------------------------------------------
def compose_cfg(args, source: Path, work: Path, workers: int, bucket: bool):
    from hydra import compose, initialize_config_dir

    overrides = [
        f"dataset.info_csv={source / 'info.csv'}", f"dataset.tokenizer_path={work / 'tokenizer.json'}",
        f"dataset.cache_dir={work / 'token_cache'}", f"dataset.vocab_size={args.vocab_size}",
        f"dataset.limit={args.limit}", f"output_dir={work / 'results'}", f"train.max_seq_len={args.max_seq_len}",
        f"train.embed_dim={args.embed_dim}", f"train.nhead={args.nhead}", f"train.num_layers={args.num_layers}",
        f"train.batch_size={args.batch_size}", f"train.epochs={args.epochs}", "train.warmup_steps=10",
        f"train.bucket_by_length={str(bucket).lower()}", f"train.model_name=w{workers}_bucket_{'on' if bucket else 'off'}",
        "mlflow.viz_interval=0", f"ray.num_workers={workers}", "ray.max_failures=0", f"seed={args.seed}",
        "dataset.visualisation_size=10",
    ]
    with initialize_config_dir(config_dir=str(REPO / "ray_jobs" / "pretrain" / "configs"), version_base=None):
        return compose(config_name="config", overrides=overrides)


def train_items(cfg) -> tuple[list[int], list[int]]:
    """Lengths of the training items (chunks) the run used, from the token cache; and the files' lengths."""
    from embedders.dataset import read_info_csv
    from embedders.symbolic.midi_transformer import tokenizer as tk
    from ray_jobs.pretrain.job import resolve_paths
    from training.midi_datasets import MIDIDatasetPresaved, split_files

    paths = resolve_paths(cfg)
    files = [str(p) for p in split_files(read_info_csv(paths["root"]), paths["root"], "train")][: cfg.dataset.limit]
    ds = MIDIDatasetPresaved(files, tk.load_tokenizer(paths["tokenizer"]), cfg.train.max_seq_len, str(paths["cache"]))
    return ds.lengths(), [len(e["chunks"]) for e in ds.entries]


def padding_share(lengths: list[int], batch_size: int, workers: int, bucket: bool, seed: int) -> float:
    """Padding share of one epoch's batches as the job draws them (shuffled, or length-bucketed), all ranks."""
    import numpy as np

    from training.length_buckets import LengthBucketBatchSampler, padding_fraction

    if bucket:
        batches = [b for r in range(workers)
                   for b in LengthBucketBatchSampler(lengths, batch_size, workers, r, seed=seed)]
    else:
        order = np.random.default_rng(seed).permutation(len(lengths))
        shards = [order[r::workers] for r in range(workers)]  # as DistributedSampler deals indices out
        batches = [s[i:i + batch_size] for s in shards for i in range(0, len(s), batch_size)]
    return round(padding_fraction(lengths, batches), 3)


def cpu_runs(args, work: Path) -> dict[str, Any]:
    from embedders.dataset import read_info_csv
    from ray_jobs.pretrain.config import validate
    from ray_jobs.pretrain.job import run
    from ray_jobs.ray_session import ensure_ray

    source = Path(args.source).resolve()
    read_info_csv(source)  # fail early on a bad dataset folder
    ensure_ray(args.num_cpus)
    runs, lengths = [], None
    for bucket in [b == "on" for b in args.bucket.split(",")]:
        for workers in [int(w) for w in args.workers.split(",")]:
            cfg = compose_cfg(args, source, work, workers, bucket)
            validate(cfg)
            with CpuMeter() as meter, stdout_to_stderr():
                summary = run(cfg)
            history = json.loads((Path(summary["model_path"]).parent / "history.json").read_text())
            last = history[-1]
            if lengths is None:
                lengths, chunks_per_file = train_items(cfg)
            samples_s = len(lengths) / last["epoch_seconds"]
            runs.append({
                "workers": workers, "bucket_by_length": bucket,
                "tokens_per_s": round(last["tokens_per_s"], 1), "samples_per_s": round(samples_s, 2),
                "epoch_seconds": round(last["epoch_seconds"], 2), "train_tokens": int(last["train_tokens"]),
                "padding_share": padding_share(lengths, args.batch_size, workers, bucket, args.seed),
                "tokens_per_s_by_epoch": [round(h["tokens_per_s"], 1) for h in history],
                "train_loss_last": round(last["train_loss"], 4), "val_loss_last": round(last["val_loss"], 4),
                "run_wall_s": meter.result["wall_s"], "machine_busy_cpu_s": meter.result.get("machine_busy_cpu_s"),
                "load_avg_after": [round(x, 2) for x in os.getloadavg()],
            })
    base = {(r["workers"], r["bucket_by_length"]): r["tokens_per_s"] for r in runs}
    ratios = {}
    for (w, b), v in base.items():
        if (1, b) in base and w != 1:
            ratios[f"{w}_vs_1_workers{'_bucketed' if b else ''}"] = round(v / base[(1, b)], 2)
        if b and (w, False) in base:
            ratios[f"bucketed_vs_plain_{w}_workers"] = round(v / base[(w, False)], 2)
    return {"runs": runs, "ratios_tokens_per_s": ratios, "train_items": len(lengths or []),
            "item_length_tokens": _quantiles(lengths or []),
            "files_with_several_chunks": sum(1 for c in (chunks_per_file if lengths else []) if c > 1)}


def _quantiles(values: list[int]) -> dict[str, float]:
    import numpy as np

    if not values:
        return {}
    q = np.percentile(values, [0, 10, 50, 90, 100])
    return dict(zip(("min", "p10", "median", "p90", "max"), (float(x) for x in q)))


# ---------------------------------------------------------------------------------------------
# GPU: fp32 vs bf16 autocast, tokens/s and MFU
# ---------------------------------------------------------------------------------------------
def model_flops_per_token(cfg) -> float:
    """6 N + 12 L d T: forward + backward of the non-embedding weights plus attention scores (PaLM, app. B)."""
    d, layers, length = cfg.embed_dim, cfg.num_layers, cfg.max_seq_len
    per_layer = 4 * d * d + 2 * d * d * cfg.ff_mult  # attention projections + feed-forward
    head = d * cfg.vocab_size  # the tied MLM head still runs a matmul (on the masked rows only)
    return 6.0 * layers * per_layer + 12.0 * layers * d * length + 6.0 * head * 0.15


def peak_tflops(name: str) -> float | None:
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key.lower() in name.lower():
            return PEAK_TFLOPS[key]
    return None


def precision_runs(args, device_name: str) -> dict[str, Any]:
    """Steps of the real model/loss/optimizer on ``device_name`` in fp32 and with bf16 autocast."""
    import torch

    from embedders.symbolic.midi_transformer.transformer import MIDITransformerConfig, MIDITransformerEncoder
    from training.pretrain_loop import make_optimizer, train_one_epoch

    device = torch.device(device_name)
    cfg = MIDITransformerConfig(vocab_size=args.gpu_vocab, max_seq_len=args.gpu_seq_len, embed_dim=args.gpu_embed_dim,
                                nhead=args.gpu_nhead, num_layers=args.gpu_layers, dropout=0.1)
    gen = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(4, cfg.vocab_size, (args.gpu_batch, cfg.max_seq_len), generator=gen),
                "attention_mask": torch.ones(args.gpu_batch, cfg.max_seq_len, dtype=torch.bool)}
               for _ in range(args.gpu_steps)]
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                           "model": {"embed_dim": cfg.embed_dim, "num_layers": cfg.num_layers, "nhead": cfg.nhead,
                                     "seq_len": cfg.max_seq_len, "batch": args.gpu_batch},
                           "tf32_matmul": torch.backends.cuda.matmul.allow_tf32 if device.type == "cuda" else None}
    flops_token = model_flops_per_token(cfg)
    peak = peak_tflops(out["device"]) if device.type == "cuda" else None
    for name, dtype in (("fp32", None), ("bf16_autocast", torch.bfloat16)):
        torch.manual_seed(0)
        model = MIDITransformerEncoder(cfg).to(device)
        optimizer = make_optimizer(model, 1e-4, 0.01)
        warm = max(1, args.gpu_steps // 5)
        train_one_epoch(model, batches[:warm], optimizer, None, device, dtype, 1.0, torch.Generator().manual_seed(1))
        stats = train_one_epoch(model, batches[warm:], optimizer, None, device, dtype, 1.0,
                                torch.Generator().manual_seed(2))
        achieved = stats["tokens_per_s"] * flops_token / 1e12
        out[name] = {"tokens_per_s": round(stats["tokens_per_s"], 1), "steps": stats["steps"],
                     "seconds": round(stats["seconds"], 3), "model_tflops_per_s": round(achieved, 3),
                     "mfu_vs_bf16_peak": round(achieved / peak, 4) if peak else None,
                     "loss": round(stats["loss"], 4)}
        if device.type == "cuda":
            out[name]["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            torch.cuda.reset_peak_memory_stats(device)
        del model, optimizer
    out["bf16_speedup"] = round(out["bf16_autocast"]["tokens_per_s"] / out["fp32"]["tokens_per_s"], 2)
    out["model_flops_per_token"] = flops_token
    out["peak_bf16_tflops"] = peak
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", help="paired dataset folder with info.csv and a split column (e.g. data/raw/music21)")
    p.add_argument("--workers", default="1,2", help="Ray Train worker counts to run")
    p.add_argument("--bucket", default="off,on", help="train.bucket_by_length settings to run (off, on)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--limit", type=int, default=64, help="training files (dataset.limit)")
    p.add_argument("--vocab_size", type=int, default=1000)
    p.add_argument("--max_seq_len", type=int, default=512)
    p.add_argument("--embed_dim", type=int, default=128)
    p.add_argument("--nhead", type=int, default=4)
    p.add_argument("--num_layers", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--num_cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--work", default=None, help="scratch folder (default: temporary, removed at the end)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--skip_cpu", action="store_true", help="only the GPU part")
    p.add_argument("--precision_device", default=None,
                   help="device for the fp32/bf16 part (default: cuda when available, else skipped; 'cpu' runs it "
                        "on the CPU, to check the code path)")
    p.add_argument("--gpu_embed_dim", type=int, default=768)
    p.add_argument("--gpu_nhead", type=int, default=12)
    p.add_argument("--gpu_layers", type=int, default=8)
    p.add_argument("--gpu_seq_len", type=int, default=2048)
    p.add_argument("--gpu_batch", type=int, default=16)
    p.add_argument("--gpu_vocab", type=int, default=8000)
    p.add_argument("--gpu_steps", type=int, default=30)
    args = p.parse_args(argv)
    import torch

    result: dict[str, Any] = {"benchmark": "pretrain_throughput", "machine": machine(),
                              "torch_threads": torch.get_num_threads()}
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="avs-bench-pretrain-"))
    try:
        if not args.skip_cpu:
            if not args.source:
                p.error("--source is required for the CPU part (or pass --skip_cpu)")
            result["model"] = {k: getattr(args, k) for k in ("embed_dim", "nhead", "num_layers", "max_seq_len",
                                                              "batch_size", "vocab_size", "limit", "epochs")}
            result["cpu"] = cpu_runs(args, work)
        device = args.precision_device or ("cuda" if torch.cuda.is_available() else None)
        result["gpu"] = precision_runs(args, device) if device else "no GPU (torch.cuda.is_available() is False)"
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    finish(result)


if __name__ == "__main__":
    main()
