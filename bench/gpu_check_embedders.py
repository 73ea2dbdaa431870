"""bench/gpu_check.py's ``embedder:<name>`` check: every pretrained embedder on CUDA against CPU fp32."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from bench.gpu_check_support import Context

FRONT_ENDS = ("speclayer", "logmel_extractor")  # openl3, clap: dB spectrogram modules inside the models


def audio_clip(seconds: float, sr: int, seed: int = 0):
    """Music-like test audio: harmonic notes with onsets over a little noise, float32 in [-1, 1]."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    out = 0.01 * rng.standard_normal(n).astype(np.float32)
    note = int(0.25 * sr)
    t = np.arange(note) / sr
    env = np.exp(-4 * t).astype(np.float32)
    for start in range(0, n - note, note):
        f0 = 110 * 2 ** (rng.integers(0, 36) / 12)
        tone = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 5))
        out[start:start + note] += (0.2 * env * tone).astype(np.float32)
    return np.clip(out, -1, 1)


def embedder_options(name: str, ctx: Context) -> dict[str, Any]:
    """Weights for ``name``: published-format checkpoints written by the test factories, or the wheel's."""
    folder = ctx.work / "weights" / name
    folder.mkdir(parents=True, exist_ok=True)
    if name == "openl3":
        from tests.pretrained_factories import openl3

        return {"checkpoint": str(openl3.write_weights(folder))}
    if name == "clap":
        from tests.pretrained_factories import clap

        return {"checkpoint": str(clap.write_checkpoint(folder / clap.PUBLISHED_NAME))}
    if name == "clamp":
        from tests.pretrained_factories import clamp

        options = clamp.SMALL if ctx.dry else None  # the real size (768 x 12 layers) on a GPU
        path = clamp.write_checkpoint(folder / clamp.PUBLISHED_NAME, options)
        return {"checkpoint": str(path), **(options or {})}
    if name == "midi_transformer":
        from tests.midi_model_factory import tiny_checkpoint

        size = dict(embed_dim=32, num_layers=1, nhead=2, max_seq_len=256) if ctx.dry else \
            dict(embed_dim=384, num_layers=2, nhead=4, max_seq_len=2048)  # the default pretraining config
        return {"checkpoint": str(tiny_checkpoint(folder, **size))}
    return {}  # musicnn, basic_pitch: the weights inside their wheels


def _inputs(name: str, cls, ctx: Context, size: str) -> list:
    """One item: ``short`` (the CPU reference: 20 s, 1500 notes), ``medium`` (throughput: 60 s, 5000
    notes) or ``long`` (peak memory: 10 minutes, 20,000 notes); tiny in a dry run."""
    seed = {"short": 0, "medium": 1, "long": 2}[size]
    if cls.modality == "audio":
        seconds = 2 if ctx.dry else {"short": 20, "medium": 60, "long": 600}[size]
        return [audio_clip(seconds, cls.sample_rate, seed=seed)]
    import numpy as np

    from bench.synthetic_midi import random_piece

    notes = 300 if ctx.dry else {"short": 1500, "medium": 5000, "long": 20000}[size]
    return [random_piece(np.random.default_rng(seed), notes)]


@contextlib.contextmanager
def _front_end_probe(emb):
    """A forward hook on the model's spectrogram front end (found by module name) while in the block:
    yields (captured outputs, module name), or (None, None) when the model has none."""
    import torch

    captured: list = []
    for module in [v for v in vars(emb).values() if isinstance(v, torch.nn.Module)]:
        for mod_name, sub in module.named_modules():
            if mod_name.split(".")[-1] in FRONT_ENDS:
                handle = sub.register_forward_hook(lambda _m, _i, out: captured.append(out.detach().float().cpu()))
                try:
                    yield captured, mod_name
                finally:
                    handle.remove()
                return
    yield None, None


def _db_difference(cpu_front: list, gpu_front: list, windows: int) -> dict[str, float]:
    """|dB| difference of the first ``windows`` front-end outputs (the same audio in both runs)."""
    import numpy as np
    import torch

    a, b = torch.cat(cpu_front)[:windows].numpy(), torch.cat(gpu_front)[:windows].numpy()
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return {"windows": int(len(a)), "max_abs_db": round(float(diff.max()), 4),
            "p99_abs_db": round(float(np.percentile(diff, 99)), 4), "share_over_1db": round(float((diff > 1).mean()), 6)}


