"""prepare_dataset: scores built in code for the conversion rules, one small real build end to end."""

from __future__ import annotations

import dataclasses
import io
import json
import re
from collections import Counter, defaultdict

import mido
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from music21 import chord, meter, note, stream, tempo, tie

from ray_jobs.prepare_dataset import job as prep
from ray_jobs.prepare_dataset.recipes import music21 as db

TPQ = db.TPQ


def make_score(*parts, ts="4/4", mark=None):
    """parts: lists of measures; a measure is a list of music21 notes/chords/rests appended in order."""
    score = stream.Score()
    for i, measures in enumerate(parts):
        part = stream.Part()
        for number, content in enumerate(measures, start=1):
            m = stream.Measure(number=number)
            if number == 1:
                if ts:
                    m.append(meter.TimeSignature(ts))
                if mark and i == 0:
                    m.append(mark)
            m.append(content)
            part.append(m)
        score.insert(0, part)
    return score


def n(name, ql=1.0, tie_type=None):
    x = note.Note(name, quarterLength=ql)
    if tie_type:
        x.tie = tie.Tie(tie_type)
    return x


def notes_of(conv, pitch=None):
    return [(e.track, e.pitch, e.start, e.end) for e in conv.notes if pitch is None or e.pitch == pitch]


def midi_events(midi_bytes):
    """(track index, channel, type, pitch, velocity, absolute tick) of every note message."""
    out = []
    for t, track in enumerate(mido.MidiFile(file=io.BytesIO(midi_bytes)).tracks):
        tick = 0
        for msg in track:
            tick += msg.time
            if msg.type in ("note_on", "note_off"):
                on = msg.type == "note_on" and msg.velocity > 0
                out.append((t, msg.channel, "on" if on else "off", msg.note, tick))
    return out


def assert_no_stuck_notes(midi_bytes):
    """Per channel and pitch, on and off strictly alternate once all tracks are merged in time order."""
    per_key = defaultdict(list)
    for _, channel, kind, pitch, tick in midi_events(midi_bytes):
        per_key[(channel, pitch)].append((tick, kind == "on", kind))
    for key, events in per_key.items():
        sounding = 0
        for _, _, kind in sorted(events):  # at one tick "off" sorts before "on"
            sounding += 1 if kind == "on" else -1
            assert sounding in (0, 1), f"overlapping notes on channel/pitch {key}"
        assert sounding == 0, f"note left on at channel/pitch {key}"


# --- ties, overlaps, channels -------------------------------------------------------------------
def test_tied_notes_become_one_note_like_strip_ties():
    def build():
        return make_score([
            [n("C4", 2), n("C4", 2, "start")],
            [n("C4", 1, "stop"), note.Rest(quarterLength=1), chord.Chord(["E4", "G4"], quarterLength=2)],
            [n("E4", 4)],
        ])
    conv = db.convert_score(build(), "w", max_seconds=600)
    assert notes_of(conv, 60) == [(0, 60, 0, 960), (0, 60, 960, 2400)]
    assert notes_of(conv, 64) == [(0, 64, 2880, 3840), (0, 64, 3840, 5760)]  # no tie: two notes

    score = build()
    score.parts[0].getElementsByClass(stream.Measure)[1].notes[-1].tie = tie.Tie("start")  # chord tied on
    mine = sorted((e.pitch, e.start, e.end) for e in db.convert_score(score, "w", max_seconds=600).notes)
    assert (64, 2880, 5760) in mine and (67, 2880, 3840) in mine  # only the E continues
    reference = build()
    reference.parts[0].getElementsByClass(stream.Measure)[1].notes[-1].tie = tie.Tie("start")
    reference.stripTies(inPlace=True)
    ref = sorted((e.pitch, e.start, e.end) for e in db.convert_score(reference, "w", max_seconds=600).notes)
    assert [x for x in mine if x[0] == 60] == [x for x in ref if x[0] == 60]


def test_a_unison_in_another_voice_does_not_break_a_tie():
    m = stream.Measure(number=1)
    v1, v2 = stream.Voice(), stream.Voice()
    v1.append([n("C4", 2, "start"), n("C4", 2, "stop")])
    v2.append([n("C4", 1), note.Rest(quarterLength=3)])
    m.insert(0, v1)
    m.insert(0, v2)
    part = stream.Part()
    part.append(m)
    score = stream.Score()
    score.insert(0, part)
    assert notes_of(db.convert_score(score, "w", max_seconds=600)) == [(0, 60, 0, 1920)]


