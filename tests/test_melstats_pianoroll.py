"""Known-answer tests for the two weight-free default embedders, on tiny signals and scores made here."""

from __future__ import annotations

import numpy as np
import pytest
import symusic

from embedders.audio.melstats import MelStats, chroma_filterbank, mel_filterbank
from embedders.base import ConfigError, EmptyInputError, FrameGrid
from embedders.io import midi_duration_seconds
from embedders.registry import get_embedder
from embedders.symbolic.pianoroll import PianoRoll

SR = 22050
TPQ = 480
MEL = {n: i for i, n in enumerate(MelStats.feature_names())}
PR = {n: i for i, n in enumerate(PianoRoll.feature_names())}
PCS = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]


def midi_hz(pitch: float) -> float:
    return 440.0 * 2 ** ((pitch - 69) / 12)


def tones(pitches: list[int], seconds: float, amp: float = 0.2) -> np.ndarray:
    t = np.arange(int(round(seconds * SR))) / SR
    return sum(amp * np.sin(2 * np.pi * midi_hz(p) * t) for p in pitches).astype(np.float32)


def score(notes: list[tuple[float, float, int]], bpm: float = 120.0, drums: list[tuple[float, float, int]] = ()) -> symusic.Score:
    """(start, duration, pitch) in quarter notes -> a tick-time Score at ``bpm``."""
    s = symusic.Score(TPQ)
    s.tempos.append(symusic.Tempo(0, bpm))
    for name, items, is_drum in (("piano", notes, False), ("drums", drums, True)):
        if items:
            track = symusic.Track(name, 0, is_drum)
            for start, dur, pitch in items:
                track.notes.append(symusic.Note(int(round(start * TPQ)), int(round(dur * TPQ)), pitch, 100))
            s.tracks.append(track)
    return s


@pytest.fixture(scope="module")
def mel() -> MelStats:
    return get_embedder("melstats")


@pytest.fixture(scope="module")
def roll() -> PianoRoll:
    return get_embedder("pianoroll")


# -- contract -------------------------------------------------------------------------------------
def test_registry_dims_and_names(mel: MelStats, roll: PianoRoll) -> None:
    for emb, item in ((mel, tones([69], 1.0)), (roll, score([(0, 1, 60)]))):
        names = type(emb).feature_names()
        assert len(names) == len(set(names)) == emb.dim == type(emb).dim
        assert emb.embed([item])[0].shape[1] == emb.dim
        assert emb.describe()["hop_seconds"] == 0.5
    assert mel.dim >= 128 and roll.dim >= 64
    assert mel.sample_rate == SR and roll.sample_rate is None


def test_config_validation() -> None:
    with pytest.raises(ConfigError):
        get_embedder("melstats", n_melz=10)
    with pytest.raises(ConfigError):
        get_embedder("melstats", fmax=20000.0)
    with pytest.raises(ConfigError):
        get_embedder("pianoroll", hop_seconds=0.0)
    small = get_embedder("melstats", n_mels=40)
    assert small.embed([tones([60], 2.0)])[0].shape == (4, 2 * 40 + 33) == (4, small.dim)
    assert len(MelStats.feature_names(40)) == small.dim


def test_filterbanks_cover_every_band() -> None:
    fb = mel_filterbank(SR, 2048, 64, 30.0, SR / 2)
    assert fb.shape == (1025, 64) and (fb > 0).sum(axis=0).min() >= 2
    ch = chroma_filterbank(SR, 2048, 65.4, 4186.0)
    inside = ch.sum(axis=1) > 0
    np.testing.assert_allclose(ch[inside].sum(axis=1), 1.0, rtol=1e-5)


