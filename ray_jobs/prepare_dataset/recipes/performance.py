"""A drawn *performance* of a converted score: what ``prepare_dataset --performance`` renders.

Rendering the very MIDI file that a dataset pairs with the audio makes audio and MIDI agree by
construction. A performance departs from the score the way a recorded one does, while the paired
MIDI stays the score:

* **tempo**: a global factor times a smooth curve (rubato): the tempo at score position q (in
  quarter notes) is ``bpm * tempo_factor * exp(sum_k a_k sin(2 pi q / P_k + phi_k))``, three
  components with periods P of 6-40 quarters; a note at q sounds at the integral of 60 / tempo;
* **phrase dynamics**: velocity ``base + depth * sin(2 pi q / phrase + phase)``;
* **per note**: onset jitter (normal, ms) and velocity variation (normal), and an articulation
  factor scaling every duration (legato 1.0, shorter below);
* **timbre**: General MIDI programs drawn from one instrument family per work (``light``: one
  program for every part; ``strong``: one program per part, from that family).

``draw_performance`` draws every parameter from ``(seed, work id)``; ``Performance.columns`` is
what info.csv stores (``perf_*``) and ``Performance.from_columns`` reads it back, so a row's
audio can be re-rendered from info.csv alone. Per-note draws come from ``perf_seed``.
"""

from __future__ import annotations

import dataclasses
import io
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

LEVELS = ("none", "light", "strong")
FAMILIES: dict[str, tuple[int, ...]] = {  # General MIDI programs (0-based)
    "keyboards": (0, 1, 2, 4, 5, 6, 7),      # pianos, electric pianos, harpsichord, clavinet
    "organs": (16, 19, 20, 21),              # drawbar, church, reed organ, accordion
    "guitars": (24, 25, 26, 46),             # nylon, steel, jazz guitar, harp
    "strings": (40, 41, 42, 48, 49),         # violin, viola, cello, string ensembles
    "brass": (56, 57, 58, 60, 61),           # trumpet, trombone, tuba, horn, brass section
    "winds": (68, 69, 70, 71, 73, 74),       # oboe, English horn, bassoon, clarinet, flute, recorder
    "voices": (52, 53),                      # choir aahs, voice oohs
}


@dataclasses.dataclass(frozen=True)
class Level:
    """The spread of every drawn parameter at one ``--performance`` level."""

    tempo_spread: float           # global tempo factor uniform in [1 - s, 1 + s]
    rubato: float                 # each tempo-curve component's amplitude uniform in [0, rubato]
    dynamics: float               # phrase swell depth uniform in [dynamics / 2, dynamics] (velocity units)
    onset_jitter_ms: float        # per-note onset jitter std
    velocity_jitter: float        # per-note velocity std
    articulation: tuple[float, float]
    programs_per_part: bool


LEVEL = {
    "light": Level(0.05, 0.05, 12.0, 8.0, 5.0, (0.85, 1.0), False),
    "strong": Level(0.12, 0.12, 25.0, 20.0, 12.0, (0.6, 1.05), True),
}
VELOCITY_RANGE = (60, 95)      # base velocity drawn per work
PERIODS = (6.0, 40.0)          # tempo-curve periods, quarters
PHRASES = (8.0, 16.0)          # phrase-swell period, quarters
MIN_SECONDS = 0.03             # shortest performed note


@dataclasses.dataclass(frozen=True)
class Performance:
    level: str
    seed: int
    family: str
    programs: tuple[int, ...]
    tempo_factor: float
    rubato: tuple[tuple[float, float, float], ...]  # (period quarters, amplitude, phase) per component
    base_velocity: int
    dynamics: float
    phrase_quarters: float
    phrase_phase: float
    onset_jitter_ms: float
    velocity_jitter: float
    articulation: float

    def columns(self) -> dict[str, Any]:
        """The ``perf_*`` columns of info.csv (numbers rounded as stored)."""
        return {
            "perf_level": self.level, "perf_seed": self.seed, "perf_family": self.family,
            "perf_programs": " ".join(str(p) for p in self.programs),
            "perf_tempo_factor": self.tempo_factor,
            "perf_rubato": ";".join(f"{p}:{a}:{ph}" for p, a, ph in self.rubato),
            "perf_base_velocity": self.base_velocity, "perf_dynamics": self.dynamics,
            "perf_phrase_quarters": self.phrase_quarters, "perf_phrase_phase": self.phrase_phase,
            "perf_onset_jitter_ms": self.onset_jitter_ms, "perf_velocity_jitter": self.velocity_jitter,
            "perf_articulation": self.articulation,
        }

    @classmethod
    def from_columns(cls, row: Mapping[str, Any]) -> Performance:
        """Read back what ``columns`` wrote (e.g. a row of info.csv)."""
        rubato = tuple(tuple(float(x) for x in part.split(":")) for part in str(row["perf_rubato"]).split(";") if part)
        return cls(
            level=str(row["perf_level"]), seed=int(row["perf_seed"]), family=str(row["perf_family"]),
            programs=tuple(int(p) for p in str(row["perf_programs"]).split()),
            tempo_factor=float(row["perf_tempo_factor"]), rubato=rubato,  # type: ignore[arg-type]
            base_velocity=int(row["perf_base_velocity"]), dynamics=float(row["perf_dynamics"]),
            phrase_quarters=float(row["perf_phrase_quarters"]), phrase_phase=float(row["perf_phrase_phase"]),
            onset_jitter_ms=float(row["perf_onset_jitter_ms"]), velocity_jitter=float(row["perf_velocity_jitter"]),
            articulation=float(row["perf_articulation"]),
        )


