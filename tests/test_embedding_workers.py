"""The embedding job's stages, called directly (no Ray): they commit parts and answer with small rows."""

from __future__ import annotations

import json
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from embedders.io import decode_audio, decode_midi
from embedders.registry import get_embedder, get_embedder_class
from embedders.store.parts import REQUESTED_HASH_KEY, part_files, prepare_medium
from ray_jobs.generate_embeddings import pipeline
from ray_jobs.generate_embeddings.pipeline import (
    RESULT_COLUMNS,
    MediaActor,
    MediumSpec,
    PartsActor,
    PartTarget,
    byte_bounded_groups,
    prepare_batch,
)
from tests.factory import make_dataset, scale_notes, score_from_notes, sine_wave, write_wav

A, S = "audio_embeddings", "symbolic_embeddings"
MEL = MediumSpec(A, "audio_filename", "melstats", {}, get_embedder_class("melstats").sample_rate)
ROLL = MediumSpec(S, "midi_filename", "pianoroll", {}, None)


def target(store, name, rows_per_part=256, batch_size=2):
    return PartTarget(str(store), f"hash-{name}", {"embedder": name}, rows_per_part, batch_size)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds"), n=5, seconds=1.0)


def read_parts(store, medium, name):
    tables = [pq.read_table(p) for p in part_files(store, medium, name)]
    return {i: (n, h) for t in tables for i, n, h in zip(t.column("id").to_pylist(), t.column("n_frames").to_pylist(),
                                                        t.column("config_hash").to_pylist())}


def stored_rows(store, medium, name):
    """{id: (sequence (T, D), average (D,))} of every committed part."""
    out = {}
    for part in part_files(store, medium, name):
        table = pq.read_table(part)
        for k, item_id in enumerate(table.column("id").to_pylist()):
            dim = table.column("dim")[k].as_py()
            seq = np.asarray(table.column("sequence")[k].as_py(), np.float32).reshape(-1, dim)
            out[item_id] = (seq, np.asarray(table.column("average")[k].as_py(), np.float32))
    return out


def test_media_actor_commits_parts_and_answers_with_small_rows(data, tmp_path):
    actor = MediaActor([MEL, ROLL], [target(tmp_path, "melstats", rows_per_part=3), target(tmp_path, "pianoroll")],
                       str(data))
    ids = np.array(["rec0", "rec1", "rec2", "rec3", "gone"], dtype=object)
    batch = {"id": ids,
             "path_0": np.array(["audio/rec0.wav", "audio/rec1.wav", "", "audio/rec3.wav", "audio/gone.wav"], dtype=object),
             "path_1": np.array(["midi/rec0.mid", "", "midi/rec2.mid", "midi/rec3.mid", ""], dtype=object)}
    out = actor(batch)
    assert set(out) == set(RESULT_COLUMNS)
    assert all(v.dtype.kind in "Oi" for v in out.values())  # no embedding travels back
    rows = {(i, m): (st, e, n) for i, m, st, e, n in zip(out["id"], out["medium"], out["status"], out["error_type"],
                                                          out["n_frames"])}
    assert set(rows) == {("rec0", A), ("rec1", A), ("rec3", A), ("gone", A), ("rec0", S), ("rec2", S), ("rec3", S)}
    assert rows[("gone", A)][:2] == ("failed", "MissingFileError") and rows[("gone", A)][2] == 0
    # committed before answering: every "done" row is in a part, with its frame count, under the
    # hash of the actor's own embedder; the part's description names the requested one
    own_hash = get_embedder("melstats").config_hash()
    audio, midi = read_parts(tmp_path, A, "melstats"), read_parts(tmp_path, S, "pianoroll")
    assert audio == {i: (rows[(i, A)][2], own_hash) for i in ("rec0", "rec1", "rec3")}
    assert {h for i, m, h in zip(out["id"], out["medium"], out["config_hash"]) if m == A} == {own_hash}
    (part,) = part_files(tmp_path, A, "melstats")
    description = json.loads(pq.read_schema(part).metadata[b"avs.description"])
    assert description[REQUESTED_HASH_KEY] == "hash-melstats" and description["config_hash"] == own_hash
    assert set(midi) == {"rec0", "rec2", "rec3"}
    assert len(part_files(tmp_path, S, "pianoroll")) == 1
    # the stored frames and average are the embedder's own output for that file
    (expected,) = get_embedder("melstats").embed([decode_audio(data / "audio/rec1.wav", MEL.sample_rate)])
    seq, avg = stored_rows(tmp_path, A, "melstats")["rec1"]
    np.testing.assert_allclose(seq, expected, rtol=1e-6)
    np.testing.assert_allclose(avg, expected.mean(axis=0), rtol=1e-5)


