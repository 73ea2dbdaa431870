"""Headless Chromium for page tests: load a local page, return its rendered DOM and console errors.

Uses the Debian ``chromium`` binary directly (no driver package): with ``--enable-logging=stderr``
Chromium writes every console message and uncaught exception to stderr as ``CONSOLE`` lines.
Pages are opened from files, with background networking off (the build machines have no network).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
# Chromium logs every console message at INFO, whatever its level: "...:INFO:CONSOLE:12] "msg", source: url (12)"
_CONSOLE = re.compile(r':CONSOLE[:(]\d+\)?\] "(.*)", source: (\S*)')


def chromium_or_skip() -> str:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI") == "true":
        pytest.fail("CI=true but no chromium binary was found; .ci/run installs Debian's chromium")
    pytest.skip("headless Chromium not installed (Debian package 'chromium'); CI installs and runs this")


def load_page(path: Path, budget_ms: int = 8000) -> tuple[str, list[str]]:
    """(rendered DOM, every console message and uncaught exception).

    The log does not keep console levels apart, so any console output counts: the project's pages
    write none when they work.
    """
    return load_url(Path(path).absolute().as_uri(), budget_ms)


def load_url(url: str, budget_ms: int = 8000, window_size: str | None = None) -> tuple[str, list[str]]:
    """``load_page`` for any URL (e.g. a server on 127.0.0.1); ``window_size`` "W,H" renders more of a long page."""
    binary = chromium_or_skip()
    size = [f"--window-size={window_size}"] if window_size else []
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=1", *size,
             f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
            capture_output=True, text=True, timeout=120,
        )
    errors = [message for message, _source in _CONSOLE.findall(proc.stderr)]
    if proc.returncode != 0:
        errors.append(f"chromium exited with {proc.returncode}: {proc.stderr[-500:]}")
    return proc.stdout, errors
