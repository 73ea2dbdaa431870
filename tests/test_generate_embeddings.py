"""End to end: the embedding job on tiny real data in the shared Ray session."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from embedders.store.h5 import load, load_pair
from embedders.store.parts import ShardWriter, part_files
from ray_jobs.generate_embeddings import job as generate_embeddings
from tests.factory import make_dataset, write_wav

pytestmark = pytest.mark.slow
A, S = "audio_embeddings", "symbolic_embeddings"


def run(data_root, *extra):
    return generate_embeddings.main(["--dataset", "toy", "--data_root", str(data_root), "--batch_size", "2", *extra])


def bad_rows(root):
    """One row per failure mode; each is broken in one medium only (or missing in both)."""
    write_wav(root / "audio" / "silent.wav", np.zeros(48000, np.float32))
    write_wav(root / "audio" / "empty.wav", np.zeros(0, np.float32))
    (root / "audio" / "corrupt.wav").write_bytes(b"RIFF....WAVEfmt nonsense")
    (root / "midi" / "corrupt.mid").write_bytes(b"MThd garbage")
    (root / "midi" / "nonotes.mid").write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x01\xe0")
    ok_wav, ok_mid = "audio/rec0.wav", "midi/rec0.mid"
    return [
        {"id": "silent", "audio_filename": "audio/silent.wav", "midi_filename": ok_mid, "style": "x", "bpm": 1, "split": "train"},
        {"id": "empty", "audio_filename": "audio/empty.wav", "midi_filename": ok_mid, "style": "x", "bpm": 1, "split": "train"},
        {"id": "badwav", "audio_filename": "audio/corrupt.wav", "midi_filename": ok_mid, "style": "x", "bpm": 1, "split": "train"},
        {"id": "badmid", "audio_filename": ok_wav, "midi_filename": "midi/corrupt.mid", "style": "x", "bpm": 1, "split": "train"},
        {"id": "nonotes", "audio_filename": ok_wav, "midi_filename": "midi/nonotes.mid", "style": "x", "bpm": 1, "split": "train"},
        {"id": "missing", "audio_filename": "audio/nope.wav", "midi_filename": "midi/nope.mid", "style": "x", "bpm": 1, "split": "train"},
    ]


@pytest.fixture
def toy(tmp_path):
    root = tmp_path / "raw" / "toy"
    root.mkdir(parents=True)
    (root / "audio").mkdir()
    (root / "midi").mkdir()
    make_dataset(root, n=4, extra_rows=bad_rows(root))
    return tmp_path


def test_bad_files_are_recorded_and_the_rest_is_paired(ray_session, toy, capsys):
    assert run(toy) == 0
    emb = toy / "embeddings" / "toy"
    errors = pd.read_parquet(emb / "errors.parquet")
    got = {(r.id, r.medium, r.stage, r.error_type) for r in errors.itertuples()}
    assert got == {
        ("silent", A, "decode", "EmptyInputError"), ("empty", A, "decode", "EmptyInputError"),
        ("badwav", A, "decode", "AudioDecodeError"), ("badmid", S, "decode", "MidiDecodeError"),
        ("nonotes", S, "decode", "EmptyInputError"), ("missing", A, "decode", "MissingFileError"),
        ("missing", S, "decode", "MissingFileError"),
    }
    assert all(errors["message"].str.len() > 10) and not errors["message"].str.contains("\n").any()
    h5 = emb / "embeddings.h5"
    with h5py.File(h5) as f:
        ids = [i.decode() for i in f["ids"][...]]
        assert ids == ["rec0", "rec1", "rec2", "rec3", "silent", "empty", "badwav", "badmid", "nonotes", "missing"]
        assert f[f"{A}/melstats/valid"][...].tolist() == [1, 1, 1, 1, 0, 0, 0, 1, 1, 0]
        assert f[f"{S}/pianoroll/valid"][...].tolist() == [1, 1, 1, 1, 1, 1, 1, 0, 0, 0]
        assert f["metadata/bpm"].dtype.kind in "if"
        assert "info_csv_sha256" in f.attrs and "torch" in f.attrs["package_versions"]
    pair = load_pair(h5, label="style")
    assert list(pair.ids) == ["rec0", "rec1", "rec2", "rec3"]
    # pairing is by id: rec2's audio row equals what melstats gives rec2's file alone
    audio = load(h5, A, "melstats", "sequence")
    from embedders.io import decode_audio
    from embedders.registry import get_embedder

    mel = get_embedder("melstats")
    (expected,) = mel.embed([decode_audio(toy / "raw/toy/audio/rec2.wav", mel.sample_rate)])
    np.testing.assert_allclose(audio.embeddings[list(audio.ids).index("rec2")], expected, rtol=1e-5, atol=1e-5)
    out = capsys.readouterr().out
    assert "failed badwav [decode] AudioDecodeError" in out and "audio_embeddings" in out


def test_resume_after_interruption_gives_every_id_once(ray_session, toy, monkeypatch):
    parts_before_crash = []
    real_flush = ShardWriter.flush

    def flush_then_die(self):
        real_flush(self)
        parts_before_crash.append(self.parts_written)
        if self.parts_written >= 1:
            raise KeyboardInterrupt("simulated kill after the first part")

    monkeypatch.setattr(ShardWriter, "flush", flush_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(toy, "--rows_per_part", "2")
    monkeypatch.setattr(ShardWriter, "flush", real_flush)
    emb = toy / "embeddings" / "toy"
    # one pass embeds both media, so the one part written may hold either medium's rows
    assert len(part_files(emb, A, "melstats")) + len(part_files(emb, S, "pianoroll")) == 1
    assert not (emb / "embeddings.h5").exists()

    assert run(toy, "--rows_per_part", "2") == 0
    summary = pd.read_json(emb / "summary.json", typ="series")
    assert sorted(summary["media"][m]["skipped"] for m in (A, S)) == [0, 2]
    assert summary["media"][A]["skipped"] + summary["media"][A]["done"] == 6
    assert summary["media"][S]["skipped"] + summary["media"][S]["done"] == 7
    for medium, name in ((A, "melstats"), (S, "pianoroll")):
        ids = pq.read_table(emb / "parquet" / medium / name, columns=["id"]).column("id").to_pylist()
        assert len(ids) == len(set(ids)), f"{medium} has duplicate ids after resume"
    # a third run does nothing new and keeps the same store
    assert run(toy) == 0
    summary = pd.read_json(emb / "summary.json", typ="series")
    assert summary["media"][A]["done"] == 0 and summary["media"][A]["skipped"] == 6
    assert summary["media"][A]["failed"] == 4  # failures are retried on every run, and fail again
    assert summary["media"][S]["skipped"] == 7


def test_overwrite_recomputes_and_config_change_is_guarded(ray_session, toy, capsys):
    assert run(toy, "--media", A) == 0
    assert run(toy, "--media", A, "--audio_option", "n_mels=32") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert run(toy, "--media", A, "--audio_option", "n_mels=32", "--overwrite") == 0
    summary = pd.read_json(toy / "embeddings/toy/summary.json", typ="series")
    assert summary["media"][A]["skipped"] == 0 and summary["media"][A]["done"] == 6
    assert load(toy / "embeddings/toy/embeddings.h5", A).embeddings.shape == (6, 2 * 32 + 33)


def test_legacy_layout_export(ray_session, toy):
    assert run(toy, "--h5_layout", "legacy") == 0
    h5 = toy / "embeddings/toy/embeddings.h5"
    with h5py.File(h5) as f:
        assert "ids" not in f and f[f"{A}/rec_0/id"][()].decode() == "rec0"
        assert len(f[A]) == 6 and len(f[S]) == 7  # rec_N counted per medium over valid rows
    assert list(load_pair(h5).ids) == ["rec0", "rec1", "rec2", "rec3"]


def test_invalid_input_stops_before_any_work(ray_session, tmp_path, capsys):
    root = tmp_path / "raw" / "toy"
    make_dataset(root, n=2, extra_rows=[{"id": "evil", "audio_filename": "../../etc/passwd", "midi_filename": "m.mid"}])
    assert run(tmp_path) == 2
    err = capsys.readouterr().err
    assert "line 4 (id 'evil')" in err and "contains '..'" in err
    assert not (tmp_path / "embeddings").exists()


def test_unknown_embedder_and_option_fail_fast(ray_session, toy, capsys):
    assert run(toy, "--audio_embedder", "nope") == 2
    assert "available:" in capsys.readouterr().err
    assert run(toy, "--audio_embedder", "pianoroll") == 2
    assert "is a symbolic embedder" in capsys.readouterr().err
    assert run(toy, "--symbolic_option", "bogus=1") == 2


def test_nothing_embedded_exits_nonzero(ray_session, tmp_path):
    root = tmp_path / "raw" / "toy"
    root.mkdir(parents=True)
    pd.DataFrame([{"id": "a", "audio_filename": "a.wav", "midi_filename": "a.mid"}]).to_csv(root / "info.csv", index=False)
    assert run(tmp_path) == 1
    assert len(pd.read_parquet(tmp_path / "embeddings/toy/errors.parquet")) == 2


def test_pretrained_midi_transformer_through_the_job(ray_session, toy, tmp_path_factory):
    from tests.midi_model_factory import tiny_checkpoint

    checkpoint = tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))
    assert run(toy, "--media", S, "--symbolic_embedder", "midi_transformer", "--symbolic_checkpoint", str(checkpoint)) == 0
    emb = load(toy / "embeddings/toy/embeddings.h5", S, "midi_transformer", "sequence")
    assert list(emb.ids) == ["rec0", "rec1", "rec2", "rec3", "silent", "empty", "badwav"]
    assert all(e.shape[1] == 32 and e.dtype == np.float32 for e in emb.embeddings)
    assert '"checkpoint_sha256"' in emb.attrs["group.description"]