def test_same_pitch_overlaps_are_trimmed_and_no_note_is_left_on():
    part = stream.Part()
    m = stream.Measure(number=1)
    v1, v2 = stream.Voice(), stream.Voice()
    v1.append(n("C4", 4))
    v2.append([note.Rest(quarterLength=1), n("C4", 1), chord.Chord(["D4", "D4"], quarterLength=2)])
    m.insert(0, v1)
    m.insert(0, v2)
    part.append(m)
    score = stream.Score()
    score.insert(0, part)
    conv = db.convert_score(score, "w", max_seconds=600)
    assert notes_of(conv, 60) == [(0, 60, 0, 480), (0, 60, 480, 960)]
    assert notes_of(conv, 62) == [(0, 62, 960, 1920)]  # duplicate onset kept once
    assert_no_stuck_notes(db.conversion_to_midi(conv))


def test_trim_is_per_channel_across_parts_sharing_one():
    events = [db.NoteEvent(0, 60, 0, 960), db.NoteEvent(15, 60, 480, 1440), db.NoteEvent(1, 60, 480, 960)]
    assert db.part_channel(0) == db.part_channel(15) == 0
    kept = {(e.track, e.start, e.end) for e in db.trim_overlaps(events)}
    assert kept == {(0, 0, 480), (15, 480, 1440), (1, 480, 960)}  # track 1 is on channel 1


def test_channels_skip_drums_and_wrap_and_each_part_has_a_track():
    assert [db.part_channel(i) for i in range(17)] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 0, 1]
    score = make_score(*[[[n("C4", 4)]] for _ in range(17)])
    midi = db.conversion_to_midi(db.convert_score(score, "w", max_seconds=600), program=5)
    tracks = mido.MidiFile(file=io.BytesIO(midi)).tracks[1:]  # track 0: tempo, metre, key
    assert len(tracks) == 17
    channels = [{m.channel for m in t if hasattr(m, "channel")} for t in tracks]
    assert channels == [{db.part_channel(i)} for i in range(17)]
    assert all([m.program for m in t if m.type == "program_change"] == [5] for t in tracks)
    assert_no_stuck_notes(midi)


def test_grace_notes_chord_symbols_and_rests_make_no_notes():
    from music21 import harmony

    grace = n("D4").getGrace()
    score = make_score([[grace, n("C4", 1), harmony.ChordSymbol("G7"), note.Rest(quarterLength=3)]])
    conv = db.convert_score(score, "w", max_seconds=600)
    assert notes_of(conv) == [(0, 60, 0, 480)] and conv.grace_skipped == 1
    with pytest.raises(db.WorkError, match="no pitched notes"):
        db.convert_score(make_score([[note.Rest(quarterLength=4)]]), "w")


# --- tempo, cap, metre, key ---------------------------------------------------------------------
def test_bpm_from_a_sane_metronome_mark_is_written_into_the_midi():
    import symusic

    score = make_score([[n("C4", 4)], [n("E4", 4)]], mark=tempo.MetronomeMark(number=90))
    midi, conv = db.score_to_midi(score, "w", max_seconds=600)
    assert (conv.bpm, conv.bpm_source) == (90, "score")
    parsed = symusic.Score.from_midi(midi)
    assert abs(parsed.tempos[0].qpm - conv.bpm) < 0.01
    assert abs(float(parsed.to("second").end()) - conv.duration) < 1e-3
    assert conv.duration == pytest.approx(8 * 60 / 90, abs=1e-3)


def test_insane_or_missing_marks_draw_a_seeded_bpm_in_beats_of_the_metre():
    fast = make_score([[n("C4", 3)]], ts="6/8", mark=tempo.MetronomeMark(number=300))
    a = db.convert_score(fast, "work-a", seed=3)
    again = db.convert_score(make_score([[n("C4", 3)]], ts="6/8"), "work-a", seed=3)
    assert a.bpm_source == "drawn" and a.bpm == again.bpm  # deterministic per (seed, id)
    low, high = db.BEAT_BPM_RANGE
    assert 1.5 * low <= a.bpm <= 1.5 * high  # 6/8: the beat is a dotted quarter
    drawn = {db.choose_bpm(make_score([[n("C4")]]), f"w{i}", 0, 1.0)[0] for i in range(40)}
    assert len(drawn) > 5 and all(low <= b <= high for b in drawn)


