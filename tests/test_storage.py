"""embedders.store.filesystem: local paths, file:// URIs and remote URIs (fsspec memory://, and S3 on a local
moto server on 127.0.0.1 reached through pyarrow's own S3 client), and the jobs on remote stores."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pytest

from embedders.base import ConfigError, MissingFileError
from embedders.dataset import InfoCsvError, info_hash, read_info_csv, unsafe_path_reason
from embedders.io import read_bytes
from embedders.store import filesystem as fs
from embedders.store.parts import (
    ShardWriter,
    StoreError,
    iter_part_batches,
    part_description,
    part_files,
    prepare_medium,
    read_errors,
    read_parquet,
    read_parquet_schema,
    stored_embedders,
    write_errors,
    write_parquet,
)
from tests.conftest import S3_BUCKET
from tests.factory import make_dataset

BUCKET = S3_BUCKET  # the session's moto server (tests/conftest.py: s3_server, s3)


@pytest.fixture(params=["local", "file", "memory", "s3"])
def root(request, tmp_path):
    """A fresh, empty location of each kind."""
    if request.param == "local":
        return tmp_path / "store"
    if request.param == "file":
        return (tmp_path / "store").as_uri()
    if request.param == "memory":
        return f"memory://avs-{uuid.uuid4().hex}/store"
    request.getfixturevalue("s3")
    return f"s3://{BUCKET}/{uuid.uuid4().hex}/store"


# ---------------------------------------------------------------------------------------------
# Names and paths
# ---------------------------------------------------------------------------------------------
def test_schemes_joins_and_local_paths(tmp_path):
    assert fs.join("data", "raw", "x") == Path("data/raw/x")
    assert fs.join("s3://b/data/", "raw", "x/", "/y.wav") == "s3://b/data/raw/x/y.wav"
    assert fs.join("gs://b", "a\\b.wav") == "gs://b/a/b.wav"
    assert fs.join(tmp_path.as_uri(), "a") == tmp_path / "a"
    assert [fs.is_remote(x) for x in ("s3://b", "GS://b/x", "memory://m", "file:///x", "data", Path("s3:/x"))] \
        == [True, True, True, False, False, False]
    assert fs.scheme("GS://b") == "gs" and fs.scheme(Path("x")) == ""
    assert fs.name("s3://b/x/y.h5/") == "y.h5" and fs.name(tmp_path / "z.h5") == "z.h5"
    assert fs.display("s3://b/x") == "s3://b/x" and fs.display("rel") == str(Path("rel").absolute())
    with pytest.raises(fs.StorageError, match="host"):
        fs.local_path("file://otherhost/x")
    with pytest.raises(fs.StorageError, match="remote URI"):
        fs.local_path("s3://b/x")
    with pytest.raises(fs.StorageError, match="query strings"):
        fs.resolve("s3://b/x?endpoint_override=elsewhere")
    with pytest.raises(fs.StorageError, match="nosuchproto"):
        fs.resolve("nosuchproto://b/x")


@pytest.mark.parametrize("relative, reason", [
    ("audio/a.wav", None), ("a b/ü.wav", None), ("./audio/a.wav", None),
    ("/etc/passwd", "absolute"), ("C:\\x.wav", "absolute"), ("C:x.wav", "absolute"), ("\\\\srv\\share\\x", "absolute"),
    ("../x.wav", "'..'"), ("audio/../../x.wav", "'..'"), ("audio\\..\\..\\x.wav", "'..'"),
    ("s3://other-bucket/x.wav", "URI"), ("gs:/b/x.wav", "URI"), ("file:///etc/passwd", "URI"),
])
def test_item_paths_are_checked_as_strictly_on_remote_roots(relative, reason, tmp_path):
    for root in (tmp_path, "s3://bucket/raw/ds", "gs://bucket/raw/ds"):
        got = unsafe_path_reason(root, relative)
        assert (got is None) if reason is None else (reason in got), (root, relative, got)


# ---------------------------------------------------------------------------------------------
# One behaviour on every kind of location
# ---------------------------------------------------------------------------------------------
def test_files_folders_and_missing_things(root):
    a, b = fs.join(root, "x", "a.bin"), fs.join(root, "x", "sub", "b.txt")
    assert not fs.exists(a) and fs.glob(fs.join(root, "x"), "*") == [] and fs.list_dirs(root) == []
    fs.write_bytes(a, b"\x00abc")
    fs.write_bytes(b, b"hello")
    assert fs.read_bytes(a) == b"\x00abc" and fs.file_size(b) == 5
    assert fs.is_file(a) and not fs.is_file(fs.join(root, "x")) and fs.exists(fs.join(root, "x"))
    assert fs.glob(fs.join(root, "x"), "*.bin") == [a]
    assert fs.list_dirs(fs.join(root, "x")) == ["sub"]
    with pytest.raises(FileNotFoundError):
        fs.read_bytes(fs.join(root, "x", "nope"))
    with pytest.raises(FileNotFoundError):
        fs.read_bytes(fs.join(root, "x"))  # a folder is not a file
    fs.remove(a)
    fs.remove(a)  # missing is fine
    assert not fs.exists(a)
    if fs.is_remote(root):
        with pytest.raises(MissingFileError, match=r"rec7.*file not found"):
            read_bytes(fs.join(root, "nope.wav"), "rec7")


def test_parquet_round_trip(root):
    table = pa.table({"id": ["a", "b"], "v": [1.5, 2.5]}).replace_schema_metadata({b"k": b"v"})
    path = fs.join(root, "t", "part-1.parquet")
    write_parquet(table, path)
    assert read_parquet(path).equals(table)
    assert read_parquet(path, columns=("v",)).column_names == ["v"]
    assert read_parquet_schema(path).metadata[b"k"] == b"v"


def test_local_copies_and_outputs(root):
    fs.write_bytes(fs.join(root, "in", "a.txt"), b"A")
    fs.write_bytes(fs.join(root, "in", "deep", "b.txt"), b"B")
    with fs.local_copy(fs.join(root, "in")) as local:
        assert (local / "a.txt").read_bytes() == b"A" and (local / "deep" / "b.txt").read_bytes() == b"B"
    with fs.local_copy(fs.join(root, "in", "a.txt")) as local:
        assert local.read_bytes() == b"A"
    if fs.is_remote(root):
        assert not local.exists()  # the temporary copy is gone
        with pytest.raises(FileNotFoundError):
            with fs.local_copy(fs.join(root, "missing")):
                pass
    with fs.local_copy(fs.join(root, "missing"), missing_ok=True) as local:
        assert not local.exists()

    with fs.local_output_dir(fs.join(root, "out")) as out:
        (out / "r").mkdir()
        (out / "r" / "report.html").write_text("<html/>")
        (out / "metrics.json").write_text("{}")
    assert fs.read_bytes(fs.join(root, "out", "r", "report.html")) == b"<html/>"
    assert fs.read_bytes(fs.join(root, "out", "metrics.json")) == b"{}"
    with pytest.raises(RuntimeError):
        with fs.local_output_dir(fs.join(root, "failed")) as out:
            (out / "half.json").write_text("{")
            raise RuntimeError("the job failed")
    assert fs.exists(fs.join(root, "failed", "half.json")) == (not fs.is_remote(root))

    with fs.local_output_file(fs.join(root, "h5", "e.h5")) as local:
        with h5py.File(local, "w") as f:
            f["x"] = np.arange(3)
    with fs.local_copy(fs.join(root, "h5", "e.h5")) as local, h5py.File(local) as f:
        assert f["x"][...].tolist() == [0, 1, 2]


def test_staged_dir_resumes_from_and_returns_to_its_location(root, tmp_path, monkeypatch):
    monkeypatch.setenv("AVS_STAGE_DIR", str(tmp_path / "stage"))
    target = fs.join(root, "sweep")
    with fs.staged_dir(target) as work:
        (work / "task_a.json").write_text("done")
        first = work
    with pytest.raises(RuntimeError):  # a failed run keeps what it finished
        with fs.staged_dir(target) as work:
            assert (work / "task_a.json").read_text() == "done"  # the previous run's output came down
            assert work == first  # the same staging path on every rerun (MLflow records absolute paths)
            (work / "task_b.json").write_text("done")
            raise RuntimeError("task c failed")
    assert fs.read_bytes(fs.join(target, "task_b.json")) == b"done"
    if fs.is_remote(root):
        assert not first.exists()  # the staging copy is removed once uploaded


def test_info_csv_on_every_kind_of_root(root, tmp_path):
    local = make_dataset(tmp_path / "ds", n=2)
    rows = (local / "info.csv").read_text().splitlines()
    dataset = fs.join(root, "raw", "ds")
    fs.write_bytes(fs.join(dataset, "info.csv"), (local / "info.csv").read_bytes())
    info = read_info_csv(dataset)
    assert info["id"].tolist() == ["rec0", "rec1"] and info["bpm"].dtype.kind == "f"
    assert info_hash(dataset) == hashlib.sha256((local / "info.csv").read_bytes()).hexdigest()
    bad = rows + ["x1,s3://elsewhere/a.wav,midi/a.mid,jazz,1,train", "x2,../../a.wav,midi/a.mid,jazz,1,train",
                  "x3,/abs/a.wav,midi/a.mid,jazz,1,train"]
    fs.write_bytes(fs.join(dataset, "info.csv"), "\n".join(bad).encode())
    message = str(pytest.raises(InfoCsvError, read_info_csv, dataset).value)
    assert all(s in message for s in ("'x1'", "URI", "'x2'", "'..'", "'x3'", "absolute"))
    with pytest.raises(InfoCsvError, match="not found"):
        read_info_csv(fs.join(root, "raw", "nope"))


def test_store_shards_and_errors_on_every_kind_of_root(root):
    emb = fs.join(root, "embeddings", "ds")
    A = "audio_embeddings"
    writer = ShardWriter(emb, A, "melstats", "hash1", {"dim": 2, "config_hash": "hash1"}, rows_per_part=2)
    for k in range(3):
        writer.add(f"r{k}", np.full((k + 1, 2), k, np.float32))
    writer.flush()
    assert writer.parts_written == 2 and len(part_files(emb, A, "melstats")) == 2
    assert stored_embedders(emb, A) == ["melstats"] and stored_embedders(emb, "symbolic_embeddings") == []
    assert prepare_medium(emb, A, "melstats", "hash1").done_ids == {"r0", "r1", "r2"}
    assert part_description(emb, A, "melstats")["config_hash"] == "hash1"
    rows = list(iter_part_batches(emb, A, "melstats"))
    assert sorted(i for part in rows for i in part["id"]) == ["r0", "r1", "r2"]
    with pytest.raises(StoreError, match="--overwrite"):
        prepare_medium(emb, A, "melstats", "hash2")
    write_errors(emb, [{"id": "r9", "medium": A, "embedder": "melstats", "stage": "decode",
                        "error_type": "MissingFileError", "message": "gone"}])
    assert [e["id"] for e in read_errors(emb)] == ["r9"]
    assert write_errors(emb, [], resolved=[("r9", A, "melstats")]) == 0
    assert prepare_medium(emb, A, "melstats", "hash2", overwrite=True).removed_parts == 2
    assert part_files(emb, A, "melstats") == []


# ---------------------------------------------------------------------------------------------
# The jobs on S3
# ---------------------------------------------------------------------------------------------
def upload_tree(local: Path, uri: str) -> None:
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        fs.write_bytes(fs.join(uri, *path.relative_to(local).parts), path.read_bytes())


@pytest.mark.slow
def test_generate_and_compare_embeddings_on_s3(s3, ray_session, tmp_path, capsys):
    """generate_embeddings reads info.csv, audio and MIDI from S3 inside its Ray tasks, writes the
    Parquet parts and errors.parquet there, uploads embeddings.h5, and resumes from the remote
    store; compare_embeddings reads that file and writes its outputs to S3."""
    from ray_jobs.generate_embeddings import job as generate_embeddings

    local = make_dataset(tmp_path / "toy", n=20, seconds=2.0, extra_rows=[
        {"id": "gone", "audio_filename": "audio/gone.wav", "midi_filename": "midi/rec0.mid", "style": "jazz",
         "bpm": 1, "split": "train"}])
    data_root = f"s3://{BUCKET}/{uuid.uuid4().hex}/data"
    upload_tree(local, fs.join(data_root, "raw", "toy"))
    # On the session's Ray, whose workers inherit the AWS_* settings (the S3 server started before it),
    # as the nodes of a cluster have theirs (instance profiles) in their environment.
    argv = ["--dataset", "toy", "--data_root", data_root, "--num_cpus", "2", "--batch_size", "8", "--rows_per_part", "8"]
    assert generate_embeddings.main(argv) == 0, capsys.readouterr()
    emb = fs.join(data_root, "embeddings", "toy")
    parts = part_files(emb, "audio_embeddings", "melstats")
    ids = [read_parquet(p, columns=["id"]).column("id").to_pylist() for p in parts]
    # 20 rows (the 21st failed), at most 8 per part (a worker call writes one part per medium: a few calls per worker)
    assert sorted(i for part in ids for i in part) == sorted(f"rec{k}" for k in range(20))
    assert all(1 <= len(part) <= 8 for part in ids)
    assert [(e["id"], e["medium"], e["error_type"]) for e in read_errors(emb)] == \
        [("gone", "audio_embeddings", "MissingFileError")]
    with fs.local_copy(fs.join(emb, "embeddings.h5")) as h5, h5py.File(h5) as f:
        assert f["audio_embeddings/melstats/valid"][...].sum() == 20
        assert f["symbolic_embeddings/pianoroll/valid"][...].sum() == 21
        assert f["audio_embeddings/melstats/average"].shape == (21, 161)
    summary = json.loads(fs.read_bytes(fs.join(emb, "summary.json")))
    assert summary["h5_path"] == fs.join(emb, "embeddings.h5")

    capsys.readouterr()
    assert generate_embeddings.main(argv) == 0
    second = capsys.readouterr().out
    assert "20 already embedded, 1 to do" in second and "21 already embedded, 0 to do" in second
    assert part_files(emb, "audio_embeddings", "melstats") == parts  # resumed: nothing written twice

    from ray_jobs.compare_embeddings import job as compare_embeddings

    out = f"s3://{BUCKET}/{uuid.uuid4().hex}/compare"
    assert compare_embeddings.main(["--h5_path", fs.join(emb, "embeddings.h5"), "--output_dir", out,
                                    "--label", "style", "--n_permutations", "20", "--n_boot", "20"]) == 0
    assert sorted(fs.name(p) for p in fs.glob(out, "*")) == \
        ["metrics.csv", "metrics.json", "null_distributions.npz", "report.html"]
    metrics = json.loads(fs.read_bytes(fs.join(out, "metrics.json")))
    assert metrics["inputs"]["h5_path"] == fs.join(emb, "embeddings.h5") and metrics["counts"]["paired"] == 20
    assert compare_embeddings.main(["--h5_path", fs.join(emb, "nope.h5"), "--output_dir", out]) == 2


def test_prepare_dataset_tasks_write_straight_to_s3(s3):
    """A prepare_dataset task writes MIDI, WAV and its record to the store from its own node;
    a rerun finds them there (resume needs no local copy)."""
    import dataclasses

    from ray_jobs.prepare_dataset import job as prep
    from ray_jobs.prepare_dataset.recipes import music21 as db

    dataset = f"s3://{BUCKET}/{uuid.uuid4().hex}/data/raw/m21"
    work = db.make_work("bach", "bach/bwv66.6.mxl", None, 40.0, "4/4", False)
    row = prep.build_one({"work": json.dumps(dataclasses.asdict(work))}, dataset_dir=dataset,
                         soundfont=prep.default_soundfont(), seed=0, max_seconds=4.0, program=0, settings_hash="h1")
    assert row["status"] == "built", row["reason"]
    record = prep.load_done(dataset, work.id, "h1")
    assert record is not None and record["audio_filename"] == f"audio/{work.id}.wav"
    assert fs.read_bytes(fs.join(dataset, record["midi_filename"]))[:4] == b"MThd"
    assert fs.read_bytes(fs.join(dataset, record["audio_filename"]))[:4] == b"RIFF"
    assert prep.load_done(dataset, work.id, "other-settings") is None
    fs.remove(fs.join(dataset, record["audio_filename"]))
    assert prep.load_done(dataset, work.id, "h1") is None  # a missing file means: build it again


@pytest.mark.slow
def test_train_classifier_and_sweep_on_s3(s3, tmp_path, capsys, monkeypatch):
    """Both read embeddings.h5 from S3 and write their outputs there; a rerun of the sweep finds its
    finished tasks on S3 and skips them without new MLflow runs."""
    import mlflow

    from ray_jobs.sweep import job as sweep
    from ray_jobs.train_classifier import job as train_classifier
    from tests.sweep_factory import SWEEP_ARGS, tiny_store

    base = f"s3://{BUCKET}/{uuid.uuid4().hex}"
    h5 = tiny_store(tmp_path / "store")
    fs.write_bytes(f"{base}/embeddings.h5", h5.read_bytes())
    monkeypatch.setenv("AVS_STAGE_DIR", str(tmp_path / "stage"))
    assert train_classifier.main(["--h5_path", f"{base}/embeddings.h5", "--medium", "audio_embeddings",
                                  "--label", "style", "--num_epochs", "3", "--save_dir", f"{base}/clf"]) == 0
    for name in ("best_model.pth", "training_history.json", "confusion_matrix.json", "confusion_matrix.png"):
        assert fs.is_file(f"{base}/clf/{name}"), name
    assert train_classifier.main(["--h5_path", f"{base}/embeddings.h5", "--medium", "audio_embeddings",
                                  "--label", "style", "--model_path", f"{base}/clf/best_model.pth",
                                  "--save_dir", f"{base}/eval"]) == 0
    assert fs.is_file(f"{base}/eval/evaluation.json")

    args = ["--h5_path", f"{base}/embeddings.h5", "--output_dir", f"{base}/sweep", *SWEEP_ARGS,
            "--media", "audio_embeddings", "--labels", "style"]
    assert sweep.main(args) == 0
    assert b"style" in fs.read_bytes(f"{base}/sweep/summary.csv")
    recorded = json.loads(fs.read_bytes(f"{base}/sweep/sweep.json"))
    assert recorded["search"]["h5_path"] == f"{base}/embeddings.h5"

    def runs() -> int:
        with fs.local_copy(f"{base}/sweep/mlflow.db") as db:
            return len(mlflow.MlflowClient(f"sqlite:///{db}").search_runs(["1"], max_results=1000))

    before = runs()
    capsys.readouterr()
    assert sweep.main(args) == 0
    assert "1 task(s) already finished" in capsys.readouterr().out
    assert runs() == before > 0


@pytest.mark.slow
def test_pretrain_reads_its_dataset_from_s3_and_writes_there(s3, tmp_path, monkeypatch):
    """dataset.data_root and output_dir as S3 URIs: info.csv and the MIDI files (never the audio)
    are staged locally, the model and its metrics land on S3, and a rerun reuses the staged files."""
    from ray_jobs.pretrain.job import run
    from tests.test_pretrain import make_cfg, tiny_dataset

    monkeypatch.setenv("AVS_STAGE_DIR", str(tmp_path / "stage"))
    local = tiny_dataset(tmp_path / "src")
    (local / "audio").mkdir()
    (local / "audio" / "big.wav").write_bytes(b"RIFF" + bytes(1000))  # must not be copied
    base = f"s3://{BUCKET}/{uuid.uuid4().hex}"
    upload_tree(local, f"{base}/data/raw/tiny")
    cfg = make_cfg(tmp_path, f"dataset.data_root={base}/data", f"output_dir={base}/results", "ray.num_workers=1",
                   "train.epochs=1", "mlflow.viz_interval=0")  # the pages are test_pretrain's
    summary = run(cfg)
    assert summary["model_path"] == f"{base}/results/tiny_model/model.pt"
    for name in ("model.pt", "test_metrics.json", "history.json"):
        assert fs.is_file(f"{base}/results/tiny_model/{name}"), name
    assert fs.is_file(f"{base}/results/mlflow.db")
    (staged_root,) = (tmp_path / "stage").glob("data-*")
    assert sorted(p.name for p in (staged_root / "raw" / "tiny").iterdir()) == ["info.csv", "midi"]
    assert len(list((staged_root / "raw" / "tiny" / "midi").glob("*.mid"))) == 10
    assert list((staged_root / "tokenizers").glob("tiny_remi_bpe600.json"))
    assert not (tmp_path / "s3:").exists() and not Path("s3:").exists()  # no local folder named after the URI

    from ray_jobs.pretrain.staging import stage_dataset
    assert stage_dataset(f"{base}/data/raw/tiny", staged_root / "raw" / "tiny") == {"copied": 0, "kept": 10,
                                                                                     "missing": 0}


@pytest.mark.slow
def test_embedder_checkpoint_from_s3(s3, ray_session, tmp_path, monkeypatch):
    """--symbolic_checkpoint as an S3 URI: each node keeps one local copy; the vectors equal those
    from the same file given as a local path, and the store names where the weights came from."""
    from ray_jobs.generate_embeddings import job as generate_embeddings
    from ray_jobs.generate_embeddings.pipeline import local_options
    from tests.midi_model_factory import tiny_checkpoint

    monkeypatch.setenv("AVS_STAGE_DIR", str(tmp_path / "stage"))
    local_ckpt = tiny_checkpoint(tmp_path / "ckpt")
    uri = f"s3://{BUCKET}/{uuid.uuid4().hex}/model.pt"
    fs.write_bytes(uri, local_ckpt.read_bytes())
    copy = Path(local_options({"checkpoint": uri})["checkpoint"])
    assert copy.read_bytes() == local_ckpt.read_bytes() and copy.is_relative_to(tmp_path / "stage")
    assert local_options({"checkpoint": str(local_ckpt)}) == {"checkpoint": str(local_ckpt)}
    with pytest.raises(ConfigError, match="no such file"):
        local_options({"checkpoint": f"s3://{BUCKET}/missing/model.pt"})

    make_dataset(tmp_path / "raw" / "toy", n=4, seconds=2.0)
    # On the session's Ray: its workers inherit the AWS_* settings (cluster nodes have theirs); they
    # stage the checkpoint in the session's AVS_STAGE_DIR (tests/conftest.py)
    args = ["--dataset", "toy", "--data_root", str(tmp_path), "--media", "symbolic_embeddings",
            "--symbolic_embedder", "midi_transformer", "--num_cpus", "2"]
    assert generate_embeddings.main([*args, "--symbolic_checkpoint", uri]) == 0
    with h5py.File(tmp_path / "embeddings/toy/embeddings.h5") as f:
        remote = f["symbolic_embeddings/midi_transformer/average"][...]
        assert uri in f["symbolic_embeddings/midi_transformer"].attrs["description"]
    assert generate_embeddings.main([*args, "--symbolic_checkpoint", str(local_ckpt), "--overwrite"]) == 0
    with h5py.File(tmp_path / "embeddings/toy/embeddings.h5") as f:
        np.testing.assert_array_equal(f["symbolic_embeddings/midi_transformer/average"][...], remote)