def test_prepare_runs_in_the_decode_stage_and_the_actor_only_batches(data, tmp_path, monkeypatch):
    """prepare_batch (the CPU task) calls prepare; PartsActor calls embed_items(prepared=True) and never prepare."""
    cls = get_embedder_class("pianoroll")
    calls = []
    real_prepare, real_embed_items = cls.prepare, cls.embed_items

    def spy_prepare(self, item):
        calls.append("prepare")
        return real_prepare(self, item)

    def spy_embed_items(self, ids, items, **kw):
        calls.append(("embed_items", kw.get("prepared", False), kw.get("with_average", False), len(ids)))
        return real_embed_items(self, ids, items, **kw)

    monkeypatch.setattr(cls, "prepare", spy_prepare)
    monkeypatch.setattr(cls, "embed_items", spy_embed_items)
    prepared = prepare_batch({"id": np.array(["rec0", "rec4", "bad"], dtype=object),
                              "path": np.array(["midi/rec0.mid", "midi/rec4.mid", "midi/none.mid"], dtype=object)},
                             spec=ROLL, root=str(data))
    assert calls == ["prepare", "prepare"]  # the two decodable files, in the decode stage
    assert list(prepared["stage"]) == ["", "", "decode"] and len(prepared["payload"][2]) == 0
    calls.clear()
    actor = PartsActor(ROLL, target(tmp_path, "pianoroll"))
    out = actor(prepared)
    assert calls == [("embed_items", True, True, 2)]  # no prepare in the actor
    assert list(out["status"]) == ["done", "done", "failed"] and list(out["stage"]) == ["", "", "decode"]
    assert set(read_parts(tmp_path, S, "pianoroll")) == {"rec0", "rec4"}
    # the GPU layout stores what the CPU layout stores
    expected = get_embedder("pianoroll").embed([decode_midi(data / "midi/rec4.mid")])[0]
    np.testing.assert_array_equal(stored_rows(tmp_path, S, "pianoroll")["rec4"][0], expected)
    actor(prepare_batch({"id": np.array(["rec1"], dtype=object), "path": np.array(["midi/rec1.mid"], dtype=object)},
                        spec=ROLL, root=str(data)))
    assert len(part_files(tmp_path, S, "pianoroll")) == 2  # one part per call


def test_prepare_errors_are_embed_errors_as_in_the_cpu_layout(tmp_path):
    """A file that decodes but that prepare refuses fails at stage 'embed' in both layouts."""
    root = tmp_path / "ds"
    write_wav(root / "audio" / "nan.wav", np.full(4800, np.nan, np.float32))
    spec = MediumSpec(A, "audio_filename", "melstats", {}, 48000)
    rows = {"id": np.array(["nan"], dtype=object), "path": np.array(["audio/nan.wav"], dtype=object)}
    gpu_layout = prepare_batch(rows, spec=spec, root=str(root))
    cpu_layout = MediaActor([spec], [target(tmp_path / "s", "melstats")], str(root))(
        {"id": rows["id"], "path_0": rows["path"]})
    assert (gpu_layout["stage"][0], gpu_layout["error_type"][0]) == (cpu_layout["stage"][0], cpu_layout["error_type"][0])


def test_byte_bounded_groups():
    assert byte_bounded_groups([10, 10, 10, 10], 25) == [[0, 1], [2, 3]]
    assert byte_bounded_groups([5, 40, 5, 5], 25) == [[0], [1], [2, 3]]  # the long item alone
    assert byte_bounded_groups([], 25) == []
    assert byte_bounded_groups([30, 30], 25) == [[0], [1]]
    assert byte_bounded_groups([10, 15, 1], 25) == [[0, 1], [2]]  # up to the bound inclusive


