"""Drum tracks described by kit piece on the beat grid: the drum columns of ``pianoroll``.

A drum note's pitch names an instrument of the General MIDI percussion map, not a pitch, so drum
notes are read as *kit classes* (``KIT_CLASSES``), the way the Groove MIDI Dataset's own reduced
mappings read them:

============ ================================================================================
class        GM notes (plus the Roland TD-11 notes the Groove MIDI Dataset records)
============ ================================================================================
kick         35, 36
snare        37 side stick, 38, 39 hand clap, 40 electric snare
hats         42 closed, 44 pedal, 46 open; TD-11 hi-hat edges 22 (closed), 26 (open)
toms         41, 43, 45, 47, 48, 50; 58 (the TD-11's floor-tom rim; GM's vibraslap)
cymbals      49 crash, 51 ride, 52 china, 53 ride bell, 55 splash, 57 crash 2, 59 ride 2
percussion   every other note (tambourine, cowbell, congas, bongos, shakers, ...)
============ ================================================================================

Positions come from the score's tick time (``ticks_per_quarter``) and time signatures, so they are
positions on the written beat grid (a performance recorded to a click, as GMD's, keeps its grid):

* the 16th of the bar: onset rounded to the nearest 16th note, counted from the last time signature
  change (bars of more than 16 16ths fold onto 16 slots; no time signature means 4/4 from tick 0);
* micro-timing: the onset's offset from that 16th, in 16ths (-0.5..0.5; positive = late);
* swing: per quarter-note beat, the earliest onset at beat phase 0.4..0.8 (the off-beat 8th) at
  phase p gives the ratio p / (1 - p) of the beat's two 8ths; the column is ratio - 1 (0 straight
  or no off-beat onset, 1 triplet swing, 2 dotted-8th shuffle);
* syncopation (Longuet-Higgins & Lee's idea): an onset on a metrically weaker 16th whose next
  stronger position is not struck again by the same class is syncopated, weighing the difference
  of metrical levels / 4 (levels in a 16-16th bar: the one 0, half bar -1, beats -2, 8ths -3,
  16ths -4; other bars: the one, beats, 8ths, 16ths). A stronger position after the last drum
  onset does not count (the piece has ended). The column is the mean over onsets (0..1).

A frame holds the drum onsets falling in its window (``FrameGrid``, as the other pianoroll columns).
Columns (D = 6 * 16 + 6 + 12 + 4 = 118; all 0 in a frame without drum onsets):

========= ==================================================================================
cols      feature
========= ==================================================================================
0-95      onset pattern per class: the class's onsets over the 16 16ths of the bar (sum 1 per
          class, or all 0), class-major (kick slots 0-15, snare slots 0-15, ...)
96-101    onsets per second per class
102-113   velocity mean, std / 127 per class (mean, std, mean, std, ...)
114       syncopation
115       swing (ratio - 1)
116-117   micro-timing mean, std (16ths)
========= ==================================================================================
"""

from __future__ import annotations

import functools

import numpy as np

from embedders.base import FrameGrid

KIT_CLASSES = ("kick", "snare", "hats", "toms", "cymbals", "percussion")
SLOTS = 16
_NOTES = {"kick": (35, 36), "snare": (37, 38, 39, 40), "hats": (22, 26, 42, 44, 46),
          "toms": (41, 43, 45, 47, 48, 50, 58), "cymbals": (49, 51, 52, 53, 55, 57, 59)}
_CLASS_OF = np.full(128, KIT_CLASSES.index("percussion"), dtype=np.int64)
for _name, _notes in _NOTES.items():
    _CLASS_OF[list(_notes)] = KIT_CLASSES.index(_name)
_NC = len(KIT_CLASSES)
DIM = _NC * SLOTS + _NC + 2 * _NC + 4
SWING_PHASES = (0.4, 0.8)


def feature_names() -> list[str]:
    names = [f"drum_{c}_slot{s:02d}" for c in KIT_CLASSES for s in range(SLOTS)]
    names += [f"drum_{c}_onsets_per_s" for c in KIT_CLASSES]
    names += [f"drum_{c}_velocity_{stat}" for c in KIT_CLASSES for stat in ("mean", "std")]
    return names + ["drum_syncopation", "drum_swing", "drum_timing_mean", "drum_timing_std"]


