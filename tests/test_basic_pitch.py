"""The ``basic_pitch`` embedder and its model runner: real weights from the basic-pitch wheel through
onnxruntime, checked against basic-pitch's own inference code (its constants, ``run_inference`` on
a file), against where the notes of a rendered piano excerpt really start, and pooled as documented.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import warnings

import numpy as np
import pytest

from embedders.base import CheckpointError, ConfigError, EmptyInputError, FrameGrid
from embedders.registry import get_embedder
from tests.factory import sine_wave
from tests.pretrained_factories.basic_pitch import notes_midi, piano_excerpt, render, require_basic_pitch

require_basic_pitch()

from embedders.audio import basic_pitch_model as bpm  # noqa: E402

SR = bpm.SAMPLE_RATE


@pytest.fixture(scope="module")
def excerpt():
    """The chorale phrase twice (~23 s: 14 model windows), at 22050 Hz."""
    from embedders.io import resample

    midi, audio, sr = piano_excerpt(repeats=2)
    return midi, resample(audio, sr, SR)


@pytest.fixture(scope="module")
def embedder():
    return get_embedder("basic_pitch", threads=1)


@pytest.fixture(scope="module")
def grams(embedder, excerpt):
    return embedder.posteriorgrams(excerpt[1])


def test_constants_are_basic_pitchs_own():
    bpm.import_note_creation()  # imports the package quietly
    from basic_pitch import constants as c

    assert (bpm.SAMPLE_RATE, bpm.FFT_HOP, bpm.WINDOW_SAMPLES, bpm.WINDOW_FRAMES, bpm.NOMINAL_FPS) == \
        (c.AUDIO_SAMPLE_RATE, c.FFT_HOP, c.AUDIO_N_SAMPLES, c.ANNOT_N_FRAMES, c.ANNOTATIONS_FPS)
    assert (bpm.N_NOTES, bpm.N_CONTOUR) == (c.N_FREQ_BINS_NOTES, c.N_FREQ_BINS_CONTOURS)


def test_posteriorgrams_equal_basic_pitchs_run_inference(tmp_path, excerpt, grams):
    """basic-pitch's own path (librosa load, its windowing, its Model class on the same ONNX file)."""
    bpm.import_note_creation()
    import soundfile as sf
    from basic_pitch.inference import run_inference

    path = tmp_path / "x.wav"
    sf.write(path, excerpt[1], SR, subtype="FLOAT")  # float WAV at 22050: librosa reads it unchanged
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # audioread's aifc/audioop/sunau imports
        ref = run_inference(str(path), bpm.default_model_path())
    for name in ("note", "onset", "contour"):
        np.testing.assert_allclose(getattr(grams, name), ref[name], rtol=0, atol=1e-6, err_msg=name)


def test_shapes_and_frame_count(excerpt, grams):
    n = len(excerpt[1]) * 86 // SR
    assert grams.note.shape == (n, 88) and grams.onset.shape == (n, 88) and grams.contour.shape == (n, 264)
    assert grams.note.dtype == np.float32 and 0.0 <= grams.note.min() and grams.note.max() <= 1.0
    assert grams.times.shape == (n,) and np.all(np.diff(grams.times) > 0)
    # ~86 frames per second: 256-sample steps inside a window, 188 samples fewer across a boundary
    steps = np.round(np.diff(grams.times) * SR).astype(int)
    assert set(steps) == {256, 256 - 188} and np.count_nonzero(steps == 68) == (n - 1) // 142
    assert 86.0 < (n - 1) / grams.times[-1] < 87.0


def test_frame_times_match_real_onsets(excerpt, grams):
    """The onset posteriorgram peaks where the rendered notes start, across every window boundary."""
    from tests.pretrained_factories.basic_pitch import phrase_notes

    errors = []
    for start, _, pitch in phrase_notes(repeats=2):
        lo, hi = np.searchsorted(grams.times, [start - 0.1, start + 0.1])
        k = lo + int(np.argmax(grams.onset[lo:hi, pitch - 21]))
        if grams.onset[k, pitch - 21] > 0.5:
            errors.append(grams.times[k] - start)
    errors = np.abs(np.array(errors))
    assert len(errors) > 100 and np.median(errors) < 0.015 and errors.max() < 0.03, (len(errors), errors.max())


