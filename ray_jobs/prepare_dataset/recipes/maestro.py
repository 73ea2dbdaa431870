"""MAESTRO (v1-v3): piano performances, each a WAV and its aligned MIDI, listed in ``maestro-v*.csv``.

Public layout (the unpacked archive, placed or linked as ``<data_root>/raw/<dataset>/``)::

    maestro-v3.0.0.csv     canonical_composer, canonical_title, split, year, midi_filename,
                           audio_filename, duration
    2004/MIDI-Unprocessed_..._wav--1.midi   2004/MIDI-Unprocessed_..._wav--1.wav   ...

The csv has no ``id`` column. ``index`` derives one: the MIDI path without its extension
(``2004/MIDI-Unprocessed_..._wav--1``), unique because every performance has its own MIDI file.
(Without this recipe: copy the csv to info.csv and pass ``--id_column midi_filename``; the id is
then the MIDI path with its extension.) Every other column is kept; ``split`` is MAESTRO's own
(train/validation/test: the project's names); ``composer`` copies ``canonical_composer``.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pandas as pd

ID_FROM = "midi_filename"


class LayoutError(ValueError):
    """The folder does not have the corpus's public layout; the message says what is missing."""


def find_csv(root: Path) -> Path:
    """The newest ``maestro-v*.csv`` in ``root``."""
    found = sorted(root.glob("maestro-v*.csv"))
    if not found:
        raise LayoutError(f"{root}: no maestro-v*.csv (MAESTRO's metadata file) in the folder")
    return found[-1]


def index(root) -> pd.DataFrame:
    """info.csv rows for the MAESTRO folder ``root`` (columns: id, audio_filename, midi_filename, ...)."""
    root = Path(root)
    table = pd.read_csv(find_csv(root), dtype={"midi_filename": "string", "audio_filename": "string"})
    return from_table(table)


def from_table(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of MAESTRO's csv with the derived ``id`` first and ``composer`` added."""
    missing = [c for c in ("midi_filename", "audio_filename") if c not in table.columns]
    if missing:
        raise LayoutError(f"MAESTRO csv lacks column(s) {missing}; it has {list(table.columns)}")
    out = table.copy()
    out.insert(0, "id", [str(PurePosixPath(str(m)).with_suffix("")) if pd.notna(m) else "" for m in out[ID_FROM]])
    if "canonical_composer" in out.columns:
        out["composer"] = out["canonical_composer"]
    return out
