"""One prepared GPU check: everything this project runs on CUDA, measured once, in under 10 minutes.

    python bench/gpu_check.py [--out bench/results/gpu_check.json] [--dry_run] [--only NAME,...]
    make gpu-check                       # the same, with the default output path

Checks, each in its own process with its own time budget (its error is recorded and the next
check runs; a check that overruns is killed and its partial figures kept):

- ``environment``: torch and its CUDA build, the GPU (name, memory, native bf16), nvidia-smi,
  TF32 flags, onnxruntime's providers.
- ``gpu_tests``: ``pytest -m gpu`` over the test files that have such tests (junit counts, failures).
- ``embedder:<name>`` for openl3, clap, clamp, midi_transformer, musicnn (through the registry,
  ``get_embedder(name, device=..., precision=...)``): CPU fp32 as the reference; CUDA fp32 and
  CUDA at the embedder's automatic precision against it (cosine per frame: min, median), the
  front end's dB difference where the model has a spectrogram front end (openl3's ``speclayer``,
  clap's ``logmel_extractor``; musicnn's front end is librosa on the CPU for both devices),
  windows/s on both devices, peak GPU memory and windows/s on a long item. Weights: small or
  random checkpoints in each model's published format (``tests/pretrained_factories``; CLaMP and
  the MIDI transformer at their real sizes on a GPU), musicnn's real weights from its wheel.
  ``embedder:basic_pitch`` runs on onnxruntime's CPU provider (its only path here): CPU figures only.
- ``embedding_job``: ``python -m ray_jobs.generate_embeddings --num_gpus 0.5`` (openl3 audio,
  pianoroll MIDI) on generated 48 kHz WAV recordings, one of them corrupt: rows embedded per
  medium, the corrupt id in errors.parquet, GPU utilisation sampled with nvidia-smi, audio hours
  per GPU hour (wall time of the whole job, Ray start included).
- ``pretrain``: ``python -m ray_jobs.pretrain`` on generated MIDI: the default config one epoch on
  CPU, then resumed with ``ray.use_gpu=true`` (a CPU checkpoint continued on CUDA, fused AdamW);
  ``large_model`` with ``ray.use_gpu=true`` in bf16 (``train.precision=auto``) and in fp32;
  tokens/s of real tokens and MFU (model FLOPs per real token x tokens/s over the GPU's dense bf16
  peak), test-set device and precision. Without a GPU: ``ray.use_gpu=true`` must exit 2 at once.
- ``pretrain_steps``: the model, loss and optimizer alone (``bench/pretrain_throughput.py``'s
  fp32 vs bf16 steps) at ``large_model`` size on full-length batches: the MFU ceiling.
- ``sweep``: ``python -m ray_jobs.sweep --gpus_per_trial 0.25`` on a tiny store.

``--dry_run`` runs every check on the CPU at small sizes, skipping only what needs CUDA, and lists
what it skipped (``skipped_cuda`` in each check); it takes a few minutes on 2 cores. Without
``--dry_run`` on a machine without CUDA the script runs the same way and exits 1.

Output: one JSON object (written after every check, so a killed run leaves what it measured):
``machine``, ``cuda_available``, ``dry_run``, ``total_seconds``, ``checks`` (per check: ``status``
ok | failed | timeout | not_run, ``seconds``, ``budget_s``, ``figures``, ``skipped_cuda``,
``errors`` with the step, exception and traceback tail, ``log`` path); a summary table is
printed on stdout. Exit status 0 when every check is ok, else 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, machine  # noqa: E402

EMBEDDERS = ("openl3", "clap", "clamp", "midi_transformer", "musicnn", "basic_pitch")
# (name, budget in seconds on a GPU machine); the budgets add up to more than the total, which caps them
CHECKS = [("environment", 30), ("gpu_tests", 120)] + [(f"embedder:{e}", 50) for e in EMBEDDERS] + [
    ("embedding_job", 120), ("pretrain", 270), ("pretrain_steps", 60), ("sweep", 100)]
# not run by default: a check that hangs with a child process, to test the kill path (--only _hang)
SELF_TEST_CHECKS = [("_hang", 40)]
DEFAULT_OUT = REPO / "bench" / "results" / "gpu_check.json"
FRONT_ENDS = ("speclayer", "logmel_extractor")  # openl3, clap: dB spectrogram modules inside the models


# ---------------------------------------------------------------------------------------------
# Recording: each check writes its figures, skipped CUDA parts and errors as it goes
# ---------------------------------------------------------------------------------------------
class Recorder:
    """Partial results of one check, rewritten to ``path`` after every change."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = {"figures": {}, "skipped_cuda": [], "errors": []}
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=_plain))
        os.replace(tmp, self.path)

    def set(self, key: str, value: Any) -> None:
        self.data["figures"][key] = value
        self.save()

    def skip(self, what: str) -> None:
        self.data["skipped_cuda"].append(what)
        self.save()

    @contextlib.contextmanager
    def step(self, name: str):
        """Run a step; an exception is recorded (step, type, message, traceback tail) and swallowed."""
        start = time.perf_counter()
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - the check goes on and the JSON says what failed
            self.data["errors"].append({"step": name, "error": f"{type(exc).__name__}: {str(exc)[:2000]}",
                                        "traceback": traceback.format_exc()[-3000:]})
        finally:
            self.data.setdefault("step_seconds", {})[name] = round(time.perf_counter() - start, 2)
            self.save()