COLUMNS = tuple(Performance("", 0, "", (), 1.0, (), 0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0).columns()) + ("audio_seconds",)


def draw_performance(level: str, work_id: str, n_parts: int, seed: int = 0,
                     families: Sequence[str] = tuple(FAMILIES)) -> Performance:
    """Every parameter of one work's performance, drawn from ``(seed, work_id)`` (rounded as stored)."""
    if level not in LEVEL:
        raise ValueError(f"performance level must be one of {tuple(LEVEL)}, got {level!r}")
    spec = LEVEL[level]
    rng = random.Random(f"{seed}:performance:{work_id}")
    family = rng.choice(sorted(families))
    if spec.programs_per_part:
        programs = tuple(rng.choice(FAMILIES[family]) for _ in range(n_parts))
    else:
        programs = (rng.choice(FAMILIES[family]),) * n_parts
    rubato = tuple((round(rng.uniform(*PERIODS), 3), round(rng.uniform(0, spec.rubato), 4),
                    round(rng.uniform(0, 2 * math.pi), 4)) for _ in range(3))
    return Performance(
        level=level, seed=rng.randrange(2**31), family=family, programs=programs,
        tempo_factor=round(rng.uniform(1 - spec.tempo_spread, 1 + spec.tempo_spread), 4), rubato=rubato,
        base_velocity=rng.randint(*VELOCITY_RANGE), dynamics=round(rng.uniform(spec.dynamics / 2, spec.dynamics), 2),
        phrase_quarters=round(rng.uniform(*PHRASES), 2), phrase_phase=round(rng.uniform(0, 2 * math.pi), 4),
        onset_jitter_ms=spec.onset_jitter_ms, velocity_jitter=spec.velocity_jitter,
        articulation=round(rng.uniform(*spec.articulation), 3),
    )


def tempo_multiplier(perf: Performance, quarters: np.ndarray) -> np.ndarray:
    """Tempo / notated tempo at score positions ``quarters``."""
    q = np.asarray(quarters, dtype=np.float64)
    curve = sum((a * np.sin(2 * np.pi * q / p + ph) for p, a, ph in perf.rubato), np.zeros_like(q))
    return perf.tempo_factor * np.exp(curve)


def performed_seconds(perf: Performance, quarters: np.ndarray, bpm: float, step: float = 1 / 64) -> np.ndarray:
    """Performance time (s) of score positions ``quarters``: the integral of 60 / (bpm * multiplier),
    by the trapezoid rule on a grid of ``step`` quarters (the curve's periods are >= 6 quarters)."""
    q = np.asarray(quarters, dtype=np.float64)
    grid = np.arange(0.0, float(q.max(initial=0.0)) + 2 * step, step)
    rate = 60.0 / (bpm * tempo_multiplier(perf, grid))
    seconds = np.concatenate([[0.0], np.cumsum((rate[1:] + rate[:-1]) / 2 * step)])
    return np.interp(q, grid, seconds)


def perform_notes(perf: Performance, notes, bpm: float, tpq: int) -> list[tuple[int, int, float, float, int]]:
    """(track, pitch, start s, end s, velocity) of every note of a conversion (``NoteEvent``s in
    ticks at ``bpm``), performed, sorted by start. Same-pitch notes on one MIDI channel never
    overlap (the earlier one is cut where the later one starts), so no note is left hanging."""
    rng = np.random.default_rng(perf.seed)
    start_q = np.array([n.start for n in notes], dtype=np.float64) / tpq
    end_q = np.array([n.end for n in notes], dtype=np.float64) / tpq
    on, off = performed_seconds(perf, start_q, bpm), performed_seconds(perf, end_q, bpm)
    start = np.maximum(on + rng.normal(0.0, perf.onset_jitter_ms / 1000.0, len(notes)), 0.0)
    end = start + np.maximum((off - on) * perf.articulation, MIN_SECONDS)
    swell = perf.base_velocity + perf.dynamics * np.sin(2 * np.pi * start_q / perf.phrase_quarters + perf.phrase_phase)
    velocity = np.clip(np.rint(swell + rng.normal(0.0, perf.velocity_jitter, len(notes))), 1, 127).astype(int)
    order = sorted(range(len(notes)), key=lambda k: (start[k], notes[k].track, notes[k].pitch))
    out: list[tuple[int, int, float, float, int] | None] = []
    last: dict[tuple[int, int], int] = {}
    for k in order:
        key = (notes[k].channel, notes[k].pitch)
        held = out[last[key]] if key in last else None
        if held is not None and held[3] > start[k]:
            # cut where the next one starts; a note left shorter than 2 ms (two onsets jittered
            # together) is dropped rather than sharing a tick with the next one's note-on
            out[last[key]] = (*held[:3], float(start[k]), held[4]) if start[k] - held[2] >= 0.002 else None
        last[key] = len(out)
        out.append((notes[k].track, notes[k].pitch, float(start[k]), float(end[k]), int(velocity[k])))
    return [n for n in out if n is not None]


def performance_midi(perf: Performance, notes, bpm: float, tpq: int, track_names: Sequence[str]) -> bytes:
    """The performance as a MIDI file to render (one instrument per part, its drawn program)."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(resolution=tpq, initial_tempo=120.0)
    instruments = [pretty_midi.Instrument(program=perf.programs[k % len(perf.programs)], name=name)
                   for k, name in enumerate(track_names)]
    for track, pitch, start, end, velocity in perform_notes(perf, notes, bpm, tpq):
        instruments[track].notes.append(pretty_midi.Note(velocity, pitch, start, end))
    pm.instruments.extend(instruments)
    buffer = io.BytesIO()
    pm.write(buffer)
    return buffer.getvalue()