def test_gpu_actor_bounds_the_bytes_of_each_model_call(data, tmp_path, monkeypatch):
    prepared = prepare_batch({"id": np.array([f"rec{k}" for k in range(4)], dtype=object),
                              "path": np.array([f"audio/rec{k}.wav" for k in range(4)], dtype=object)},
                             spec=MEL, root=str(data))
    size = len(prepared["payload"][0])
    sizes = []
    cls = get_embedder_class("melstats")
    real = cls.embed_items
    monkeypatch.setattr(cls, "embed_items", lambda self, ids, items, **kw: sizes.append(len(ids)) or real(self, ids, items, **kw))
    PartsActor(MEL, target(tmp_path / "a", "melstats"), max_batch_bytes=2 * size + 1)(prepared)
    assert sizes == [2, 2]
    sizes.clear()
    PartsActor(MEL, target(tmp_path / "b", "melstats"), max_batch_bytes=1)(prepared)
    assert sizes == [1, 1, 1, 1]
    a, b = stored_rows(tmp_path / "a", A, "melstats"), stored_rows(tmp_path / "b", A, "melstats")
    assert a.keys() == b.keys() == {"rec0", "rec1", "rec2", "rec3"}
    for k in a:
        np.testing.assert_array_equal(a[k][0], b[k][0])


def test_a_resolved_hash_other_than_the_request_resumes(data, tmp_path, monkeypatch):
    """Simulated mismatch: the actor's embedder hashes otherwise than the driver assumed. Its rows are
    written under its own hash, and a rerun of the same request counts them as done; another request
    is still refused."""
    cls = get_embedder_class("melstats")
    monkeypatch.setattr(cls, "config_hash", lambda self: "resolved-on-worker")
    MediaActor([MEL], [target(tmp_path, "melstats")], str(data))(
        {"id": np.array(["rec0", "rec1"], dtype=object), "path_0": np.array(["audio/rec0.wav", "audio/rec1.wav"], dtype=object)})
    assert set(read_parts(tmp_path, A, "melstats").values()) == {(2, "resolved-on-worker")}
    state = prepare_medium(tmp_path, A, "melstats", "hash-melstats")
    assert state.done_ids == {"rec0", "rec1"} and state.stored_hashes == {"resolved-on-worker"}
    from embedders.store.parts import StoreError

    with pytest.raises(StoreError, match="another config"):
        prepare_medium(tmp_path, A, "melstats", "another-request")