def test_pooling_is_mean_and_max_per_window(embedder, excerpt, grams):
    audio = excerpt[1]
    (out,) = embedder.embed([audio])
    grid = FrameGrid(0.5, 1.0)
    assert out.shape == (grid.n_frames(len(audio) / SR), 880)
    stacked = np.concatenate([grams.note, grams.onset, grams.contour], axis=1)
    for t in (0, 1, 17, len(out) - 3):
        inside = (grams.times >= 0.5 * t) & (grams.times < 0.5 * t + 1.0)
        np.testing.assert_allclose(out[t, :440], stacked[inside].mean(axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(out[t, 440:], stacked[inside].max(axis=0))
    # 20.02 s: the last output frame starts at 20.0 s, after the model's last frame (19.87 s), so it
    # holds that one frame, as mean and as max
    clip = audio[: int(20.02 * SR)]
    (short,) = embedder.embed([clip])
    last = embedder.posteriorgrams(clip).stacked()[-1]
    assert len(short) == 41 and bpm.frame_times(bpm.n_output_frames(len(clip)))[-1] < 20.0
    np.testing.assert_array_equal(short[-1], np.concatenate([last, last]))
    names = type(embedder).feature_names()
    assert len(names) == 880 and names[60 - 21] == "note_39_mean" and names[440 + 88] == "onset_0_max"


def test_note_columns_follow_the_played_pitch(embedder):
    """A lone C4 then a lone A5: each output frame's note maxima peak at the pitch sounding then."""
    audio, sr = render(notes_midi([(0.0, 1.5, 60), (2.0, 3.5, 81)], bpm=120))
    from embedders.io import resample

    (out,) = embedder.embed([resample(audio, sr, SR)])
    note_max = out[:, 440:528]
    assert np.argmax(note_max[0]) + 21 == 60 and note_max[0, 60 - 21] > 0.5
    assert np.argmax(note_max[4]) + 21 == 81 and note_max[4, 81 - 21] > 0.5
    assert note_max[1, 81 - 21] < 0.2 and note_max[5, 60 - 21] < 0.2


def test_threads_change_nothing_and_are_not_hashed(excerpt):
    one, two = get_embedder("basic_pitch", threads=1), get_embedder("basic_pitch", threads=2)
    clip = excerpt[1][: 5 * SR]
    np.testing.assert_array_equal(one.embed([clip])[0], two.embed([clip])[0])
    assert one.config_hash() == two.config_hash()
    assert one.config_hash() != get_embedder("basic_pitch", hop_seconds=0.25).config_hash()


def test_describe_names_the_weights(embedder):
    import hashlib

    d = embedder.describe()
    with open(bpm.default_model_path(), "rb") as fh:
        assert d["weights_sha256"] == hashlib.sha256(fh.read()).hexdigest()
    assert d["weights_file"] == "nmp.onnx" and d["versions"]["basic-pitch"] == "0.4.0" and d["dim"] == 880


def test_errors(tmp_path):
    embedder = get_embedder("basic_pitch")
    with pytest.raises(EmptyInputError, match="zero-length"):
        embedder.embed([np.zeros(0, np.float32)])
    bad = tmp_path / "nmp.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="cannot load ONNX model"):
        get_embedder("basic_pitch", checkpoint=str(bad))
    with pytest.raises(CheckpointError, match="not found"):
        get_embedder("basic_pitch", checkpoint=str(tmp_path / "none.onnx"))
    with pytest.raises(ConfigError, match="threads"):
        get_embedder("basic_pitch", threads=-1)


def test_a_copy_of_the_model_loads_and_hashes_alike(tmp_path):
    copy = tmp_path / "copy.onnx"
    shutil.copy(bpm.default_model_path(), copy)
    a, b = get_embedder("basic_pitch", checkpoint=str(copy)), get_embedder("basic_pitch")
    wave = sine_wave(440, 1.0, sr=SR)
    np.testing.assert_array_equal(a.embed([wave])[0], b.embed([wave])[0])
    assert a.describe()["weights_sha256"] == b.describe()["weights_sha256"]


@pytest.mark.slow
@pytest.mark.bench  # a benchmark script end to end: make bench
def test_pretrained_cost_bench_runs_basic_pitch():
    from tests.test_bench import bench

    r = bench("pretrained_cost.py", "--models", "basic_pitch", "--audio_seconds", "4", "--repeats", "1")
    row = r["basic_pitch"]
    assert row["embed"]["cpu_s_per_audio_minute"] > 0 and row["transcribe"]["cpu_s_per_audio_minute"] > 0
    assert row["notes_transcribed"] > 10 and row["config"]["threads"] == 1 and r["threads"] == 1
