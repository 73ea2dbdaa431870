"""A Groove-MIDI-Dataset-shaped paired dataset made in code (seconds to build).

The layout and ``info.csv`` columns are GMD's: ``drummer,session,id,style,bpm,beat_type,
time_signature,midi_filename,audio_filename,duration,split``, ids like ``drummer1/session1/3``, files
like ``drummer1/session1/3_funk-groove1_104_beat_4-4.mid``, one drum track on MIDI channel 10 (GM kit
notes, plus the Roland TD-11 hi-hat edge notes 22 and 26 that GMD uses), beat and fill rows, and some
performances with MIDI and no audio (empty ``audio_filename``). Audio is rendered from the MIDI with
pretty_midi's General MIDI SoundFont (TimGM6mb.sf2) by midirenderer, as ``prepare_dataset`` does.

What the labels are planted in (so a test knows what each medium can and cannot carry):

* **style** only in the groove pattern: which kit pieces play on which 16th of the bar, and the
  swing of the jazz ride. Tempo is drawn per row independently of style (GMD's tempi do vary with
  style; here they do not, so tempo cannot stand in for the pattern).
* **drummer** only in the feel: a timing offset (ahead of / behind the beat), timing jitter,
  a loudness level, velocity spread and accent depth. Every drummer plays every style.
* fills: the last bar of a fill row is a tom/snare fill, the same for every style.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ("drummer", "session", "id", "style", "bpm", "beat_type", "time_signature", "midi_filename",
           "audio_filename", "duration", "split")
KIT = {"kick": 36, "snare": 38, "side_stick": 37, "hh_closed": 42, "hh_closed_edge": 22, "hh_pedal": 44,
       "hh_open": 46, "hh_open_edge": 26, "ride": 51, "crash": 49, "tom_high": 48, "tom_mid": 45, "tom_floor": 43,
       "cowbell": 56}
# Per style: kit piece -> [(16th of the bar, relative velocity)]. Jazz's swung off-beats sit at the
# triplet position (2/3 of the beat: 16th 2.667).
STYLES: dict[str, dict[str, list[tuple[float, float]]]] = {
    "rock": {"kick": [(0, 1.0), (8, 0.95), (10, 0.8)], "snare": [(4, 1.0), (12, 1.0)],
             "hh_closed": [(s, 0.8 if s % 4 else 0.95) for s in range(0, 16, 2)]},
    "funk/groove1": {"kick": [(0, 1.0), (3, 0.8), (10, 0.9)],
                     "snare": [(4, 1.0), (7, 0.3), (9, 0.3), (12, 1.0), (14, 0.3)],
                     "hh_closed_edge": [(s, 0.85 if s % 2 == 0 else 0.55) for s in range(16) if s != 15],
                     "hh_open_edge": [(15, 0.8)]},
    "latin/bossa": {"kick": [(s, 0.85) for s in (0, 3, 4, 7, 8, 11, 12, 15)],
                    "side_stick": [(s, 0.8) for s in (0, 3, 6, 10, 13)],
                    "hh_closed": [(s, 0.6) for s in range(0, 16, 2)]},
    "jazz": {"ride": [(0, 0.9), (4, 0.95), (6.667, 0.7), (8, 0.9), (12, 0.95), (14.667, 0.7)],
             "hh_pedal": [(4, 0.7), (12, 0.7)], "kick": [(s, 0.35) for s in (0, 4, 8, 12)],
             "snare": [(10.667, 0.5)]},
    "hiphop/groove6": {"kick": [(0, 1.0), (7, 0.85), (9, 0.85)], "snare": [(4, 1.0), (12, 1.0)],
                       "hh_closed": [(s, 0.7) for s in range(0, 16, 2)], "cowbell": [(6, 0.6), (14, 0.6)]},
}
OPTIONAL = {"hh_closed", "hh_closed_edge", "ride"}  # time-keeping notes a take may leave out
FILL = [("snare", s, 0.7 + 0.02 * s) for s in range(0, 4)] + [("tom_high", s, 0.8) for s in range(4, 8)] \
    + [("tom_mid", s, 0.85) for s in range(8, 12)] + [("tom_floor", s, 0.9) for s in range(12, 16)]


def drummer_feel(k: int, seed: int = 0) -> dict[str, float]:
    """The planted identity of drummer ``k``: timing offset and jitter (seconds), loudness, spread, accent."""
    rng = np.random.default_rng([seed, 7919, k])
    return {"offset": float(rng.uniform(-0.025, 0.025)), "jitter": float(rng.uniform(0.002, 0.014)),
            "level": float(rng.uniform(60, 115)), "spread": float(rng.uniform(3, 14)),
            "accent": float(rng.uniform(0.0, 0.6))}


def groove_notes(style: str, bars: int, fill: bool, feel: dict[str, float], bpm: float,
                 rng: np.random.Generator) -> list[tuple[int, float, int]]:
    """(GM note, onset seconds, velocity) of one take: the style's bar repeated, a fill bar last when
    ``fill``, with take-level variation (left-out time-keeping notes, a crash on the one) and the
    drummer's feel."""
    sixteenth = 60.0 / bpm / 4
    notes = []
    for bar in range(bars):
        events = [(p, s, v) for p, hits in STYLES[style].items() for s, v in hits]
        if fill and bar == bars - 1:
            events = [(p, s, v) for p, s, v in FILL] + [("kick", 0, 0.9)]
        elif bar == 0 and rng.random() < 0.5:
            events.append(("crash", 0, 0.9))
        for piece, slot, rel in events:
            if piece in OPTIONAL and rng.random() < 0.1:
                continue
            accent = 1.0 + feel["accent"] * (0.25 if slot % 4 == 0 else -0.1)
            velocity = feel["level"] * rel * accent + rng.normal(0, feel["spread"])
            onset = (bar * 16 + slot) * sixteenth + feel["offset"] + rng.normal(0, feel["jitter"])
            notes.append((KIT[piece], max(0.0, onset), int(np.clip(round(velocity), 1, 127))))
    return sorted(notes, key=lambda n: (n[1], n[0]))


