"""Note events <-> MIDI, written the way the project writes its ground-truth MIDI files.

``ray_jobs/prepare_dataset/recipes/music21.py`` writes the ground truth with pretty_midi at 480 ticks
per quarter note and one constant tempo (the row's ``bpm``); transcriptions are written the same way
(one track, program 0 unless asked otherwise, no pitch bends), so a tokeniser sees bars and beats on
the same scale in both files when the row's bpm is given.
"""

from __future__ import annotations

import io
import math

import numpy as np

from embedders.base import ConfigError

TPQ = 480  # ticks per quarter note, as the ground-truth writer
DEFAULT_BPM = 120.0  # MIDI's own default tempo, used when no bpm is known
#: One note per row: onset and offset in seconds, MIDI pitch and velocity.
NOTE_DTYPE = np.dtype([("start", "f8"), ("end", "f8"), ("pitch", "i2"), ("velocity", "i2")])


def tempo_bpm(bpm: float | None) -> float:
    """The tempo to write: ``bpm`` when given (None or NaN: not given, as an empty info.csv cell),
    else 120. Raises ConfigError on a non-positive or infinite bpm."""
    if bpm is None or (isinstance(bpm, float) and math.isnan(bpm)):
        return DEFAULT_BPM
    value = float(bpm)
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"bpm must be a positive number of quarter notes per minute, got {bpm!r}")
    return value


def sort_notes(notes: np.ndarray) -> np.ndarray:
    """By onset, then pitch; as NOTE_DTYPE."""
    notes = np.asarray(notes, dtype=NOTE_DTYPE)
    return notes[np.lexsort((notes["pitch"], notes["start"]))]


def notes_to_midi(notes: np.ndarray, *, bpm: float | None = None, program: int = 0,
                  track_name: str = "transcription") -> bytes:
    """A type-1 Standard MIDI File (tempo track + one note track) holding ``notes`` (NOTE_DTYPE).

    Times are seconds, so the tempo changes only how they are counted in beats, not when notes sound.
    Velocities are clipped to 1..127 (velocity 0 would mean note-off).
    """
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(resolution=TPQ, initial_tempo=tempo_bpm(bpm))
    instrument = pretty_midi.Instrument(program=int(program), name=track_name)
    for n in sort_notes(notes):
        instrument.notes.append(pretty_midi.Note(int(np.clip(n["velocity"], 1, 127)), int(n["pitch"]),
                                                 float(n["start"]), float(n["end"])))
    pm.instruments.append(instrument)
    buffer = io.BytesIO()
    pm.write(buffer)
    return buffer.getvalue()


def score_notes(score, *, include_drums: bool = False) -> np.ndarray:
    """NOTE_DTYPE notes of a ``symusic.Score`` (any time unit), tempo changes honoured; drum tracks
    skipped unless ``include_drums``."""
    tracks = score.to("second").tracks
    parts = []
    for track in tracks:
        if track.is_drum and not include_drums:
            continue
        a = track.notes.numpy()
        part = np.empty(len(a["time"]), dtype=NOTE_DTYPE)
        part["start"], part["end"] = a["time"], a["time"] + a["duration"]
        part["pitch"], part["velocity"] = a["pitch"], a["velocity"]
        parts.append(part)
    return sort_notes(np.concatenate(parts) if parts else np.empty(0, NOTE_DTYPE))