def test_batch_independence_and_determinism(mel: MelStats, roll: PianoRoll) -> None:
    rng = np.random.default_rng(1)
    a, b = tones([60, 64], 3.3), (0.1 * rng.standard_normal(SR * 5)).astype(np.float32)
    together = mel.embed([a, b])
    for x, y in zip(together, [mel.embed([a])[0], mel.embed([b])[0]]):
        assert x.dtype == np.float32 and np.array_equal(x, y)
    sa, sb = score([(0, 2, 60), (1, 3, 67)]), score([(i, 0.5, 50 + i) for i in range(12)], bpm=90)
    together = roll.embed([sa, sb])
    for x, y in zip(together, [roll.embed([sa])[0], roll.embed([sb])[0]]):
        assert x.dtype == np.float32 and np.array_equal(x, y)


# -- melstats -----------------------------------------------------------------------------------
def test_sine_a440_chroma_and_centroid(mel: MelStats) -> None:
    out = mel.embed([tones([69], 4.0)])[0]
    chroma = out[:, MEL["chroma_C"] : MEL["chroma_B"] + 1]
    assert (chroma.argmax(axis=1) == PCS.index("A")).all()
    np.testing.assert_allclose(chroma.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out[2, MEL["centroid_khz_mean"]], 0.44, atol=0.01)


def test_c_major_triad_chroma(mel: MelStats) -> None:
    chroma = mel.embed([tones([60, 64, 67], 3.0)])[0][2, MEL["chroma_C"] : MEL["chroma_B"] + 1]
    assert {PCS[i] for i in np.argsort(chroma)[-3:]} == {"C", "E", "G"}
    assert chroma[[0, 4, 7]].sum() > 0.8


def test_noise_is_flat_and_sine_is_not(mel: MelStats) -> None:
    noise = (0.1 * np.random.default_rng(0).standard_normal(SR * 3)).astype(np.float32)
    flat_noise = mel.embed([noise])[0][:, MEL["flatness_mean"]]
    flat_sine = mel.embed([tones([69], 3.0)])[0][:, MEL["flatness_mean"]]
    assert flat_noise.min() > 0.4 and flat_sine.max() < 0.01
    assert mel.embed([noise])[0][2, MEL["zcr_mean"]] > 0.4


def test_rms_db_levels_and_floor(mel: MelStats) -> None:
    loud = mel.embed([tones([69], 2.0, amp=0.5)])[0][1, MEL["rms_db_mean"]]
    quiet = mel.embed([tones([69], 2.0, amp=1e-4)])[0][1, MEL["rms_db_mean"]]
    np.testing.assert_allclose(loud, 20 * np.log10(0.5 / np.sqrt(2)), atol=0.1)
    np.testing.assert_allclose(quiet, 20 * np.log10(1e-4 / np.sqrt(2)), atol=0.1)
    zeros = mel.embed([np.zeros(SR, dtype=np.float32)])[0]
    assert np.isfinite(zeros).all() and (zeros[:, MEL["rms_db_mean"]] == -100).all()
    assert (zeros[:, MEL["chroma_C"] : MEL["chroma_B"] + 1] == 0).all()


@pytest.mark.parametrize(("seconds", "frames"), [(10.0, 20), (10.001, 21), (10.3, 21), (0.6, 2), (100 / SR, 1)])
def test_frame_count(mel: MelStats, seconds: float, frames: int) -> None:
    n = int(round(seconds * SR))
    assert FrameGrid().n_frames(n / SR) == frames
    out = mel.embed([tones([60], n / SR)])[0]
    assert out.shape == (frames, mel.dim) and np.isfinite(out).all()


def test_empty_audio_raises(mel: MelStats) -> None:
    with pytest.raises(EmptyInputError):
        mel.embed([np.zeros(0, dtype=np.float32)])


def test_frames_summarise_their_own_seconds(mel: MelStats) -> None:
    x = np.concatenate([tones([69], 2.0, amp=0.5), np.zeros(2 * SR, dtype=np.float32)])
    rms = mel.embed([x])[0][:, MEL["rms_db_mean"]]
    assert rms[:3].min() > -10 and rms[5:].max() == -100 and rms[3] > rms[4] > rms[5]


