"""basic-pitch needs no made-up weights (the real ones ship in its wheel); this builds what its tests feed it:
a piano excerpt written as the ground truth is (pretty_midi, 480 tpq) and rendered as prepare_dataset
renders (midirenderer with pretty_midi's TimGM6mb.sf2, 48 kHz, mono 16-bit).
"""

from __future__ import annotations

import importlib.util
import io
import os

import numpy as np
import pytest

EXTRA = ("onnxruntime", "mir_eval", "librosa", "resampy", "basic_pitch")

# A four-part chorale-like phrase: (beats, soprano, alto, tenor, bass); the soprano moves in eighths
# over some chords so onsets do not all coincide, and the range spans MIDI 36-79.
PHRASE = [
    (1, 72, 67, 64, 48), (1, 71, 67, 62, 55), (0.5, 72, 64, 60, 57), (0.5, 74, 64, 60, 57), (1, 76, 65, 62, 53),
    (2, 76, 67, 60, 48), (1, 74, 65, 59, 55), (0.5, 72, 64, 60, 57), (0.5, 71, 64, 60, 57), (1, 69, 64, 60, 45),
    (2, 71, 62, 55, 43), (1, 72, 64, 55, 48), (1, 79, 67, 64, 36), (0.5, 77, 65, 62, 41), (0.5, 76, 65, 62, 41),
    (1, 74, 65, 59, 43), (2, 72, 64, 55, 36),
]


def require_basic_pitch() -> None:
    """Skip without the [basic-pitch] extra and the wheel, except under CI=true, which installs them (then fail)."""
    missing = [m for m in EXTRA if importlib.util.find_spec(m) is None]
    if missing and os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {missing} not installed; CI installs the [basic-pitch] extra and basic-pitch --no-deps")
    if missing:
        pytest.skip(f"{missing} not installed: pip install '.[basic-pitch]' -c constraints.txt && "
                    "pip install --no-deps basic-pitch==0.4.0")


def basic_pitch_contract_config(tmp_path_factory) -> dict:
    """The registry contract test's options: the defaults (the wheel's model)."""
    require_basic_pitch()
    return {}


def phrase_notes(bpm: float = 90.0, repeats: int = 1, start_seconds: float = 0.0) -> list[tuple[float, float, int]]:
    """(start s, end s, pitch) of PHRASE played ``repeats`` times at ``bpm``."""
    out, t = [], start_seconds
    for _ in range(repeats):
        for beats, *voices in PHRASE:
            d = beats * 60.0 / bpm
            out.extend((t, t + d, int(p)) for p in voices)
            t += d
    return out


def notes_midi(notes, bpm: float = 90.0, velocity: int = 80) -> bytes:
    """A MIDI file of (start s, end s, pitch) notes, one piano track, written as the ground truth is."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=float(bpm))
    piano = pretty_midi.Instrument(program=0, name="piano")
    piano.notes.extend(pretty_midi.Note(velocity, p, s, e) for s, e, p in notes)
    pm.instruments.append(piano)
    buffer = io.BytesIO()
    pm.write(buffer)
    return buffer.getvalue()


def render(midi: bytes) -> tuple[np.ndarray, int]:
    """Mono float32 audio of ``midi`` at 48 kHz, rendered as prepare_dataset renders."""
    import soundfile as sf

    from ray_jobs.prepare_dataset.job import default_soundfont
    from ray_jobs.prepare_dataset.recipes.music21 import render_audio

    with open(default_soundfont(), "rb") as fh:
        wav, _ = render_audio(midi, fh.read())
    audio, sr = sf.read(io.BytesIO(wav), dtype="float32")
    return audio, sr


def piano_excerpt(bpm: float = 90.0, repeats: int = 1) -> tuple[bytes, np.ndarray, int]:
    """(MIDI bytes, audio, sample rate) of the chorale phrase on the General MIDI piano."""
    midi = notes_midi(phrase_notes(bpm, repeats), bpm)
    audio, sr = render(midi)
    return midi, audio, sr
