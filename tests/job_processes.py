"""Jobs in processes of their own: the processes of one session (``start_new_session=True``),
SIGKILLed at once, and what a Ray log line on the console looks like.

A job started in a session of its own (its driver, a local Ray's daemons and workers) can be
killed at once, as when a node dies, or cleaned up without waiting for Ray's own shutdown.
Linux only (reads /proc).
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

# Ray's log lines ("2026-01-01 12:00:00,000 INFO worker.py:2038 -- Started a local Ray instance."):
# jobs show them only with --verbose
RAY_INFO = re.compile(r"\bINFO\b")


def session_members(session: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            state, _, _, sid = stat.rsplit(")", 1)[1].split()[:4]  # fields after comm: state ppid pgrp session
            if int(sid) == session and state != "Z":  # zombies are dead, waiting for their parent to reap them
                members.append(int(entry))
    return members


def kill_session(session: int) -> None:
    """SIGKILL every live process of ``session``; raise AssertionError if any outlives 60 s."""
    for pid in session_members(session):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 60
    while session_members(session) and time.monotonic() < deadline:
        time.sleep(0.1)  # waiting for the kernel to reap them, not timing anything
    assert not session_members(session), "processes of the killed job are still running"
