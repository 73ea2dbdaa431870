"""prepare_dataset --performance: the audio is a drawn performance of the score, the paired MIDI the
score itself; every drawn parameter is in info.csv; seeded; ``none`` is the old rendering."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from scipy.integrate import quad

from ray_jobs.prepare_dataset import job as prep
from ray_jobs.prepare_dataset.recipes import music21 as db
from ray_jobs.prepare_dataset.recipes import performance as perf
from tests.test_prepare_dataset import assert_no_stuck_notes

TPQ = db.TPQ


def line(n: int = 24, bpm: int = 90, tracks: int = 1) -> db.Conversion:
    """A staccato line of quarter notes (one per beat) per track: easy onsets to detect."""
    notes = [db.NoteEvent(t, 60 + 2 * (k % 5) + 7 * t, k * TPQ, k * TPQ + TPQ // 2) for t in range(tracks) for k in range(n)]
    return db.Conversion(notes=notes, track_names=[f"p{t}" for t in range(tracks)], bpm=bpm, bpm_source="score",
                         time_signature=(4, 4), key="C", mode="major", key_pitch_class=0, n_parts=tracks,
                         duration=round((n - 0.5) * 60 / bpm, 3), truncated=False, grace_skipped=0)


def test_draws_are_seeded_stored_and_read_back(tmp_path):
    a = perf.draw_performance("light", "bach__bwv1", 4, seed=3)
    assert a == perf.draw_performance("light", "bach__bwv1", 4, seed=3)
    assert a != perf.draw_performance("light", "bach__bwv1", 4, seed=4)
    assert a != perf.draw_performance("light", "bach__bwv2", 4, seed=3)
    rows = [{"id": "x", **p.columns()} for p in (a, perf.draw_performance("strong", "w", 3, seed=0))]
    pd.DataFrame(rows).to_csv(tmp_path / "info.csv", index=False)
    back = pd.read_csv(tmp_path / "info.csv")
    assert [perf.Performance.from_columns(r) for _, r in back.iterrows()] == [
        perf.draw_performance("light", "bach__bwv1", 4, seed=3), perf.draw_performance("strong", "w", 3, seed=0)]
    assert set(perf.COLUMNS) == set(rows[0]) - {"id"} | {"audio_seconds"}


def test_levels_draw_within_their_spreads_and_families():
    for level in ("light", "strong"):
        spec = perf.LEVEL[level]
        drawn = [perf.draw_performance(level, f"w{k}", 3, seed=0, families=("strings", "winds")) for k in range(60)]
        assert all(abs(d.tempo_factor - 1) <= spec.tempo_spread for d in drawn)
        assert all(0 <= a <= spec.rubato for d in drawn for _, a, _ in d.rubato)
        assert {d.family for d in drawn} == {"strings", "winds"}
        assert all(set(d.programs) <= set(perf.FAMILIES[d.family]) and len(d.programs) == 3 for d in drawn)
        per_part = [len(set(d.programs)) > 1 for d in drawn]
        assert any(per_part) if spec.programs_per_part else not any(per_part)
    light, strong = (np.std([perf.draw_performance(lv, f"w{k}", 1).tempo_factor for k in range(200)])
                     for lv in ("light", "strong"))
    assert strong > 1.8 * light
    with pytest.raises(ValueError, match="performance level"):
        perf.draw_performance("wild", "w", 1)


def test_performed_onsets_follow_the_drawn_tempo_curve():
    conv = line(n=32, bpm=90)
    p = dataclasses.replace(perf.draw_performance("strong", "w", 1, seed=1), onset_jitter_ms=0.0, articulation=1.0)

    def reference(q):  # independent: adaptive quadrature of 60 / tempo
        return quad(lambda x: 60.0 / (90 * float(perf.tempo_multiplier(p, np.array([x]))[0])), 0, q, limit=200)[0]

    played = perf.perform_notes(p, conv.notes, conv.bpm, TPQ)
    onsets = np.array([s for _, _, s, _, _ in played])
    expected = np.array([reference(k) for k in range(32)])
    np.testing.assert_allclose(onsets, expected, atol=1e-4)
    score_onsets = np.arange(32) * 60 / 90
    assert np.abs(onsets - score_onsets).max() > 0.3  # seconds: a performance, not the score
    jittered = perf.perform_notes(dataclasses.replace(p, onset_jitter_ms=20.0), conv.notes, conv.bpm, TPQ)
    spread = np.array([s for _, _, s, _, _ in jittered]) - onsets
    assert 0.01 < spread.std() < 0.03


def test_velocity_follows_the_phrase_swell_with_variation():
    conv = line(n=64)
    p = dataclasses.replace(perf.draw_performance("strong", "w", 1, seed=2), velocity_jitter=0.0)
    vel = np.array([v for *_, v in perf.perform_notes(p, conv.notes, conv.bpm, TPQ)])
    q = np.arange(64)
    swell = p.base_velocity + p.dynamics * np.sin(2 * np.pi * q / p.phrase_quarters + p.phrase_phase)
    np.testing.assert_array_equal(vel, np.clip(np.rint(swell), 1, 127))
    noisy = np.array([v for *_, v in perf.perform_notes(dataclasses.replace(p, velocity_jitter=12.0), conv.notes, conv.bpm, TPQ)])
    assert 6 < np.std(noisy - vel) < 18


def test_performance_midi_plays_the_drawn_programs_without_hanging_notes():
    import pretty_midi

    conv = line(n=16, tracks=3)
    # two same-pitch notes jittered into each other on one channel must not leave a note on
    conv.notes.extend([db.NoteEvent(0, 90, 20 * TPQ, 21 * TPQ), db.NoteEvent(0, 90, 21 * TPQ, 22 * TPQ)])
    p = dataclasses.replace(perf.draw_performance("strong", "w", 3, seed=5), onset_jitter_ms=80.0)
    data = perf.performance_midi(p, conv.notes, conv.bpm, TPQ, conv.track_names)
    assert_no_stuck_notes(data)
    pm = pretty_midi.PrettyMIDI(io.BytesIO(data))
    assert [i.program for i in pm.instruments] == list(p.programs)
    played = perf.perform_notes(p, conv.notes, conv.bpm, TPQ)
    read = sorted((n.start, n.pitch) for i in pm.instruments for n in i.notes)
    np.testing.assert_allclose([s for s, _ in read], sorted(s for _, _, s, _, _ in played), atol=2e-3)


def test_rendered_audio_follows_the_performance_not_the_score():
    """Onsets detected in the audio (librosa) match the performed times, not the score's."""
    librosa = pytest.importorskip("librosa")

    conv = line(n=24, bpm=100)
    p = dataclasses.replace(perf.draw_performance("strong", "w", 1, seed=1), tempo_factor=0.85, onset_jitter_ms=0.0,
                            programs=(0,))
    font = open(prep.default_soundfont(), "rb").read()
    wav, seconds = db.render_audio(perf.performance_midi(p, conv.notes, conv.bpm, TPQ, conv.track_names), font)
    audio, sr = sf.read(io.BytesIO(wav), dtype="float32")
    detected = librosa.onset.onset_detect(y=audio, sr=sr, units="time", backtrack=False, hop_length=256)
    performed = np.array([s for _, _, s, _, _ in perf.perform_notes(p, conv.notes, conv.bpm, TPQ)])
    score = np.arange(24) * 0.6

    def error(times):
        return np.median([np.abs(times - d).min() for d in detected])
    assert len(detected) >= 20
    assert error(performed) < 0.03 and error(score) > 0.1, (error(performed), error(score))
    assert seconds > conv.duration / 0.85 * 0.9  # slower than written: the audio is longer


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One chorale built three ways through the job's own task, plus a rerun with the same seed."""
    work = db.make_work("bach", "bach/bwv66.6.mxl", None, 48.0, "4/4", False)
    out = {}
    for name, level, seed in (("none", "none", 0), ("light", "light", 0), ("again", "light", 0), ("seed1", "light", 1)):
        folder = tmp_path_factory.mktemp(name)
        row = prep.build_one({"work": json.dumps(dataclasses.asdict(work))}, dataset_dir=str(folder),
                             soundfont=prep.default_soundfont(), seed=seed, max_seconds=8, program=0,
                             settings_hash="h", performance=level)
        assert row["status"] == "built", row["reason"]
        out[name] = (folder, json.loads(row["record"]))
    return work, out