# -- averages from the embedder ----------------------------------------------------------------------
def test_stored_clamp_average_is_the_authors_global_vector(tmp_path):
    pytest.importorskip("mido")
    from tests.pretrained_factories.clamp import SMALL, write_checkpoint

    ckpt = write_checkpoint(tmp_path / "clamp.pth")
    options = {"checkpoint": str(ckpt), "device": "cpu", **SMALL}
    root = tmp_path / "ds"
    (root / "midi").mkdir(parents=True)
    score = score_from_notes(scale_notes(50, 40, 0.5), bpm=100)  # several segments of unequal weight
    score.dump_midi(str(root / "midi" / "long.mid"))
    spec = MediumSpec(S, "midi_filename", "clamp", options, None)
    rows = {"id": np.array(["long"], dtype=object), "path": np.array(["midi/long.mid"], dtype=object)}
    PartsActor(spec, target(tmp_path / "gpu", "clamp"))(prepare_batch(rows, spec=spec, root=str(root)))
    MediaActor([spec], [target(tmp_path / "cpu", "clamp")], str(root))({"id": rows["id"], "path_0": rows["path"]})
    embedder = get_embedder("clamp", **options)
    data = (root / "midi" / "long.mid").read_bytes()
    (authors,) = embedder.embed_global([data])
    (frames,) = embedder.embed([data])
    assert not np.allclose(authors, frames.mean(axis=0), rtol=1e-4, atol=1e-6), "the test needs them to differ"
    for layout in ("gpu", "cpu"):
        seq, avg = stored_rows(tmp_path / layout, S, "clamp")["long"]
        np.testing.assert_allclose(seq, frames, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(avg, authors, rtol=1e-5, atol=1e-6)


def test_stored_openl3_average_leaves_out_frames_past_the_end(tmp_path):
    from tests.test_openl3 import have_torchopenl3

    if not have_torchopenl3():
        pytest.skip("torchopenl3 not installed")
    from tests.pretrained_factories.openl3 import write_weights

    weights = write_weights(tmp_path / "w", input_repr="mel128")
    options = {"checkpoint": str(weights), "input_repr": "mel128", "device": "cpu"}
    root = tmp_path / "ds"
    write_wav(root / "audio" / "a.wav", sine_wave([440, 660], 1.6))
    spec = MediumSpec(A, "audio_filename", "openl3", options, 48000)
    rows = {"id": np.array(["a"], dtype=object), "path": np.array(["audio/a.wav"], dtype=object)}
    PartsActor(spec, target(tmp_path / "gpu", "openl3"))(prepare_batch(rows, spec=spec, root=str(root)))
    MediaActor([spec], [target(tmp_path / "cpu", "openl3")], str(root))({"id": rows["id"], "path_0": rows["path"]})
    embedder = get_embedder("openl3", **options)
    audio = decode_audio(root / "audio" / "a.wav", 48000)
    (result,) = embedder.embed_items(["a"], [audio], with_average=True)
    assert not np.allclose(result.average, result.sequence.mean(axis=0), rtol=1e-4), "the test needs them to differ"
    for layout in ("gpu", "cpu"):
        seq, avg = stored_rows(tmp_path / layout, A, "openl3")["a"]
        np.testing.assert_allclose(seq, result.sequence, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(avg, result.average, rtol=1e-5, atol=1e-5)


def test_pack_round_trips_every_prepared_kind():
    for item in (np.arange(5, dtype=np.float32), [np.arange(3, dtype=np.int32), np.arange(2, dtype=np.int32)],
                 (np.ones((2, 3), np.float32), np.array([0, 4]))):
        back = pipeline.unpack(pipeline.pack(item))
        assert type(back) is type(item)
        for x, y in zip(np.atleast_1d(back) if isinstance(item, np.ndarray) else back,
                        np.atleast_1d(item) if isinstance(item, np.ndarray) else item):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("remote", [False, True])
def test_local_executor_helpers_store_what_one_process_stores(data, tmp_path, remote):
    """Forked (local inputs) or spawned (remote inputs) helpers plus this process write the same rows
    as this process alone, every id once, and every result row comes back."""
    from ray_jobs.generate_embeddings.local import run_local, start_method

    ray = sys.modules.get("ray")
    in_ray = ray is not None and ray.is_initialized()
    assert start_method(remote) == ("spawn" if remote or in_ray or not sys.platform.startswith("linux") else "fork")
    rows = [{"id": f"rec{k}", "path_0": f"audio/rec{k}.wav", "path_1": f"midi/rec{k}.mid"} for k in range(5)]
    results = {}
    for workers in (1, 2):
        got = []
        run_local(rows, [MEL, ROLL], [target(tmp_path / str(workers), "melstats"), target(tmp_path / str(workers), "pianoroll")],
                  str(data), workers=workers, rows_per_call=1, on_result=got.append, remote=remote)
        assert sorted((i, m) for b in got for i, m in zip(b["id"], b["medium"])) == sorted(
            (f"rec{k}", m) for k in range(5) for m in (A, S))
        results[workers] = {m: stored_rows(tmp_path / str(workers), m, n) for m, n in ((A, "melstats"), (S, "pianoroll"))}
    for medium in (A, S):
        assert results[1][medium].keys() == results[2][medium].keys() == {f"rec{k}" for k in range(5)}
        for item_id, (seq, avg) in results[1][medium].items():
            np.testing.assert_array_equal(results[2][medium][item_id][0], seq)
            np.testing.assert_array_equal(results[2][medium][item_id][1], avg)


@pytest.mark.parametrize("n_rows,rows_per_call,workers", [(1600, 200, 2), (100, 13, 2), (7, 1, 2), (5, 3, 1), (0, 4, 2)])
def test_local_calls_shrink_toward_the_end_and_cover_every_row_once(n_rows, rows_per_call, workers):
    """The local executor's call sizes: every row once and in order, none above ``rows_per_call``,
    never growing, and the last calls small (an eighth of a full one) so no process is left with a
    full call while the others wait."""
    from ray_jobs.generate_embeddings.local import batches, call_sizes

    sizes = call_sizes(n_rows, rows_per_call, workers)
    assert sum(sizes) == n_rows and all(0 < s <= rows_per_call for s in sizes)
    assert sizes == sorted(sizes, reverse=True)
    if n_rows >= 8 * rows_per_call:
        assert sizes[0] == rows_per_call and max(sizes[-2 * workers:]) <= max(1, rows_per_call // 8)
    rows = [{"id": f"r{k}", "path_0": f"a{k}"} for k in range(n_rows)]
    got = [i for b in batches(rows, 1, rows_per_call, workers) for i in b["id"]]
    assert got == [r["id"] for r in rows]
