"""``prepare_dataset --source maestro|slakh|lakh_matched``: write info.csv for a corpus already on disk.

The corpus's files stay where its archive put them: unpack (or link) it as
``<data_root>/raw/<dataset>/`` and this writes ``info.csv`` there, in the seed format, from the
corpus's public layout (one ``recipes`` module per corpus; docs/datasets.md). The written file is
read back with ``embedders.dataset.read_info_csv``, so what the embedding job will refuse is
refused here. The Groove MIDI Dataset needs no recipe: its own ``info.csv`` is already the format.
"""

from __future__ import annotations

import sys
from collections import Counter

from embedders.dataset import InfoCsvError, has_medium, read_info_csv
from embedders.store import filesystem as fs
from ray_jobs.prepare_dataset.recipes import lakh_matched, maestro, slakh

SOURCES = ("maestro", "slakh", "lakh_matched")


def build_table(source: str, root, args):
    if source == "maestro":
        return maestro.index(root)
    if source == "slakh":
        return slakh.index(root, stems=args.slakh_stems, include_omitted=args.slakh_omitted)
    if source == "lakh_matched":
        return lakh_matched.index(root, all_matches=args.all_matches)
    raise ValueError(f"no index recipe for --source {source!r}; sources: {SOURCES}")


def main(args) -> int:
    """Write ``info.csv`` for ``args.source``; 0 written, 2 on a layout or validation error."""
    root = fs.join(args.data_root, "raw", args.dataset)
    if fs.is_remote(root):
        print(f"error: --source {args.source} indexes a local folder; {root} is remote (index a local copy, "
              "then upload the folder)", file=sys.stderr)
        return 2
    if not root.is_dir():
        print(f"error: {root} is not a folder; unpack or link the {args.source} corpus there first", file=sys.stderr)
        return 2
    try:
        table = build_table(args.source, root, args)
    except maestro.LayoutError as exc:
        print(f"error: --source {args.source}: {exc}", file=sys.stderr)
        return 2
    text = table.to_csv(index=False).encode()
    target = root / "info.csv"
    if target.is_file() and target.read_bytes() != text and not args.overwrite:
        print(f"error: {target} exists and differs from the {args.source} index; pass --overwrite to replace it",
              file=sys.stderr)
        return 2
    fs.write_bytes(target, text)
    try:
        info = read_info_csv(root)
    except InfoCsvError as exc:
        print(f"error: the written {target} is invalid (left there to inspect): {exc}", file=sys.stderr)
        return 2
    audio, midi = int(has_medium(info, "audio_filename").sum()), int(has_medium(info, "midi_filename").sum())
    splits = dict(Counter(info["split"])) if "split" in info.columns else {}
    print(f"prepare_dataset: {len(info)} rows in {target} ({audio} with audio, {midi} with MIDI); splits {splits}")
    return 0
