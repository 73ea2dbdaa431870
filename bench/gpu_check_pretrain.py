"""bench/gpu_check.py's ``pretrain`` and ``pretrain_steps`` checks: the MIDI transformer's training on CUDA."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import REPO
from bench.gpu_check_support import Context, run_command


def _pretrain_common(ctx: Context, info_csv: Path) -> list[str]:
    work = ctx.work / "pretrain"
    common = [f"dataset.info_csv={info_csv}", f"dataset.tokenizer_path={work / 'tokenizer.json'}",
              f"dataset.cache_dir={work / 'token_cache'}", "dataset.limit=null", f"output_dir={work / 'out'}",
              "mlflow.viz_interval=0", "dataset.visualisation_size=8", "ray.max_failures=0"]
    if ctx.dry:  # small enough for 2 CPU cores, the same code paths
        common += ["dataset.vocab_size=600", "train.max_seq_len=128", "train.embed_dim=32", "train.nhead=2",
                   "train.num_layers=1", "train.batch_size=8", "train.warmup_steps=2"]
    else:
        common += ["dataset.vocab_size=2000"]  # one tokenizer and token cache for both configs
    return common


def _mean_attention_length(cfg_max_len: int, info_csv: Path, work: Path) -> float | None:
    """sum(len^2) / sum(len) over the training chunks: the sequence length a real token attends over."""
    from embedders.dataset import read_info_csv
    from embedders.symbolic.midi_transformer import tokenizer as tk
    from training.midi_datasets import MIDIDatasetPresaved, split_files

    root = info_csv.parent
    files = [str(p) for p in split_files(read_info_csv(root), root, "train")]
    ds = MIDIDatasetPresaved(files, tk.load_tokenizer(work / "tokenizer.json"), cfg_max_len, str(work / "token_cache"))
    lengths = [float(x) for x in ds.lengths()]
    return sum(x * x for x in lengths) / sum(lengths) if lengths else None


def _flops_per_real_token(d: int, layers: int, vocab: int, attention_length: float, ff_mult: int = 4) -> float:
    """6 x non-embedding weights + 12 x layers x width x attended length (PaLM, app. B) + the MLM head on 15%."""
    return 6.0 * layers * (4 * d * d + 2 * d * d * ff_mult) + 12.0 * layers * d * attention_length + 6.0 * d * vocab * 0.15


def _pretrain_run(ctx: Context, label: str, args: list[str], budget: float) -> dict[str, Any]:
    env = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "HYDRA_FULL_ERROR": "1"}
    done = run_command([sys.executable, "-m", "ray_jobs.pretrain", *args], ctx.work / f"pretrain_{label}.log",
                       budget, env=env)
    return done


def check_pretrain(ctx: Context) -> None:
    import torch

    from bench.pretrain_throughput import peak_tflops
    from bench.synthetic_midi import write_dataset

    rec = ctx.rec
    info_csv = ctx.work / "pretrain_data" / "info.csv"
    with rec.step("dataset"):
        # a GPU run: ~1M training tokens, few held-out files (validation and test run on the CPU in
        # the first, CPU run); a dry run: 40 small files
        files, notes, held_out = (40, (100, 900), None) if ctx.dry else (240, (300, 6000), 3)
        write_dataset(info_csv.parent, files, notes, held_out=held_out)
        rec.set("dataset", {"files": files, "notes_per_file": notes, "held_out_each": held_out})
    common = _pretrain_common(ctx, info_csv)
    gpu = ["ray.use_gpu=true"] if ctx.cuda else []
    if not ctx.cuda:
        rec.skip("ray.use_gpu=true runs (default resumed onto CUDA, large_model bf16 and fp32), MFU")
    peak = peak_tflops(torch.cuda.get_device_name(0)) if ctx.cuda else None
    # the CPU run trains one file (its checkpoint is what the GPU run resumes); large_model trains on
    # 100 files in both precisions, so fp32 fits the budget
    runs = [("default_cpu", [], ["train.model_name=default", "train.epochs=1", "dataset.limit=1", "ray.use_gpu=false"]),
            ("default_resumed", [], ["train.model_name=default", "train.epochs=2", *gpu]),
            ("large_bf16", ["--config-name=large_model"], ["train.model_name=large_bf16", "train.epochs=2",
                                                          "dataset.limit=100", "train.precision=auto", *gpu]),
            ("large_fp32", ["--config-name=large_model"], ["train.model_name=large_fp32", "train.epochs=2",
                                                          "dataset.limit=100", "train.precision=fp32", *gpu])]
    if ctx.dry:  # large_model differs from the default only in sizes; the CPU runs fp32 anyway
        runs = runs[:2]
        rec.skip("large_model runs (bf16 and fp32 on CUDA)")
    results: dict[str, Any] = {}
    attention = None
    for label, head, tail in runs:
        with rec.step(label):
            args = [*head, *common, *tail]
            done = _pretrain_run(ctx, label, args, ctx.remaining(10))
            out: dict[str, Any] = {"exit_code": done["exit_code"], "wall_s": done["seconds"]}
            results[label] = out
            rec.set("runs", results)
            if done["exit_code"] != 0:
                raise RuntimeError(f"pretrain {label} exit {done['exit_code']}: {done['output_tail'][-5:]}")
            model = tail[0].split("=", 1)[1]
            run_dir = ctx.work / "pretrain" / "out" / model
            history = json.loads((run_dir / "history.json").read_text())
            summary = json.loads((run_dir / "test_metrics.json").read_text())
            last = history[-1]
            out.update(epochs=[h["epoch"] for h in history], tokens_per_s_by_epoch=[round(h["tokens_per_s"], 1) for h in history],
                       train_tokens_per_epoch=int(last["train_tokens"]), val_loss=round(last["val_loss"], 4),
                       test_loss=round(summary["test_loss"], 4), test_device=summary.get("test_device"),
                       test_precision=summary.get("test_precision"))
            large = bool(head)
            d, layers, max_len = (32, 1, 128) if ctx.dry else (768, 8, 2048) if large else (384, 2, 2048)
            vocab = 600 if ctx.dry else 2000
            if attention is None:
                attention = _mean_attention_length(max_len, info_csv, ctx.work / "pretrain") or max_len
            flops = _flops_per_real_token(d, layers, vocab, attention)
            out.update(model={"embed_dim": d, "num_layers": layers, "max_seq_len": max_len, "vocab_size": vocab},
                       attention_length_per_real_token=round(attention, 1), model_flops_per_real_token=flops,
                       model_tflops_per_s=round(last["tokens_per_s"] * flops / 1e12, 3))
            if ctx.cuda and peak and label != "default_cpu":  # the resumed and large runs train on the GPU
                out["mfu_vs_dense_bf16_peak"] = round(last["tokens_per_s"] * flops / 1e12 / peak, 4)
                out["peak_bf16_tflops"] = peak
            rec.set("runs", results)
    if torch.cuda.is_available():
        rec.set("use_gpu_without_gpu", "not checked: this machine has a GPU (tests/test_pretrain_gpu_path.py checks it)")
        return
    with rec.step("use_gpu_without_gpu_fails_fast"):
        start = time.monotonic()
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("RAY_ADDRESS", None)
        proc = subprocess.run([sys.executable, "-m", "ray_jobs.pretrain", *common, "ray.use_gpu=true",
                               "train.model_name=no_gpu"], capture_output=True, text=True, cwd=REPO, env=env,
                              timeout=ctx.remaining(5))
        lines = proc.stderr.strip().splitlines()
        rec.set("use_gpu_without_gpu", {"exit_code": proc.returncode, "seconds": round(time.monotonic() - start, 1),
                                        "stderr_lines": len(lines), "message": lines[-1] if lines else ""})
        if proc.returncode != 2 or len(lines) != 1:
            raise RuntimeError(f"ray.use_gpu=true without a GPU: exit {proc.returncode}, stderr {lines[-3:]}")


def check_pretrain_steps(ctx: Context) -> None:
    from bench.pretrain_throughput import precision_runs

    rec = ctx.rec
    if ctx.dry:
        rec.skip("large_model-size steps on CUDA (ran a tiny model on the CPU)")
        sizes = dict(gpu_embed_dim=32, gpu_nhead=2, gpu_layers=1, gpu_seq_len=128, gpu_batch=4, gpu_vocab=600,
                     gpu_steps=4)
        device = "cpu"
    else:
        sizes = dict(gpu_embed_dim=768, gpu_nhead=12, gpu_layers=8, gpu_seq_len=2048, gpu_batch=16, gpu_vocab=2000,
                     gpu_steps=30)
        device = "cuda"
    with rec.step("fp32_vs_bf16"):
        rec.set("sizes", sizes)
        rec.set("steps", precision_runs(argparse.Namespace(**sizes), device))
