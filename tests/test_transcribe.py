"""``embedders.transcribe``: the basic-pitch transcriber (notes equal basic-pitch's own ``predict``; a rendered
piano excerpt comes back with a high onset F1, a wrong sample rate does not), its MIDI files (written
as the ground truth is), and the onset-F1 quality function on hand-built note lists.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest

from embedders.base import ConfigError, EmptyInputError
from embedders.transcribe import NOTE_DTYPE, available, get_transcriber, note_onset_scores, notes_to_midi, transcribe
from tests.factory import score_from_notes
from tests.pretrained_factories.basic_pitch import piano_excerpt, require_basic_pitch


def notes(*rows) -> np.ndarray:
    return np.array([tuple(r) + (80,) * (4 - len(r)) for r in rows], dtype=NOTE_DTYPE)


# -- quality: hand-built cases -------------------------------------------------------------------
REF = notes((0.0, 0.5, 60), (0.5, 1.0, 64), (1.0, 1.5, 67), (1.5, 2.0, 72))


def test_identical_notes_score_one():
    s = note_onset_scores(REF, REF)
    assert (s["precision"], s["recall"], s["f1"], s["n_reference"], s["n_estimate"]) == (1.0, 1.0, 1.0, 4, 4)


def test_onset_tolerance_is_50_ms():
    late = REF.copy()
    late["start"] += 0.04
    assert note_onset_scores(REF, late)["f1"] == 1.0
    late["start"] += 0.02  # 60 ms late
    assert note_onset_scores(REF, late)["f1"] == 0.0


def test_pitch_must_match_and_offsets_do_not_count():
    other = REF.copy()
    other["pitch"][:2] += 1
    other["end"] += 0.3  # offsets ignored
    s = note_onset_scores(REF, other)
    assert s["precision"] == s["recall"] == 0.5


def test_missing_and_extra_notes():
    s = note_onset_scores(REF, REF[:2])
    assert (s["precision"], s["recall"]) == (1.0, 0.5) and s["f1"] == pytest.approx(2 / 3)
    extra = np.concatenate([REF, notes((0.0, 0.5, 48), (2.0, 2.5, 50))])
    s = note_onset_scores(REF, extra)
    assert (s["precision"], s["recall"]) == (4 / 6, 1.0)


def test_unisons_count_once_and_empty_sides_score_zero():
    doubled = np.concatenate([REF, REF[:1]])  # two voices on the same C4 at 0 s
    assert note_onset_scores(doubled, REF)["recall"] == 1.0
    assert note_onset_scores(doubled, REF, merge_unisons=False)["recall"] == 0.8
    assert note_onset_scores(REF, REF[:0])["f1"] == 0.0 and note_onset_scores(REF[:0], REF)["precision"] == 0.0


def test_reference_from_midi_bytes_and_scores_skips_drums():
    import symusic

    score = score_from_notes([(0, 1, 60), (1, 1, 64), (2, 1, 67), (3, 1, 72)], bpm=120)  # 0.5 s per beat
    drums = symusic.Track(program=0, is_drum=True)
    drums.notes.append(symusic.Note(0, 480, 36, 100))
    score.tracks.append(drums)
    assert note_onset_scores(score, REF)["f1"] == 1.0
    assert note_onset_scores(score, REF, include_drums=True)["recall"] == 0.8
    assert note_onset_scores(score.dumps_midi(), REF)["f1"] == 1.0


# -- the MIDI writer -------------------------------------------------------------------------------
def test_midi_is_written_like_the_ground_truth():
    import symusic

    midi = notes_to_midi(REF, bpm=90)
    score = symusic.Score.from_midi(midi)
    assert score.ticks_per_quarter == 480 and round(score.tempos[0].qpm, 3) == 90.0
    assert [n.time for n in score.tracks[0].notes] == [0, 360, 720, 1080]  # 0.5 s = 0.75 beat at 90 bpm
    seconds = score.to("second").tracks[0].notes
    assert [round(n.time, 4) for n in seconds] == [0.0, 0.5, 1.0, 1.5]
    assert round(symusic.Score.from_midi(notes_to_midi(REF)).tempos[0].qpm, 3) == 120.0
    assert round(symusic.Score.from_midi(notes_to_midi(REF, bpm=float("nan"))).tempos[0].qpm, 3) == 120.0
    with pytest.raises(ConfigError, match="bpm"):
        notes_to_midi(REF, bpm=0)


def test_unknown_transcriber_lists_choices():
    assert "basic_pitch" in available()
    with pytest.raises(ConfigError, match="unknown transcriber 'nope'; available: basic_pitch"):
        get_transcriber("nope")
    with pytest.raises(ConfigError, match=r"no option\(s\) \['bogus'\]"):
        get_transcriber("basic_pitch", bogus=1)


# -- basic-pitch on real audio -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def excerpt():
    require_basic_pitch()
    return piano_excerpt(repeats=2)  # ~23 s, 136 notes


@pytest.fixture(scope="module")
def transcription(excerpt):
    _, audio, sr = excerpt
    return transcribe(audio, sr, bpm=90, threads=1)


def test_rendered_piano_comes_back(excerpt, transcription):
    midi = excerpt[0]
    s = note_onset_scores(midi, transcription)
    assert s["n_reference"] == 136 and s["f1"] > 0.85 and s["recall"] > 0.9, s
    assert transcription.bpm == 90.0 and transcription.notes.dtype == NOTE_DTYPE
    assert np.all(np.diff(transcription.notes["start"]) >= 0)
    score = transcription.score("rec0")
    assert score.note_num() == len(transcription.notes) and score.ticks_per_quarter == 480
    assert round(score.tempos[0].qpm, 3) == 90.0  # the row's bpm, as in the ground truth


def test_a_wrong_sample_rate_ruins_the_transcription(excerpt, transcription):
    midi, audio, sr = excerpt
    good = note_onset_scores(midi, transcription)["f1"]
    wrong = note_onset_scores(midi, transcribe(audio, 44100, bpm=90, threads=1))["f1"]  # 48 kHz audio called 44.1
    assert wrong < 0.2 < 0.8 < good


def test_notes_equal_basic_pitchs_predict(tmp_path, excerpt, transcription):
    """basic-pitch's own end-to-end path on the same 22050 Hz audio gives the same notes."""
    import soundfile as sf

    from embedders.audio.basic_pitch_model import default_model_path, import_note_creation
    from embedders.io import resample

    import_note_creation()
    from basic_pitch.inference import predict

    path = tmp_path / "x.wav"
    sf.write(path, resample(excerpt[1], excerpt[2], 22050), 22050, subtype="FLOAT")
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        _, _, events = predict(str(path), default_model_path())
    expected = sorted((round(float(s), 6), round(float(e), 6), int(p), int(np.round(127 * a))) for s, e, p, a, _ in events)
    got = sorted((round(float(n["start"]), 6), round(float(n["end"]), 6), int(n["pitch"]), int(n["velocity"]))
                 for n in transcription.notes)
    assert len(got) > 100 and got == expected


