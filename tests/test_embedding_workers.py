"""The embedding job's workers, called directly (no Ray): they commit parts and answer with small rows."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from embedders.io import decode_audio
from embedders.registry import get_embedder, get_embedder_class
from embedders.store.parts import part_files
from ray_jobs.generate_embeddings.pipeline import (
    RESULT_COLUMNS,
    MediaActor,
    MediumSpec,
    PartsActor,
    PartTarget,
    decode_batch,
)
from tests.factory import make_dataset

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
    # committed before answering: every "done" row is in a part, with its frame count and config hash
    audio, midi = read_parts(tmp_path, A, "melstats"), read_parts(tmp_path, S, "pianoroll")
    assert audio == {i: (rows[(i, A)][2], "hash-melstats") for i in ("rec0", "rec1", "rec3")}
    assert set(midi) == {"rec0", "rec2", "rec3"}
    assert len(part_files(tmp_path, A, "melstats")) == 1 and len(part_files(tmp_path, S, "pianoroll")) == 1
    # the stored frames are the embedder's own output for that file
    (expected,) = get_embedder("melstats").embed([decode_audio(data / "audio/rec1.wav", MEL.sample_rate)])
    table = next(pq.read_table(p) for p in part_files(tmp_path, A, "melstats"))
    k = table.column("id").to_pylist().index("rec1")
    np.testing.assert_allclose(np.asarray(table.column("sequence")[k].as_py(), np.float32).reshape(expected.shape),
                               expected, rtol=1e-6)


def test_parts_actor_commits_one_part_per_decoded_batch(data, tmp_path):
    spec = ROLL
    decoded = decode_batch({"id": np.array(["rec0", "rec4", "bad"], dtype=object),
                            "path": np.array(["midi/rec0.mid", "midi/rec4.mid", "midi/none.mid"], dtype=object)},
                           spec=spec, root=str(data))
    actor = PartsActor(spec, target(tmp_path, "pianoroll"))
    out = actor(decoded)
    assert list(out["status"]) == ["done", "done", "failed"] and list(out["stage"]) == ["", "", "decode"]
    assert set(read_parts(tmp_path, S, "pianoroll")) == {"rec0", "rec4"}
    actor(decode_batch({"id": np.array(["rec1"], dtype=object), "path": np.array(["midi/rec1.mid"], dtype=object)},
                       spec=spec, root=str(data)))
    assert len(part_files(tmp_path, S, "pianoroll")) == 2  # one part per call
