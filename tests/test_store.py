"""The embedding store: shards, resume state, errors table, consolidated HDF5, legacy layout."""

import h5py
import numpy as np
import pandas as pd
import pytest

from embedders.store.h5 import consolidate, export_legacy, list_embedders, load, load_pair
from embedders.store.legacy import LegacyFormatError
from embedders.store.parts import (
    ShardWriter,
    StoreError,
    check_shard_config,
    completed_ids,
    read_errors,
    remove_shards,
    write_errors,
)

A, S = "audio_embeddings", "symbolic_embeddings"


def info_frame(n=5):
    return pd.DataFrame({
        "id": [f"r{i}" for i in range(n)], "audio_filename": [f"a/{i}.wav" for i in range(n)],
        "midi_filename": [f"m/{i}.mid" for i in range(n)], "style": ["jazz", "rock", "", "jazz", "rock"][:n],
        "bpm": [120.0, 95.5, 100.0, 80.0, 140.0][:n], "n_parts": [1, 2, 3, 4, 5][:n],
    })


def seq_for(item_id, dim, medium):
    """A deterministic sequence whose values encode (row, medium) so misalignment is detectable."""
    k = int(item_id[1:])
    frames = 2 + k
    base = 100 * k + (0 if medium == A else 50)
    return (base + np.arange(frames * dim, dtype=np.float32).reshape(frames, dim) / 1000).astype(np.float32)


def write_store(emb_dir, info, ids_by_medium, dims={A: 4, S: 3}, rows_per_part=2, order=None):
    for medium, ids in ids_by_medium.items():
        writer = ShardWriter(emb_dir, medium, "emb_" + medium[:3], "hash1", {"embedder": "emb_" + medium[:3]}, rows_per_part)
        for item_id in (order or (lambda x: x))(list(ids)):
            writer.add(item_id, seq_for(item_id, dims[medium], medium))
        writer.flush()
    return consolidate(emb_dir, info, emb_dir / "embeddings.h5", provenance={"dataset": "t", "versions": {"x": "1"}})


def test_partial_failures_never_shift_pairing(tmp_path):
    info = info_frame()
    # audio failed on r1, symbolic on r3; written out of order across several parts
    summary = write_store(tmp_path, info, {A: ["r4", "r0", "r2", "r3"], S: ["r2", "r1", "r0", "r4"]})
    assert summary[f"{A}/emb_aud"]["n_valid"] == 4 and summary[f"{S}/emb_sym"]["n_valid"] == 4
    h5 = tmp_path / "embeddings.h5"
    audio = load(h5, A)
    assert list(audio.ids) == ["r0", "r2", "r3", "r4"] and audio.n_invalid == 1
    for item_id, avg in zip(audio.ids, audio.embeddings):
        np.testing.assert_allclose(avg, seq_for(item_id, 4, A).mean(0), rtol=1e-6)
    pair = load_pair(h5, embedding_type="sequence")
    assert list(pair.ids) == ["r0", "r2", "r4"]
    assert pair.counts == {"rows_in_file": 5, "valid_audio": 4, "valid_symbolic": 4, "missing_label": 0,
                           "paired": 3, "dropped": 2}
    for item_id, sa, ss in zip(pair.ids, pair.audio, pair.symbolic):
        np.testing.assert_array_equal(sa, seq_for(item_id, 4, A))
        np.testing.assert_array_equal(ss, seq_for(item_id, 3, S))


def test_h5_layout_types_and_attrs(tmp_path):
    info = info_frame()
    write_store(tmp_path, info, {A: ["r0", "r1"], S: ["r0"]})
    with h5py.File(tmp_path / "embeddings.h5") as f:
        assert f["metadata/bpm"].dtype == np.float64 and f["metadata/n_parts"].dtype == np.int64
        assert f["metadata/style"].dtype.kind == "O"
        g = f[f"{A}/emb_aud"]
        assert g["average"].shape == (5, 4) and np.isnan(g["average"][2]).all()
        assert g["valid"][...].tolist() == [True, True, False, False, False]
        assert g["sequence_offsets"][...].tolist() == [0, 2, 5, 5, 5, 5]
        assert g["sequence"].shape == (5, 4)
        assert f.attrs["format_version"] == 1 and '"x": "1"' in f.attrs["versions"]
        assert "emb_aud" in g.attrs["description"]


def test_label_drops_empty_and_keeps_numbers(tmp_path):
    write_store(tmp_path, info_frame(), {A: ["r0", "r1", "r2", "r3"], S: ["r0"]})
    styled = load(tmp_path / "embeddings.h5", A, label="style")
    assert list(styled.ids) == ["r0", "r1", "r3"] and styled.n_missing_label == 1
    assert styled.labels.tolist() == ["jazz", "rock", "jazz"]
    bpm = load(tmp_path / "embeddings.h5", A, label="bpm")
    assert bpm.labels.dtype == np.float64 and bpm.labels.tolist() == [120.0, 95.5, 100.0, 80.0]
    with pytest.raises(StoreError, match="no label column 'drummer'.*bpm"):
        load(tmp_path / "embeddings.h5", A, label="drummer")


