"""What a job prints: its own stage lines and progress; Ray's own logging only with ``--verbose``.

Ray, Ray Data, Tune and Train log at INFO by default (start-up notices, execution plans, progress
tables every few seconds), which buries the job's few lines. ``quiet_ray`` turns those off at the
source before Ray starts; ``Progress`` prints one updating line on a terminal and a line every
``interval`` seconds in a log file (rows done / total, rows/s, ETA, failures so far).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve")
#: Ray loggers whose warnings only restate what quiet_ray did ("Progress bars disabled. To enable ...").
RAY_NOTICE_LOGGERS = ("ray.data._internal.progress",)
#: Other libraries' INFO lines on a job's console that are not the user's to act on (MLflow's
#: "Creating initial MLflow database tables..." when a job makes its sqlite store).
OTHER_INFO_LOGGERS = ("mlflow.store.db.utils",)


def add_verbose_flag(parser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's own INFO logs and progress tables (default: only this job's lines)")


def quiet_ray(verbose: bool = False) -> None:
    """Silence Ray's INFO logging and Ray Data's progress logs unless ``verbose``. Call before ray.init.

    Environment variables reach the Ray workers and raylet this process starts; the logger levels
    and the Data context cover the driver, where those lines are printed.
    """
    if verbose:
        return
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    for name in OTHER_INFO_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        from ray.data import DataContext
    except ImportError:  # Ray Data is not installed where only Train/Tune run
        return
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    # Ray Data configures its own loggers when imported: set them again after that import.
    for name in RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in RAY_NOTICE_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Rows done out of a known total, printed as one updating line (terminal) or periodic lines (log).

    ``update(done=, failed=)`` adds to the counts; ``close()`` prints the final line. The ETA is the
    remaining rows at the rate so far; nothing is printed for a total of zero.
    """

    def __init__(self, label: str, total: int, *, stream: TextIO | None = None, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, unit: str = "rows"):
        self.label, self.total, self.unit = label, int(total), unit
        self.stream = stream if stream is not None else sys.stdout
        self.interval = interval
        self.clock = clock
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = self.failed = 0
        self.started = clock()
        self._last_print = -math.inf
        self._closed = False
        self.group: ProgressGroup | None = None

    def line(self) -> str:
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = self.done / elapsed
        remaining = (self.total - self.done) / rate if rate > 0 else math.inf
        pct = 100.0 * self.done / self.total if self.total else 100.0
        text = (f"{self.label}: {self.done}/{self.total} {self.unit} ({pct:.0f}%), {rate:.1f} {self.unit}/s, "
                f"elapsed {_duration(elapsed)}")
        if self.done < self.total:
            text += f", ETA {_duration(remaining)}"
        if self.failed:
            text += f", {self.failed} failed"
        return text

    def update(self, done: int = 0, failed: int = 0) -> None:
        self.done += done
        self.failed += failed
        now = self.clock()
        if self.total and now - self._last_print >= (0.2 if self.tty else self.interval):
            self._emit(final=False)
            self._last_print = now

    def _emit(self, final: bool) -> None:
        if self.tty and self.group is not None:
            self.group.redraw()
            return
        if self.tty:
            self.stream.write("\r\x1b[2K" + self.line() + ("\n" if final else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        if not self._closed and self.total:
            self._closed = True
            self._emit(final=True)
        self._closed = True

    def __getstate__(self) -> dict:
        # Tune pickles its callbacks into the experiment checkpoint: a console stream cannot be pickled
        # (a restored copy prints to this process's stdout)
        return {k: v for k, v in self.__dict__.items() if k not in ("stream", "clock")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, stream=sys.stdout, clock=time.monotonic)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ProgressGroup:
    """Several ``Progress`` counters at once (one per medium of one pass). On a terminal their lines
    are redrawn in place, one line each; in a log each member prints its own periodic lines.
    Members with a total of zero are left out."""

    def __init__(self, members: list[Progress]):
        self.members = [m for m in members if m.total]
        self._drawn = False
        for member in self.members:
            member.group = self

    def redraw(self) -> None:
        stream = self.members[0].stream
        text = f"\x1b[{len(self.members) - 1}A\r" if self._drawn and len(self.members) > 1 else "\r"
        text += "\n".join("\x1b[2K" + m.line() for m in self.members)
        if all(m._closed for m in self.members):
            text += "\n"
        stream.write(text)
        stream.flush()
        self._drawn = True

    def close(self) -> None:
        for member in self.members:
            member.close()

    def __enter__(self) -> ProgressGroup:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
