"""The transcribed-MIDI medium: transcriptions beside the store (safe paths, an index, reuse), their
quality against the paired MIDI, and a symbolic embedder on them through the embedding job, with
the real basic-pitch weights on rendered piano and Groove-MIDI-shaped drums (ids with '/', MIDI-only rows).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from embedders.store import transcriptions as tx
from embedders.store.parts import part_files
from embedders.store.reader import list_embedders, load, load_pair
from ray_jobs.generate_embeddings import job as generate_embeddings
from ray_jobs.generate_embeddings import transcription
from tests.factory import write_wav
from tests.pretrained_factories.basic_pitch import notes_midi, phrase_notes, render, require_basic_pitch
from tests.test_storage import BUCKET, upload_tree

A, S, T = "audio_embeddings", "symbolic_embeddings", "transcribed_embeddings"


# -- paths, index, bpm: no Ray, no model ---------------------------------------------------------------
TRICKY_IDS = ["drummer1/session1/1", "a", "A", "../../etc/passwd", "..", ".", "", "/abs", "a//b", "a/", ".hidden",
              "a\\b", "C:x", "%2E", "%2F", "x%~y", "é/ü", "part-1.parquet", ".x.mid.0123.tmp", "s" * 300,
              "s" * 299 + "t", "a b?c#d"]


def test_ids_become_distinct_paths_inside_the_folder(tmp_path):
    folder = (tmp_path / "transcriptions" / "basic_pitch").resolve()
    paths = [tx.midi_relpath("basic_pitch", i) for i in TRICKY_IDS]
    assert len(set(paths)) == len(TRICKY_IDS)
    for path in paths:
        segments = path.split("/")[2:]
        assert all(s and s not in (".", "..") and not s.startswith(".") and len(s.encode()) <= 204 for s in segments), path
        assert (tmp_path / path).resolve().is_relative_to(folder) and "\\" not in path and ":" not in path
    assert tx.midi_relpath("basic_pitch", "drummer1/session1/1") == "transcriptions/basic_pitch/drummer1/session1/1.mid"
    tx.write_midi(tmp_path, "basic_pitch", "../../x", b"MThd")
    assert (folder / "%2E." / "%2E." / "x.mid").read_bytes() == b"MThd" and not (tmp_path.parent / "x.mid").exists()


def test_index_keeps_the_newest_row_of_a_config(tmp_path):
    tx.commit_index(tmp_path, "bp", [{"id": "r0", "midi_file": "f0", "config_hash": "h1", "bpm": 90.0, "created": 1.0},
                                     {"id": "r1", "midi_file": "f1", "config_hash": "h1", "bpm": np.nan, "created": 1.0}])
    tx.commit_index(tmp_path, "bp", [{"id": "r0", "midi_file": "f0b", "config_hash": "h1", "bpm": 100.0, "created": 2.0},
                                     {"id": "r1", "midi_file": "f1c", "config_hash": "h2", "bpm": 80.0, "created": 3.0}])
    got = tx.read_index(tmp_path, "bp", "h1").set_index("id")
    assert got["midi_file"].to_dict() == {"r0": "f0b", "r1": "f1"} and np.isnan(got.at["r1", "bpm"])
    assert tx.read_index(tmp_path, "bp")["midi_file"].tolist().count("f1c") == 1
    assert tx.read_index(tmp_path / "none", "bp").empty
    assert tx.same_bpm(np.nan, np.nan) and tx.same_bpm(90, 90.0) and not tx.same_bpm(np.nan, 120.0)
    assert tx.clear_index(tmp_path, "bp") == 2 and tx.read_index(tmp_path, "bp").empty


def test_a_killed_writers_temporaries_are_removed_at_any_depth(tmp_path):
    deep = tmp_path / "transcriptions" / "bp" / "drummer1" / "session1"
    deep.mkdir(parents=True)
    (deep / ".1.mid.abc.tmp").write_bytes(b"half")
    (deep / "1.mid").write_bytes(b"whole")
    (tmp_path / "parquet" / "transcriptions" / "bp").mkdir(parents=True)
    (tmp_path / "parquet" / "transcriptions" / "bp" / ".part-x.parquet.abc.tmp").write_bytes(b"half")
    assert tx.remove_temporary_files(tmp_path, "bp") == 2
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["1.mid"]


@pytest.fixture(params=["local", "file", "memory", "s3"])
def store_root(request, tmp_path):
    """A fresh store location of each kind (as tests/test_storage.py's ``root``)."""
    import uuid

    if request.param in ("local", "file"):
        return tmp_path / "store" if request.param == "local" else (tmp_path / "store").as_uri()
    if request.param == "memory":
        return f"memory://avs-{uuid.uuid4().hex}/store"
    request.getfixturevalue("s3")
    return f"s3://{BUCKET}/{uuid.uuid4().hex}/store"


def test_transcriptions_on_every_kind_of_store(store_root):
    from embedders.store import filesystem as fs

    root = store_root

    relative = tx.write_midi(root, "bp", "drummer1/session1/1", b"MThd-1")
    assert relative == "transcriptions/bp/drummer1/session1/1.mid"
    assert fs.read_bytes(fs.join(root, relative)) == b"MThd-1"
    assert tx.existing_files(root, [relative, "transcriptions/bp/nope.mid"]) == {relative}
    tx.commit_index(root, "bp", [{"id": "drummer1/session1/1", "midi_file": relative, "config_hash": "h", "bpm": 90.0}])
    assert tx.read_index(root, "bp", "h")["midi_file"].tolist() == [relative]
    assert tx.remove_temporary_files(root, "bp") == 0 and fs.is_file(fs.join(root, relative))
    tx.write_quality_table(root, [{"id": "drummer1/session1/1", "status": "transcribed", "f1": 0.5, "n_notes": 3,
                                   "has_reference": True, "scored": True}])
    got = tx.read_quality_table(root)
    assert got["f1"].tolist() == [0.5] and list(got.columns) == list(tx.QUALITY_COLUMNS)


def test_bpm_from_info_csv():
    assert np.isnan(transcription.row_bpm(None)) and np.isnan(transcription.row_bpm(float("nan")))
    assert np.isnan(transcription.row_bpm(" ")) and transcription.row_bpm("96") == 96.0
    for bad in (0, -3, "fast", float("inf")):
        with pytest.raises(generate_embeddings.ConfigError, match="bpm"):
            transcription.row_bpm(bad)


def test_flags_fail_fast_in_one_line(tmp_path, capsys):
    from tests.factory import make_dataset

    make_dataset(tmp_path / "raw" / "toy", n=1, seconds=1.0)

    def run(*extra):
        return generate_embeddings.main(["--dataset", "toy", "--data_root", str(tmp_path), *extra])

    assert run("--media", "transcribed") == 2
    assert "choose from ['audio_embeddings', 'symbolic_embeddings', 'transcribed_embeddings']" in capsys.readouterr().err
    assert run("--media", T, "--transcriber", "nope") == 2
    assert "unknown transcriber 'nope'; available: basic_pitch" in capsys.readouterr().err
    assert run("--media", T, "--symbolic_embedder", "melstats") == 2
    assert "--symbolic_embedder 'melstats' is a audio embedder" in capsys.readouterr().err
    require_basic_pitch()
    assert run("--media", T, "--transcriber_option", "bogus=1") == 2
    assert "no option(s) ['bogus']" in capsys.readouterr().err
    assert not (tmp_path / "embeddings").exists()


# -- the job end to end, real weights --------------------------------------------------------------------
def add_piano_rows(root: Path, bpms=(100, 120)) -> list[dict]:
    """Rendered piano phrases with their MIDI, a corrupt audio file, and audio without MIDI."""
    rows = []
    (root / "piano").mkdir(parents=True, exist_ok=True)
    for k, bpm in enumerate(bpms):
        midi = notes_midi(phrase_notes(bpm), bpm)
        (root / f"piano/p{k}.mid").write_bytes(midi)
        write_wav(root / f"piano/p{k}.wav", *render(midi))
        rows.append({"id": f"piano/p{k}", "audio_filename": f"piano/p{k}.wav", "midi_filename": f"piano/p{k}.mid",
                     "bpm": bpm, "style": "piano"})
    (root / "piano/bad.wav").write_bytes(b"RIFF....WAVEfmt nonsense")
    rows.append({"id": "piano/bad", "audio_filename": "piano/bad.wav", "midi_filename": "piano/p0.mid", "bpm": 100})
    rows.append({"id": "piano/nomidi", "audio_filename": "piano/p1.wav", "midi_filename": "", "bpm": None})
    return rows


def wait_until_no_actor_alive(class_part: str, timeout_s: float = 120.0) -> None:
    """Block until no ALIVE actor of the shared Ray session has ``class_part`` in its class name."""
    import ray
    from ray.util.state import list_actors

    address = ray.get_runtime_context().gcs_address  # this session's, not another instance on the machine
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [a.class_name for a in list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=1000)
                 if class_part in a.class_name]
        if not alive:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"actors still alive after {timeout_s} s: {alive}")
        time.sleep(0.2)


