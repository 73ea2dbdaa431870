"""The legacy reader against a file written by hand in the original tool's layout (not by our export).

The original project wrote one HDF5 group per recording and medium::

    /<medium>/rec_<k>/sequence   (T, D)
    /<medium>/rec_<k>/average    (D,)
    /<medium>/rec_<k>/<column>   every info.csv column as a string, id included

with ``rec_<k>`` counted separately per medium over the recordings that succeeded there. The file
below is written with h5py directly, with what such files really hold and our own export never
writes: k counted in another order in each medium (the symbolic one in the order workers finished),
more than ten records (rec_10 sorts before rec_2 as text), one recording present in only one medium
(each way), ids that look like numbers ("007"), strings stored both as fixed-length bytes and as
variable-length UTF-8 (non-ASCII included), numbers as strings, an empty numeric cell, float64 arrays
in one medium and float32 in the other, and stored averages that are not the mean of the stored
frames (the original's average is whatever it stored; a reader must not recompute it).

Then the reader (``embedders.store.reader.load`` / ``load_pair``) and two jobs (train_classifier,
compare_embeddings) read it: rows are paired by id, numeric columns come back as numbers, and the
arrays are exactly what was written.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from embedders.store.reader import load, load_pair

A, S = "audio_embeddings", "symbolic_embeddings"
N, DIM = 40, 6
IDS = [f"{i:03d}" for i in range(1, N + 1)]
ONLY_SYMBOLIC, ONLY_AUDIO = "013", "027"
STYLES = ("jazz", "rock", "funk", "soul")
# Written as fixed-length bytes (np.bytes_), the rest as variable-length UTF-8: files of that age hold both.
BYTES_COLUMNS = ("split", "tempo", "player", "audio_filename")


def _recordings(seed: int = 0) -> dict:
    """What the file will hold, per id: metadata strings and each medium's (sequence, average)."""
    rng = np.random.default_rng(seed)
    centres = {s: rng.standard_normal(DIM) * 4 for s in STYLES}
    q, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    shift = rng.standard_normal(DIM) * 2
    out = {}
    for i, item_id in enumerate(IDS):
        style = STYLES[i % 4]
        meta = {
            "id": item_id, "audio_filename": f"audio/{item_id}.wav", "midi_filename": f"midi/{item_id}.mid",
            "style": style, "tempo": f"{90 + 1.25 * i}", "n_bars": str(8 + i % 3),
            "player": f"Jöns {i // 4}", "split": ("train", "train", "val", "test")[i // 4 % 4],
            # one empty cell in a numeric column (a recording whose duration was unknown)
            "duration": "" if item_id == "005" else f"{30 + i}.5",
        }
        frames = centres[style] + 0.3 * rng.standard_normal((int(rng.integers(2, 6)), DIM))
        audio_avg = frames.mean(0) + 0.1 * rng.standard_normal(DIM)  # not the frames' mean, on purpose
        sym_frames = rng.standard_normal((int(rng.integers(1, 4)), DIM - 2))
        # the symbolic average is an exact rotation (+ shift) of the audio average: CKA 1 iff paired by id
        sym_avg = audio_avg @ q + shift
        out[item_id] = {"meta": meta, A: (frames.astype(np.float32), audio_avg.astype(np.float32)),
                        S: (sym_frames, sym_avg)}  # float64: the reader must hand back float32
    return out


def _write_string(group, name: str, value: str) -> None:
    if name in BYTES_COLUMNS:
        group.create_dataset(name, data=np.bytes_(value.encode("utf-8")))
    else:
        group.create_dataset(name, data=value, dtype=h5py.string_dtype("utf-8"))


def write_original_layout(path, recordings: dict, seed: int = 1) -> dict[str, list[str]]:
    """Write ``recordings`` in the original per-recording layout; returns each medium's ids in rec_k order."""
    rng = np.random.default_rng(seed)
    order = {A: [i for i in IDS if i != ONLY_SYMBOLIC],                            # info.csv order
             S: list(rng.permutation([i for i in IDS if i != ONLY_AUDIO]))}       # completion order
    with h5py.File(path, "w") as f:
        for medium, ids in order.items():
            group = f.create_group(medium)
            for k, item_id in enumerate(ids):
                rec = group.create_group(f"rec_{k}")
                sequence, average = recordings[item_id][medium]
                rec.create_dataset("sequence", data=sequence)
                rec.create_dataset("average", data=average)
                for column, value in recordings[item_id]["meta"].items():
                    _write_string(rec, column, value)
    return order


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    path = tmp_path_factory.mktemp("original") / "embeddings.h5"
    recordings = _recordings()
    order = write_original_layout(path, recordings)
    return path, recordings, order


@pytest.mark.parametrize("medium", [A, S])
def test_each_medium_reads_back_what_was_written(original, medium):
    path, recordings, order = original
    avg = load(path, medium, embedding_type="average")
    seq = load(path, medium, embedding_type="sequence")
    # rows in rec_k order, counted as numbers (rec_10 after rec_9), ids untouched
    assert list(avg.ids) == list(seq.ids) == order[medium]
    assert avg.embedder == "legacy" and avg.embeddings.dtype == np.float32 and avg.embeddings.shape == (N - 1, DIM)
    for k, item_id in enumerate(avg.ids):
        sequence, average = recordings[item_id][medium]
        np.testing.assert_array_equal(avg.embeddings[k], average.astype(np.float32))
        np.testing.assert_array_equal(seq.embeddings[k], sequence.astype(np.float32))
        assert seq.embeddings[k].dtype == np.float32


def test_metadata_strings_come_back_typed(original):
    path, recordings, order = original
    meta = load(path, S).metadata
    assert len(meta) == N - 1 and set(meta.columns) == set(recordings["001"]["meta"])
    assert meta["id"].tolist() == order[S]                         # "007" stays "007", not 7
    written = [recordings[i]["meta"] for i in order[S]]
    assert meta["tempo"].dtype.kind == "f" and meta["tempo"].tolist() == [float(m["tempo"]) for m in written]
    assert meta["n_bars"].dtype.kind == "i" and meta["n_bars"].tolist() == [int(m["n_bars"]) for m in written]
    duration = meta["duration"].to_numpy()
    assert duration.dtype.kind == "f"
    for value, m in zip(duration, written):                        # the empty cell is NaN, the rest numbers
        assert np.isnan(value) if m["duration"] == "" else value == float(m["duration"])
    for column in ("player", "split", "style", "audio_filename"):  # text stays text, bytes decoded as UTF-8
        assert meta[column].tolist() == [m[column] for m in written]


@pytest.mark.parametrize("embedding_type", ["average", "sequence"])
def test_load_pair_pairs_by_id_not_by_rec_number(original, embedding_type):
    path, recordings, order = original
    pair = load_pair(path, embedding_type=embedding_type, label="tempo")
    expected = [i for i in order[A] if i in set(order[S])]
    assert list(pair.ids) == expected and ONLY_AUDIO not in expected and ONLY_SYMBOLIC not in expected
    assert pair.counts["paired"] == N - 2
    assert pair.counts["valid_audio"] == pair.counts["valid_symbolic"] == N - 1
    assert pair.counts["dropped"] >= 1   # (the exact count is test_counts_of_a_legacy_file_see_every_recording's)
    for k, item_id in enumerate(pair.ids):
        pick = 0 if embedding_type == "sequence" else 1
        np.testing.assert_array_equal(pair.audio[k], recordings[item_id][A][pick].astype(np.float32))
        np.testing.assert_array_equal(pair.symbolic[k], recordings[item_id][S][pick].astype(np.float32))
        assert pair.labels[k] == float(recordings[item_id]["meta"]["tempo"])
        assert pair.metadata["id"][k] == item_id
    assert pair.labels.dtype.kind == "f"


def test_counts_of_a_legacy_file_see_every_recording(original):
    path, _, _ = original
    counts = load_pair(path).counts
    assert counts["rows_in_file"] == N and counts["dropped"] == 2


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_train_classifier_on_the_original_file(original, tmp_path, one_thread):
    from ray_jobs.train_classifier.job import main

    path, recordings, order = original
    out = tmp_path / "run"
    assert main(["--h5_path", str(path), "--medium", A, "--label", "style", "--model", "linear",
                 "--num_epochs", "10", "--learning_rate", "0.1", "--save_dir", str(out)]) == 0
    history = json.loads((out / "training_history.json").read_text())
    assert history["provenance"]["embedder"] == "legacy"
    # shared rows (default --rows shared): the recording without symbolic embeddings is not trained on
    shared = [i for i in order[A] if i in set(order[S])]
    test_ids = [i for i in shared if recordings[i]["meta"]["split"] == "test"]
    assert history["test"]["accuracy"] == 1.0   # four centres 4 sd apart, 0.3 sd noise: separable
    items = history["test_items"]                 # the per-item test records name the rows and their labels
    assert items["test_ids"] == test_ids
    assert items["test_targets"] == [recordings[i]["meta"]["style"] for i in test_ids]
    assert history["provenance"]["rows_used"] == len(shared)


def test_compare_embeddings_on_the_original_file(original, tmp_path):
    from ray_jobs.compare_embeddings import job as compare_embeddings

    path, _, _ = original
    out = tmp_path / "compare"
    assert compare_embeddings.main(["--h5_path", str(path), "--output_dir", str(out), "--standardize", "none",
                                    "--n_permutations", "19", "--n_boot", "20"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["counts"]["paired"] == N - 2
    assert (metrics["inputs"]["audio_embedder"], metrics["inputs"]["symbolic_embedder"]) == ("legacy", "legacy")
    # the symbolic averages are a rotation of the audio ones: CKA 1 only when rows are paired by id
    cka = metrics["spaces"]["metrics"]["linear_cka"]["value"]
    assert cka == pytest.approx(1.0, abs=1e-5)