def _plain(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


class Context:
    def __init__(self, args, rec: Recorder):
        import torch

        self.dry = bool(args.dry_run)
        self.cuda = torch.cuda.is_available() and not self.dry
        self.work = Path(args.work)
        self.rec = rec
        self.deadline = time.monotonic() + float(args._budget)

    def remaining(self, reserve: float = 5.0) -> float:
        return max(1.0, self.deadline - time.monotonic() - reserve)


def run_command(cmd: list[str], log: Path, timeout: float, env: dict[str, str] | None = None,
                cwd: Path | None = None) -> dict[str, Any]:
    """Run ``cmd`` with its output in ``log``; exit code (None on timeout), wall seconds, the last lines."""
    start = time.monotonic()
    with open(log, "ab") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n".encode())
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd or REPO, start_new_session=True,
                                env={**os.environ, **(env or {})})
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            code = None
        except BaseException:  # this process is being stopped: stop the command's whole group first
            _kill_group(proc)
            raise
    tail = log.read_text(errors="replace").splitlines()[-15:]
    return {"exit_code": code, "seconds": round(time.monotonic() - start, 2), "output_tail": tail}


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGINT to the command's process group (Python unwinds: a check stops its own commands, a job's
    ``atexit`` shuts its local Ray instance down), then SIGKILL for whatever is left after 20 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class GpuSampler:
    """GPU utilisation and memory, sampled every ``interval_ms`` by ``nvidia-smi`` while in the block."""

    def __init__(self, interval_ms: int = 200):
        self.interval_ms, self.samples, self.proc, self.source = interval_ms, [], None, None

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                          "--format=csv,noheader,nounits", f"-lms={self.interval_ms}"],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self.source = "nvidia-smi"
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            out, _ = self.proc.communicate(timeout=10)
            for line in out.splitlines():
                parts = [p.strip() for p in line.split(",")]
                with contextlib.suppress(ValueError, IndexError):
                    self.samples.append((float(parts[0]), float(parts[1])))
        return False

    def summary(self) -> dict[str, Any]:
        import numpy as np

        if not self.samples:
            return {"source": self.source, "samples": 0}
        util = np.array([s[0] for s in self.samples])
        busy = util[util > 0]
        return {"source": self.source, "samples": len(util), "interval_ms": self.interval_ms,
                "utilisation_mean_pct": round(float(util.mean()), 1),
                "utilisation_p50_pct": round(float(np.median(util)), 1),
                "utilisation_p90_pct": round(float(np.percentile(util, 90)), 1),
                "utilisation_mean_while_busy_pct": round(float(busy.mean()), 1) if len(busy) else 0.0,
                "busy_share": round(len(busy) / len(util), 3),
                "memory_used_max_mib": max(s[1] for s in self.samples)}


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------
def check_environment(ctx: Context) -> None:
    import torch

    rec = ctx.rec
    with rec.step("torch"):
        rec.set("torch", torch.__version__)
        rec.set("torch_cuda_build", torch.version.cuda)
        rec.set("cuda_available", torch.cuda.is_available())
        rec.set("tf32", {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32})
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            rec.set("gpu", {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                            "capability": f"{props.major}.{props.minor}", "count": torch.cuda.device_count(),
                            "bf16_native": torch.cuda.is_bf16_supported(including_emulation=False)})
        else:
            rec.skip("GPU properties (no CUDA)")
    with rec.step("nvidia-smi"):
        if shutil.which("nvidia-smi"):
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,utilization.gpu",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            rec.set("nvidia_smi", out.stdout.strip().splitlines())
        else:
            rec.skip("nvidia-smi (not installed)")
    with rec.step("onnxruntime"):
        import onnxruntime

        rec.set("onnxruntime_providers", onnxruntime.get_available_providers())


