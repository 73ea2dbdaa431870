"""Drums as kit pieces on the beat grid (pianoroll's drum columns), the tokenizer's drums, and the
GMD-shaped probe: style planted in the groove is found by a drummer-grouped linear probe."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import symusic

from embedders.registry import get_embedder
from embedders.symbolic import drums
from embedders.symbolic.pianoroll import PianoRoll

TPQ = 480
PR = {n: i for i, n in enumerate(PianoRoll.feature_names())}
KICK, SNARE, HAT, RIDE, TOM, COWBELL = 36, 38, 42, 51, 45, 56


def drum_score(hits, bpm: float = 120.0, time_signatures=((0, 4, 4),), piano=()) -> symusic.Score:
    """hits: (tick, GM note, velocity) on one channel-10 track; piano: (tick, ticks, pitch)."""
    s = symusic.Score(TPQ)
    s.tempos.append(symusic.Tempo(0, bpm))
    for t, num, den in time_signatures:
        s.time_signatures.append(symusic.TimeSignature(t, num, den))
    track = symusic.Track("drums", 0, True)
    for tick, pitch, velocity in hits:
        track.notes.append(symusic.Note(int(tick), 60, int(pitch), int(velocity)))
    s.tracks.append(track)
    if piano:
        keys = symusic.Track("piano", 0, False)
        for tick, dur, pitch in piano:
            keys.notes.append(symusic.Note(int(tick), int(dur), int(pitch), 80))
        s.tracks.append(keys)
    return s


def cols(prefix: str) -> list[int]:
    return [i for n, i in PR.items() if n.startswith(prefix)]


def slots(out_row: np.ndarray, kit: str) -> np.ndarray:
    return out_row[[PR[f"drum_{kit}_slot{s:02d}"] for s in range(16)]]


@pytest.fixture(scope="module")
def bar_roll() -> PianoRoll:
    """One 4/4 bar at 120 bpm per frame (hop = window = 2 s)."""
    return get_embedder("pianoroll", hop_seconds=2.0, window_seconds=2.0)


def test_gm_drum_map_classes():
    """The documented table, written out from the General MIDI percussion map."""
    expected = {35: "kick", 36: "kick", 37: "snare", 38: "snare", 39: "snare", 40: "snare", 42: "hats",
                44: "hats", 46: "hats", 22: "hats", 26: "hats", 41: "toms", 43: "toms", 45: "toms", 47: "toms",
                48: "toms", 50: "toms", 58: "toms", 49: "cymbals", 51: "cymbals", 52: "cymbals", 53: "cymbals",
                55: "cymbals", 57: "cymbals", 59: "cymbals", 54: "percussion", 56: "percussion",
                60: "percussion", 63: "percussion", 70: "percussion", 81: "percussion", 27: "percussion"}
    got = drums.kit_class(np.array(list(expected)))
    assert [drums.KIT_CLASSES[k] for k in got] == list(expected.values())


def test_rock_bar_pattern_density_and_velocity(bar_roll):
    s16 = TPQ // 4
    hits = []
    for bar in range(2):
        base = bar * 16 * s16
        hits += [(base + s * s16, KICK, 100) for s in (0, 8)] + [(base + s * s16, SNARE, 110) for s in (4, 12)]
        hits += [(base + s * s16, HAT, 60 + 4 * s) for s in range(0, 16, 2)]
    out = bar_roll.embed([drum_score(hits)])[0]
    assert out.shape == (2, PianoRoll.dim)
    for f in range(2):
        np.testing.assert_array_equal(slots(out[f], "kick"), np.eye(16)[[0, 8]].sum(0) / 2)
        np.testing.assert_array_equal(slots(out[f], "snare"), np.eye(16)[[4, 12]].sum(0) / 2)
        np.testing.assert_array_equal(slots(out[f], "hats"), np.eye(16)[0::2].sum(0) / 8)
        assert not slots(out[f], "toms").any() and not slots(out[f], "cymbals").any()
        assert out[f, PR["drum_kick_onsets_per_s"]] == 1.0 and out[f, PR["drum_hats_onsets_per_s"]] == 4.0
        hat_v = np.array([60 + 4 * s for s in range(0, 16, 2)]) / 127
        np.testing.assert_allclose(out[f, [PR["drum_hats_velocity_mean"], PR["drum_hats_velocity_std"]]],
                                   [hat_v.mean(), hat_v.std()], rtol=1e-6)
        assert out[f, PR["drum_snare_velocity_std"]] == 0
        np.testing.assert_allclose(out[f, PR["drum_snare_velocity_mean"]], 110 / 127, rtol=1e-6)
        assert out[f, PR["drum_swing"]] == 0 and out[f, PR["drum_timing_mean"]] == 0
        assert out[f, PR["drum_onset_density"]] == 6.0  # the old column still counts every drum onset


def test_swing_ratio_of_a_ride_pattern(bar_roll):
    def ride(offbeat: float):
        return [(int(round((b + p) * TPQ)), RIDE, 90) for b in range(8) for p in (0.0, offbeat)]
    straight, triplet, dotted = (bar_roll.embed([drum_score(ride(p))])[0] for p in (0.5, 2 / 3, 0.75))
    np.testing.assert_allclose(straight[:, PR["drum_swing"]], 0.0, atol=1e-9)
    np.testing.assert_allclose(triplet[:, PR["drum_swing"]], 1.0, atol=0.01)
    np.testing.assert_allclose(dotted[:, PR["drum_swing"]], 2.0, atol=1e-9)
    sixteenths = [(k * TPQ // 4, HAT, 80) for k in range(32)]  # straight 16ths: the 8th at 0.5 comes first
    np.testing.assert_allclose(bar_roll.embed([drum_score(sixteenths)])[0][:, PR["drum_swing"]], 0.0, atol=1e-9)


def test_syncopation_weighs_unresolved_weak_onsets(bar_roll):
    s16 = TPQ // 4
    bar = 16 * s16
    # kick on the 8th before the next bar's one, the one left empty: 8th level (-3) -> one (0): 3/4
    anticipated = drum_score([(0, KICK, 90), (14 * s16, KICK, 90), (bar + 4 * s16, SNARE, 90)])
    out = bar_roll.embed([anticipated])[0]
    np.testing.assert_allclose(out[0, PR["drum_syncopation"]], (0 + 0.75) / 2)
    resolved = drum_score([(0, KICK, 90), (14 * s16, KICK, 90), (bar, KICK, 90)])  # the one is struck: none
    assert bar_roll.embed([resolved])[0][0, PR["drum_syncopation"]] == 0
    # a snare 16th (slot 3, -4) before an empty beat (slot 4, -2): 2/4, and the kick on slot 4 does not
    # resolve it (another class); that kick, with no kick on the half bar (slot 8, -1) after it: 1/4;
    # the hat on slot 8 is the last onset: its next stronger position (the next one) lies past the end
    off16 = drum_score([(3 * s16, SNARE, 90), (4 * s16, KICK, 90), (8 * s16, HAT, 90)])
    np.testing.assert_allclose(bar_roll.embed([off16])[0][0, PR["drum_syncopation"]], (0.5 + 0.25 + 0) / 3, rtol=1e-6)
    on_beats = drum_score([(k * TPQ, SNARE, 90) for k in range(8)])
    assert not bar_roll.embed([on_beats])[0][:, PR["drum_syncopation"]].any()


def test_micro_timing_is_measured_against_the_16th_grid(bar_roll):
    s16 = TPQ // 4
    late = drum_score([(k * 2 * s16 + 10, HAT, 80) for k in range(16)])  # every 8th 10 ticks late
    out = bar_roll.embed([late])[0]
    np.testing.assert_allclose(out[:, PR["drum_timing_mean"]], 10 / s16, rtol=1e-6)
    np.testing.assert_allclose(out[:, PR["drum_timing_std"]], 0, atol=1e-12)
    assert (slots(out[0], "hats") == np.eye(16)[0::2].sum(0) / 8).all()  # still on their 16ths


def test_bar_positions_follow_time_signatures_like_pretty_midi(tmp_path):
    """Slots from ticks agree with slots from pretty_midi's own downbeats and beats (seconds)."""
    import pretty_midi

    rng = np.random.default_rng(0)
    ticks = np.sort(rng.choice(np.arange(0, 40 * TPQ, TPQ // 4), 60, replace=False))
    score = drum_score([(t, KICK, 90) for t in ticks], bpm=97, time_signatures=((0, 4, 4), (8 * TPQ, 3, 4), (17 * TPQ, 6, 8)))
    path = tmp_path / "ts.mid"
    score.dump_midi(str(path))
    pm = pretty_midi.PrettyMIDI(str(path))
    onsets = np.array([n.start for n in pm.instruments[0].notes])
    downbeats = pm.get_downbeats()
    sixteenth = 60 / 97 / 4
    bar_start = downbeats[np.searchsorted(downbeats, onsets + 1e-6) - 1]
    reference = np.rint((onsets - bar_start) / sixteenth).astype(int)
    pos = drums.grid_positions(ticks, TPQ, score.time_signatures.numpy())
    np.testing.assert_array_equal(pos["slot"], reference)
    assert set(pos["bar_16ths"][ticks >= 17 * TPQ]) == {12} and set(pos["bar_16ths"][ticks < 8 * TPQ]) == {16}


def test_drum_columns_are_zero_without_drums_and_pitch_columns_ignore_drums():
    roll = get_embedder("pianoroll")
    piano = [(k * TPQ, TPQ, 60 + k % 7) for k in range(8)]
    plain = roll.embed([drum_score([], piano=piano)])[0]
    assert not plain[:, PR["drum_kick_slot00"]:].any()
    both = roll.embed([drum_score([(k * TPQ // 2, HAT, 80) for k in range(16)], piano=piano)])[0]
    pitched = [i for n, i in PR.items() if not n.startswith("drum") and n not in ("onset_density", "silence")]
    np.testing.assert_array_equal(plain[:, pitched], both[:, pitched])
    assert both[:, PR["drum_hats_slot00"]:].any()


# -- the tokenizer ---------------------------------------------------------------------------------
def test_tokenizer_keeps_drum_tracks_and_gmd_hihat_edges():
    from embedders.symbolic.midi_transformer import tokenizer as tk

    notes = [KICK, 22, SNARE, 26, TOM, COWBELL, 42, 49]
    score = drum_score([(k * TPQ // 2, p, 90) for k, p in enumerate(notes)],
                       piano=[(0, TPQ, 60)])
    tokens = tk.make_tokenizer().encode(score).tokens
    drum_pitches = [int(t.split("_")[1]) for t in tokens if t.startswith("PitchDrum_")]
    assert sorted(drum_pitches) == sorted(notes)  # 22 and 26 (GMD's hi-hat edges) survive too
    assert tokens.count("Program_-1") == len(notes) and "Pitch_60" in tokens


# -- the GMD-shaped set -----------------------------------------------------------------------------
def grouped_probe(X: np.ndarray, y, groups) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import LeaveOneGroupOut, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    return float(cross_val_score(model, X, y, groups=groups, cv=LeaveOneGroupOut()).mean())


@pytest.fixture(scope="module")
def gmd(tmp_path_factory):
    from tests.gmd_factory import make_gmd

    return make_gmd(tmp_path_factory.mktemp("gmd") / "groove", audio=False)


def test_gmd_factory_has_the_groove_midi_dataset_shape(gmd):
    from embedders.dataset import has_medium, read_info_csv
    from tests.gmd_factory import COLUMNS, STYLES

    raw = pd.read_csv(gmd / "info.csv")
    assert tuple(raw.columns) == COLUMNS
    info = read_info_csv(gmd)  # MIDI-only rows are valid
    assert info["drummer"].nunique() == 10 and set(info["style"]) == set(STYLES)
    assert set(info["beat_type"]) == {"beat", "fill"} and info["id"].str.fullmatch(r"drummer\d+/session\d/\d+").all()
    assert 0 < (~has_medium(info, "audio_filename")).sum() < len(info) / 3
    score = symusic.Score(str(gmd / info["midi_filename"][0]))
    assert [t.is_drum for t in score.tracks] == [True]
    import mido

    channels = {m.channel for m in mido.MidiFile(file=io.BytesIO((gmd / info["midi_filename"][0]).read_bytes())).tracks[1]
                if m.type == "note_on"}
    assert channels == {9}  # MIDI channel 10
    # style is not in the tempo: bpm is drawn independently of it
    assert pd.crosstab(info["style"], info["bpm"] > 105).min().min() > 5


def test_symbolic_style_probe_is_drummer_grouped_and_above_0_9(gmd):
    from embedders.io import decode_midi

    info = pd.read_csv(gmd / "info.csv", keep_default_na=False)
    roll = get_embedder("pianoroll")
    X = np.stack([roll.embed([decode_midi(str(gmd / m))])[0].mean(axis=0) for m in info["midi_filename"]])
    style = grouped_probe(X, info["style"], info["drummer"])
    assert style >= 0.9, style
    pitched_only = grouped_probe(X[:, : PR["drum_kick_slot00"]], info["style"], info["drummer"])
    assert pitched_only < 0.7, pitched_only  # the drum columns are what carries the groove
    shuffled = grouped_probe(X, np.random.default_rng(0).permutation(info["style"].to_numpy()), info["drummer"])
    assert shuffled < 0.45, shuffled
