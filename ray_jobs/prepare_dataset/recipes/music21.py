"""Pure, Ray-free pieces of the music21 -> paired MIDI/WAV dataset build (``prepare_dataset`` reads
the corpus and runs them): select works from catalogue entries, turn one parsed score into a
bounded MIDI file, render it, assign splits. Every choice that shapes a label is named here:

* composer = the corpus folder; era by ``ERA``. Monteverdi's corpus madrigals (Books 3-5, 1592-1605,
  a cappella five-voice polyphony) count as renaissance; Beethoven's quartets as classical (the
  moderate-length movements the selection prefers are mostly Op. 18/59).
* bpm is in quarter notes per minute (the MIDI tempo): the score's first MetronomeMark when it lies
  in Maelzel's range 40-208, else a per-work seeded draw of 60-100 *beats* per minute, the beat
  being the time signature's beat unit (half note in 4/2, dotted quarter in 6/8), so one rule fits
  every style's notation. One constant tempo per piece.
* key/mode = music21's default key finding (Aarden-Essen weights) on the rendered excerpt, for
  every work: notated modes are unreliable in this corpus (every trecento file says "C major").
  One spelling per key (no F#/Gb duplicates among labels). The MIDI key event carries it.
* every part is played by one program (default 0, piano) at one velocity: timbre and dynamics
  would otherwise confound instrumentation with composer. Repeats are not expanded; grace notes
  are skipped; pieces are cut at ``max_seconds``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import math
import random
import re
from collections import defaultdict
from collections.abc import Sequence
from fractions import Fraction
from pathlib import PurePosixPath

TPQ = 480  # MIDI ticks per quarter note
SAMPLE_RATE = 48_000
VELOCITY = 80
MIN_BPM, MAX_BPM = 40, 208  # Maelzel's metronome: a score tempo outside it is not trusted
BEAT_BPM_RANGE = (60, 100)  # drawn tempo, in beats (of the time signature's beat unit) per minute
NOMINAL_BEAT_BPM = 80  # only to estimate lengths from metadata before parsing
MIN_SECONDS = 10.0  # shorter (estimated) works are fragments
MAX_PARSE_SECONDS = 400.0  # longer (estimated) works cost seconds of parsing for a short excerpt
CHANNELS = tuple(c for c in range(16) if c != 9)  # 9 is GM percussion; more parts wrap around
SPLITS = ("train", "validation", "test")
TONIC_NAMES = {  # one spelling per key, the one whose signature has at most 6 accidentals
    "major": ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"),
    "minor": ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B"),
}

FOLK = ("essenFolksong", "oneills1850", "airdsAirs", "ryansMammoth", "miscFolk")
ERA = {
    "trecento": "medieval", "ciconia": "medieval",
    "josquin": "renaissance", "palestrina": "renaissance", "monteverdi": "renaissance",
    "bach": "baroque", "handel": "baroque", "corelli": "baroque",
    "haydn": "classical", "mozart": "classical", "beethoven": "classical",
    "schubert": "romantic", "schumann_robert": "romantic", "schumann_clara": "romantic",
    "chopin": "romantic", "verdi": "romantic", **{name: "folk" for name in FOLK},
}
DEFAULT_COMPOSERS = ("bach", "palestrina", "monteverdi", "trecento", "josquin", "haydn", "mozart",
                     "beethoven", "essenFolksong", "oneills1850", "airdsAirs", "ryansMammoth")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class WorkError(Exception):
    """One work cannot be built; the job records ``stage: reason`` and goes on."""

    def __init__(self, stage: str, reason: str):
        self.stage, self.reason = stage, reason
        super().__init__(f"{stage}: {reason}")


@dataclasses.dataclass(frozen=True)
class Work:
    id: str
    composer: str
    corpus_path: str
    number: int | None  # tune number inside a multi-tune (ABC) file
    quarter_length: float
    time_signature: str | None
    est_seconds: float
    merge_opus: bool = False


def make_id(corpus_path: str, number: int | None = None) -> str:
    """``bach/bwv66.6.mxl`` -> ``bach__bwv66.6``; unsafe characters become '-' plus a short hash."""
    parts = PurePosixPath(corpus_path).with_suffix("").parts
    raw = parts[0] + "__" + "_".join(parts[1:]) + (f"_n{number}" if number is not None else "")
    safe = _UNSAFE.sub("-", raw)
    if safe != raw:
        safe += "-" + hashlib.sha1(f"{corpus_path}#{number}".encode()).hexdigest()[:6]
    return safe


@functools.cache
def beat_quarter_length(time_signature: str | None) -> float:
    """Quarter notes per beat of a time signature such as '6/8' (1.5); 1.0 when unknown."""
    from music21 import meter
    from music21.exceptions21 import Music21Exception

    try:
        return float(meter.TimeSignature(time_signature).beatDuration.quarterLength) if time_signature else 1.0
    except (Music21Exception, ValueError, ZeroDivisionError):
        return 1.0


def make_work(composer: str, path: str, number: int | None, ql: float, ts: str | None, merge: bool) -> Work:
    est = ql * 60.0 / (NOMINAL_BEAT_BPM * beat_quarter_length(ts))
    return Work(make_id(path, number), composer, path, number, ql, ts, round(est, 1), merge)


def select_works(catalogue: Sequence[Work], composers: Sequence[str], per_composer: int,
                 max_seconds: float, seed: int, limit: int | None = None) -> list[Work]:
    """Up to ``per_composer`` works of each composer, deterministic for a seed, sorted by id.

    Works estimated between MIN_SECONDS and ``max_seconds`` are drawn at random (seeded per
    composer); a composer with too few is filled with its shortest longer works (cut at
    ``max_seconds`` later), never ones over max(MAX_PARSE_SECONDS, ``max_seconds``). ``limit`` takes a
    balanced subset: round-robin over composers in the order given.
    """
    chosen, longest = [], max(MAX_PARSE_SECONDS, max_seconds)
    for composer in composers:
        usable = [w for w in catalogue if w.composer == composer and MIN_SECONDS <= w.est_seconds <= longest]
        short = sorted((w for w in usable if w.est_seconds <= max_seconds), key=lambda w: w.id)
        longer = sorted((w for w in usable if w.est_seconds > max_seconds), key=lambda w: (w.est_seconds, w.id))
        random.Random(f"{seed}:select:{composer}").shuffle(short)
        chosen.append((short + longer)[:per_composer])
    if limit is None:
        picked = [w for group in chosen for w in group]
    else:
        rounds = max((len(g) for g in chosen), default=0)
        picked = [g[i] for i in range(rounds) for g in chosen if i < len(g)][:limit]
    return sorted(picked, key=lambda w: w.id)


@dataclasses.dataclass
class NoteEvent:
    track: int
    pitch: int
    start: int  # ticks
    end: int

    @property
    def channel(self) -> int:
        return part_channel(self.track)


@dataclasses.dataclass
class Conversion:
    notes: list[NoteEvent]
    track_names: list[str]
    bpm: int
    bpm_source: str  # "score" or "drawn"
    time_signature: tuple[int, int] | None
    key: str  # tonic, e.g. "Bb"
    mode: str  # "major" / "minor"
    key_pitch_class: int
    n_parts: int
    duration: float  # seconds, end of the last note
    truncated: bool
    grace_skipped: int


def part_channel(track: int) -> int:
    """MIDI channel of the track-th part: 0-8, 10-15, then around again (pretty_midi's own rule)."""
    return CHANNELS[track % len(CHANNELS)]


def _part_notes(part, track: int) -> tuple[list[NoteEvent], int]:
    """Sounding notes of one part in ticks, chords expanded, tied chains merged into one note.

    Does what ``stripTies`` does, in one pass over the flat part: after a tie starts, the next note
    of that pitch extends the held note when it begins where that one ends (one tick of rounding
    allowed), whether or not the file marks its tie's stop. ``Score.stripTies`` costs as much as
    parsing (5 s on a Beethoven movement).
    """
    from music21 import chord, harmony, note

    notes, grace, open_ties = [], 0, {}
    for element in part.flatten().notes:
        if isinstance(element, harmony.Harmony) or not isinstance(element, (note.Note, chord.Chord)):
            continue  # chord symbols are annotations; unpitched notes have no pitch
        ql = Fraction(element.duration.quarterLength)
        if element.duration.isGrace or ql <= 0:
            grace += 1
            continue
        start = round(Fraction(element.offset) * TPQ)
        end = max(start + 1, round((Fraction(element.offset) + ql) * TPQ))
        for n in element.notes if isinstance(element, chord.Chord) else (element,):
            midi, tie_type = int(n.pitch.midi), n.tie.type if n.tie is not None else None
            if not 0 <= midi <= 127:
                continue
            held = open_ties.get(midi)
            if held is not None and abs(held.end - start) <= 1:
                held.end = end
                if tie_type not in ("start", "continue"):
                    del open_ties[midi]
            else:  # a new note; an unrelated one (another voice) leaves an open tie alone
                notes.append(NoteEvent(track, midi, start, end))
                if tie_type in ("start", "continue"):
                    open_ties[midi] = notes[-1]
    return notes, grace


def trim_overlaps(notes: list[NoteEvent]) -> list[NoteEvent]:
    """Per (channel, pitch): one note per onset (the longest), each cut where the next one starts."""
    groups: dict[tuple[int, int], list[NoteEvent]] = defaultdict(list)
    for n in notes:
        groups[(n.channel, n.pitch)].append(n)
    out = []
    for group in groups.values():
        group.sort(key=lambda n: (n.start, -n.end, n.track))
        kept: list[NoteEvent] = []
        for n in group:
            if kept and n.start == kept[-1].start:
                continue  # same onset: sorted longest first, the duplicate is dropped
            if kept and n.start < kept[-1].end:
                kept[-1].end = n.start
            kept.append(n)
        out.extend(kept)
    return sorted(out, key=lambda n: (n.track, n.start, n.pitch, n.end))


def choose_bpm(score, work_id: str, seed: int, beat_ql: float) -> tuple[int, str]:
    """Quarter-note bpm: the score's first sane MetronomeMark, else a seeded draw (module doc)."""
    from music21 import tempo

    mark = score.recurse().getElementsByClass(tempo.MetronomeMark).first()
    qbpm = mark.getQuarterBPM() if mark is not None and mark.number is not None else None
    if qbpm is not None and MIN_BPM <= qbpm <= MAX_BPM:
        return int(round(qbpm)), "score"
    beats = random.Random(f"{seed}:bpm:{work_id}").randint(*BEAT_BPM_RANGE)
    return int(min(MAX_BPM, max(MIN_BPM, round(beats * beat_ql)))), "drawn"


def analyse_key(notes: Sequence[NoteEvent]) -> tuple[str, str, int]:
    """(tonic, mode, tonic pitch class) of the notes: music21's default key finder (Krumhansl-
    Schmuckler correlation with Aarden-Essen weights over the duration-weighted pitch-class
    histogram), run on what is rendered, with one fixed spelling per key (``TONIC_NAMES``)."""
    import numpy as np
    from music21.analysis import discrete

    histogram = np.zeros(12)
    for n in notes:
        histogram[n.pitch % 12] += n.end - n.start
    if not histogram.any() or np.ptp(histogram) == 0:
        raise WorkError("key", "no pitch-class profile to analyse")
    weights = discrete.AardenEssen()
    scores = []
    for mode in ("major", "minor"):
        profile = np.asarray(weights.getWeights(mode), dtype=float)
        for tonic in range(12):
            r = float(np.corrcoef(np.roll(profile, tonic), histogram)[0, 1])
            scores.append((r, mode == "major", -tonic, mode))
    _, _, neg_tonic, mode = max(scores)
    return TONIC_NAMES[mode][-neg_tonic], mode, -neg_tonic


def convert_score(score, work_id: str, *, seed: int = 0, max_seconds: float = 60.0) -> Conversion:
    """Score -> note list cut at ``max_seconds`` (tied chains as one note) with its labels."""
    from music21 import meter

    tracks, names, grace = [], [], 0
    for part in list(score.parts) or [score]:
        notes, skipped = _part_notes(part, len(tracks))
        grace += skipped
        if notes:
            tracks.append(notes)
            name = (getattr(part, "partName", None) or "").encode("ascii", "ignore").decode()
            names.append(name.strip()[:40] or f"part{len(tracks)}")
    if not tracks:
        raise WorkError("convert", "no pitched notes")
    ts = score.recurse().getElementsByClass(meter.TimeSignature).first()
    bpm, source = choose_bpm(score, work_id, seed, float(ts.beatDuration.quarterLength) if ts else 1.0)
    cap = int(max_seconds * bpm * TPQ / 60)
    notes = [n for part in tracks for n in part]
    truncated = any(n.end > cap for n in notes)
    notes = [dataclasses.replace(n, end=min(n.end, cap)) for n in notes if n.start < cap]
    notes = trim_overlaps(notes)
    if not notes:
        raise WorkError("convert", f"no notes in the first {max_seconds:g} s")
    tonic, mode, pitch_class = analyse_key(notes)
    return Conversion(
        notes=notes, track_names=names, bpm=bpm, bpm_source=source,
        time_signature=(ts.numerator, ts.denominator) if ts is not None else None,
        key=tonic, mode=mode, key_pitch_class=pitch_class, n_parts=len(tracks),
        duration=round(max(n.end for n in notes) * 60.0 / (bpm * TPQ), 3),
        truncated=truncated, grace_skipped=grace,
    )


def conversion_to_midi(conv: Conversion, program: int = 0, velocity: int = VELOCITY) -> bytes:
    """Type-1 MIDI: a tempo/metre/key track, then one track per part on its own channel."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(resolution=TPQ, initial_tempo=float(conv.bpm))
    if conv.time_signature and conv.time_signature[0] <= 255 and math.log2(conv.time_signature[1]).is_integer():
        pm.time_signature_changes.append(pretty_midi.TimeSignature(*conv.time_signature, 0.0))
    key_number = conv.key_pitch_class + (12 if conv.mode == "minor" else 0)
    pm.key_signature_changes.append(pretty_midi.KeySignature(key_number, 0.0))
    seconds_per_tick = 60.0 / (conv.bpm * TPQ)
    instruments = [pretty_midi.Instrument(program=program, name=name) for name in conv.track_names]
    for n in conv.notes:
        instruments[n.track].notes.append(
            pretty_midi.Note(velocity, n.pitch, n.start * seconds_per_tick, n.end * seconds_per_tick))
    pm.instruments.extend(instruments)
    buffer = io.BytesIO()
    pm.write(buffer)
    return buffer.getvalue()


def score_to_midi(score, work_id: str, *, seed: int = 0, max_seconds: float = 60.0,
                  program: int = 0) -> tuple[bytes, Conversion]:
    conv = convert_score(score, work_id, seed=seed, max_seconds=max_seconds)
    return conversion_to_midi(conv, program=program), conv


def render_audio(midi_bytes: bytes, soundfont_bytes: bytes) -> tuple[bytes, float]:
    """Render with the SoundFont (midirenderer, 48 kHz stereo); return mono 16-bit WAV and seconds."""
    import midirenderer
    import numpy as np
    import soundfile as sf

    try:
        wav = midirenderer.render_wave_from(soundfont_bytes, midi_bytes)
        audio, sr = sf.read(io.BytesIO(wav), dtype="int16", always_2d=True)
    except (ValueError, RuntimeError) as exc:  # sf.LibsndfileError is a RuntimeError
        raise WorkError("render", f"{type(exc).__name__}: {exc}") from None
    if sr != SAMPLE_RATE or audio.shape[0] == 0:
        raise WorkError("render", f"renderer returned {audio.shape[0]} samples at {sr} Hz")
    mono = np.round(audio.astype(np.int32).mean(axis=1)).astype(np.int16)
    if not mono.any():
        raise WorkError("render", "rendered audio is silent")
    buffer = io.BytesIO()
    sf.write(buffer, mono, sr, format="WAV", subtype="PCM_16")
    return buffer.getvalue(), mono.shape[0] / sr


def assign_splits(ids: Sequence[str], groups: Sequence[str],
                  fractions: tuple[float, float] = (0.15, 0.15)) -> list[str]:
    """train/validation/test per id, stratified by group, ordered by a hash of the id.

    A group with n >= 3 items gets max(1, round(f * n)) validation and test items each (f = 15 %);
    smaller groups go to train. Depends only on the ids of the group, not on input order.
    """
    members: dict[str, list[str]] = defaultdict(list)
    for item, group in zip(ids, groups):
        members[group].append(item)
    split: dict[str, str] = {}
    for items in members.values():
        items = sorted(items, key=lambda i: (hashlib.sha1(i.encode()).hexdigest(), i))
        n_val = n_test = 0
        if len(items) >= 3:
            n_val, n_test = (max(1, round(f * len(items))) for f in fractions)
        for rank, item in enumerate(items):
            split[item] = "test" if rank < n_test else "validation" if rank < n_test + n_val else "train"
    return [split[i] for i in ids]