def test_job_pairs_the_score_midi_with_performed_audio(built):
    work, out = built
    midi = {k: (f / "midi" / f"{work.id}.mid").read_bytes() for k, (f, _) in out.items()}
    wav = {k: (f / "audio" / f"{work.id}.wav").read_bytes() for k, (f, _) in out.items()}
    assert midi["none"] == midi["light"] == midi["again"]  # the paired MIDI stays the score
    assert wav["light"] != wav["none"] and wav["light"] == wav["again"]  # performed, and reproducible
    assert wav["seed1"] != wav["light"]
    record = out["light"][1]
    assert all(c in record for c in perf.COLUMNS) and record["perf_level"] == "light"
    # every drawn parameter is in the record: the audio re-renders from it alone
    conv = db.convert_score(prep.parse_work(work), work.id, seed=0, max_seconds=8)
    again = perf.performance_midi(perf.Performance.from_columns(record), conv.notes, conv.bpm, TPQ, conv.track_names)
    assert db.render_audio(again, open(prep.default_soundfont(), "rb").read())[0] == wav["light"]


def test_none_renders_the_paired_midi_as_before(built):
    work, out = built
    folder, record = out["none"]
    font = open(prep.default_soundfont(), "rb").read()
    assert db.render_audio((folder / "midi" / f"{work.id}.mid").read_bytes(), font)[0] == \
        (folder / "audio" / f"{work.id}.wav").read_bytes()
    assert not any(k.startswith("perf_") for k in record)
    assert prep.csv_columns("none") == prep.CSV_COLUMNS