def run_job(data_root, *extra):
    return generate_embeddings.main(["--dataset", "toy", "--data_root", str(data_root), "--media", f"{S},{T}", *extra])


@pytest.fixture(scope="module")
def gmd_and_piano(tmp_path_factory, ray_session):
    """One drummer's GMD-shaped takes (ids with '/', one MIDI-only row) plus piano rows, embedded once."""
    from tests.gmd_factory import make_gmd

    require_basic_pitch()
    data = tmp_path_factory.mktemp("data")
    root = make_gmd(data / "raw" / "toy", n_drummers=1, takes=1, bars=2)
    info = pd.read_csv(root / "info.csv")
    info = pd.concat([info, pd.DataFrame(add_piano_rows(root))], ignore_index=True)
    info.to_csv(root / "info.csv", index=False)
    started = time.perf_counter()
    assert run_job(data) == 0
    seconds = time.perf_counter() - started
    store = data / "embeddings" / "toy"
    return {"data": data, "root": root, "store": store, "info": pd.read_csv(root / "info.csv", dtype={"id": str}),
            "seconds": seconds, "summary": json.loads((store / "summary.json").read_text()),
            "quality": pd.read_parquet(store / "transcription_quality.parquet")}


@pytest.mark.slow
def test_transcriptions_absent_rows_and_failures(gmd_and_piano):
    store, info, q = gmd_and_piano["store"], gmd_and_piano["info"], gmd_and_piano["quality"]
    assert q["id"].tolist() == info["id"].tolist()  # one row per recording, info.csv order
    absent = info.loc[info["audio_filename"].isna(), "id"].tolist()
    assert len(absent) == 1 and q.set_index("id").loc[absent[0], "status"] == "absent"
    written = sorted(str(p.relative_to(store)) for p in (store / "transcriptions").rglob("*.mid"))
    transcribed = q[q["status"] == "transcribed"]
    assert written == sorted(transcribed["midi_file"]) and len(written) == len(info) - 2  # all but absent and corrupt
    assert (store / "transcriptions/basic_pitch/drummer1/session1/1.mid").is_file()
    errors = pd.read_parquet(store / "errors.parquet")
    got = {(r.id, r.stage, r.error_type) for r in errors[errors["medium"] == T].itertuples()}
    silent = set(transcribed.loc[transcribed["n_notes"] == 0, "id"])
    assert silent and silent <= {i for i in info["id"] if i.startswith("drummer")}  # basic-pitch hears no pitches in most drums
    assert got == {(absent[0], "input", "AbsentMedium"), ("piano/bad", "transcribe", "AudioDecodeError")} | {
        (i, "transcribe", "EmptyInputError") for i in silent}
    assert {(r.id, r.error_type) for r in errors[errors["medium"] == S].itertuples()} == {("piano/nomidi", "AbsentMedium")}
    summary = gmd_and_piano["summary"]["media"][T]
    assert (summary["absent"], summary["failed"], summary["done"]) == (1, 1 + len(silent), len(info) - 2 - len(silent))


