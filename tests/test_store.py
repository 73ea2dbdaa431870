"""The embedding store: shards, resume state, errors table, consolidated HDF5, legacy layout."""

import h5py
import numpy as np
import pandas as pd
import pytest

from embedders.store import parts
from embedders.store.h5 import consolidate, export_legacy
from embedders.store.legacy import LegacyFormatError
from embedders.store.parts import ShardWriter, StoreError, prepare_medium, read_errors, write_errors, write_metadata
from embedders.store.reader import describe, list_embedders, load, load_pair

A, S, T = "audio_embeddings", "symbolic_embeddings", "transcribed_embeddings"


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


def write_store(emb_dir, info, ids_by_medium, dims=None, rows_per_part=2, order=None):
    dims = dims or {A: 4, S: 3}
    for medium, ids in ids_by_medium.items():
        writer = ShardWriter(emb_dir, medium, "emb_" + medium[:3], "hash1", {"embedder": "emb_" + medium[:3]}, rows_per_part)
        for item_id in (order or (lambda x: x))(list(ids)):
            writer.add(item_id, seq_for(item_id, dims[medium], medium))
        writer.flush()
    write_metadata(emb_dir, info, {"dataset": "t", "versions": {"x": "1"}})
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
    assert list_embedders(tmp_path / "e.h5") == {A: ["one", "two"], S: [], T: []}
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
    state = prepare_medium(tmp_path, A, "e", "h1")
    assert state.done_ids == {"r0", "r1"} and state.parts == 2 and state.removed_parts == 0
    assert prepare_medium(tmp_path, A, "other_embedder", "h1").done_ids == set()
    with pytest.raises(StoreError, match="another config.*--overwrite"):
        prepare_medium(tmp_path, A, "e", "h2")
    assert prepare_medium(tmp_path, A, "e", "h2", overwrite=True).removed_parts == 2
    assert prepare_medium(tmp_path, A, "e", "h2").done_ids == set()


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
    def err(i, m="audio_embeddings", e="x"):
        return {"id": i, "medium": m, "embedder": e, "stage": "decode", "error_type": "MissingFileError", "message": "gone"}

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


# ---------------------------------------------------------------------------------------------
# The store folder read directly, and how parts are written and resumed
# ---------------------------------------------------------------------------------------------
def assert_same_set(a, b):
    assert list(a.ids) == list(b.ids) and a.embedder == b.embedder and (a.n_total, a.n_invalid) == (b.n_total, b.n_invalid)
    pd.testing.assert_frame_equal(a.metadata, b.metadata, check_dtype=False, check_like=True)  # h5 sorts columns
    if isinstance(a.embeddings, np.ndarray):
        np.testing.assert_array_equal(a.embeddings, b.embeddings)
    else:
        assert len(a.embeddings) == len(b.embeddings)
        for x, y in zip(a.embeddings, b.embeddings):
            np.testing.assert_array_equal(x, y)


def test_store_folder_reads_like_the_consolidated_file(tmp_path):
    info = info_frame()
    write_store(tmp_path, info, {A: ["r4", "r0", "r2", "r3"], S: ["r2", "r1", "r0", "r4"]})
    # a row stored twice (committed just before a kill, then redone) is read once
    w = ShardWriter(tmp_path, A, "emb_aud", "hash1", {})
    w.add("r2", seq_for("r2", 4, A) + 1)
    w.flush()
    h5 = tmp_path / "embeddings.h5"
    consolidate(tmp_path, info, h5, provenance={"dataset": "t", "versions": {"x": "1"}})
    for medium in (A, S):
        for kind in ("average", "sequence"):
            assert_same_set(load(tmp_path, medium, embedding_type=kind), load(h5, medium, embedding_type=kind))
    folder_avg = load(tmp_path, A)
    assert list(folder_avg.ids) == ["r0", "r2", "r3", "r4"]  # r2 once (either copy: a redo gives the same rows)
    assert folder_avg.n_invalid == 1 and folder_avg.metadata["bpm"].dtype.kind == "f"
    assert list(load(tmp_path, A, label="style").labels) == ["jazz", "jazz", "rock"]
    pair_f, pair_h = load_pair(tmp_path, label="bpm"), load_pair(h5, label="bpm")
    assert list(pair_f.ids) == list(pair_h.ids) == ["r0", "r2", "r4"] and pair_f.counts == pair_h.counts
    assert list_embedders(tmp_path) == list_embedders(h5) == {A: ["emb_aud"], S: ["emb_sym"], T: []}
    assert describe(tmp_path)["dataset"] == describe(h5)["dataset"] == "t"
    assert '"x": "1"' in describe(tmp_path)["versions"]
    # the legacy export is the same from either form
    export_legacy(h5, tmp_path / "from_h5.h5")
    export_legacy(tmp_path, tmp_path / "from_folder.h5")
    for kind in ("average", "sequence"):
        for medium in (A, S):
            assert_same_set(load(tmp_path / "from_folder.h5", medium, embedding_type=kind),
                            load(tmp_path / "from_h5.h5", medium, embedding_type=kind))


def test_folder_without_metadata_is_refused_by_name(tmp_path):
    w = ShardWriter(tmp_path, A, "e", "h", {})
    w.add("r0", np.ones((1, 2), np.float32))
    w.flush()
    with pytest.raises(StoreError, match="no metadata.parquet.*rerun python -m ray_jobs.generate_embeddings"):
        load(tmp_path, A)
    with pytest.raises(FileNotFoundError, match="no embeddings file or store folder"):
        load(tmp_path / "nope", A)