def write_drum_midi(path: Path, notes, bpm: float) -> float:
    """One drum track (channel 10), tempo ``bpm`` in 4/4; returns the end of the last note in seconds."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=float(bpm))
    pm.time_signature_changes.append(pretty_midi.TimeSignature(4, 4, 0.0))
    drums = pretty_midi.Instrument(program=0, is_drum=True, name="Drums")
    drums.notes = [pretty_midi.Note(v, p, t, t + 0.08) for p, t, v in notes]
    pm.instruments.append(drums)
    path.parent.mkdir(parents=True, exist_ok=True)
    pm.write(str(path))
    return round(max(t for _, t, _ in notes) + 0.08, 3)


def render_wav(midi_path: Path, wav_path: Path, soundfont_bytes: bytes) -> None:
    """midirenderer (48 kHz stereo) -> mono 16-bit WAV, as prepare_dataset writes it."""
    import midirenderer
    import soundfile as sf

    audio, sr = sf.read(io.BytesIO(midirenderer.render_wave_from(soundfont_bytes, midi_path.read_bytes())),
                        dtype="float32", always_2d=True)
    wav_path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(wav_path, audio.mean(axis=1), sr, subtype="PCM_16")


def make_gmd(root, n_drummers: int = 10, takes: int = 2, bars: int = 2, seed: int = 0, audio: bool = True,
             midi_only_every: int = 6) -> Path:
    """Write a GMD-shaped dataset under ``root``; return ``root``.

    Every drummer plays every style ``takes`` times as a beat and once as a fill, so there are
    ``n_drummers * len(STYLES) * (takes + 1)`` rows. A row whose hash falls on ``midi_only_every``
    has MIDI only (no audio file, empty ``audio_filename``). ``audio=False`` writes no audio at all
    (every row keeps its ``audio_filename``); the symbolic side then builds in well under a second.
    """
    from ray_jobs.prepare_dataset.job import default_soundfont

    root = Path(root)
    soundfont = Path(default_soundfont()).read_bytes() if audio else b""
    rows = []
    for d in range(1, n_drummers + 1):
        feel = drummer_feel(d, seed)
        number = {"session1": 0, "session2": 0}
        for style in STYLES:
            for take in range(takes + 1):
                fill = take == takes
                session = "session2" if fill else "session1"
                number[session] += 1
                item_id = f"drummer{d}/{session}/{number[session]}"
                rng = np.random.default_rng([seed, d, list(STYLES).index(style), take])
                bpm = int(rng.integers(80, 131))
                kind = "fill" if fill else "beat"
                stem = f"drummer{d}/{session}/{number[session]}_{style.replace('/', '-')}_{bpm}_{kind}_4-4"
                duration = write_drum_midi(root / f"{stem}.mid", groove_notes(style, bars, fill, feel, bpm, rng), bpm)
                digest = int(hashlib.sha1(f"{seed}:{item_id}".encode()).hexdigest(), 16)
                has_audio = midi_only_every <= 0 or digest % midi_only_every != 0
                if audio and has_audio:
                    render_wav(root / f"{stem}.mid", root / f"{stem}.wav", soundfont)
                split = ("test", "validation", *["train"] * 5)[digest % 7]
                rows.append({"drummer": f"drummer{d}", "session": f"drummer{d}/{session}", "id": item_id,
                             "style": style, "bpm": bpm, "beat_type": kind, "time_signature": "4-4",
                             "midi_filename": f"{stem}.mid", "audio_filename": f"{stem}.wav" if has_audio else "",
                             "duration": duration, "split": split})
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(root / "info.csv", index=False)
    return root