@pytest.mark.slow
def test_quality_table_equals_scores_computed_on_the_files(gmd_and_piano):
    import mir_eval
    import pretty_midi

    from embedders.transcribe import note_onset_scores

    root, store, q = gmd_and_piano["root"], gmd_and_piano["store"], gmd_and_piano["quality"].set_index("id")
    for item_id, row in q[q["status"] == "transcribed"].iterrows():
        est = (store / row["midi_file"]).read_bytes()
        reference = gmd_and_piano["info"].set_index("id").loc[item_id, "midi_filename"]
        if pd.isna(reference):
            assert not row["has_reference"] and np.isnan(row["f1"]) and not row["scored"]
            continue
        expected = note_onset_scores((root / reference).read_bytes(), est)
        assert {k: row[k] for k in expected} == expected, item_id
        assert row["scored"] == (expected["n_reference"] > 0)
    # independently of the project's code: pretty_midi reads both files, mir_eval scores them
    for item_id in ("piano/p0", "piano/p1"):
        ref, est = (pretty_midi.PrettyMIDI(str(p)).instruments[0].notes for p in
                    (gmd_and_piano["root"] / f"{item_id}.mid", store / q.loc[item_id, "midi_file"]))
        arrays = [(np.array([[n.start, n.end] for n in notes]), np.array([440 * 2 ** ((n.pitch - 69) / 12) for n in notes]))
                  for notes in (ref, est)]
        p, r, f, _ = mir_eval.transcription.precision_recall_f1_overlap(*arrays[0], *arrays[1], offset_ratio=None)
        assert (q.loc[item_id, "precision"], q.loc[item_id, "recall"], q.loc[item_id, "f1"]) == pytest.approx((p, r, f))
        assert f > 0.8  # the rendered piano comes back
    quality = gmd_and_piano["summary"]["transcription"]["quality"]
    scored = q[q["scored"].fillna(False).astype(bool)]
    assert list(scored.index) == ["piano/p0", "piano/p1"]  # drum references have no pitched notes
    assert quality["rows_scored"] == 2 and quality["mean_f1"] == pytest.approx(scored["f1"].mean())
    assert quality["median_f1"] == pytest.approx(scored["f1"].median())
    assert quality["rows_without_reference"] == 1 and quality["rows_without_pitched_reference"] == 9
    assert gmd_and_piano["summary"]["transcription"]["seconds_per_audio_minute"] > 0