def _cosines(a, b) -> dict[str, float]:
    import numpy as np

    a, b = np.concatenate(a).astype(np.float64), np.concatenate(b).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"frame shapes differ: {a.shape} vs {b.shape}")
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return {"frames": int(len(cos)), "min": round(float(cos.min()), 6), "median": round(float(np.median(cos)), 6),
            "max_abs_diff": float(np.abs(a - b).max())}


def _timed_embed(emb, items, repeats: int = 1) -> dict[str, Any]:
    import torch

    emb.embed(items[:1])  # warm-up: kernels, caches, autotuning
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        out = emb.embed(items)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    frames = sum(len(o) for o in out) * repeats
    return {"out": out, "frames": frames, "seconds": round(seconds, 3), "windows_per_s": round(frames / seconds, 1)}


def check_embedder(ctx: Context, name: str) -> None:
    import dataclasses

    from embedders.registry import get_embedder, get_embedder_class

    rec = ctx.rec
    cls = get_embedder_class(name)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    rec.set("options", sorted(fields & {"device", "precision"}))
    opts: dict[str, Any] = {}
    with rec.step("weights"):
        opts = embedder_options(name, ctx)
    short = _inputs(name, cls, ctx, "short")
    if cls.modality == "audio":
        rec.set("input_seconds", round(len(short[0]) / cls.sample_rate, 1))

    def build(device: str, precision: str | None):
        extra = {"device": device} if "device" in fields else {}
        if "precision" in fields and precision:
            extra["precision"] = precision
        return get_embedder(name, **opts, **extra)

    cpu_out, cpu_front = None, None
    with rec.step("cpu_fp32"):
        cpu = build("cpu", "fp32")
        with _front_end_probe(cpu) as (cpu_front, where):
            timed = _timed_embed(cpu, short)  # the warm-up call embeds the same first item: its windows come first
        cpu_out = timed["out"]
        rec.set("cpu_fp32", {"windows_per_s": timed["windows_per_s"], "frames": len(cpu_out[0]), "dim": cpu.dim})
        rec.set("front_end_module", where or ("librosa on the CPU for every device" if name == "musicnn" else None))
    if name == "basic_pitch":
        rec.set("note", "basic_pitch runs on onnxruntime's CPU provider, its only path here: no CUDA run")
        return
    if "device" not in fields:
        rec.set("note", f"{name} has no device option: CPU only")
        return
    if not ctx.cuda:
        rec.skip(f"{name} on CUDA fp32 and at automatic precision: cosine per frame, front-end dB, windows/s, "
                 "peak memory on a long item")
        return
    import torch

    for label, precision in (("cuda_fp32", "fp32"), ("cuda_auto", "auto")):
        if label == "cuda_auto" and "precision" not in fields:
            rec.set(label, "no precision option: CUDA runs fp32 only")
            continue
        with rec.step(label):
            gpu = build("cuda", precision)
            with _front_end_probe(gpu) as (gpu_front, _):
                same = gpu.embed(short)  # the CPU reference's item: its windows come first in the probe
            figures: dict[str, Any] = {"cosine_vs_cpu_fp32": _cosines(same, cpu_out)}
            if gpu_front and cpu_front:
                figures["front_end_db"] = _db_difference(cpu_front, gpu_front, len(cpu_out[0]))
            timed = _timed_embed(gpu, _inputs(name, cls, ctx, "medium") * 8)  # 8 items per call, as the job batches
            figures["windows_per_s"] = timed["windows_per_s"]
            figures["throughput_frames"] = timed["frames"]
            if cpu_out is not None and "windows_per_s" in rec.data["figures"].get("cpu_fp32", {}):
                figures["speedup_vs_cpu"] = round(timed["windows_per_s"] / rec.data["figures"]["cpu_fp32"]["windows_per_s"], 1)
            rec.set(label, figures)
            del gpu
            torch.cuda.empty_cache()
    with rec.step("long_item"):
        gpu = build("cuda", "auto" if "precision" in fields else None)
        long = _inputs(name, cls, ctx, "long")
        gpu.embed(short)  # model loaded and warm before the peak is measured
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        out = gpu.embed(long)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        rec.set("long_item", {"frames": len(out[0]), "seconds": round(seconds, 2),
                              "windows_per_s": round(len(out[0]) / seconds, 1),
                              "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
                              **({"audio_seconds": len(long[0]) / cls.sample_rate} if cls.modality == "audio"
                                 else {"notes": 20000})})