def test_build_hash_changes_only_with_a_performance():
    import hashlib

    base = ["--data_root", "/tmp/unused"]
    font = b"sf"
    none = prep.build_hash(prep.parse_args(base)[1], font)
    # the settings hashed before performances existed: datasets built then are not rebuilt
    before = {"version": prep.BUILD_VERSION, "max_seconds": prep.DEFAULT_MAX_SECONDS, "program": 0, "seed": 0,
              "velocity": db.VELOCITY, "soundfont": hashlib.sha256(font).hexdigest()}
    assert none == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    assert none == prep.build_hash(prep.parse_args([*base, "--performance", "none"])[1], font)
    light = prep.build_hash(prep.parse_args([*base, "--performance", "light"])[1], font)
    assert len({none, light, prep.build_hash(prep.parse_args([*base, "--performance", "strong"])[1], font),
                prep.build_hash(prep.parse_args([*base, "--performance", "light", "--families", "winds"])[1], font)}) == 4


def test_cli_refuses_unknown_levels_and_families(capsys):
    with pytest.raises(SystemExit) as exc:
        prep.parse_args(["--performance", "wild"])
    assert exc.value.code == 2 and "--performance" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        prep.parse_args(["--families", "strings,kazoos"])
    assert "kazoos" in capsys.readouterr().err


@pytest.mark.slow
def test_performed_build_end_to_end(ray_session, tmp_path):
    argv = ["--dataset", "p", "--data_root", str(tmp_path), "--limit", "3", "--max_seconds", "10",
            "--performance", "strong", "--families", "winds,brass"]
    assert prep.main(argv) == 0
    root = tmp_path / "raw" / "p"
    info = pd.read_csv(root / "info.csv")
    assert tuple(info.columns) == prep.CSV_COLUMNS + perf.COLUMNS and len(info) == 3
    assert set(info["perf_family"]) <= {"winds", "brass"} and (info["perf_level"] == "strong").all()
    for row in info.itertuples():
        audio, sr = sf.read(root / row.audio_filename)
        assert abs(len(audio) / sr - row.audio_seconds) < 0.05
    # the performances' own lengths (one curve can average out to the written tempo, not all three)
    assert (abs(info["audio_seconds"] - info["duration"]) > 0.05).any()