def check_gpu_tests(ctx: Context) -> None:
    import xml.etree.ElementTree as ET

    rec = ctx.rec
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py")
                   if "mark.gpu" in p.read_text(errors="replace"))
    rec.set("test_files", files)
    if not ctx.cuda:
        rec.skip("the gpu tests' CUDA bodies (they skip themselves without CUDA; run to check they collect)")
    xml = ctx.work / "gpu_tests.xml"
    with rec.step("pytest -m gpu"):
        done = run_command([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                            f"--junitxml={xml}", *files], ctx.work / "gpu_tests.log", ctx.remaining(10))
        rec.set("pytest", {k: done[k] for k in ("exit_code", "seconds")})
        root = ET.parse(xml).getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        failed = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
                  if c.find("failure") is not None or c.find("error") is not None]
        counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        rec.set("counts", counts)
        rec.set("failed", failed)
        if done["exit_code"] not in (0, 5) or failed:  # 5: nothing collected
            raise RuntimeError(f"pytest -m gpu exit {done['exit_code']}: {len(failed)} failed: {failed[:10]}")


def _audio(seconds: float, sr: int, seed: int = 0):
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


def _options(name: str, ctx: Context) -> dict[str, Any]:
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
        return [_audio(seconds, cls.sample_rate, seed=seed)]
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
        opts = _options(name, ctx)
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


