"""``pianoroll``: a weight-free, deterministic symbolic embedder of windowed note statistics.

Input: ``symusic.Score`` in tick time; it is converted with ``score.to("second")``, so tempo changes
are honoured. Frame t covers [t * hop_seconds, t * hop_seconds + window_seconds) on the same
``FrameGrid`` as ``melstats`` (default hop 0.5 s, window 1.0 s), so frame t of both embedders covers
the same seconds. T = FrameGrid.n_frames(duration), duration = end of the last note (any track),
rounded to the millisecond so that float32 note times (symusic stores seconds as float32) do not add
a frame when a piece ends exactly on a hop boundary. Time past the end counts as silence.

A note belongs to a window if it sounds in it (overlap > 0; "overlap-weighted" features) or if its
onset falls in it ("onset" features). Polyphony, silence and harmonic intervals are sampled on a
``grid_seconds`` (20 ms) grid: a note sounds at grid time g if start <= g < end.

Drums (``track.is_drum``, i.e. MIDI channel 10) stay out of every pitched column: their pitches are
instruments, not notes, and their durations are arbitrary. They count in the onset densities and the
silence fraction, and are described by kit piece on the beat grid in the drum columns 76-193 (onset
pattern over the bar, density and velocity per kit class, syncopation, swing, micro-timing; see
``embedders.symbolic.drums``). A score without drums has zeros there.

======== ==============================================================================
cols     feature (D = 194; histograms sum to 1, or are all 0 when the window has nothing)
======== ==============================================================================
0-11     pitch-class histogram C..B, overlap-weighted
12-19    register histogram, overlap-weighted: <C2, C2-B2, C3, C4, C5, C6, C7, >=C8 (C4 = 60)
20-44    melodic intervals -12..+12 semitones (clipped), onset: per track, successive onset
         times, highest pitch at each onset time (the track's top line)
45-56    harmonic intervals |p - q| mod 12 (0 = unison/octave) over pairs of sounding notes, grid
57-64    note durations, onset: <1/16, <1/8, <1/4, <1/2, <1, <2, <4, >=4 s
65       onsets per second, all notes incl. drums (count / window_seconds)
66       drum onsets per second
67-68    polyphony (sounding pitched notes) mean, max over the grid
69-70    velocity mean, std / 127, overlap-weighted
71-74    pitch mean, std, min, max / 127 (mean, std overlap-weighted)
75       silence fraction: share of grid times with no note (drums included) sounding
76-193   drums by kit piece (``embedders.symbolic.drums``): 76-171 onset pattern per kit class
         over the 16 16ths of the bar, 172-177 onsets/s per class, 178-189 velocity mean, std per
         class, 190 syncopation, 191 swing, 192-193 micro-timing mean, std
======== ==============================================================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from embedders.base import PITCH_CLASSES, ConfigError, Embedder, EmbedderConfig, EmptyInputError, FrameGrid
from embedders.registry import register
from embedders.symbolic import drums

_DUR_EDGES = np.array([1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0, 2.0, 4.0])
_REGISTERS = ("lt_C2", "C2", "C3", "C4", "C5", "C6", "C7", "ge_C8")
_SCALARS = ("onset_density", "drum_onset_density", "polyphony_mean", "polyphony_max", "velocity_mean",
            "velocity_std", "pitch_mean", "pitch_std", "pitch_min", "pitch_max", "silence")
_EPS = 1e-9


@dataclasses.dataclass(frozen=True)
class PianoRollConfig(EmbedderConfig):
    hop_seconds: float = 0.5
    window_seconds: float = 1.0
    grid_seconds: float = 0.02

    def __post_init__(self) -> None:
        FrameGrid(self.hop_seconds, self.window_seconds)
        if not 0 < self.grid_seconds <= self.window_seconds:
            raise ConfigError(f"pianoroll: need 0 < grid_seconds <= window_seconds, got {self.grid_seconds}")


def _note_frames(start: np.ndarray, end: np.ndarray, grid: FrameGrid, n: int) -> tuple[np.ndarray, ...]:
    """All (note, frame) pairs where the note sounds in or starts in the frame, with the overlap."""
    hop, win = grid.hop_seconds, grid.window_seconds
    lo = np.clip(np.floor((start - win) / hop), 0, n - 1).astype(np.int64)  # a superset, filtered below
    hi = np.clip(np.ceil(end / hop), 0, n - 1).astype(np.int64)
    counts = hi - lo + 1
    note = np.repeat(np.arange(len(start)), counts)
    frame = lo[note] + np.arange(len(note)) - np.repeat(np.cumsum(counts) - counts, counts)
    s = frame * hop
    overlap = np.maximum(np.minimum(end[note], s + win) - np.maximum(start[note], s), 0.0)
    onset = (start[note] >= s) & (start[note] < s + win)
    keep = (overlap > 0) | onset
    return note[keep], frame[keep], overlap[keep], onset[keep]


def _hist(frame: np.ndarray, bins: np.ndarray, weight: np.ndarray, n: int, k: int) -> np.ndarray:
    h = np.bincount(frame * k + bins, weights=weight, minlength=n * k).reshape(n, k)
    total = h.sum(axis=1, keepdims=True)
    return np.where(total > 0, h / np.maximum(total, _EPS), 0.0)


@register
class PianoRoll(Embedder):
    name: ClassVar[str] = "pianoroll"
    modality: ClassVar[str] = "symbolic"
    sample_rate: ClassVar[int | None] = None
    Config: ClassVar[type[EmbedderConfig]] = PianoRollConfig
    dim = 12 + 8 + 25 + 12 + 8 + len(_SCALARS) + drums.DIM
    default_batch_size: ClassVar[int] = 32

    def __init__(self, config: PianoRollConfig | None = None):
        super().__init__(config)
        self.grid = FrameGrid(self.config.hop_seconds, self.config.window_seconds)  # type: ignore[attr-defined]
        self.hop_seconds = self.grid.hop_seconds

    @classmethod
    def feature_names(cls) -> list[str]:
        names = [f"pc_{p}" for p in PITCH_CLASSES] + [f"register_{r}" for r in _REGISTERS]
        names += [f"melodic_{i:+d}" for i in range(-12, 13)] + [f"harmonic_{i}" for i in range(12)]
        names += [f"duration_lt_{e:g}s" for e in _DUR_EDGES] + [f"duration_ge_{_DUR_EDGES[-1]:g}s"]
        return names + list(_SCALARS) + drums.feature_names()

    @staticmethod
    def _notes(score: Any) -> dict[str, np.ndarray]:
        """All notes in seconds (and their onset tick), one array per field, sorted by (start, track,
        pitch) for determinism."""
        cols: dict[str, list[np.ndarray]] = {k: [] for k in ("start", "end", "pitch", "velocity", "track", "drum", "tick")}
        for i, (track, ticks) in enumerate(zip(score.to("second").tracks, score.to("tick").tracks)):
            a = track.notes.numpy()
            start = a["time"].astype(np.float64)
            cols["tick"].append(ticks.notes.numpy()["time"].astype(np.int64))
            cols["start"].append(start)
            cols["end"].append(start + np.maximum(a["duration"].astype(np.float64), 0.0))
            cols["pitch"].append(np.clip(a["pitch"].astype(np.int64), 0, 127))
            cols["velocity"].append(a["velocity"].astype(np.float64))
            cols["track"].append(np.full(len(start), i, dtype=np.int64))
            cols["drum"].append(np.full(len(start), bool(track.is_drum)))
        if not cols["start"]:
            return {k: np.zeros(0) for k in cols}
        notes = {k: np.concatenate(v) for k, v in cols.items()}
        order = np.lexsort((notes["pitch"], notes["track"], notes["start"]))
        return {k: v[order] for k, v in notes.items()}

    def _embed_one(self, score: Any) -> np.ndarray:
        nt = self._notes(score)
        if len(nt["start"]) == 0:
            raise EmptyInputError(None, "score has no notes")
        grid, dt = self.grid, self.config.grid_seconds  # type: ignore[attr-defined]
        n = grid.n_frames(round(float(nt["end"].max()), 3))  # as embedders.io.midi_duration_seconds
        drum = nt["drum"]
        pitched = ~drum
        note, frame, ov, on = _note_frames(nt["start"], nt["end"], grid, n)
        pn, pf, pov, pon = note[pitched[note]], frame[pitched[note]], ov[pitched[note]], on[pitched[note]]
        pitch, vel = nt["pitch"][pn], nt["velocity"][pn]

        pc = _hist(pf, pitch % 12, pov, n, 12)
        register_ = _hist(pf, np.clip((pitch - 24) // 12, 0, 7), pov, n, 8)
        dur = nt["end"][pn[pon]] - nt["start"][pn[pon]]
        durations = _hist(pf[pon], np.searchsorted(_DUR_EDGES, dur, side="right"), np.ones(len(dur)), n, 8)
        onsets = np.bincount(frame[on], minlength=n) / grid.window_seconds
        drum_onsets = np.bincount(frame[on & drum[note]], minlength=n) / grid.window_seconds

        weight = np.bincount(pf, weights=pov, minlength=n)
        safe = np.maximum(weight, _EPS)
        stats = []
        for values in (vel, pitch.astype(np.float64)):
            mean = np.bincount(pf, weights=pov * values, minlength=n) / safe
            var = np.bincount(pf, weights=pov * (values - mean[pf]) ** 2, minlength=n) / safe
            stats += [mean / 127.0, np.sqrt(var) / 127.0]
        sounding = pov > 0
        pmin, pmax = np.full(n, np.inf), np.full(n, -np.inf)
        np.minimum.at(pmin, pf[sounding], pitch[sounding])
        np.maximum.at(pmax, pf[sounding], pitch[sounding])
        stats += [np.where(np.isfinite(pmin), pmin, 0.0) / 127.0, np.where(np.isfinite(pmax), pmax, 0.0) / 127.0]

        melodic = self._melodic(nt, grid, n)
        poly_mean, poly_max, silence, harmonic = self._grid_features(nt, pitched, grid, n, dt)
        scalars = np.column_stack([onsets, drum_onsets, poly_mean, poly_max, *stats, silence])
        d = np.flatnonzero(drum)
        kit = drums.drum_features(nt["start"][d], nt["tick"][d], nt["pitch"][d], nt["velocity"][d],
                                  int(score.ticks_per_quarter), score.time_signatures.numpy(), grid, n)
        out = np.concatenate([pc, register_, melodic, harmonic, durations, scalars, kit], axis=1)
        return out.astype(np.float32)

    @staticmethod
    def _melodic(nt: dict[str, np.ndarray], grid: FrameGrid, n: int) -> np.ndarray:
        """Intervals between the top notes of successive onset times within each pitched track."""
        times, steps = [], []
        for t in np.unique(nt["track"][~nt["drum"]]):
            sel = np.flatnonzero((nt["track"] == t) & ~nt["drum"])
            start, pitch = nt["start"][sel], nt["pitch"][sel]
            order = np.lexsort((-pitch, start))
            start, pitch = start[order], pitch[order]
            first = np.concatenate([[True], start[1:] != start[:-1]])  # highest pitch at each onset time
            times.append(start[first][1:])
            steps.append(np.diff(pitch[first]))
        if not times:
            return np.zeros((n, 25))
        at, step = np.concatenate(times), np.clip(np.concatenate(steps), -12, 12)
        note, frame, _, on = _note_frames(at, at, grid, n)
        return _hist(frame[on], step[note[on]] + 12, np.ones(int(on.sum())), n, 25)

    @staticmethod
    def _grid_features(
        nt: dict[str, np.ndarray], pitched: np.ndarray, grid: FrameGrid, n: int, dt: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Polyphony mean/max, silence fraction and harmonic-interval histogram from a sampled roll."""
        k = int(np.ceil(((n - 1) * grid.hop_seconds + grid.window_seconds) / dt - 1e-6)) + 1
        # Grid index of the first sample at or after a time; the tolerance absorbs float error.
        ks = np.minimum(np.ceil(nt["start"] / dt - 1e-6).astype(np.int64), k)
        ke = np.minimum(np.ceil(nt["end"] / dt - 1e-6).astype(np.int64), k)
        anything = np.cumsum(np.bincount(ks, minlength=k + 1) - np.bincount(ke, minlength=k + 1))[:k]
        # The roll spans only the pitches used: intervals need relative distances, and it keeps
        # hour-long pieces small.
        p = nt["pitch"][pitched]
        base = int(p.min()) if len(p) else 0
        width = int(p.max()) - base + 1 if len(p) else 1
        flat = np.bincount(ks[pitched] * width + p - base, minlength=(k + 1) * width)
        flat -= np.bincount(ke[pitched] * width + p - base, minlength=(k + 1) * width)
        roll = np.cumsum(flat.reshape(k + 1, width), axis=0, dtype=np.int32)[:k]
        poly = roll.sum(axis=1)
        # Ordered pairs at pitch distance L: autocorrelation over pitch (zero-padded, so not
        # circular), exact after rounding since the counts are integers.
        pairs = np.zeros((k, 12))
        for c in range(0, k, 8192):
            spec = np.fft.rfft(roll[c : c + 8192].astype(np.float64), n=2 * width, axis=1)
            auto = np.rint(np.fft.irfft(spec.real**2 + spec.imag**2, n=2 * width, axis=1)[:, :width])
            auto[:, 0] = (auto[:, 0] - poly[c : c + 8192]) / 2  # unordered unison pairs: c(c-1)/2
            auto = np.pad(auto, ((0, 0), (0, -width % 12)))
            pairs[c : c + 8192] = auto.reshape(len(auto), -1, 12).sum(axis=1)
        idx, mask = grid.window_index(k, n, dt)
        count = mask.sum(axis=1)
        poly_w = np.where(mask, poly[idx], 0)
        silence = np.where(mask, anything[idx] == 0, False).sum(axis=1) / count
        harm = (pairs[idx] * mask[:, :, None]).sum(axis=1)
        total = harm.sum(axis=1, keepdims=True)
        harmonic = np.where(total > 0, harm / np.maximum(total, _EPS), 0.0)
        return poly_w.sum(axis=1) / count, poly_w.max(axis=1).astype(np.float64), silence, harmonic

    def embed(self, items: Sequence[Any]) -> list[np.ndarray]:
        # One score at a time: nothing is shared across items, so outputs never depend on the batch.
        return [self.check_output(None, self._embed_one(s)) for s in items]