@pytest.mark.slow
def test_transcribed_vectors_are_the_embedder_on_the_written_files(gmd_and_piano):
    from embedders.io import decode_midi
    from embedders.registry import get_embedder

    store, q = gmd_and_piano["store"], gmd_and_piano["quality"].set_index("id")
    pianoroll = get_embedder("pianoroll")
    for source in (store, store / "embeddings.h5"):
        got = load(source, T, "pianoroll", "sequence")
        assert len(got.ids) == gmd_and_piano["summary"]["media"][T]["done"] and "piano/p0" in set(got.ids)
        for item_id, frames in zip(got.ids, got.embeddings):
            (expected,) = pianoroll.embed([decode_midi(store / q.loc[item_id, "midi_file"])])
            np.testing.assert_array_equal(frames, expected)
    # and not the ground truth's embedding: the medium differs
    sym = load(store, S, "pianoroll", "sequence")
    k = list(sym.ids).index("piano/p0")
    j = list(got.ids).index("piano/p0")
    assert not np.array_equal(sym.embeddings[k][: len(got.embeddings[j])], got.embeddings[j][: len(sym.embeddings[k])])


@pytest.mark.slow
def test_consolidated_file_and_readers_expose_the_medium(gmd_and_piano, tmp_path):
    import h5py

    from embedders.store.h5 import export_legacy

    store = gmd_and_piano["store"]
    h5 = store / "embeddings.h5"
    assert list_embedders(h5) == list_embedders(store) == {A: [], S: ["pianoroll"], T: ["pianoroll"]}
    q = gmd_and_piano["quality"]
    with h5py.File(h5) as f:
        valid = f[f"{T}/pianoroll/valid"][...]
        expected = (q["status"] == "transcribed") & (q["n_notes"].fillna(0) > 0)
        assert valid.tolist() == expected.tolist()
        description = json.loads(f[f"{T}/pianoroll"].attrs["description"])
        symbolic_hash = f[f"{S}/pianoroll"].attrs["config_hash"]
    # the model does not differ: the embedder's own hash is the symbolic medium's; the transcriber is named
    assert description["embedder_config_hash"] == symbolic_hash != description["config_hash"]
    assert description["transcriber"]["transcriber"] == "basic_pitch" and description["transcriber"]["weights_sha256"]
    both = expected & gmd_and_piano["info"]["midi_filename"].notna()
    for source in (store, h5):
        pair = load_pair(source, media=(S, T), embedders=("pianoroll", "pianoroll"))
        assert pair.media == (S, T) and list(pair.ids) == [i for i, ok in zip(q["id"], both) if ok]
        assert pair.counts["valid_transcribed"] == int(expected.sum()) and pair.counts["valid_symbolic"] == len(q) - 1
        assert pair.descriptions[1]["embedder_config_hash"] == pair.descriptions[0]["config_hash"]
        assert pair.get(T) is pair.second
        with pytest.raises(AttributeError, match="use .first/.second"):
            _ = pair.audio
    counts = export_legacy(h5, tmp_path / "legacy.h5")
    assert counts[T] == int(expected.sum())
    legacy = load(tmp_path / "legacy.h5", T)
    np.testing.assert_array_equal(legacy.embeddings, load(h5, T).embeddings)
    assert list(legacy.ids) == list(load(h5, T).ids)


