"""End to end: the embedding job on tiny real data in the shared Ray session."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from embedders.store.parts import part_files
from embedders.store.reader import load, load_pair
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
    rows = [("silent", "audio/silent.wav", ok_mid), ("empty", "audio/empty.wav", ok_mid), ("badwav", "audio/corrupt.wav", ok_mid),
            ("badmid", ok_wav, "midi/corrupt.mid"), ("nonotes", ok_wav, "midi/nonotes.mid"),
            ("missing", "audio/nope.wav", "midi/nope.mid")]
    return [{"id": i, "audio_filename": a, "midi_filename": m, "style": "x", "bpm": 1, "split": "train"} for i, a, m in rows]


@pytest.fixture
def toy(tmp_path):
    root = tmp_path / "raw" / "toy"
    root.mkdir(parents=True)
    (root / "audio").mkdir()
    (root / "midi").mkdir()
    make_dataset(root, n=4, extra_rows=bad_rows(root))
    return tmp_path


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_bad_files_are_recorded_and_the_rest_is_paired(ray_session, toy, capsys, executor):
    assert run(toy, "--executor", executor) == 0
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


def stored_ids(emb, medium, name):
    parts = part_files(emb, medium, name)
    return [i for p in parts for i in pq.read_table(p, columns=["id"]).column("id").to_pylist()]


def test_resume_after_interruption_gives_every_id_once(ray_session, toy, monkeypatch):
    """The driver stops (Ctrl-C) once the first result rows arrive: the parts the workers committed
    by then are kept, and the rerun embeds exactly the rest."""
    real_take = generate_embeddings.MediumRun.take

    def take_then_die(self, batch):
        real_take(self, batch)
        raise KeyboardInterrupt("simulated kill after the first results")

    monkeypatch.setattr(generate_embeddings.MediumRun, "take", take_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(toy, "--rows_per_part", "2")
    monkeypatch.setattr(generate_embeddings.MediumRun, "take", real_take)
    emb = toy / "embeddings" / "toy"
    before = {A: set(stored_ids(emb, A, "melstats")), S: set(stored_ids(emb, S, "pianoroll"))}
    # the first results were committed; how many more depends on how far the workers got before the
    # driver stopped (all 13 on a slow driver): test_embedding_job_kill holds a worker to pin a partial state
    assert 0 < len(before[A]) + len(before[S]) <= 13
    assert not (emb / "embeddings.h5").exists()

    assert run(toy, "--rows_per_part", "2") == 0
    summary = pd.read_json(emb / "summary.json", typ="series")
    assert {m: summary["media"][m]["skipped"] for m in (A, S)} == {m: len(before[m]) for m in (A, S)}
    assert summary["media"][A]["skipped"] + summary["media"][A]["done"] == 6
    assert summary["media"][S]["skipped"] + summary["media"][S]["done"] == 7
    for medium, name in ((A, "melstats"), (S, "pianoroll")):
        ids = stored_ids(emb, medium, name)
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
    assert run(toy, "--rows_per_part", "0") == 2
    assert "--rows_per_part must be at least 1" in capsys.readouterr().err


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


def test_rows_without_one_medium_are_embedded_in_the_other(ray_session, tmp_path):
    """Groove-MIDI-shaped rows: an empty audio_filename (midi_filename) means no audio (MIDI)."""
    root = make_dataset(tmp_path / "raw" / "toy", n=4)
    info = pd.read_csv(root / "info.csv")
    info.loc[1, "audio_filename"] = None   # rec1: MIDI only
    info.loc[2, "midi_filename"] = None    # rec2: audio only
    info.to_csv(root / "info.csv", index=False)
    assert run(tmp_path) == 0
    emb = tmp_path / "embeddings" / "toy"
    errors = pd.read_parquet(emb / "errors.parquet")
    assert sorted(zip(errors["id"], errors["medium"], errors["stage"], errors["error_type"])) == [
        ("rec1", A, "input", "AbsentMedium"), ("rec2", S, "input", "AbsentMedium")]
    assert errors.set_index("id").loc["rec1", "message"] == "empty audio_filename in info.csv: this recording has no audio"
    assert errors.set_index("id").loc["rec2", "message"] == "empty midi_filename in info.csv: this recording has no MIDI"
    summary = pd.read_json(emb / "summary.json", typ="series")
    assert {m: (c["absent"], c["failed"], c["done"]) for m, c in summary["media"].items()} == {A: (1, 0, 3), S: (1, 0, 3)}
    with h5py.File(emb / "embeddings.h5") as f:
        assert f[f"{A}/melstats/valid"][...].tolist() == [1, 0, 1, 1]
        assert f[f"{S}/pianoroll/valid"][...].tolist() == [1, 1, 0, 1]
    for source in (emb / "embeddings.h5", emb):  # the consolidated file and the store folder agree
        pair = load_pair(source)
        assert list(pair.ids) == ["rec0", "rec3"] and pair.counts["dropped"] == 2
    # a rerun has nothing to do: absent rows are not retried, and stay listed
    assert run(tmp_path) == 0
    summary = pd.read_json(emb / "summary.json", typ="series")
    assert {m: (c["absent"], c["skipped"], c["done"]) for m, c in summary["media"].items()} == {A: (1, 3, 0), S: (1, 3, 0)}
    assert len(pd.read_parquet(emb / "errors.parquet")) == 2


def test_driver_gets_small_rows_and_h5_none_leaves_the_folder_to_read(ray_session, monkeypatch, tmp_path):
    """Workers commit the embeddings; the driver sees only RESULT_COLUMNS, without a float array.
    With --h5 none no embeddings.h5 is written, and the downstream jobs read the folder."""
    from ray_jobs.compare_embeddings import job as compare_embeddings
    from ray_jobs.generate_embeddings.pipeline import RESULT_COLUMNS
    from ray_jobs.train_classifier import job as train_classifier

    seen = []
    real_take = generate_embeddings.MediumRun.take

    def spy(self, batch):
        seen.append({k: np.asarray(v).dtype for k, v in batch.items()})
        real_take(self, batch)

    monkeypatch.setattr(generate_embeddings.MediumRun, "take", spy)
    toy = tmp_path / "data"
    make_dataset(toy / "raw" / "toy", n=24, seconds=1.0)  # compare_embeddings needs >= 20 pairs
    assert run(toy, "--h5", "none") == 0
    assert seen and all(set(b) == set(RESULT_COLUMNS) for b in seen)
    assert all(dtype.kind in "Oi" for b in seen for dtype in b.values())  # ids, texts, frame counts: no embeddings
    emb = toy / "embeddings" / "toy"
    assert not (emb / "embeddings.h5").exists()
    assert pd.read_json(emb / "summary.json", typ="series")["h5_path"] is None

    out = {}
    for name, source in (("folder", emb), ("h5", None)):
        if source is None:  # the same store, consolidated by a rerun that embeds nothing
            assert run(toy) == 0
            source = emb / "embeddings.h5"
        assert compare_embeddings.main(["--h5_path", str(source), "--output_dir", str(tmp_path / name), "--label", "style",
                                        "--n_permutations", "9", "--n_boot", "9"]) == 0
        out[name] = pd.read_json(tmp_path / name / "metrics.json", typ="series")
        assert train_classifier.main(["--h5_path", str(source), "--medium", A, "--label", "style", "--num_epochs", "2",
                                      "--split_column", "none", "--save_dir", str(tmp_path / f"clf_{name}")]) == 0
    assert out["folder"]["counts"] == out["h5"]["counts"]
    assert out["folder"]["spaces"]["metrics"]["linear_cka"]["value"] == \
        pytest.approx(out["h5"]["spaces"]["metrics"]["linear_cka"]["value"], rel=1e-6)


def test_gpu_layout_pipeline_commits_parts_on_cpu_too(ray_session, tmp_path):
    """The GPU layout (decode+prepare tasks, then a pool of PartsActor), run with CPU actors."""
    from ray_jobs.generate_embeddings.pipeline import MediumSpec, PartTarget
    from ray_jobs.generate_embeddings.ray_data import build_dataset
    from ray_jobs.generate_embeddings.resources import Pool

    root = make_dataset(tmp_path / "raw" / "toy", n=3, seconds=1.0)
    spec = MediumSpec(S, "midi_filename", "pianoroll", {}, None)
    store = tmp_path / "store"
    rows = [{"id": f"rec{k}", "path": f"midi/rec{k}.mid"} for k in range(3)] + [{"id": "gone", "path": "midi/gone.mid"}]
    ds = build_dataset(rows, spec, PartTarget(str(store), "h", {}, 256, 2), str(root), pool=Pool(1, 1, 0.25, 0.0))
    out = pd.concat([pd.DataFrame(b) for b in ds.iter_batches(batch_size=None, batch_format="numpy")])
    assert sorted(zip(out["id"], out["status"])) == [("gone", "failed"), ("rec0", "done"), ("rec1", "done"), ("rec2", "done")]
    assert sorted(stored_ids(store, S, "pianoroll")) == ["rec0", "rec1", "rec2"]
    assert len(part_files(store, S, "pianoroll")) == 2  # one part per embedding batch of 2


def h5_arrays(path, groups):
    with h5py.File(path) as f:
        return {f"{g}/{k}": f[g][k][...] for g in groups for k in ("average", "sequence", "sequence_offsets", "valid")}


def test_local_and_ray_executors_write_the_same_store(ray_session, toy, tmp_path):
    """--executor local (this process + a spawned pool) and Ray Data store identical vectors, errors
    and summaries; auto picks local for this small local input."""
    import shutil

    other = tmp_path / "other"
    shutil.copytree(toy / "raw", other / "raw")
    assert run(toy, "--executor", "ray") == 0
    assert run(other) == 0  # auto
    a, b = toy / "embeddings/toy", other / "embeddings/toy"
    assert pd.read_json(b / "summary.json", typ="series")["executor"] == "local"
    assert pd.read_json(a / "summary.json", typ="series")["executor"] == "ray"
    groups = (f"{A}/melstats", f"{S}/pianoroll")
    got, want = h5_arrays(b / "embeddings.h5", groups), h5_arrays(a / "embeddings.h5", groups)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    errors = []
    for data_root in (toy, other):
        table = pd.read_parquet(data_root / "embeddings/toy/errors.parquet").sort_values(["id", "medium"])
        table["message"] = table["message"].str.replace(str(data_root), "<data_root>")  # the files' own paths differ
        errors.append(table.reset_index(drop=True))
    pd.testing.assert_frame_equal(errors[0], errors[1])


def test_gpus_are_requested_only_for_media_whose_embedder_uses_them(ray_session, toy, monkeypatch, capsys):
    """--num_gpus with melstats + pianoroll: no Ray Data stage asks for a GPU, and the job says why."""
    import ray.data

    asked = []
    real = ray.data.Dataset.map_batches

    def spy(self, fn, **kwargs):
        asked.append((getattr(fn, "__name__", str(fn)), kwargs.get("num_gpus"), kwargs.get("num_cpus")))
        return real(self, fn, **kwargs)

    monkeypatch.setattr(ray.data.Dataset, "map_batches", spy)
    assert run(toy, "--executor", "ray", "--num_gpus", "1") == 0
    assert asked and all(not gpus for _, gpus, _ in asked), asked
    assert asked == [("MediaActor", None, 1.0)]
    assert "--num_gpus 1 ignored: no chosen embedder runs on an accelerator" in capsys.readouterr().out


def test_impossible_local_gpus_fail_at_once(ray_session, toy, tmp_path_factory, capsys):
    """A local Ray instance without GPUs and a GPU embedder with --num_gpus: exit 2, one line, nothing written."""
    from tests.midi_model_factory import tiny_checkpoint

    checkpoint = tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))
    capsys.readouterr()
    assert run(toy, "--media", S, "--symbolic_embedder", "midi_transformer", "--symbolic_checkpoint", str(checkpoint),
               "--num_gpus", "0.5") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: symbolic_embeddings/midi_transformer: --num_gpus 0.5 per")
    assert "has 0 GPU(s)" in err and "RAY_ADDRESS is not set" in err
    assert not (toy / "embeddings").exists()
