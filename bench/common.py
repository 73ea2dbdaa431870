"""Shared by the bench scripts: machine description, load, peak memory of process trees, JSON output.

Every script prints one JSON object whose ``machine`` entry says where the figures came from (CPU
model, cores, RAM, load average before and after): the build machines are shared, so absolute
timings are noisy and each script times its baseline in the same run and reports ratios.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def load_avg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def package_version(name: str) -> str | None:
    """Installed version of a distribution (None when absent), without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """Where the figures come from; ``load_avg_start`` is the 1/5/15-minute load when this was called."""
    import numpy as np

    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("torch", "ray", "scipy", "miditok", "symusic", "miditoolkit"):
        versions[name] = package_version(name)
    return {"cpu_model": cpu_model(), "cores": os.cpu_count(), "ram_gib": ram_gib(),
            "platform": platform.platform(), "load_avg_start": load_avg(), "versions": versions}


def finish(result: dict[str, Any]) -> None:
    """Add the end-of-run load to ``result['machine']`` and print the JSON object (the only stdout line)."""
    result.setdefault("machine", machine())["load_avg_end"] = load_avg()
    print(json.dumps(result, indent=1, default=_default))


@contextlib.contextmanager
def stdout_to_stderr():
    """Send file descriptor 1 to stderr for a while (libraries that print progress from native
    code bypass sys.stdout), so stdout carries only the JSON result."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _default(value: Any) -> Any:
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:
        pass
    return str(value)


def psutil_module():
    """psutil: installed, or the copy Ray vendors (ray.thirdparty_files), so nothing new is needed."""
    try:
        import psutil
    except ImportError:
        import ray  # noqa: F401  puts ray/thirdparty_files on sys.path

        # isort: split
        import psutil
    return psutil


def process_kind(proc) -> str:
    """driver | ray_worker (tasks and actors: 'ray::...' / default_worker.py) | ray_system (raylet, GCS, ...)."""
    try:
        cmd = proc.cmdline()
    except Exception:  # noqa: BLE001  the process may be gone; psutil raises several types
        return "gone"
    head = cmd[0] if cmd else ""
    if head.startswith("ray::") or any(part.endswith("default_worker.py") for part in cmd[:3]):
        return "ray_worker"
    return "ray_system"


def process_name(proc) -> str:
    """A short label: Ray's title for workers ('ray::MapWorker(...)'), else the executable and module."""
    try:
        cmd = proc.cmdline()
    except Exception:  # noqa: BLE001
        return "?"
    if not cmd:
        return proc.name()
    if cmd[0].startswith("ray::"):
        return cmd[0].split()[0][:60]
    words = [Path(cmd[0]).name] + [Path(c).name for c in cmd[1:3] if not c.startswith("-")]
    return " ".join(words)[:60]


class TreeMemorySampler:
    """Samples the resident memory of a process and all its descendants in a background thread.

    Per sample (every ``interval`` s) it sums RSS, and every ``pss_every``-th sample PSS
    (proportional set size: shared pages such as Ray's object store and the libraries every worker
    maps are split between the processes mapping them, so PSS sums are not double counted), by kind:
    the root process (the job's driver), Ray workers, and Ray's system processes. Keeps the peak
    of each sum and of the largest single worker. It also adds up the CPU seconds of each kind
    (the last reading of every process seen) and, from /proc/stat, the CPU seconds the whole
    machine spent busy meanwhile: what other tenants took shows as ``other_cpu_s``.
    """

    def __init__(self, root_pid: int, interval: float = 0.5, pss_every: int = 4):
        self.psutil = psutil_module()
        self.root_pid = root_pid
        self.interval = interval
        self.pss_every = pss_every
        self.peak: dict[str, float] = {}
        self.samples = 0
        self.max_workers = 0
        self._kinds: dict[int, str] = {}
        self._cpu: dict[int, tuple[str, float]] = {}
        self._names: dict[int, str] = {}
        self._machine0 = machine_cpu_seconds()
        self._t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _memory(self, proc, with_pss: bool) -> tuple[float, float | None]:
        """RSS always (cheap: /proc/pid/statm); PSS only when asked (smaps_rollup costs ~2 ms a process)."""
        if with_pss:
            try:
                info = proc.memory_full_info()
                return info.rss / 2**20, getattr(info, "pss", info.rss) / 2**20
            except (self.psutil.AccessDenied, AttributeError):
                pass
        return proc.memory_info().rss / 2**20, None

    def _run(self) -> None:
        ps = self.psutil
        try:
            root = ps.Process(self.root_pid)
        except ps.NoSuchProcess:
            return
        while not self._stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except ps.NoSuchProcess:
                break
            sums: dict[str, float] = {}
            workers = 0
            with_pss = self.samples % self.pss_every == 0
            for proc in procs:
                kind = "driver" if proc.pid == self.root_pid else self._kinds.get(proc.pid)
                try:
                    if kind is None or kind == "ray_system":  # a worker renames itself once it runs
                        kind = process_kind(proc)
                        self._kinds[proc.pid] = kind
                    if kind == "gone":
                        continue
                    rss, pss = self._memory(proc, with_pss)
                    times = proc.cpu_times()
                    self._cpu[proc.pid] = (kind, times.user + times.system)
                    if proc.pid not in self._names or self._names[proc.pid].startswith("ray::IDLE"):
                        self._names[proc.pid] = process_name(proc)
                    if kind == "ray_worker":
                        workers += 1
                        self.peak["largest_worker_rss_mb"] = max(self.peak.get("largest_worker_rss_mb", 0.0), rss)
                except (ps.NoSuchProcess, ps.ZombieProcess, ps.AccessDenied):
                    continue
                values = [(f"{kind}_rss_mb", rss), ("total_rss_mb", rss)]
                if pss is not None:
                    values += [(f"{kind}_pss_mb", pss), ("total_pss_mb", pss)]
                for key, value in values:
                    sums[key] = sums.get(key, 0.0) + value
            for key, value in sums.items():
                self.peak[key] = max(self.peak.get(key, 0.0), value)
            self.max_workers = max(self.max_workers, workers)
            self.samples += 1
            self._stop.wait(self.interval)

    def cpu_summary(self) -> dict[str, float]:
        wall = time.perf_counter() - self._t0
        by_kind: dict[str, float] = {}
        for kind, seconds in self._cpu.values():
            by_kind[kind] = by_kind.get(kind, 0.0) + seconds
        busy = machine_cpu_seconds()
        out = {f"{k}_cpu_s": round(v, 2) for k, v in sorted(by_kind.items())}
        out["tree_cpu_s"] = round(sum(by_kind.values()), 2)
        if busy is not None and self._machine0 is not None:
            out["machine_busy_cpu_s"] = round(busy - self._machine0, 2)
            out["other_cpu_s"] = round(busy - self._machine0 - out["tree_cpu_s"], 2)
        out["wall_s"] = round(wall, 2)
        top = sorted(((seconds, self._names.get(pid, "?")) for pid, (_, seconds) in self._cpu.items()), reverse=True)
        out["top_processes_cpu_s"] = [[name, round(seconds, 2)] for seconds, name in top[:12]]
        return out

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {f"peak_{k}": round(v, 1) for k, v in sorted(self.peak.items())}
        out.update(samples=self.samples, max_ray_workers=self.max_workers)
        return out


