"""Tiny real data made in code: WAV files from sines, MIDI files from note lists, paired datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def sine_wave(freqs, seconds: float, sr: int = 48000, amplitude: float = 0.2) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    freqs = np.atleast_1d(freqs)
    return (amplitude * sum(np.sin(2 * np.pi * f * t) for f in freqs) / len(freqs)).astype(np.float32)


def write_wav(path, audio: np.ndarray, sr: int = 48000) -> Path:
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, sr, subtype="PCM_16")
    return path


def score_from_notes(notes, bpm: float = 120.0, tpq: int = 480, program: int = 0):
    """notes: (start_beat, duration_beats, pitch[, velocity]) -> symusic.Score in ticks."""
    import symusic

    score = symusic.Score(tpq)
    score.tempos.append(symusic.Tempo(0, qpm=bpm))
    track = symusic.Track(program=program)
    for note in notes:
        start, dur, pitch = note[:3]
        velocity = note[3] if len(note) > 3 else 80
        track.notes.append(symusic.Note(int(start * tpq), max(1, int(dur * tpq)), int(pitch), int(velocity)))
    score.tracks.append(track)
    return score


def write_midi(path, notes, bpm: float = 120.0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    score_from_notes(notes, bpm).dump_midi(str(path))
    return path


def scale_notes(root: int = 60, n: int = 8, beats: float = 1.0):
    steps = [0, 2, 4, 5, 7, 9, 11, 12]
    return [(k * beats, beats, root + steps[k % 8] + 12 * (k // 8)) for k in range(n)]


def make_dataset(root, n: int = 4, seconds: float = 3.0, extra_rows: list[dict] | None = None) -> Path:
    """A paired dataset of ``n`` recordings (sine audio, scale MIDI) with labels, in the seed format."""
    root = Path(root)
    rows = []
    for k in range(n):
        item_id = f"rec{k}"
        bpm = 60.0 + 20 * k
        write_wav(root / "audio" / f"{item_id}.wav", sine_wave([220 * (k + 1), 330], seconds))
        write_midi(root / "midi" / f"{item_id}.mid", scale_notes(60 + k, n=int(seconds * bpm / 60)), bpm=bpm)
        rows.append({"id": item_id, "audio_filename": f"audio/{item_id}.wav", "midi_filename": f"midi/{item_id}.mid",
                     "style": ["jazz", "rock"][k % 2], "bpm": bpm, "split": ["train", "test"][k % 2]})
    rows.extend(extra_rows or [])
    pd.DataFrame(rows).to_csv(root / "info.csv", index=False)
    return root