@pytest.mark.slow
def test_a_rerun_reuses_the_transcriptions_and_a_new_transcriber_config_is_refused(gmd_and_piano, capsys, monkeypatch):
    """Runs last in this module: it changes the store."""
    data, store = gmd_and_piano["data"], gmd_and_piano["store"]
    before = load(store, T, "pianoroll", "average")
    files = sorted((store / "transcriptions").rglob("*.mid"))
    stamps = {p: p.stat().st_mtime_ns for p in files}
    for part in part_files(store, T, "pianoroll"):  # the embeddings go; the transcriptions stay
        os.remove(part)
    info = pd.read_csv(gmd_and_piano["root"] / "info.csv")
    info.loc[info["id"] == "piano/p1", "bpm"] = 90  # a new tempo: this file is written again
    info.to_csv(gmd_and_piano["root"] / "info.csv", index=False)
    import ray.data

    asked, real_map_batches = [], ray.data.Dataset.map_batches

    def spy(self, fn, **kwargs):
        asked.append((getattr(fn, "__name__", str(fn)), kwargs.get("max_restarts")))
        return real_map_batches(self, fn, **kwargs)

    monkeypatch.setattr(ray.data.Dataset, "map_batches", spy)
    assert run_job(data) == 0
    # pool actors that Ray may restart make its core worker print "constructor arguments in the object
    # store and max_restarts > 0" on the user's console; a lost actor stops the stage instead
    assert ("TranscribeActor", 0) in asked, asked
    summary = json.loads((store / "summary.json").read_text())["transcription"]
    assert (summary["transcribed"], summary["failed"]) == (1, 1)  # the corrupt file is retried and fails again
    assert summary["reused"] == int((gmd_and_piano["quality"]["status"] == "transcribed").sum()) - 1
    p1 = store / "transcriptions/basic_pitch/piano/p1.mid"
    assert {p: p.stat().st_mtime_ns for p in files if p != p1} == {p: t for p, t in stamps.items() if p != p1}
    import symusic

    assert round(symusic.Score.from_midi(p1.read_bytes()).tempos[0].qpm, 3) == 90.0
    index = pd.concat(pq.read_table(p).to_pandas() for p in (store / "parquet/transcriptions/basic_pitch").glob("part-*"))
    assert index["id"].value_counts().to_dict() == {**{i: 1 for i in index["id"]}, "piano/p1": 2}
    assert set(index["config_hash"]) == {summary["config_hash"]}
    after = load(store, T, "pianoroll", "average")
    assert list(after.ids) == list(before.ids)
    k = list(after.ids).index("piano/p1")
    np.testing.assert_array_equal(np.delete(after.embeddings, k, 0), np.delete(before.embeddings, k, 0))
    assert run_job(data) == 0  # nothing changed: the medium's rows are all kept (same joined config hash)
    again = json.loads((store / "summary.json").read_text())["media"][T]
    assert (again["skipped"], again["done"]) == (len(after.ids), 0)
    capsys.readouterr()
    assert run_job(data, "--transcriber_option", "onset_threshold=0.6") == 2  # another transcriber config
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.slow
def test_a_killed_stage_keeps_what_it_committed_and_the_rerun_does_the_rest(ray_session, tmp_path, monkeypatch):
    require_basic_pitch()
    root = tmp_path / "raw" / "toy"
    rows = add_piano_rows(root, bpms=(150, 160, 170, 180))[:4]
    pd.DataFrame(rows).to_csv(root / "info.csv", index=False)
    real = transcription.collect

    def collect_then_die(batch, results):
        real(batch, results)
        raise KeyboardInterrupt("simulated kill after the first transcriptions")

    monkeypatch.setattr(transcription, "collect", collect_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_job(tmp_path, "--rows_per_part", "1")
    monkeypatch.setattr(transcription, "collect", real)
    # A killed driver takes its actors with it; this "kill" leaves the process and the shared Ray
    # session alive, so wait until the stopped pool's actors are dead, as after a real kill (an
    # actor still finishing a call would otherwise commit an id the rerun is transcribing too)
    wait_until_no_actor_alive("TranscribeActor")
    store = tmp_path / "embeddings" / "toy"
    committed = set(tx.read_index(store, "basic_pitch")["id"])
    assert 0 < len(committed) <= 4 and not part_files(store, T, "pianoroll")
    assert run_job(tmp_path, "--rows_per_part", "1") == 0
    summary = json.loads((store / "summary.json").read_text())["transcription"]
    # the stopped pool may still have committed a call in flight: at least what was seen is reused
    assert summary["reused"] >= len(committed) and summary["reused"] + summary["transcribed"] == 4
    index = pd.concat(pq.read_table(p).to_pandas() for p in (store / "parquet/transcriptions/basic_pitch").glob("part-*"))
    assert sorted(index["id"]) == [f"piano/p{k}" for k in range(4)]  # every id once
    ids = [i for p in part_files(store, T, "pianoroll") for i in pq.read_table(p, columns=["id"]).column("id").to_pylist()]
    assert sorted(ids) == [f"piano/p{k}" for k in range(4)]
    assert sorted(p.name for p in (store / "transcriptions/basic_pitch/piano").iterdir()) == [f"p{k}.mid" for k in range(4)]
    assert not list(store.rglob(".*.tmp"))


@pytest.mark.slow
def test_the_medium_on_an_s3_store(s3, ray_session, tmp_path):
    """Workers read the audio from S3 and write the transcriptions, the index and the parts there; a rerun reuses them.
    (On the session's Ray, whose workers inherit the S3 server's AWS_* settings.)"""
    import uuid

    from embedders.store import filesystem as fs

    require_basic_pitch()
    local = tmp_path / "toy"
    rows = add_piano_rows(local, bpms=(170,))
    rows[0]["id"] = "session1/p0"
    pd.DataFrame(rows[:2]).to_csv(local / "info.csv", index=False)  # one piano row, one corrupt audio
    data_root = f"s3://{BUCKET}/{uuid.uuid4().hex}/data"
    upload_tree(local, fs.join(data_root, "raw", "toy"))
    argv = ["--dataset", "toy", "--data_root", data_root, "--num_cpus", "2", "--media", T, "--h5", "none"]
    for attempt in (1, 2):
        assert generate_embeddings.main(argv) == 0
        store = fs.join(data_root, "embeddings", "toy")
        section = json.loads(fs.read_bytes(fs.join(store, "summary.json")))["transcription"]
        assert (section["transcribed"], section["reused"], section["failed"]) == ((1, 0, 1) if attempt == 1 else (0, 1, 1))
        for part in part_files(store, T, "pianoroll"):  # the embeddings go, the transcriptions stay
            fs.remove(part)
    midi = fs.read_bytes(fs.join(store, "transcriptions/basic_pitch/session1/p0.mid"))
    quality = tx.read_quality_table(store).set_index("id")
    from embedders.transcribe import note_onset_scores

    assert quality.at["session1/p0", "f1"] == note_onset_scores((local / "piano/p0.mid").read_bytes(), midi)["f1"] > 0.5
    assert tx.read_index(store, "basic_pitch")["id"].tolist() == ["session1/p0"]  # written once


@pytest.mark.slow
def test_gpu_layout_reads_the_transcriptions_from_the_store(ray_session, tmp_path):
    """The --num_gpus layout (decode tasks, then PartsActor) takes the medium's files from ``files_root``."""
    from embedders.io import decode_midi
    from embedders.registry import get_embedder
    from ray_jobs.generate_embeddings.pipeline import MediumSpec, PartTarget
    from ray_jobs.generate_embeddings.ray_data import build_dataset
    from ray_jobs.generate_embeddings.resources import Pool
    from tests.factory import scale_notes, write_midi

    store = tmp_path / "store"
    for k in range(2):
        write_midi(store / tx.midi_relpath("bp", f"s/{k}"), scale_notes(60 + k), bpm=100)
    spec = MediumSpec(T, "audio_filename", "pianoroll", {}, None, files_root=str(store), transcriber=("bp", {}))
    rows = [{"id": f"s/{k}", "path": tx.midi_relpath("bp", f"s/{k}")} for k in range(2)]
    ds = build_dataset(rows, spec, PartTarget(str(store), "h", {}, 256, 2), str(tmp_path / "dataset"),
                       pool=Pool(min_size=1, max_size=1, num_cpus=0.25, num_gpus=0))
    out = pd.concat([pd.DataFrame(b) for b in ds.iter_batches(batch_size=None, batch_format="numpy")])
    assert sorted(zip(out["id"], out["status"])) == [("s/0", "done"), ("s/1", "done")]
    table = pq.read_table(part_files(store, T, "pianoroll")[0]).to_pandas().set_index("id")
    (expected,) = get_embedder("pianoroll").embed([decode_midi(store / rows[1]["path"])])
    np.testing.assert_array_equal(np.asarray(table.at["s/1", "sequence"], np.float32), expected.reshape(-1))
