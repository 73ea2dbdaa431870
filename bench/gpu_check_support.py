"""bench/gpu_check.py's plumbing: a check's recorder, its context, child commands killed with their group,
and the nvidia-smi utilisation sampler."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import traceback
from pathlib import Path
from typing import Any

from bench.common import REPO


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