# -- pianoroll ----------------------------------------------------------------------------------
def test_c_major_scale_pitch_classes_and_intervals(roll: PianoRoll) -> None:
    scale = [60, 62, 64, 65, 67, 69, 71, 72]
    out = roll.embed([score([(i, 1, p) for i, p in enumerate(scale)])])[0]  # 0.5 s per note
    assert out.shape == (8, roll.dim)
    pc = out[:, PR["pc_C"] : PR["pc_B"] + 1]
    for t in range(7):  # window t holds notes t and t+1 for 0.5 s each
        expected = np.zeros(12)
        expected[[scale[t] % 12, scale[t + 1] % 12]] += 0.5
        np.testing.assert_allclose(pc[t], expected, atol=1e-6)
    whole = np.zeros(12)
    for p in scale:
        whole[p % 12] += 1
    assert (pc.sum(axis=0) > 0).sum() == 7 == (whole > 0).sum()
    steps = out[:, PR["melodic_-12"] : PR["melodic_+12"] + 1]
    assert set(np.flatnonzero(steps.sum(axis=0)) - 12) == {1, 2}
    assert (out[:7, PR["polyphony_max"]] == 1).all() and (out[:, PR["pitch_min"]] >= 60 / 127 - 1e-6).all()


def test_held_triad_polyphony_and_harmony(roll: PianoRoll) -> None:
    out = roll.embed([score([(0, 8, p) for p in (60, 64, 67)])])[0]  # 4 s
    assert out.shape[0] == 8
    assert (out[:7, PR["polyphony_mean"]] == 3).all() and (out[:, PR["polyphony_max"]] == 3).all()
    np.testing.assert_allclose(out[7, [PR["polyphony_mean"], PR["silence"]]], [1.5, 0.5], atol=1e-6)
    harm = out[3, PR["harmonic_0"] : PR["harmonic_11"] + 1]
    np.testing.assert_allclose(harm[[3, 4, 7]], 1 / 3, atol=1e-6)
    np.testing.assert_allclose(out[3, PR["pitch_mean"]], (60 + 64 + 67) / 3 / 127, rtol=1e-6)
    assert out[3, PR["silence"]] == 0 and out[3, PR["onset_density"]] == 0
    assert out[0, PR["onset_density"]] == 3 and out[0, PR["duration_ge_4s"]] == 1


@pytest.mark.parametrize(("end_quarters", "frames"), [(20, 20), (20.6, 21), (1, 1), (0.5, 1)])
def test_frame_count_from_duration(roll: PianoRoll, end_quarters: float, frames: int) -> None:
    out = roll.embed([score([(0, 1, 60), (end_quarters - 0.5, 0.5, 62)])])[0]  # 120 bpm: 2 quarters/s
    assert out.shape == (frames, roll.dim)


def test_float32_seconds_do_not_add_a_frame(roll: PianoRoll) -> None:
    s = score([(i, 1, 48 + i) for i in range(12)], bpm=90)  # ends at exactly 8 s
    assert s.to("second").end() > 8.0  # symusic's float32 seconds overshoot
    assert midi_duration_seconds(s) == 8.0
    assert roll.embed([s])[0].shape[0] == 16 == FrameGrid().n_frames(8.0)


def test_tempo_is_honoured(roll: PianoRoll) -> None:
    notes = [(i, 1, 60 + i) for i in range(8)]
    assert roll.embed([score(notes, bpm=60)])[0].shape[0] == 16
    assert roll.embed([score(notes, bpm=120)])[0].shape[0] == 8
    s = score(notes, bpm=120)
    s.tempos.append(symusic.Tempo(4 * TPQ, 60.0))  # 4 quarters in 2 s, then 4 in 4 s
    out = roll.embed([s])[0]
    assert out.shape[0] == 12
    assert out[0, PR["onset_density"]] == 2 and out[8, PR["onset_density"]] == 1