def _write_job_dataset(root: Path, n: int, seconds: float) -> float:
    """n paired rows (48 kHz WAV + MIDI) plus one row whose WAV is corrupt; returns the good audio seconds."""
    import numpy as np
    import pandas as pd
    import soundfile as sf

    from bench.synthetic_midi import random_piece

    (root / "audio").mkdir(parents=True, exist_ok=True)
    (root / "midi").mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(n):
        sf.write(root / "audio" / f"rec{k:03d}.wav", _audio(seconds, 48000, seed=k), 48000, subtype="PCM_16")
        random_piece(np.random.default_rng(k), int(seconds * 4)).dump_midi(str(root / "midi" / f"rec{k:03d}.mid"))
        rows.append({"id": f"rec{k:03d}", "audio_filename": f"audio/rec{k:03d}.wav",
                     "midi_filename": f"midi/rec{k:03d}.mid", "style": ["a", "b"][k % 2]})
    (root / "audio" / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really a wave file" * 10)
    random_piece(np.random.default_rng(999), 40).dump_midi(str(root / "midi" / "corrupt.mid"))
    rows.append({"id": "corrupt", "audio_filename": "audio/corrupt.wav", "midi_filename": "midi/corrupt.mid",
                 "style": "a"})
    pd.DataFrame(rows).to_csv(root / "info.csv", index=False)
    return n * seconds


def check_embedding_job(ctx: Context) -> None:
    import pandas as pd
    import pyarrow.parquet as pq

    rec = ctx.rec
    n, seconds = (2, 2.0) if ctx.dry else (24, 60.0)
    data_root = ctx.work / "job_data"
    audio_seconds = 0.0
    opts: dict[str, Any] = {}
    with rec.step("dataset"):
        audio_seconds = _write_job_dataset(data_root / "raw" / "gpucheck", n, seconds)
        opts = _options("openl3", ctx)
        rec.set("dataset", {"rows": n + 1, "corrupt_rows": 1, "audio_seconds": audio_seconds, "sample_rate": 48000})
    gpus = "0.5" if ctx.cuda else "0"
    if not ctx.cuda:
        rec.skip("--num_gpus 0.5 (ran with --num_gpus 0), GPU utilisation, audio hours per GPU hour")
    with rec.step("job"):
        cmd = [sys.executable, "-m", "ray_jobs.generate_embeddings", "--dataset", "gpucheck", "--data_root",
               str(data_root), "--audio_embedder", "openl3", "--audio_checkpoint", opts["checkpoint"],
               "--symbolic_embedder", "pianoroll", "--num_gpus", gpus]
        with GpuSampler() as sampler:
            done = run_command(cmd, ctx.work / "embedding_job.log", ctx.remaining(15),
                               env={"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"})
        rec.set("command", " ".join(cmd[1:]))
        rec.set("job", {k: done[k] for k in ("exit_code", "seconds")})
        if ctx.cuda:
            rec.set("gpu_utilisation", sampler.summary())
            rec.set("audio_hours_per_gpu_hour", round(audio_seconds / done["seconds"], 1))  # one GPU, wall time
        if done["exit_code"] not in (0, 1):  # 1: finished with per-item errors (the corrupt file)
            raise RuntimeError(f"generate_embeddings exit {done['exit_code']}: {done['output_tail'][-5:]}")
    with rec.step("store"):
        store = data_root / "embeddings" / "gpucheck"
        rows = {}
        for medium in ("audio_embeddings", "symbolic_embeddings"):
            parts = sorted((store / "parquet" / medium).glob("*/part-*.parquet"))
            rows[medium] = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
        rec.set("rows_embedded", rows)
        errors = pd.read_parquet(store / "errors.parquet")
        rec.set("errors_table", errors.astype(str).to_dict("records")[:10])
        corrupt = errors[errors["id"].astype(str) == "corrupt"]
        rec.set("corrupt_in_errors", bool(len(corrupt)))
        if rows["audio_embeddings"] != n or not len(corrupt):
            raise RuntimeError(f"expected {n} audio rows and the corrupt id in errors.parquet; got {rows}, "
                               f"errors ids {errors['id'].astype(str).tolist()[:10]}")


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


def check_sweep(ctx: Context) -> None:
    from tests.sweep_factory import SWEEP_ARGS, tiny_store

    rec = ctx.rec
    gpus = "0.25" if ctx.cuda else "0"
    if not ctx.cuda:
        rec.skip("--gpus_per_trial 0.25 (ran with 0)")
    with rec.step("sweep"):
        root = ctx.work / "sweep_store"
        root.mkdir(parents=True, exist_ok=True)
        h5 = tiny_store(root)
        out = ctx.work / "sweep_out"
        args = SWEEP_ARGS if ctx.cuda else ["--labels", "style", "--num_samples", "1", "--max_epochs", "2",
                                            "--grace_period", "1", "--patience", "2", "--seeds", "1", "--num_cpus", "2",
                                            "--verbose", "0"]
        cmd = [sys.executable, "-m", "ray_jobs.sweep", "--h5_path", str(h5), "--output_dir", str(out), *args,
               "--gpus_per_trial", gpus]
        with GpuSampler() as sampler:
            done = run_command(cmd, ctx.work / "sweep.log", ctx.remaining(5),
                               env={"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                                    "MLFLOW_ALLOW_FILE_STORE": "true"})
        rec.set("command", " ".join(cmd[1:]))
        rec.set("sweep", {k: done[k] for k in ("exit_code", "seconds")})
        if ctx.cuda:
            rec.set("gpu_utilisation", sampler.summary())
        rec.set("outputs", sorted(p.name for p in out.iterdir()) if out.is_dir() else [])
        if done["exit_code"] != 0:
            raise RuntimeError(f"sweep exit {done['exit_code']}: {done['output_tail'][-5:]}")


def check_hang(ctx: Context) -> None:
    """Hang in a child process past any budget (the driver must kill both)."""
    ctx.rec.set("started", True)
    run_command([sys.executable, "-c", "import time; time.sleep(600)", str(ctx.work)], ctx.work / "hang.log", 600)


def run_check(name: str, ctx: Context) -> None:
    if name.startswith("embedder:"):
        check_embedder(ctx, name.split(":", 1)[1])
    else:
        {"environment": check_environment, "gpu_tests": check_gpu_tests, "embedding_job": check_embedding_job,
         "pretrain": check_pretrain, "pretrain_steps": check_pretrain_steps, "sweep": check_sweep,
         "_hang": check_hang}[name](ctx)


# ---------------------------------------------------------------------------------------------
# The driver: one process per check, a budget each, the JSON after every check, a table at the end
# ---------------------------------------------------------------------------------------------
def _summary_line(name: str, check: dict[str, Any]) -> str:
    f = check.get("figures", {})
    key = ""
    if name.startswith("embedder:"):
        bits = []
        for label in ("cpu_fp32", "cuda_fp32", "cuda_auto"):
            v = f.get(label)
            if isinstance(v, dict):
                cos = v.get("cosine_vs_cpu_fp32", {}).get("min")
                bits.append(f"{label} {v.get('windows_per_s')} w/s" + (f" cos>={cos}" if cos is not None else ""))
        key = "; ".join(bits)
    elif name == "gpu_tests":
        key = str(f.get("counts", ""))
    elif name == "embedding_job":
        key = f"rows {f.get('rows_embedded')}, corrupt recorded {f.get('corrupt_in_errors')}"
        if "audio_hours_per_gpu_hour" in f:
            util = f.get("gpu_utilisation", {}).get("utilisation_mean_pct")
            key += f", {f['audio_hours_per_gpu_hour']} audio h/GPU h, util {util}%"
    elif name == "pretrain":
        key = "; ".join(f"{k} {v.get('tokens_per_s_by_epoch', ['-'])[-1]} tok/s"
                        + (f" MFU {v['mfu_vs_dense_bf16_peak']}" if "mfu_vs_dense_bf16_peak" in v else "")
                        for k, v in f.get("runs", {}).items())
    elif name == "pretrain_steps":
        steps = f.get("steps", {})
        key = "; ".join(f"{p} {steps[p].get('tokens_per_s')} tok/s MFU {steps[p].get('mfu_vs_bf16_peak')}"
                        for p in ("fp32", "bf16_autocast") if isinstance(steps.get(p), dict))
    elif name == "sweep":
        key = str(f.get("sweep", ""))
    elif name == "environment":
        key = f"torch {f.get('torch')} cuda {f.get('torch_cuda_build')} gpu {f.get('gpu', {}).get('name', '-')}"
    return key[:110]


def print_table(result: dict[str, Any]) -> None:
    print(f"\ngpu_check ({'dry run, CPU' if result['dry_run'] else 'CUDA' if result['cuda_available'] else 'no CUDA'}), "
          f"{result['total_seconds']:.0f} s -> {result['out']}")
    print(f"{'check':<26} {'status':<8} {'s':>6}  figures / first error")
    for name, check in result["checks"].items():
        detail = _summary_line(name, check)
        if check.get("errors"):
            detail = f"ERROR in {check['errors'][0]['step']}: {check['errors'][0]['error'][:90]}"
        print(f"{name:<26} {check['status']:<8} {check.get('seconds', 0):>6.0f}  {detail}")
        if check.get("skipped_cuda"):
            print(f"{'':<26} skipped (needs CUDA): {'; '.join(check['skipped_cuda'])[:150]}")


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, default=_plain))
    os.replace(tmp, path)


def drive(args) -> int:
    import torch

    out = Path(args.out)
    names = [n for n, _ in CHECKS]
    if args.only:
        wanted = args.only.split(",")
        known = names + [n for n, _ in SELF_TEST_CHECKS]
        unknown = [w for w in wanted if w not in known]
        if unknown:
            print(f"error: --only: unknown check(s) {unknown}; checks: {', '.join(names)}", file=sys.stderr)
            return 2
        names = [n for n in known if n in wanted]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="avs-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "logs").mkdir(exist_ok=True)
    start = time.monotonic()
    deadline = start + args.total_budget
    result: dict[str, Any] = {"benchmark": "gpu_check", "dry_run": bool(args.dry_run),
                              "cuda_available": torch.cuda.is_available(), "machine": machine(),
                              "work": str(work), "out": str(out), "total_budget_s": args.total_budget, "checks": {}}
    if not args.dry_run and not torch.cuda.is_available():
        result["warning"] = (f"no CUDA (torch {torch.__version__}, CUDA build {torch.version.cuda}): every CUDA part is "
                             "skipped; this is not a GPU measurement")
        print(f"warning: {result['warning']}", file=sys.stderr)
    budgets = dict(CHECKS + SELF_TEST_CHECKS)
    try:
        for name in names:
            left = deadline - time.monotonic()
            budget = min(budgets[name] * args.budget_scale, left)
            if budget < 10:
                result["checks"][name] = {"status": "not_run", "seconds": 0, "budget_s": round(budget, 1),
                                          "errors": [{"step": "-", "error": "the total time budget ran out"}]}
                continue
            partial = work / f"{name.replace(':', '_')}.json"
            log = work / "logs" / f"{name.replace(':', '_')}.log"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--_check", name, "--_result", str(partial),
                   "--work", str(work), "--_budget", str(budget)] + (["--dry_run"] if args.dry_run else [])
            print(f"[{time.monotonic() - start:5.0f} s] {name} (budget {budget:.0f} s)", file=sys.stderr, flush=True)
            done = run_command(cmd, log, budget)
            check: dict[str, Any] = {"figures": {}, "skipped_cuda": [], "errors": []}
            with contextlib.suppress(OSError, ValueError):
                check = json.loads(partial.read_text())
            check.update(seconds=done["seconds"], budget_s=round(budget, 1), log=str(log))
            if done["exit_code"] is None:
                check["status"] = "timeout"
                check["errors"].append({"step": "-", "error": f"killed after its budget of {budget:.0f} s"})
            elif done["exit_code"] != 0:
                check["status"] = "failed"
                check["errors"].append({"step": "-", "error": f"the check's process exited {done['exit_code']}",
                                        "output_tail": done["output_tail"]})
            else:
                check["status"] = "failed" if check["errors"] else "ok"
            result["checks"][name] = check
            result["total_seconds"] = round(time.monotonic() - start, 1)
            write_json(out, result)
    finally:
        from bench.common import load_avg

        result["total_seconds"] = round(time.monotonic() - start, 1)
        result["machine"]["load_avg_end"] = load_avg()
        write_json(out, result)
        if not args.keep_work and not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print_table(result)
    ok = all(c["status"] == "ok" for c in result["checks"].values())
    return 0 if ok and (args.dry_run or torch.cuda.is_available()) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(DEFAULT_OUT), help=f"JSON result path (default {DEFAULT_OUT.relative_to(REPO)})")
    p.add_argument("--dry_run", action="store_true", help="CPU only, small sizes, CUDA parts skipped (a few minutes)")
    p.add_argument("--only", default=None, help="comma-separated checks to run (default: all): "
                   + ", ".join(n for n, _ in CHECKS))
    p.add_argument("--total_budget", type=float, default=None,
                   help="seconds for all checks together (default 570; 1500 with --dry_run)")
    p.add_argument("--budget_scale", type=float, default=None,
                   help="multiply every check's own budget (default 1; 4 with --dry_run: 2 shared cores, not a GPU)")
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed at the end)")
    p.add_argument("--keep_work", action="store_true", help="keep the temporary scratch folder (logs, data)")
    p.add_argument("--_check", help=argparse.SUPPRESS)
    p.add_argument("--_result", help=argparse.SUPPRESS)
    p.add_argument("--_budget", type=float, default=600.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.total_budget = args.total_budget or (1500.0 if args.dry_run else 570.0)
    args.budget_scale = args.budget_scale or (4.0 if args.dry_run else 1.0)
    if args._check:
        rec = Recorder(Path(args._result))
        ctx = Context(args, rec)
        with rec.step("check"):
            run_check(args._check, ctx)
        return 0
    return drive(args)


if __name__ == "__main__":
    raise SystemExit(main())