def test_embedder_choice_errors(tmp_path):
    info = info_frame()
    for name in ("one", "two"):
        w = ShardWriter(tmp_path, A, name, "h", {})
        w.add("r0", np.ones((1, 2), np.float32))
        w.flush()
    consolidate(tmp_path, info, tmp_path / "e.h5", provenance={})
    assert list_embedders(tmp_path / "e.h5") == {A: ["one", "two"], S: []}
    with pytest.raises(StoreError, match="several .* choose one"):
        load(tmp_path / "e.h5", A)
    with pytest.raises(StoreError, match="no audio_embeddings embedder 'three'"):
        load(tmp_path / "e.h5", A, "three")
    with pytest.raises(StoreError, match="no embeddings for symbolic_embeddings"):
        load(tmp_path / "e.h5", S)


def test_resume_state_and_config_guard(tmp_path):
    w = ShardWriter(tmp_path, A, "e", "h1", {}, rows_per_part=1)
    w.add("r0", np.ones((1, 2), np.float32))
    w.add("r1", np.ones((1, 2), np.float32))
    assert w.parts_written == 2
    assert completed_ids(tmp_path, A, "e", "h1") == {"r0", "r1"}
    assert completed_ids(tmp_path, A, "e", "other") == set()
    with pytest.raises(StoreError, match="another config.*--overwrite"):
        check_shard_config(tmp_path, A, "e", "h2")
    assert remove_shards(tmp_path, A, "e") == 2
    check_shard_config(tmp_path, A, "e", "h2")


def test_no_temporary_files_left(tmp_path):
    write_store(tmp_path, info_frame(), {A: ["r0"], S: ["r0"]})
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_duplicate_rows_in_shards_are_written_once(tmp_path):
    """A row embedded twice (e.g. a part written just before a kill, then redone) appears once."""
    info = info_frame(3)
    for _ in range(2):
        w = ShardWriter(tmp_path, A, "e", "h", {})
        w.add("r1", seq_for("r1", 4, A))
        w.flush()
    consolidate(tmp_path, info, tmp_path / "e.h5", provenance={})
    with h5py.File(tmp_path / "e.h5") as f:
        assert f[f"{A}/e/sequence"].shape[0] == 3 and f[f"{A}/e/valid"][...].sum() == 1


def test_errors_table_merge(tmp_path):
    err = lambda i, m="audio_embeddings", e="x": {"id": i, "medium": m, "embedder": e, "stage": "decode",
                                                  "error_type": "MissingFileError", "message": "gone"}
    assert write_errors(tmp_path, [err("a"), err("b"), err("c", e="y")]) == 3
    assert write_errors(tmp_path, [err("d")], resolved=[("a", "audio_embeddings", "x")]) == 3
    assert sorted(r["id"] for r in read_errors(tmp_path)) == ["b", "c", "d"]
    assert write_errors(tmp_path, [], replaced_scopes=[("audio_embeddings", "x")]) == 1


def test_legacy_round_trip_pairs_by_id_not_rec_number(tmp_path):
    info = info_frame()
    write_store(tmp_path, info, {A: ["r0", "r1", "r3", "r4"], S: ["r1", "r2", "r3"]})
    src, dst = tmp_path / "embeddings.h5", tmp_path / "legacy.h5"
    assert export_legacy(src, dst) == {A: 4, S: 3}
    with h5py.File(dst) as f:
        assert f[f"{A}/rec_1/id"][()].decode() == "r1" and f[f"{S}/rec_0/id"][()].decode() == "r1"
        assert f[f"{A}/rec_0/bpm"][()].decode() == "120.0" and f[f"{A}/rec_0/average"].shape == (4,)
    legacy_pair = load_pair(dst, embedding_type="sequence", label="bpm")
    columnar_pair = load_pair(src, embedding_type="sequence", label="bpm")
    assert list(legacy_pair.ids) == list(columnar_pair.ids) == ["r1", "r3"]
    for la, ca in zip(legacy_pair.symbolic, columnar_pair.symbolic):
        np.testing.assert_array_equal(la, ca)
    assert legacy_pair.labels.dtype.kind == "f" and legacy_pair.labels.tolist() == [95.5, 80.0]
    avg = load(dst, A)
    assert avg.embedder == "legacy" and avg.embeddings.shape == (4, 4)
    assert avg.metadata["n_parts"].dtype.kind == "i"


def test_legacy_reader_rejects_rows_without_id(tmp_path):
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset(f"{A}/rec_0/average", data=np.ones(3))
    with pytest.raises(LegacyFormatError, match="rec_0 has no 'id' field"):
        load(path, A)


def test_missing_file_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="generate_embeddings"):
        load(tmp_path / "nope.h5", A)