def test_onset_density_and_drums(roll: PianoRoll) -> None:
    eighths = [(i / 2, 0.5, 60 + i % 12) for i in range(16)]  # 4 onsets per second for 4 s
    kicks = [(i, 0.1, 36) for i in range(8)]  # 2 per second
    plain = roll.embed([score(eighths)])[0]
    assert (plain[:7, PR["onset_density"]] == 4).all() and (plain[:, PR["drum_onset_density"]] == 0).all()
    both = roll.embed([score(eighths, drums=kicks)])[0]
    assert (both[:7, PR["onset_density"]] == 6).all() and (both[:7, PR["drum_onset_density"]] == 2).all()
    pitch_cols = slice(PR["pc_C"], PR["pitch_max"] + 1)
    cols = [c for c in range(roll.dim)[pitch_cols] if c not in (PR["onset_density"], PR["drum_onset_density"])]
    np.testing.assert_array_equal(plain[:, cols], both[:, cols])  # drums leave pitch features alone


def test_grid_features_match_brute_force(roll: PianoRoll) -> None:
    rng = np.random.default_rng(3)
    s = symusic.Score(TPQ)
    track = symusic.Track("p", 0, False)
    for _ in range(40):
        track.notes.append(symusic.Note(int(rng.integers(0, 3000)), int(rng.integers(1, 1500)), int(rng.integers(30, 100)), 80))
    s.tracks.append(track)
    out = roll.embed([s])[0]
    a = s.to("second").tracks[0].notes.numpy()
    start, pitch = a["time"].astype(float), a["pitch"].astype(int)
    end = start + a["duration"]
    for f in range(out.shape[0]):
        hist, poly = np.zeros(12), []
        for g in np.arange(np.ceil(f * 25 - 1e-6), np.ceil(f * 25 + 50 - 1e-6)) * 0.02:
            on = np.flatnonzero((start <= g + 1e-9) & (end > g + 1e-9))
            poly.append(len(on))
            for i, j in ((i, j) for i in on for j in on if i < j):
                hist[abs(pitch[i] - pitch[j]) % 12] += 1
        hist = hist / hist.sum() if hist.sum() else hist
        np.testing.assert_allclose(out[f, PR["harmonic_0"] : PR["harmonic_11"] + 1], hist, atol=1e-6)
        np.testing.assert_allclose(out[f, [PR["polyphony_mean"], PR["polyphony_max"]]], [np.mean(poly), max(poly)], rtol=1e-6)


def test_empty_score_raises(roll: PianoRoll) -> None:
    s = symusic.Score(TPQ)
    s.tracks.append(symusic.Track("empty", 0, False))
    with pytest.raises(EmptyInputError):
        roll.embed([s])


# -- alignment ----------------------------------------------------------------------------------
@pytest.mark.parametrize("bpm", [120.0, 100.0, 77.0])
def test_audio_and_score_frames_align(mel: MelStats, roll: PianoRoll, bpm: float) -> None:
    melody = [60, 67, 64, 69, 62]
    notes = [(4 * i, 4, p) for i, p in enumerate(melody)] + [(20, 1.5, 65)]  # 4-quarter notes, short tail
    s = score(notes, bpm=bpm)
    spq = 60.0 / bpm
    end = 21.5 * spq
    t = np.arange(int(round(end * SR))) / SR
    audio = np.zeros_like(t)
    for start, dur, p in notes:
        on = (t >= start * spq) & (t < (start + dur) * spq)
        audio[on] += 0.3 * np.sin(2 * np.pi * midi_hz(p) * t[on])
    a, r = mel.embed([audio.astype(np.float32)])[0], roll.embed([s])[0]
    assert a.shape[0] == r.shape[0] == FrameGrid().n_frames(end)
    # Frames lying wholly inside one note: both embedders name its pitch class.
    starts = FrameGrid().starts(a.shape[0])
    checked = 0
    for f, st in enumerate(starts):
        inside = [p for s0, d, p in notes if s0 * spq <= st and st + 1.0 <= (s0 + d) * spq]
        if inside:
            pc = inside[0] % 12
            assert r[f, PR["pc_C"] + pc] == 1
            assert a[f, MEL["chroma_C"] : MEL["chroma_B"] + 1].argmax() == pc
            checked += 1
    assert checked >= 5
