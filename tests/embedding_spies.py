"""A Ray worker setup hook for tests: records in which process embedders prepare and embed.

``ray.init(runtime_env={"worker_process_setup_hook": "tests.embedding_spies.install"})`` with
``AVS_TEST_SPY_DIR`` set: every Ray worker then appends ``prepare <pid>`` for each
``prepare_items`` call and ``embed <pid> prepared=<bool>`` for each ``embed_items`` call to a
file of its own in that folder (a worker process that embeds raw items prepares them inside
``embed_items``, which records a ``prepare`` line from that process too).
"""

from __future__ import annotations

import os
from pathlib import Path

SPY_DIR = "AVS_TEST_SPY_DIR"


def _log(line: str) -> None:
    folder = os.environ.get(SPY_DIR)
    if folder:
        with open(Path(folder) / f"{os.getpid()}.log", "a") as fh:
            fh.write(line + "\n")


def install() -> None:
    from embedders.base import Embedder

    prepare_items, embed_items = Embedder.prepare_items, Embedder.embed_items

    def spy_prepare_items(self, ids, items):
        _log(f"prepare {os.getpid()}")
        return prepare_items(self, ids, items)

    def spy_embed_items(self, ids, items, **kw):
        _log(f"embed {os.getpid()} prepared={bool(kw.get('prepared', False))}")
        return embed_items(self, ids, items, **kw)

    Embedder.prepare_items, Embedder.embed_items = spy_prepare_items, spy_embed_items


def read(folder) -> list[tuple[str, int, str]]:
    """(kind, pid, rest) of every recorded call."""
    out = []
    for path in Path(folder).glob("*.log"):
        for line in path.read_text().splitlines():
            kind, pid, *rest = line.split()
            out.append((kind, int(pid), " ".join(rest)))
    return out
