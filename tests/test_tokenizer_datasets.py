"""Tokenizer (REMI + BPE), context-preserving chunking, the two token datasets, splits."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pandas as pd
import pytest
import symusic

import training.midi_datasets as md
from embedders.dataset import read_info_csv
from embedders.symbolic.midi_transformer import tokenizer as tk
from tests.factory import scale_notes, score_from_notes
from tests.midi_model_factory import tempo_change_score, tiny_tokenizer, write_tiny_midis


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def split_dataset(tmp_path_factory):
    """A folder with info.csv whose 6 MIDI files are split 3 train / 2 validation / 1 test."""
    root = tmp_path_factory.mktemp("ds")
    paths = write_tiny_midis(root / "midi", n=6)
    splits = ["train", "validation", "train", "test", "train", "validation"]
    pd.DataFrame({"id": [p.stem for p in paths], "audio_filename": [f"audio/{p.stem}.wav" for p in paths],
                  "midi_filename": [f"midi/{p.name}" for p in paths], "split": splits,
                  "style": ["a", "a", "b", "b", "a", "b"]}).to_csv(root / "info.csv", index=False)
    return root, read_info_csv(root)


def base_tokens(tokenizer, ids) -> list[str]:
    """Expand (BPE) ids into MidiTok base tokens."""
    inv = {i: b for b, i in tokenizer.vocab_model.items()}
    out = []
    for i in ids:
        out += tokenizer._vocab_learned_bytes_to_tokens[inv[int(i)]]
    return out


# -- tokenizer -----------------------------------------------------------------------------------
def test_tokenizer_choices(tok):
    assert tok.is_trained and len(tok) == 600 and tk.vocab_size(tok) == 600
    sp = tk.special_ids(tok)
    assert (sp.pad, sp.bos, sp.eos, sp.mask) == (0, 1, 2, 3)
    assert tok.config.use_tempos and tok.config.use_time_signatures and tok.config.use_programs
    assert tok.one_token_stream and tok.config.num_velocities == 32
    # two tracks, two programs -> ONE sequence that names both programs
    score = score_from_notes(scale_notes(60, 8), program=0)
    score.tracks.append(score_from_notes(scale_notes(48, 8), program=33).tracks[0])
    toks = base_tokens(tok, tk.tokenize_score(tok, score))
    assert {"Program_0", "Program_33"} <= set(toks)
    assert any(t.startswith("Tempo_") for t in toks) and any(t.startswith("TimeSig_") for t in toks)


def test_train_only_on_train_split_and_round_trip(split_dataset, tmp_path, monkeypatch):
    root, info = split_dataset
    train = md.split_files(info, root, "train")
    held_out = md.split_files(info, root, "validation") + md.split_files(info, root, "test")
    path = tmp_path / "tok" / "tokenizer.json"
    tokenizer = tk.load_or_train_tokenizer(path, train, vocab_size=580)
    assert tk.training_files(path) == [os.fspath(p) for p in train]
    assert not set(tk.training_files(path)) & {os.fspath(p) for p in held_out}
    assert not list(path.parent.glob("*.tmp"))

    def no_training(*a, **k):
        raise AssertionError("a saved tokenizer must be loaded, not retrained")

    monkeypatch.setattr(tk, "train_tokenizer", no_training)
    loaded = tk.load_or_train_tokenizer(path, train, vocab_size=580)
    rebuilt = tk.tokenizer_from_params(tk.tokenizer_params(tokenizer))
    for p in train + held_out:
        ids = tk.tokenize_file(tokenizer, p)
        assert ids.dtype == np.int32 and len(ids) > 0
        np.testing.assert_array_equal(ids, tk.tokenize_file(loaded, p))
        np.testing.assert_array_equal(ids, tk.tokenize_file(rebuilt, p))
    assert tk.tokenizer_hash(loaded) == tk.tokenizer_hash(tokenizer) == tk.tokenizer_hash(rebuilt)


def test_training_needs_files(tmp_path):
    with pytest.raises(ValueError, match="no training files"):
        tk.load_or_train_tokenizer(tmp_path / "t.json", [], 600)


# -- chunking ------------------------------------------------------------------------------------
@pytest.mark.parametrize("max_seq_len", [8, 13, 32, 10_000])
def test_chunks_keep_every_token_and_the_tempo_and_metre_in_force(tok, max_seq_len):
    score = tempo_change_score(n_beats=48, bpm=90, bpm_later=160, change_beat=24)
    ids = tk.tokenize_score(tok, score)
    chunks = md.tokenize_to_chunks(tok, score, max_seq_len)
    sp = tk.special_ids(tok)
    bodies, start, after_change = [], 0, 0
    for i, chunk in enumerate(chunks):
        assert chunk.dtype == np.int32 and len(chunk) <= max_seq_len
        assert chunk[0] == sp.bos and chunk[-1] == sp.eos
        # the body continues the file where the previous chunk stopped, after 0-2 context tokens
        n_prefix = next(k for k in range(3) if np.array_equal(chunk[1 + k:-1], ids[start:start + len(chunk) - 2 - k]))
        assert i > 0 or n_prefix == 0
        prefix = base_tokens(tok, chunk[1:1 + n_prefix])
        assert all(t.startswith(("Tempo_", "TimeSig_")) for t in prefix)
        body = chunk[1 + n_prefix:-1]
        bodies.append(body)
        before = base_tokens(tok, ids[:start])
        seen = base_tokens(tok, chunk[1:-1])
        for kind in ("Tempo_", "TimeSig_"):
            in_force = [t for t in before if t.startswith(kind)]
            first_seen = next((t for t in seen if t.startswith(kind)), None)
            after_change += any(t.startswith("Tempo_16") for t in before) and \
                next(t for t in seen if t.startswith("Tempo_")) == "Tempo_161.94"
            states_it = any(t.startswith(kind) for t in base_tokens(tok, body[:1]))
            if in_force and not states_it:  # the first tempo / metre the chunk shows is the one in force
                assert first_seen == in_force[-1], (i, kind, seen[:6])
        start += len(body)
    np.testing.assert_array_equal(np.concatenate(bodies), ids)  # nothing lost, nothing repeated
    if max_seq_len == 10_000:
        assert len(chunks) == 1
    elif max_seq_len <= 13:
        assert after_change >= 2  # chunks starting after the change know the new tempo


def test_chunking_rejects_tiny_windows(tok):
    with pytest.raises(ValueError, match="max_seq_len"):
        md.tokenize_to_chunks(tok, tempo_change_score(), 4)


# -- datasets ------------------------------------------------------------------------------------
def _all(ds):
    return [ds[i] for i in range(len(ds))]


@pytest.mark.parametrize("chunks", ["all", "first"])
def test_dynamic_and_presaved_give_the_same_items(tok, split_dataset, tmp_path, chunks):
    root, info = split_dataset
    files = md.split_files(info, root, "train") + md.split_files(info, root, "validation")
    dyn = md.MIDIDatasetDynamic(files, tok, 16, chunks=chunks)
    pre = md.MIDIDatasetPresaved(files, tok, 16, tmp_path / "cache", chunks=chunks)
    assert len(dyn) == len(pre) >= len(files)
    if chunks == "first":
        assert len(pre) == len(files)
    for a, b in zip(_all(dyn), _all(pre)):
        assert a["input_ids"].dtype == b["input_ids"].dtype == md.torch.long
        assert a["input_ids"].tolist() == b["input_ids"].tolist()
        assert (a["file_index"], a["chunk_index"]) == (b["file_index"], b["chunk_index"])
    assert sorted({x["file_index"] for x in _all(pre)}) == list(range(len(files)))


def test_presaved_cache_is_reused_and_invalidated(tok, split_dataset, tmp_path, monkeypatch):
    root, info = split_dataset
    files = []
    for p in md.split_files(info, root, "train"):  # copies: this test rewrites one
        files.append(tmp_path / "midi" / p.name)
        files[-1].parent.mkdir(exist_ok=True)
        files[-1].write_bytes(p.read_bytes())
    calls = []
    real = md.tokenize_to_chunks
    monkeypatch.setattr(md, "tokenize_to_chunks", lambda t, p, n: calls.append(p) or real(t, p, n))
    first = _all(md.MIDIDatasetPresaved(files, tok, 16, tmp_path / "cache"))
    assert len(calls) == len(files)
    assert (tmp_path / "cache" / f"{tk.tokenizer_hash(tok)}-L16" / "index.json").is_file()

    calls.clear()
    again = _all(md.MIDIDatasetPresaved(files, tok, 16, tmp_path / "cache"))  # second run: no tokenization
    assert calls == [] and [x["input_ids"].tolist() for x in again] == [x["input_ids"].tolist() for x in first]

    other = tk.train_tokenizer(files, vocab_size=560)  # another vocabulary: another cache
    assert tk.tokenizer_hash(other) != tk.tokenizer_hash(tok)
    md.MIDIDatasetPresaved(files, other, 16, tmp_path / "cache")
    assert len(calls) == len(files)

    calls.clear()
    changed = files[0]
    tempo_change_score(n_beats=40, root=62).dump_midi(str(changed))  # a file that changed on disk
    os.utime(changed, ns=(os.stat(changed).st_atime_ns, os.stat(changed).st_mtime_ns + 10**9))
    ds = md.MIDIDatasetPresaved(files, tok, 16, tmp_path / "cache")
    assert calls == [os.path.abspath(changed)]
    assert _all(ds)[0]["input_ids"].tolist() == md.tokenize_to_chunks(tok, changed, 16)[0].tolist()


def test_build_cache_per_batch_then_dataset_reads_it(tok, split_dataset, tmp_path, monkeypatch):
    root, info = split_dataset
    files = md.split_files(info, root, "train") + md.split_files(info, root, "test")
    assert md.stale_files(files, tok, 32, tmp_path) == sorted(os.path.abspath(f) for f in files)
    summaries = [md.build_cache(tok, files[:2], 32, tmp_path), md.build_cache(tok, files[2:], 32, tmp_path)]
    assert md.stale_files(files, tok, 32, tmp_path) == []
    assert sum(s["files"] for s in summaries) == len(files) and not any(s["errors"] for s in summaries)
    monkeypatch.setattr(md, "tokenize_to_chunks", lambda *a: pytest.fail("cache should be complete"))
    ds = md.MIDIDatasetPresaved(files, tok, 32, tmp_path)
    assert len(ds) == sum(s["chunks"] for s in summaries)
    index = md.load_index(md.cache_root(tmp_path, tok, 32))  # the dataset merged both shards into index.json
    assert index["absorbed"] == 0 and len(index["shards"]) == 2 and len(index["files"]) == len(files)


def test_unreadable_files_are_skipped_and_reported(tok, tmp_path):
    good = write_tiny_midis(tmp_path / "midi", n=2)
    bad = tmp_path / "midi" / "broken.mid"
    bad.write_bytes(b"not a midi file")
    empty = tmp_path / "midi" / "empty.mid"
    symusic.Score(480).dump_midi(str(empty))
    files = [good[0], bad, empty, good[1]]
    with pytest.warns(UserWarning, match="2 of 4 MIDI files"):
        pre = md.MIDIDatasetPresaved(files, tok, 16, tmp_path / "cache")
    with pytest.warns(UserWarning, match="2 of 4 MIDI files"):
        dyn = md.MIDIDatasetDynamic(files, tok, 16)
    assert set(pre.errors) == set(dyn.errors) == {os.fspath(bad), os.fspath(empty)}
    assert "MidiDecodeError" in pre.errors[os.fspath(bad)] and "EmptyInputError" in pre.errors[os.fspath(empty)]
    assert {x["file_index"] for x in _all(pre)} == {x["file_index"] for x in _all(dyn)} == {0, 3}


def test_collate_pads_right_with_mask(tok):
    items = [{"input_ids": md.torch.tensor([1, 5, 6, 2]), "file_index": 0, "chunk_index": 0},
             {"input_ids": md.torch.tensor([1, 7, 2]), "file_index": 3, "chunk_index": 1}]
    batch = md.collate(items, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 2], [1, 7, 2, 0]]
    assert batch["attention_mask"].dtype == md.torch.bool
    assert batch["attention_mask"].tolist() == [[True] * 4, [True, True, True, False]]
    assert batch["file_index"].tolist() == [0, 3] and batch["chunk_index"].tolist() == [0, 1]


# -- splits --------------------------------------------------------------------------------------
def test_split_files(split_dataset):
    root, info = split_dataset
    assert [p.name for p in md.split_files(info, root, "train")] == ["tiny0.mid", "tiny2.mid", "tiny4.mid"]
    assert [p.name for p in md.split_files(info, root, "test")] == ["tiny3.mid"]
    with pytest.raises(ValueError, match="split must be one of"):
        md.split_files(info, root, "valid")
    with pytest.raises(ValueError, match="no 'split' column"):
        md.split_files(info.drop(columns=["split"]), root, "train")


def test_visualisation_set_is_deterministic_stratified_and_held_out(split_dataset):
    root, info = split_dataset
    paths, rows = md.visualisation_set(info, root, n=2, stratify="style")
    assert len(paths) == 2 and set(rows["split"]) <= {"validation", "test"}
    assert sorted(rows["style"]) == ["a", "b"] and "tiny1" in set(rows["id"])  # the only held-out "a"
    assert [p.name for p in paths] == [f"{i}.mid" for i in rows["id"]]
    again, rows2 = md.visualisation_set(info.sample(frac=1, random_state=1), root, n=2, stratify="style")
    assert again == paths and rows2["id"].tolist() == rows["id"].tolist()
    everything, _ = md.visualisation_set(info, root, n=100)
    assert len(everything) == 3 and set(paths) <= set(everything)


def test_untrained_tokenizer_chunks_too(tmp_path):
    """A vocab_size not above the base vocabulary leaves MidiTok untrained: base ids, same chunking."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = tk.train_tokenizer(write_tiny_midis(tmp_path), vocab_size=100)
    assert not base.is_trained
    score = tempo_change_score()
    ids = tk.tokenize_score(base, score)
    chunks = md.tokenize_to_chunks(base, score, 16)
    inv = {v: k for k, v in base.vocab.items()}
    assert len(chunks) > 3 and all(len(c) <= 16 for c in chunks)
    late = [inv[int(i)] for i in chunks[-1][1:3]]
    assert late == ["TimeSig_3/4", "Tempo_161.94"]
    assert sum(len(c) - 2 for c in chunks) >= len(ids)
