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
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, machine  # noqa: E402
from bench.gpu_check_embedders import _cosines, _db_difference, audio_clip, check_embedder, embedder_options  # noqa: E402, F401
from bench.gpu_check_pretrain import check_pretrain, check_pretrain_steps  # noqa: E402
from bench.gpu_check_support import Context, GpuSampler, Recorder, _plain, run_command  # noqa: E402, F401

EMBEDDERS = ("openl3", "clap", "clamp", "midi_transformer", "musicnn", "basic_pitch")
# (name, budget in seconds on a GPU machine); the budgets add up to more than the total, which caps them
CHECKS = [("environment", 30), ("gpu_tests", 120)] + [(f"embedder:{e}", 50) for e in EMBEDDERS] + [
    ("embedding_job", 120), ("pretrain", 270), ("pretrain_steps", 60), ("sweep", 100)]
# not run by default: a check that hangs with a child process, to test the kill path (--only _hang)
SELF_TEST_CHECKS = [("_hang", 40)]
DEFAULT_OUT = REPO / "bench" / "results" / "gpu_check.json"


# -- checks (embedder:<name> in gpu_check_embedders.py, pretrain* in gpu_check_pretrain.py) -------------
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
        sf.write(root / "audio" / f"rec{k:03d}.wav", audio_clip(seconds, 48000, seed=k), 48000, subtype="PCM_16")
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
        opts = embedder_options("openl3", ctx)
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