def kit_class(pitch: np.ndarray) -> np.ndarray:
    """Index into ``KIT_CLASSES`` of each GM drum note number (0-127)."""
    return _CLASS_OF[np.clip(np.asarray(pitch, dtype=np.int64), 0, 127)]


def metrical_weight(slot: int, n_slots: int) -> int:
    """0 for the one, -1 half bar (16-16th bars), -2 beats, -3 8ths, -4 16ths."""
    if slot == 0:
        return 0
    if slot % 4 == 0:
        return -1 if n_slots == 16 and slot == 8 else -2
    return -3 if slot % 2 == 0 else -4


@functools.cache
def _next_stronger(n_slots: int) -> tuple[np.ndarray, np.ndarray]:
    """Per slot of an ``n_slots`` bar: 16ths to the next stronger position, and the level gained."""
    dist, gain = np.zeros(n_slots, np.int64), np.zeros(n_slots, np.int64)
    for s in range(1, n_slots):
        w = metrical_weight(s, n_slots)
        d = next(d for d in range(1, n_slots + 1) if metrical_weight((s + d) % n_slots, n_slots) > w)
        dist[s], gain[s] = d, metrical_weight((s + d) % n_slots, n_slots) - w
    return dist, gain


def grid_positions(tick: np.ndarray, tpq: int, time_signatures: np.ndarray | None) -> dict[str, np.ndarray]:
    """Beat-grid positions of onsets at ``tick``: absolute 16th (rounded), slot in the bar, bar size
    in 16ths, micro-timing (16ths), beat index and phase (quarter notes).

    ``time_signatures``: symusic's ``score.time_signatures.numpy()`` (time, numerator, denominator).
    """
    tick = np.asarray(tick, dtype=np.float64)
    sixteenth = tpq / 4.0
    ts = time_signatures if time_signatures is not None and len(time_signatures["time"]) else None
    starts = np.asarray(ts["time"], np.float64) if ts is not None else np.zeros(1)
    num = np.asarray(ts["numerator"], np.float64) if ts is not None else np.full(1, 4.0)
    den = np.asarray(ts["denominator"], np.float64) if ts is not None else np.full(1, 4.0)
    order = np.argsort(starts, kind="stable")
    starts, num, den = starts[order], num[order], den[order]
    if starts[0] > 0:  # before the first time signature: 4/4 from tick 0
        starts, num, den = np.r_[0.0, starts], np.r_[4.0, num], np.r_[4.0, den]
    seg = np.maximum(np.searchsorted(starts, tick, side="right") - 1, 0)
    bar_16ths = np.maximum(np.rint(num * 16.0 / den), 1).astype(np.int64)[seg]
    q = tick / sixteenth
    nearest = np.rint(q)
    slot = np.rint((tick - starts[seg]) / sixteenth).astype(np.int64) % bar_16ths
    beats = tick / tpq
    beat = np.floor(beats)
    return {"q": nearest.astype(np.int64), "slot": slot, "bar_16ths": bar_16ths, "timing": q - nearest,
            "beat": beat.astype(np.int64), "phase": beats - beat}


def _syncopation(cls: np.ndarray, pos: dict[str, np.ndarray]) -> np.ndarray:
    """Per onset: level gained by the next stronger position when that position is not struck
    again by the same class (0 when it is, when it lies after the last onset, or for onsets on the
    one), / 4."""
    out = np.zeros(len(cls))
    dist = np.zeros(len(cls), np.int64)
    gain = np.zeros(len(cls), np.int64)
    for size in np.unique(pos["bar_16ths"]):
        sel = pos["bar_16ths"] == size
        d, g = _next_stronger(int(size))
        dist[sel], gain[sel] = d[pos["slot"][sel]], g[pos["slot"][sel]]
    last = pos["q"].max()
    for c in np.unique(cls):
        sel = np.flatnonzero(cls == c)
        struck = np.unique(pos["q"][sel])
        k = np.searchsorted(struck, pos["q"][sel], side="right")
        following = np.where(k < len(struck), struck[np.minimum(k, len(struck) - 1)], np.iinfo(np.int64).max)
        target = pos["q"][sel] + dist[sel]
        held = (following > target) & (target <= last)  # past the last onset the piece has ended
        out[sel] = np.where((dist[sel] > 0) & held, gain[sel] / 4.0, 0.0)
    return out


