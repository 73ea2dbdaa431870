"""The job's own console: progress lines, and Ray's logging silenced unless --verbose."""

from __future__ import annotations

import io
import logging

from ray_jobs.console import OTHER_INFO_LOGGERS, RAY_LOGGERS, RAY_NOTICE_LOGGERS, Progress, ProgressGroup, quiet_ray


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_log_lines_are_periodic_with_rate_eta_and_failures():
    out, clock = io.StringIO(), Clock()
    progress = Progress("audio_embeddings/melstats", 100, stream=out, interval=10.0, clock=clock)
    clock.t = 1.0
    progress.update(done=10)            # first update prints at once
    clock.t = 5.0
    progress.update(done=10, failed=2)  # within the interval: silent
    clock.t = 12.0
    progress.update(done=20)
    clock.t = 20.0
    progress.update(done=60)
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "audio_embeddings/melstats: 10/100 rows (10%), 10.0 rows/s, elapsed 0:01, ETA 0:09"
    assert lines[1] == "audio_embeddings/melstats: 40/100 rows (40%), 3.3 rows/s, elapsed 0:12, ETA 0:18, 2 failed"
    assert lines[-1] == "audio_embeddings/melstats: 100/100 rows (100%), 5.0 rows/s, elapsed 0:20, 2 failed"
    assert len(lines) == 3  # at 1 s, at 12 s (10 s after the last), and the final line at close


def test_terminal_gets_one_rewritten_line():
    out, clock = Tty(), Clock()
    with Progress("works", 3, stream=out, clock=clock, unit="works") as progress:
        for _ in range(3):
            clock.t += 1.0
            progress.update(done=1)
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("3/3 works (100%), 1.0 works/s, elapsed 0:03\n")
    assert text.count("\r\x1b[2K") == 4  # three updates and the final line, each over the last


def test_a_group_redraws_one_line_per_member_on_a_terminal():
    out, clock = Tty(), Clock()
    a = Progress("audio", 2, stream=out, clock=clock)
    b = Progress("midi", 2, stream=out, clock=clock)
    empty = Progress("none", 0, stream=out, clock=clock)
    with ProgressGroup([a, b, empty]):
        clock.t = 1.0
        a.update(done=1)
        clock.t = 2.0
        b.update(done=2)
        a.update(done=1)
    text = out.getvalue()
    frames = text.split("\r")[1:]
    assert len(frames) == 5  # three updates and two closes, each redrawing both lines
    assert frames[0] == ("\x1b[2Kaudio: 1/2 rows (50%), 1.0 rows/s, elapsed 0:01, ETA 0:01\n"
                         "\x1b[2Kmidi: 0/2 rows (0%), 0.0 rows/s, elapsed 0:01, ETA ?\x1b[1A")
    assert text.endswith("\x1b[2Kaudio: 2/2 rows (100%), 1.0 rows/s, elapsed 0:02\n"
                         "\x1b[2Kmidi: 2/2 rows (100%), 1.0 rows/s, elapsed 0:02\n")
    assert "none" not in text


def test_a_group_in_a_log_prints_each_member_line():
    out, clock = io.StringIO(), Clock()
    a, b = Progress("audio", 2, stream=out, clock=clock), Progress("midi", 2, stream=out, clock=clock)
    with ProgressGroup([a, b]):
        clock.t = 1.0
        a.update(done=2)
        b.update(done=2, failed=1)
    assert out.getvalue().splitlines()[-2:] == ["audio: 2/2 rows (100%), 2.0 rows/s, elapsed 0:01",
                                                "midi: 2/2 rows (100%), 2.0 rows/s, elapsed 0:01, 1 failed"]


def test_survives_pickling_as_tune_does_with_callbacks():
    import pickle

    out, clock = io.StringIO(), Clock()
    progress = Progress("trials", 4, stream=out, clock=clock)
    progress.update(done=1)
    copy = pickle.loads(pickle.dumps(progress))
    assert copy.done == 1 and copy.total == 4 and copy.stream is not out


def test_nothing_for_an_empty_total():
    out = io.StringIO()
    with Progress("nothing", 0, stream=out) as progress:
        progress.update(done=0)
    assert out.getvalue() == ""


def test_quiet_ray_silences_ray_loggers_and_data_progress(monkeypatch):
    monkeypatch.delenv("RAY_DATA_DISABLE_PROGRESS_BARS", raising=False)
    import mlflow  # noqa: F401  (sets its loggers to INFO on import, as in a job)
    from ray.data import DataContext

    ctx = DataContext.get_current()
    saved = (ctx.enable_progress_bars, ctx.print_on_execution_start,
             {n: logging.getLogger(n).level for n in (*RAY_LOGGERS, *RAY_NOTICE_LOGGERS, *OTHER_INFO_LOGGERS)})
    try:
        quiet_ray(verbose=True)
        assert ctx.print_on_execution_start == saved[1]  # verbose changes nothing
        quiet_ray(verbose=False)
        assert not ctx.enable_progress_bars and not ctx.print_on_execution_start
        assert all(logging.getLogger(n).getEffectiveLevel() >= logging.WARNING for n in RAY_LOGGERS)
        assert all(logging.getLogger(n).getEffectiveLevel() >= logging.ERROR for n in RAY_NOTICE_LOGGERS)
        assert "mlflow.store.db.utils" in OTHER_INFO_LOGGERS
        assert not logging.getLogger("mlflow.store.db.utils").isEnabledFor(logging.INFO)
    finally:
        ctx.enable_progress_bars, ctx.print_on_execution_start = saved[0], saved[1]
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)