def test_prepare_medium_reads_each_part_once_and_removes_a_killed_runs_temporaries(tmp_path, monkeypatch):
    w = ShardWriter(tmp_path, A, "e", "h1", {}, rows_per_part=1)
    for k in range(3):
        w.add(f"r{k}", np.ones((2, 2), np.float32))
    folder = tmp_path / "parquet" / A / "e"
    (folder / ".part-dead.parquet.0123.tmp").write_bytes(b"half a part")
    reads = []
    real_read = parts.read_parquet
    monkeypatch.setattr(parts, "read_parquet", lambda path, columns=None: reads.append(path) or real_read(path, columns))
    state = prepare_medium(tmp_path, A, "e", "h1")
    assert state.done_ids == {"r0", "r1", "r2"} and state.removed_temporary == 1 and state.parts == 3
    assert sorted(reads) == sorted(folder.glob("part-*.parquet"))  # every part, each once
    assert not list(folder.glob(".*"))


def test_parts_stream_row_group_by_row_group(tmp_path, monkeypatch):
    """Parts of several row groups (tiny ROW_GROUP_BYTES) consolidate and read back exactly, a few rows at a time."""
    monkeypatch.setattr(parts, "ROW_GROUP_BYTES", 64)
    info = info_frame()
    write_store(tmp_path, info, {A: ["r4", "r0", "r2", "r3", "r1"], S: ["r3"]}, rows_per_part=5)
    (part,) = parts.part_files(tmp_path, A, "emb_aud")
    assert parts.pq.ParquetFile(part).num_row_groups == 5  # one row per group: ROW_GROUP_BYTES < a row
    batches = list(parts.iter_part_batches(tmp_path, A, "emb_aud", batch_rows=2))
    assert [len(b["id"]) for b in batches] == [2, 2, 1]  # a few rows at a time, not the whole part
    audio = load(tmp_path / "embeddings.h5", A, embedding_type="sequence")
    assert list(audio.ids) == ["r0", "r1", "r2", "r3", "r4"]
    for item_id, frames in zip(audio.ids, audio.embeddings):
        np.testing.assert_array_equal(frames, seq_for(item_id, 4, A))
    assert_same_set(load(tmp_path, A, embedding_type="sequence"), audio)


def test_a_failed_write_leaves_no_part(tmp_path, monkeypatch):
    w = ShardWriter(tmp_path, A, "e", "h", {})
    w.add("r0", np.ones((1, 2), np.float32))

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(parts.pq, "write_table", disk_full)
    with pytest.raises(OSError, match="No space"):
        w.flush()
    assert not list(tmp_path.rglob("*.parquet")) and not list(tmp_path.rglob("*.tmp"))


def test_load_pair_pairs_any_two_media_by_id(tmp_path):
    info = info_frame()
    write_store(tmp_path, info, {A: ["r0", "r1", "r2"], S: ["r4", "r0", "r2", "r3"], T: ["r3", "r2", "r0"]},
                dims={A: 4, S: 3, T: 5})
    for source in (tmp_path, tmp_path / "embeddings.h5"):
        pair = load_pair(source, media=(T, S), embedding_type="sequence")
        assert pair.media == (T, S) and pair.embedders == ("emb_tra", "emb_sym") and list(pair.ids) == ["r0", "r2", "r3"]
        assert pair.counts == {"rows_in_file": 5, "valid_transcribed": 3, "valid_symbolic": 4, "missing_label": 0,
                               "paired": 3, "dropped": 2}
        for item_id, first, second in zip(pair.ids, pair.first, pair.second):
            np.testing.assert_array_equal(first, seq_for(item_id, 5, T))
            np.testing.assert_array_equal(second, seq_for(item_id, 3, S))
        assert pair.get(S) is pair.second and pair.descriptions[0] == {"embedder": "emb_tra"}
        with pytest.raises(AttributeError, match=r"this pair holds \('transcribed_embeddings', 'symbolic_embeddings'\)"):
            _ = pair.symbolic
        with pytest.raises(KeyError):
            pair.get(A)
        # the seed's call and names are unchanged
        seed = load_pair(source, "emb_aud", "emb_sym")
        assert seed.media == (A, S) and list(seed.ids) == ["r0", "r2"] and seed.audio_embedder == "emb_aud"
        assert seed.audio is seed.first and seed.symbolic_embedder == "emb_sym"
        assert list(load_pair(source, symbolic_embedder="emb_sym", media=(S, T)).ids) == ["r0", "r2", "r3"]
    with pytest.raises(ValueError, match="two different media"):
        load_pair(tmp_path, media=(S, S))
    with pytest.raises(ValueError, match="audio_embedder='emb_aud' given, but media are"):
        load_pair(tmp_path, "emb_aud", media=(S, T))
    with pytest.raises(ValueError, match="given twice"):
        load_pair(tmp_path, symbolic_embedder="emb_sym", media=(S, T), embedders=("emb_sym", None))
    with pytest.raises(StoreError, match="no transcribed_embeddings embedder 'nope'"):
        load_pair(tmp_path, media=(S, T), embedders=(None, "nope"))
    with pytest.raises(ValueError, match="medium must be one of"):
        load_pair(tmp_path, media=(S, "midi"))