def _per_frame(frame: np.ndarray, values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    count = np.bincount(frame, minlength=n)
    mean = np.bincount(frame, weights=values, minlength=n) / np.maximum(count, 1)
    var = np.bincount(frame, weights=(values - mean[frame]) ** 2, minlength=n) / np.maximum(count, 1)
    return mean, np.sqrt(var)


def drum_features(start: np.ndarray, tick: np.ndarray, pitch: np.ndarray, velocity: np.ndarray, tpq: int,
                  time_signatures, grid: FrameGrid, n: int) -> np.ndarray:
    """(n, DIM) float64 drum columns for drum onsets at ``start`` seconds / ``tick`` ticks.

    ``start``/``tick``/``pitch``/``velocity`` describe the same notes (drum tracks only); ``n`` frames
    of ``grid``. An onset counts in every frame whose window [t*hop, t*hop + window) holds it.
    """
    out = np.zeros((n, DIM))
    if len(start) == 0:
        return out
    cls = kit_class(pitch)
    pos = grid_positions(tick, tpq, time_signatures)
    sync = _syncopation(cls, pos)
    # swing: the earliest onset of each beat inside the off-beat phases
    cand = np.flatnonzero((pos["phase"] >= SWING_PHASES[0]) & (pos["phase"] < SWING_PHASES[1]))
    cand = cand[np.lexsort((pos["phase"][cand], pos["beat"][cand]))]
    cand = cand[np.r_[True, pos["beat"][cand][1:] != pos["beat"][cand][:-1]]] if len(cand) else cand
    swing = np.zeros(len(start))
    is_swing = np.zeros(len(start), dtype=bool)
    swing[cand] = pos["phase"][cand] / (1.0 - pos["phase"][cand]) - 1.0
    is_swing[cand] = True

    hop, win = grid.hop_seconds, grid.window_seconds
    lo = np.clip(np.floor((start - win) / hop), 0, n - 1).astype(np.int64)
    hi = np.clip(np.floor(start / hop), 0, n - 1).astype(np.int64)
    counts = hi - lo + 1
    note = np.repeat(np.arange(len(start)), counts)
    frame = lo[note] + np.arange(len(note)) - np.repeat(np.cumsum(counts) - counts, counts)
    inside = (start[note] >= frame * hop) & (start[note] < frame * hop + win)
    note, frame = note[inside], frame[inside]
    c = cls[note]

    pattern = np.bincount((frame * _NC + c) * SLOTS + pos["slot"][note] % SLOTS,
                          minlength=n * _NC * SLOTS).reshape(n, _NC, SLOTS).astype(np.float64)
    total = pattern.sum(axis=2, keepdims=True)
    out[:, : _NC * SLOTS] = np.where(total > 0, pattern / np.maximum(total, 1), 0.0).reshape(n, -1)
    key = frame * _NC + c
    per_class = np.bincount(key, minlength=n * _NC)
    out[:, _NC * SLOTS : _NC * SLOTS + _NC] = per_class.reshape(n, _NC) / win
    v_mean, v_std = _per_frame(key, velocity[note] / 127.0, n * _NC)
    vel = np.stack([v_mean.reshape(n, _NC), v_std.reshape(n, _NC)], axis=2).reshape(n, 2 * _NC)
    out[:, _NC * SLOTS + _NC : _NC * SLOTS + 3 * _NC] = vel
    base = _NC * SLOTS + 3 * _NC
    out[:, base] = _per_frame(frame, sync[note], n)[0]
    sw = is_swing[note]
    out[:, base + 1] = _per_frame(frame[sw], swing[note][sw], n)[0] if sw.any() else 0.0
    out[:, base + 2], out[:, base + 3] = _per_frame(frame, pos["timing"][note], n)
    return out