def machine_cpu_seconds() -> float | None:
    """CPU seconds all cores of this machine have spent busy (not idle or waiting on I/O) since boot."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    ticks = [int(x) for x in fields]
    busy = sum(ticks) - ticks[3] - ticks[4]  # idle, iowait
    return busy / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """``with CpuMeter() as m``: m.result = this process's CPU seconds and the machine's busy CPU seconds."""

    def __enter__(self) -> CpuMeter:
        self._t0, self._m0, self._r0 = time.perf_counter(), machine_cpu_seconds(), resource.getrusage(resource.RUSAGE_SELF)
        return self

    def __exit__(self, *exc) -> None:
        r = resource.getrusage(resource.RUSAGE_SELF)
        own = (r.ru_utime - self._r0.ru_utime) + (r.ru_stime - self._r0.ru_stime)
        busy = machine_cpu_seconds()
        self.result = {"wall_s": round(time.perf_counter() - self._t0, 2), "own_cpu_s": round(own, 2)}
        if busy is not None and self._m0 is not None:
            self.result["machine_busy_cpu_s"] = round(busy - self._m0, 2)
            self.result["other_cpu_s"] = round(busy - self._m0 - own, 2)


class Stopwatch:
    """Accumulates seconds per named stage: ``with sw("decode"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._name = ""

    def __call__(self, name: str) -> Stopwatch:
        self._name = name
        return self

    def __enter__(self) -> Stopwatch:
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds[self._name] = self.seconds.get(self._name, 0.0) + time.perf_counter() - self._t0


def midi_files(source: Path, n: int, seed: int, flag: str = "--source") -> list[Path]:
    """MIDI files of a dataset folder (its info.csv) or any folder (*.mid, *.midi), ``n`` in a seeded order."""
    import numpy as np

    if (source / "info.csv").is_file():
        from embedders.dataset import read_info_csv

        files = [source / p for p in read_info_csv(source)["midi_filename"]]
    else:
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in (".mid", ".midi"))
    if not files:
        raise SystemExit(f"{flag} {source}: no MIDI files found (run prepare_dataset, or name a folder of .mid files)")
    order = np.random.default_rng(seed).permutation(len(files))
    return [files[i] for i in order[:n]]


# what two processes can get from this machine right now (a shared machine gives less than its cores)
def _burn(seconds: float) -> int:
    """Pure-Python busy work for ``seconds`` of this process's CPU time; the loop count it reached."""
    count, end = 0, time.process_time() + seconds
    while time.process_time() < end:
        count += 1
    return count


def capacity_probe(seconds: float = 1.0) -> float:
    """Cores this run can get right now: busy-loop throughput of two processes at once over one
    alone (2.0 on two idle cores). Other users' load on a shared machine lowers it; no design with
    two processes beats the sequential loop by more than this."""
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ctx.Pool(2) as pool:
        pool.map(_burn, [0.05, 0.05])  # both workers started
        t0 = time.perf_counter()
        pool.apply(_burn, (seconds,))
        one = time.perf_counter() - t0
        t0 = time.perf_counter()
        pool.map(_burn, [seconds, seconds], chunksize=1)
        two = time.perf_counter() - t0
    return round(2 * one / two, 2)


def blas_probe(size: int = 1024, reps: int = 8) -> dict[str, float]:
    """GFLOP/s of a float32 size x size matmul (numpy's BLAS) on 1 and on 2 threads."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    out = {}
    for threads in (1, 2):
        with threadpool_limits(threads):
            a @ a
            t0 = time.perf_counter()
            for _ in range(reps):
                a @ a
            seconds = time.perf_counter() - t0
            out[f"gflops_{threads}_thread{'s' if threads > 1 else ''}"] = round(2 * size**3 * reps / seconds / 1e9, 1)
    return out