def test_cap_drops_later_notes_and_cuts_the_crossing_one():
    score = make_score([[n("C4", 2), n("D4", 4)], [n("E4", 4)]], mark=tempo.MetronomeMark(number=60))
    conv = db.convert_score(score, "w", max_seconds=3.0)  # 3 quarters at 60 bpm
    assert notes_of(conv) == [(0, 60, 0, 960), (0, 62, 960, 1440)]
    assert conv.truncated and conv.duration == 3.0


def test_metre_and_key_are_labelled_and_written():
    melody = [[n(p) for p in ("A3", "C4", "E4", "A4")], [n(p) for p in ("G#4", "B4", "E4", "A3")],
              [n("D4"), n("F4"), n("E4"), n("A3")]]
    midi, conv = db.score_to_midi(make_score(melody, ts="3/4"), "w")
    assert (conv.key, conv.mode, conv.time_signature) == ("A", "minor", (3, 4))
    meta = [m for m in mido.MidiFile(file=io.BytesIO(midi)).tracks[0] if m.is_meta]
    assert any(m.type == "time_signature" and (m.numerator, m.denominator) == (3, 4) for m in meta)
    assert any(m.type == "key_signature" and m.key == "Am" for m in meta)
    scale = make_score([[n(p) for p in ("C4", "D4", "E4", "F4")], [n(p) for p in ("G4", "A4", "B4", "C5")],
                        [n("G4"), n("E4"), n("C4", 2)]])
    major = db.convert_score(scale, "w")
    assert (major.key, major.mode) == ("C", "major")


# --- ids, splits, selection ---------------------------------------------------------------------
def test_ids_are_safe_stable_and_unique():
    assert db.make_id("bach/bwv66.6.mxl") == "bach__bwv66.6"
    assert db.make_id("beethoven/opus18no1/movement3.mxl") == "beethoven__opus18no1_movement3"
    assert db.make_id("essenFolksong/altdeu10.abc", 10) == "essenFolksong__altdeu10_n10"
    spaced = db.make_id("trecento/PMFC_01-Lugentium siccentur.xml")
    underscored = db.make_id("trecento/PMFC_01-Lugentium_siccentur.xml")
    dashed = db.make_id("trecento/PMFC_01-Lugentium-siccentur.xml")
    assert len({spaced, underscored, dashed}) == 3
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", i) for i in (spaced, underscored, dashed))
    assert spaced == db.make_id("trecento/PMFC_01-Lugentium siccentur.xml")


def test_splits_are_stratified_deterministic_and_cover_every_split():
    ids = [f"{g}__{k}" for g, n_items in (("a", 40), ("b", 7), ("c", 3), ("d", 2), ("e", 1)) for k in range(n_items)]
    groups = [i.split("__")[0] for i in ids]
    splits = dict(zip(ids, db.assign_splits(ids, groups)))
    order = np.random.default_rng(0).permutation(len(ids))
    assert dict(zip([ids[i] for i in order], db.assign_splits([ids[i] for i in order], [groups[i] for i in order]))) == splits
    per = {g: Counter(s for i, s in splits.items() if i.startswith(g + "__")) for g in "abcde"}
    assert per["a"] == {"train": 28, "validation": 6, "test": 6}
    assert per["b"]["test"] >= 1 and per["b"]["validation"] >= 1 and per["c"] == {"train": 1, "validation": 1, "test": 1}
    assert per["d"] == {"train": 2} and per["e"] == {"train": 1}


def test_selection_is_balanced_seeded_and_prefers_moderate_lengths():
    lengths = {"bach": np.linspace(20, 140, 30), "mozart": np.linspace(20, 800, 4)}  # est: 0.75 s per quarter
    catalogue = [db.make_work(c, f"{c}/w{k:03d}.mxl", None, float(ql), "4/4", False)
                 for c, qls in lengths.items() for k, ql in enumerate(qls)]
    pick = db.select_works(catalogue, ["bach", "mozart"], 10, 60.0, seed=1)
    assert pick == db.select_works(list(reversed(catalogue)), ["bach", "mozart"], 10, 60.0, seed=1)
    assert pick != db.select_works(catalogue, ["bach", "mozart"], 10, 60.0, seed=2)
    assert [w.id for w in pick] == sorted(w.id for w in pick)
    limit = max(db.MAX_PARSE_SECONDS, 60.0)
    assert all(db.MIN_SECONDS <= w.est_seconds <= limit for w in pick)
    bach = [w for w in pick if w.composer == "bach"]
    assert len(bach) == 10 and all(w.est_seconds <= 60 for w in bach)  # enough short ones
    five = db.select_works(catalogue, ["bach", "mozart"], 10, 60.0, seed=1, limit=5)
    assert Counter(w.composer for w in five) == {"bach": 3, "mozart": 2}


