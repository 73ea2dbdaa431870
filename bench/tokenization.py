"""MIDI tokenization files/s: the path pretraining uses (symusic + MidiTok) vs MidiTok on miditoolkit objects.

    python bench/tokenization.py --source data/raw/music21 [--files 300] [--vocab_size 2000] [--repeats 3]

Both paths end in the same token ids (checked per file) with the same tokenizer, in one process:

* ``symusic`` (what ``training.midi_datasets`` runs per file): ``tokenize_to_chunks``, i.e. read
  the file, parse it with ``symusic.Score.from_midi`` (C++), ``tokenizer.encode(score)`` and cut
  the ids into context-preserving chunks of ``max_seq_len``.
* ``miditoolkit`` (the classic MidiTok 2.x workflow): ``miditoolkit.MidiFile(path)`` (pure Python,
  on mido), handed to the same tokenizer, which in MidiTok 3 converts it to a symusic Score
  (``miditok.utils.miditoolkit_to_symusic``) before encoding; then the same chunking. miditoolkit
  is not a project dependency: without it this path is reported as not installed.

The tokenizer is REMI with the project's options, BPE-trained (``--vocab_size``) on
``--train_files`` of the files, as pretraining does. The two paths alternate in every repeat, so
machine load hits both alike; each figure is the median over repeats. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Stopwatch, finish, machine, midi_files, stdout_to_stderr  # noqa: E402


def tokenize_symusic(tokenizer, files: list[Path], max_seq_len: int, sw: Stopwatch) -> list[np.ndarray | None]:
    """The pretraining path, per stage: parse (read + symusic), encode, chunk."""
    from embedders.base import ItemError
    from embedders.io import decode_midi
    from embedders.symbolic.midi_transformer import tokenizer as tk
    from embedders.symbolic.midi_transformer.chunking import chunk_ids

    table, special = tk.context_table(tokenizer), tk.special_ids(tokenizer)
    out: list[np.ndarray | None] = []
    for path in files:
        try:
            with sw("parse"):
                score = decode_midi(path, item_id=str(path))
        except ItemError:
            out.append(None)
            continue
        with sw("encode"):
            ids = tk.tokenize_score(tokenizer, score)
        with sw("chunk"):
            chunk_ids(ids, table, special, max_seq_len)
        out.append(ids)
    return out


def tokenize_miditoolkit(tokenizer, files: list[Path], max_seq_len: int, sw: Stopwatch) -> list[np.ndarray | None]:
    """The classic path, per stage: parse (miditoolkit), convert (to symusic, inside MidiTok 3), encode, chunk."""
    import miditoolkit
    from miditok.utils.utils import miditoolkit_to_symusic

    from embedders.symbolic.midi_transformer import tokenizer as tk
    from embedders.symbolic.midi_transformer.chunking import chunk_ids

    table, special = tk.context_table(tokenizer), tk.special_ids(tokenizer)
    out: list[np.ndarray | None] = []
    for path in files:
        try:
            with sw("parse"):
                midi = miditoolkit.MidiFile(str(path))
            with sw("convert"):
                score = miditoolkit_to_symusic(midi)
        except (OSError, ValueError, EOFError, KeyError, IndexError):  # mido's errors on broken files
            out.append(None)
            continue
        if score.note_num() == 0:
            out.append(None)
            continue
        with sw("encode"):
            ids = tk.tokenize_score(tokenizer, score)
        with sw("chunk"):
            chunk_ids(ids, table, special, max_seq_len)
        out.append(ids)
    return out


def summarise(runs: list[tuple[float, dict[str, float]]], files: int, tokens: int) -> dict[str, Any]:
    wall = statistics.median(w for w, _ in runs)
    stages = {k: round(statistics.median(s.get(k, 0.0) for _, s in runs) / files * 1000, 3) for k in runs[0][1]}
    return {"seconds": round(wall, 3), "files_per_s": round(files / wall, 1), "tokens_per_s": round(tokens / wall),
            "ms_per_file_by_stage": stages, "repeats_s": [round(w, 3) for w, _ in runs]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", required=True, help="dataset folder with info.csv, or a folder of MIDI files")
    p.add_argument("--files", type=int, default=300, help="files tokenized per repeat")
    p.add_argument("--train_files", type=int, default=200, help="files the BPE model learns from")
    p.add_argument("--vocab_size", type=int, default=2000, help="BPE vocabulary (<= ~520: untrained REMI)")
    p.add_argument("--max_seq_len", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    result: dict[str, Any] = {"benchmark": "tokenization", "machine": machine()}
    from embedders.symbolic.midi_transformer import tokenizer as tk

    files = midi_files(Path(args.source), args.files, args.seed, flag="--source")
    t0 = time.perf_counter()
    with warnings.catch_warnings(), stdout_to_stderr():  # BPE training prints progress on stdout
        warnings.simplefilter("ignore")  # MidiTok warns when the vocabulary is not above the base one
        tokenizer = tk.train_tokenizer(files[: args.train_files], args.vocab_size)
    result["tokenizer"] = {"kind": "REMI+BPE" if tokenizer.is_trained else "REMI", "vocab_size": tk.vocab_size(tokenizer),
                           "trained_on_files": min(len(files), args.train_files),
                           "train_seconds": round(time.perf_counter() - t0, 2)}
    try:
        import miditoolkit  # noqa: F401

        paths = {"symusic": tokenize_symusic, "miditoolkit": tokenize_miditoolkit}
    except ImportError:
        paths = {"symusic": tokenize_symusic}
        result["miditoolkit"] = "not installed (pip install miditoolkit): classic path not measured"
    runs: dict[str, list] = {name: [] for name in paths}
    ids: dict[str, list] = {}
    for _ in range(args.repeats):
        for name, fn in paths.items():
            sw = Stopwatch()
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # MidiTok's deprecation warning for miditoolkit objects
                ids[name] = fn(tokenizer, files, args.max_seq_len, sw)
            runs[name].append((time.perf_counter() - t0, dict(sw.seconds)))
    ok = [i for i, a in enumerate(ids["symusic"]) if a is not None]
    tokens = int(sum(len(ids["symusic"][i]) for i in ok))
    result.update(files=len(files), files_tokenized=len(ok), tokens=tokens, max_seq_len=args.max_seq_len,
                  repeats=args.repeats, paths={name: summarise(r, len(files), tokens) for name, r in runs.items()})
    if "miditoolkit" in ids:
        classic = ids["miditoolkit"]
        same = sum(1 for i, a in enumerate(ids["symusic"])
                   if a is not None and classic[i] is not None and np.array_equal(a, classic[i]))
        result["identical_ids_files"] = same
        result["speedup_symusic_vs_miditoolkit"] = round(
            result["paths"]["miditoolkit"]["seconds"] / result["paths"]["symusic"]["seconds"], 2)
    finish(result)


if __name__ == "__main__":
    main()
