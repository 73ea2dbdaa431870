"""A MIDI-only dataset in the seed format, generated in code, for pretraining benchmarks.

    python bench/synthetic_midi.py --dest /tmp/midi_set --files 120 --notes 200,3000

Pieces are random walks of notes and chords (pitch, duration, velocity, tempo drawn per piece from
a seeded generator), so token counts vary ~10x across files, as in real collections; files long
enough split into several chunks of ``max_seq_len`` tokens. ``info.csv`` has ``id``, an empty
``audio_filename`` (a MIDI-only row), ``midi_filename``, ``composer`` (four made-up groups) and
``split`` (80/10/10, or ``held_out`` files each for validation and test). Nothing here is
musical: it is a load for the pretraining path, with realistic lengths, that needs no download
and no rendering.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

GROUPS = ("walker", "chorder", "leaper", "drone")


def random_piece(rng: np.random.Generator, n_notes: int, tpq: int = 480):
    """A symusic.Score of ``n_notes`` notes: a random walk with chords, one or two tracks."""
    import symusic

    score = symusic.Score(tpq)
    score.tempos.append(symusic.Tempo(0, qpm=float(rng.uniform(60, 180))))
    score.time_signatures.append(symusic.TimeSignature(0, int(rng.choice([3, 4])), 4))
    tracks = [symusic.Track(program=int(p)) for p in rng.choice([0, 24, 40, 73], size=int(rng.integers(1, 3)),
                                                                replace=False)]
    pitch, tick, placed = int(rng.integers(48, 72)), 0, 0
    while placed < n_notes:
        dur = int(tpq * rng.choice([0.25, 0.5, 1.0, 1.5, 2.0]))
        chord = int(rng.choice([1, 1, 2, 3]))
        track = tracks[int(rng.integers(len(tracks)))]
        for k in range(min(chord, n_notes - placed)):
            p = int(np.clip(pitch + 4 * k, 21, 108))
            track.notes.append(symusic.Note(tick, dur, p, int(rng.integers(40, 110))))
            placed += 1
        pitch = int(np.clip(pitch + rng.integers(-5, 6), 30, 96))
        tick += dur if rng.random() < 0.8 else dur // 2
    for track in tracks:
        if len(track.notes):
            score.tracks.append(track)
    return score


def write_dataset(dest: str | Path, files: int = 120, notes: tuple[int, int] = (200, 3000), seed: int = 0,
                  held_out: int | None = None) -> Path:
    """Write ``files`` MIDI files and info.csv under ``dest``; returns ``dest``. Same seed, same files.

    Splits: every tenth file validation, the next test (80/10/10); with ``held_out``, the last
    ``2 * held_out`` files are validation and test, the rest training."""
    dest = Path(dest)
    (dest / "midi").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(files):
        # log-uniform lengths: many short pieces and a few long ones
        n = int(np.exp(rng.uniform(np.log(notes[0]), np.log(notes[1]))))
        path = dest / "midi" / f"piece{k:04d}.mid"
        random_piece(rng, n).dump_midi(str(path))
        if held_out is None:
            split = "train" if k % 10 < 8 else ("validation" if k % 10 == 8 else "test")
        else:
            split = "train" if k < files - 2 * held_out else ("validation" if k < files - held_out else "test")
        rows.append({"id": f"piece{k:04d}", "audio_filename": "", "midi_filename": f"midi/{path.name}",
                     "composer": GROUPS[k % len(GROUPS)], "split": split, "notes": n})
    pd.DataFrame(rows).to_csv(dest / "info.csv", index=False)
    return dest


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dest", required=True, help="dataset folder to write (info.csv + midi/)")
    p.add_argument("--files", type=int, default=120)
    p.add_argument("--notes", default="200,3000", help="min,max notes per piece (log-uniform)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    lo, hi = (int(x) for x in args.notes.split(","))
    root = write_dataset(args.dest, args.files, (lo, hi), args.seed)
    print(json.dumps({"dataset": str(root), "files": args.files}))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
