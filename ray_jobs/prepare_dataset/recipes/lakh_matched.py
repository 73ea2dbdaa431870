"""Lakh MIDI Dataset, matched subset (LMD-matched / LMD-aligned), paired with Million Song Dataset
audio previews that the user supplies (LMD does not distribute audio).

Public layout (placed or linked as ``<data_root>/raw/<dataset>/``)::

    match_scores.json                  {"TRAAAGR128F425B14B": {"<md5>": 0.72, ...}, ...}
    lmd_matched/A/A/G/TRAAAGR128F425B14B/<md5>.mid     (or lmd_aligned/..., aligned to the preview)
    audio/TRAAAGR128F425B14B.mp3       the user's 7digital preview per MSD id (.mp3/.wav/.flac/.ogg)

One MSD entry can match several MIDI files. ``index`` gives one row per MSD id with its best
match (highest score; ties: smallest md5): ``id`` = the MSD id; with ``all_matches`` one row per
(MSD id, MIDI) pair, ``id`` = ``<msd_id>/<md5>``. Columns: ``msd_id``, ``midi_md5``,
``match_score``, ``n_matches``, and ``split`` drawn per MSD id (hash-ordered 70/15/15, as the
music21 recipe's), so every match of one song lands in one split. A song without a preview file
has an empty ``audio_filename`` (MIDI only); a listed MIDI file that is absent is left out.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ray_jobs.prepare_dataset.recipes.maestro import LayoutError
from ray_jobs.prepare_dataset.recipes.music21 import assign_splits

MIDI_FOLDERS = ("lmd_aligned", "lmd_matched")
AUDIO_SUFFIXES = (".mp3", ".wav", ".flac", ".ogg")


def msd_folder(msd_id: str) -> str:
    """LMD's sharding: TRABCDE... lives in A/B/C/TRABCDE.../ (the 3rd-5th characters)."""
    return f"{msd_id[2]}/{msd_id[3]}/{msd_id[4]}/{msd_id}"


def index(root, all_matches: bool = False, audio_folder: str = "audio") -> pd.DataFrame:
    """info.csv rows for the LMD folder ``root`` (MIDI from lmd_aligned/ when present, else lmd_matched/)."""
    root = Path(root)
    scores_path = root / "match_scores.json"
    if not scores_path.is_file():
        raise LayoutError(f"{root}: no match_scores.json (LMD's MSD-to-MIDI match file)")
    midi_folder = next((f for f in MIDI_FOLDERS if (root / f).is_dir()), None)
    if midi_folder is None:
        raise LayoutError(f"{root}: neither {' nor '.join(MIDI_FOLDERS)}/ is there")
    scores: dict[str, dict[str, float]] = json.loads(scores_path.read_text())
    rows = []
    for msd_id in sorted(scores):
        matches = sorted(scores[msd_id].items(), key=lambda kv: (-kv[1], kv[0]))
        matches = [(md5, s) for md5, s in matches if (root / midi_folder / msd_folder(msd_id) / f"{md5}.mid").is_file()]
        if not matches:
            continue
        audio = next((f"{audio_folder}/{msd_id}{suffix}" for suffix in AUDIO_SUFFIXES
                      if (root / audio_folder / f"{msd_id}{suffix}").is_file()), "")
        for md5, score in matches if all_matches else matches[:1]:
            rows.append({"id": f"{msd_id}/{md5}" if all_matches else msd_id, "audio_filename": audio,
                         "midi_filename": f"{midi_folder}/{msd_folder(msd_id)}/{md5}.mid", "msd_id": msd_id,
                         "midi_md5": md5, "match_score": float(score), "n_matches": len(matches)})
    table = pd.DataFrame(rows, columns=["id", "audio_filename", "midi_filename", "msd_id", "midi_md5", "match_score",
                                        "n_matches"])
    songs = sorted(set(table["msd_id"]))
    split_of = dict(zip(songs, assign_splits(songs, [""] * len(songs))))
    table["split"] = table["msd_id"].map(split_of)
    return table
