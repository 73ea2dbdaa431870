"""Datasets of N rows for the embedding benchmark, cut from one paired dataset in the seed format.

    python bench/paired_data.py --source data/raw/music21 --n 1600 --dest /tmp/bench --name bench_1600

A size-N dataset takes N rows of the source in a seeded random order (so every size mixes the
composers the same way; info.csv itself is sorted by id). When the source has fewer than N rows,
rows are reused under distinct ids (``<id>__dup<k>``, pointing at copies of the same files): the
result then says how many rows are such duplicates. Files are hard links into the source (copies
where links are impossible), since the job refuses paths that leave the dataset folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embedders.dataset import read_info_csv  # noqa: E402


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def audio_seconds(root: Path, info: pd.DataFrame) -> float:
    import soundfile as sf

    return float(sum(sf.info(str(root / p)).duration for p in info["audio_filename"]))


def sized_dataset(source: str | os.PathLike, n: int, data_root: str | os.PathLike, name: str,
                  seed: int = 0) -> dict:
    """Write ``<data_root>/raw/<name>/`` with ``n`` rows from ``source``; returns its description."""
    source = Path(source)
    info = read_info_csv(source)
    order = np.random.default_rng(seed).permutation(len(info))
    picks = [int(order[i % len(order)]) for i in range(n)]
    dest = Path(data_root) / "raw" / name
    if dest.exists():
        shutil.rmtree(dest)
    rows = []
    for k, i in enumerate(picks):
        row = info.iloc[i].to_dict()
        copy = k // len(order)
        if copy:
            row["id"] = f"{row['id']}__dup{copy}"
        for column in ("audio_filename", "midi_filename"):
            rel = Path(str(info.iloc[i][column]))
            target = rel.with_name(f"{rel.stem}__dup{copy}{rel.suffix}") if copy else rel
            _link(source / rel, dest / target)
            row[column] = target.as_posix()
        rows.append(row)
    table = pd.DataFrame(rows, columns=list(info.columns))
    table.to_csv(dest / "info.csv", index=False)
    return {"name": name, "rows": n, "distinct_works": min(n, len(info)), "duplicated_rows": max(0, n - len(info)),
            "audio_seconds": round(audio_seconds(dest, table), 1), "path": str(dest)}


def warm_page_cache(root: Path) -> int:
    """Read every file once, so the first timed run does not pay for cold disk reads the next one skips."""
    total = 0
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    total += len(chunk)
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", required=True, help="dataset folder holding info.csv (e.g. data/raw/music21)")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--dest", required=True, help="data root: writes <dest>/raw/<name>/")
    p.add_argument("--name", default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(json.dumps(sized_dataset(args.source, args.n, args.dest, args.name or f"bench_{args.n}", args.seed)))


if __name__ == "__main__":
    main()