def test_thresholds_are_basic_pitchs_and_matter(excerpt):
    bpm_t = get_transcriber("basic_pitch")
    cfg = bpm_t.config
    assert (cfg.onset_threshold, cfg.frame_threshold, cfg.min_note_frames, cfg.melodia_trick) == (0.5, 0.3, 11, True)
    grams = bpm_t.posteriorgrams(bpm_t_input(excerpt))
    default = len(bpm_t.notes_from_posteriorgrams(grams))
    strict = len(get_transcriber("basic_pitch", onset_threshold=0.9, melodia_trick=False).notes_from_posteriorgrams(grams))
    assert strict < default
    assert bpm_t.config_hash() == get_transcriber("basic_pitch", threads=2).config_hash()
    assert bpm_t.config_hash() != get_transcriber("basic_pitch", onset_threshold=0.6).config_hash()
    assert bpm_t.describe()["versions"]["basic-pitch"] == "0.4.0"


def bpm_t_input(excerpt) -> np.ndarray:
    from embedders.io import resample

    return resample(excerpt[1], excerpt[2], 22050)


def test_silence_and_empty_input():
    require_basic_pitch()
    silent = transcribe(np.zeros(22050, np.float32), 22050)
    assert len(silent.notes) == 0
    with pytest.raises(EmptyInputError, match="no notes"):
        silent.score("rec9")
    with pytest.raises(EmptyInputError, match="zero-length"):
        transcribe(np.zeros(0, np.float32), 22050)
    with pytest.raises(ConfigError, match="bpm"):
        transcribe(np.zeros(100, np.float32), 22050, bpm=-3)