# --- corpus, rendering, CLI -----------------------------------------------------------------------
def test_josquin_voices_merge_into_one_score_and_render():
    work = db.make_work("josquin", "josquin/milleRegrets.abc", None, 312.0, "2/2", True)
    score = prep.parse_work(work)
    assert len(score.parts) == 4
    midi, conv = db.score_to_midi(score, work.id, max_seconds=4.0)
    wav, seconds = db.render_audio(midi, open(prep.default_soundfont(), "rb").read())
    audio, sr = sf.read(io.BytesIO(wav))
    assert sr == 48000 and audio.ndim == 1 and np.abs(audio).max() > 1e-3
    assert abs(seconds - conv.duration) < 0.05


def test_failures_are_rows_not_exceptions(tmp_path):
    work = db.make_work("bach", "bach/no_such_chorale.mxl", None, 48.0, "4/4", False)
    row = prep.build_one({"work": json.dumps(dataclasses.asdict(work))}, dataset_dir=str(tmp_path),
                         soundfont=prep.default_soundfont(),
                         seed=0, max_seconds=10, program=0, settings_hash="x")
    assert row["status"] == "failed" and row["reason"].startswith("parse:") and row["id"] == "bach__no_such_chorale"


def test_cli_errors_name_the_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        prep.main(["--soundfont", str(tmp_path / "none.sf2"), "--data_root", str(tmp_path)])
    assert exc.value.code == 2 and "--soundfont" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        prep.main(["--composers", "bach,nobody", "--data_root", str(tmp_path)])
    assert "nobody" in capsys.readouterr().err


@pytest.mark.slow
def test_small_build_end_to_end_then_rerun_skips_everything(ray_session, tmp_path, capsys):
    import symusic

    argv = ["--source", "music21", "--dataset", "m21", "--data_root", str(tmp_path), "--limit", "5", "--max_seconds", "12"]
    assert prep.main(argv) == 0
    root = tmp_path / "raw" / "m21"
    info = pd.read_csv(root / "info.csv")
    assert tuple(info.columns) == prep.CSV_COLUMNS and len(info) == 5
    assert pd.read_csv(root / "build_failures.csv").empty
    assert info["id"].is_unique and list(info["id"]) == sorted(info["id"])
    assert info["composer"].nunique() == 5  # round-robin over the default composers
    assert pd.api.types.is_integer_dtype(info["n_parts"]) and pd.api.types.is_integer_dtype(info["bpm"])
    assert pd.api.types.is_float_dtype(info["duration"]) and (info["duration"] <= 12.0).all()
    assert set(info["split"]) <= set(db.SPLITS) and set(info["mode"]) <= {"major", "minor"}
    assert all(db.ERA[c] == e for c, e in zip(info["composer"], info["era"]))
    assert all(re.fullmatch(r"\d+-\d+|unknown", ts) for ts in info["time_signature"])
    for row in info.itertuples():
        audio, sr = sf.read(root / row.audio_filename)
        assert sr == 48000 and audio.ndim == 1 and abs(len(audio) / sr - row.duration) < 0.05
        midi = symusic.Score.from_file(str(root / row.midi_filename))
        assert midi.note_num() > 0 and abs(midi.tempos[0].qpm - row.bpm) < 0.01
        assert abs(float(midi.to("second").end()) - row.duration) < 0.01
        assert_no_stuck_notes((root / row.midi_filename).read_bytes())
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.suffix in (".wav", ".mid", ".json")}
    capsys.readouterr()
    assert prep.main(argv) == 0
    assert "built 0, skipped (already present) 5, failed 0" in capsys.readouterr().out
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}
    assert pd.read_csv(root / "info.csv").equals(info)
