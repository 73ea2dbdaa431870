"""The pretraining job: config validation, a short 2-worker DDP run on Ray Train, failure recovery, rerun."""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException

from ray_jobs.pretrain.config import PretrainConfigError, register_schema, validate
from tests.midi_model_factory import write_tiny_midis

register_schema()


def make_cfg(tmp_path: Path, *overrides: str):
    base = [
        f"dataset.data_root={tmp_path / 'data'}", "dataset.name=tiny", "dataset.vocab_size=600", "dataset.limit=null",
        f"output_dir={tmp_path / 'results'}", "train.max_seq_len=64", "train.embed_dim=32", "train.nhead=2",
        "train.num_layers=1", "train.batch_size=4", "train.epochs=2", "train.warmup_steps=2",
        "train.model_name=tiny_model", "mlflow.viz_interval=1", "mlflow.color_by=style", "ray.num_workers=2",
    ]
    with initialize_config_module(config_module="ray_jobs.pretrain.configs", version_base=None):
        return compose(config_name="config", overrides=[*base, *overrides])


def tiny_dataset(tmp_path: Path) -> Path:
    root = tmp_path / "data" / "raw" / "tiny"
    files = write_tiny_midis(root / "midi", n=10)
    splits = ["train"] * 6 + ["validation"] * 2 + ["test"] * 2
    pd.DataFrame({
        "id": [f.stem for f in files], "audio_filename": [f"audio/{f.stem}.wav" for f in files],
        "midi_filename": [f"midi/{f.name}" for f in files], "style": ["a", "b"] * 5, "split": splits,
    }).to_csv(root / "info.csv", index=False)
    return root


def test_default_configs_compose_and_validate(tmp_path):
    with initialize_config_module(config_module="ray_jobs.pretrain.configs", version_base=None):
        for name in ("config", "large_model"):
            cfg = compose(config_name=name, overrides=[f"output_dir={tmp_path}"])
            validate(cfg)
            assert cfg.train.embed_dim % cfg.train.nhead == 0
        assert compose(config_name="large_model").train.model_name == "embed_model_large"


def test_unknown_key_and_wrong_type_fail_fast(tmp_path):
    with pytest.raises(ConfigCompositionException, match="embed_dimm"):
        make_cfg(tmp_path, "train.embed_dimm=3")
    with pytest.raises(ConfigCompositionException, match="batch_size"):
        make_cfg(tmp_path, "train.batch_size=lots")


def test_bad_values_are_listed(tmp_path):
    cfg = make_cfg(tmp_path, "train.embed_dim=30", "train.nhead=4", "train.dropout=1.5", "ray.num_workers=0")
    with pytest.raises(PretrainConfigError) as err:
        validate(cfg)
    message = str(err.value)
    assert "train.embed_dim (30) must be a positive multiple of train.nhead (4)" in message
    assert "train.dropout" in message and "ray.num_workers" in message


def failing_once(marker: Path):
    """The worker loop, dying once right after rank 0 reported epoch 0 (so its checkpoint exists);
    ``marker`` records the failure, and the restarted workers, seeing it, go on."""
    from training.pretrain_worker import train_loop_per_worker

    def loop(cfg):
        import ray.train

        report = ray.train.report

        def report_then_fail(metrics, *args, **kwargs):
            report(metrics, *args, **kwargs)
            if metrics["epoch"] == 0 and ray.train.get_context().get_world_rank() == 0 and not marker.exists():
                marker.write_text("failed after epoch 0\n")
                raise RuntimeError("injected worker failure after epoch 0")

        ray.train.report = report_then_fail
        try:
            train_loop_per_worker(cfg)
        finally:
            ray.train.report = report

    return loop


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m ray_jobs.pretrain ARGS`` as a user runs it (this worktree first on the path)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "HYDRA_FULL_ERROR": ""}
    return subprocess.run([sys.executable, "-m", "ray_jobs.pretrain", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, expected", [
    (["dataset.name=nope"], ["dataset.name=nope", "raw/nope/info.csv not found"]),
    (["dataset.name=only_train"], ["dataset.name=only_train", "no MIDI file in split(s) ['validation', 'test']"]),
    (["dataset.name=no_split"], ["has no 'split' column"]),
    (["dataset.name=bad_rows"], ["duplicate id(s): 'a' on lines 2, 3"]),
    (["train.embed_dimm=3"], ["unknown config key 'train.embed_dimm'", "embed_dim", "configs/config.yaml"]),
    (["+train.extra=3"], ["unknown config key 'train.extra'"]),
    (["train.batch_size=lots"], ["train.batch_size", "could not be converted to Integer"]),
    (["--config-name=nope"], ["--config-name=nope", "config, large_model"]),
    (["train.epochs"], ["cannot parse the override", "train.epochs"]),
    (["train.dropout=1.5", "ray.num_workers=0"], ["train.dropout must be in [0, 1)", "ray.num_workers must be >= 1"]),
])
def test_command_line_input_errors_are_one_line_exit_2(tmp_path, args, expected):
    raw = tmp_path / "data" / "raw"
    for name, rows in {"only_train": "a,,midi/a.mid,train\nb,b.wav,,test\n", "no_split": None,
                       "bad_rows": "a,a.wav,a.mid,train\na,b.wav,b.mid,test\n"}.items():
        (raw / name).mkdir(parents=True)
        header = "id,audio_filename,midi_filename" + (",split" if rows else "")
        (raw / name / "info.csv").write_text(header + "\n" + (rows or "a,a.wav,a.mid\n"))
    write_tiny_midis(raw / "only_train" / "midi", n=1)
    (raw / "only_train" / "midi" / "tiny0.mid").rename(raw / "only_train" / "midi" / "a.mid")
    done = run_cli(f"dataset.data_root={tmp_path / 'data'}", f"output_dir={tmp_path / 'out'}", *args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout and "HYDRA_FULL_ERROR" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert all(e in lines[0] for e in expected), lines[0]


def test_rows_without_midi_and_missing_files_are_left_out(tmp_path):
    from ray_jobs.pretrain.job import load_splits, resolve_paths

    root = tiny_dataset(tmp_path)
    info = pd.read_csv(root / "info.csv")
    info.loc[0, "midi_filename"] = ""  # a train row with audio only
    info.loc[1, "midi_filename"] = "midi/gone.mid"  # listed, not there
    info.to_csv(root / "info.csv", index=False)
    cfg = make_cfg(tmp_path)
    kept, splits = load_splits(cfg, resolve_paths(cfg))
    assert len(kept) == 9 and info["id"][0] not in set(kept["id"])
    assert len(splits["train"]) == 4 and len(splits["validation"]) == len(splits["test"]) == 2
    assert all(Path(f).is_file() for files in splits.values() for f in files)


@pytest.mark.slow
def test_two_worker_run_survives_a_failure_and_a_rerun_continues(ray_session, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from embedders.symbolic.midi_transformer.transformer import load_checkpoint
    from ray_jobs.pretrain import job
    from training import pretrain_worker

    tiny_dataset(tmp_path)
    run_dir = tmp_path / "results" / "tiny_model"
    monkeypatch.setattr(pretrain_worker, "train_loop_per_worker", failing_once(run_dir / ".injected_failure"))
    # 4 files per task: the 10 files make 3 shards in Ray tasks (the driver alone would write 1)
    monkeypatch.setattr(job, "build_token_cache", functools.partial(job.build_token_cache, files_per_task=4))
    # viz_interval=2: pages at epoch 1 and at the last epoch, none at epoch 0 (and no t-SNE there)
    summary = job.run(make_cfg(tmp_path, "mlflow.viz_interval=2"))
    assert (run_dir / ".injected_failure").exists(), "the failure was not injected"
    history = json.loads((run_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1], "epoch 0 must not be redone after the restart"
    (cache,) = (tmp_path / "data" / "token_cache" / "tiny").iterdir()
    assert len({p.name.split(".")[0] for p in (cache / "shards").iterdir()}) == 3
    loaded = load_checkpoint(summary["model_path"])  # weights_only=True inside
    # perplexity > 1 holds for any cross-entropy; these can fail: each is exp of its reported loss, the unigram
    # baseline beats uniform guessing over the vocabulary, and a model trained this briefly (2 tiny epochs) is
    # still near the uniform level ~V, as an untrained one is (test_references_models.py); a loss normalised by
    # the wrong count lands far from it
    assert summary["epochs_run"] == 2
    assert summary["test_perplexity"] == pytest.approx(math.exp(summary["test_loss"]))
    assert summary["unigram_test_perplexity"] == pytest.approx(math.exp(summary["unigram_test_loss"]))
    vocab = loaded.config.vocab_size
    assert summary["unigram_test_perplexity"] < 0.7 * vocab, summary
    assert 0.5 * vocab < summary["test_perplexity"] < 1.5 * vocab, summary
    ids = torch.randint(4, loaded.config.vocab_size, (1, 10))
    _, pooled = loaded.model.embed(ids, torch.ones_like(ids, dtype=torch.bool))
    assert pooled.shape == (1, 32)
    assert (run_dir / "viz" / "embeddings_animation.html").exists()
    assert (run_dir / "viz" / "embeddings_epoch001.html").exists()
    assert not (run_dir / "viz" / "embeddings_epoch000.html").exists()

    client = MlflowClient(tracking_uri=summary["tracking_uri"])
    metrics = client.get_metric_history(summary["mlflow_run_id"], "val_loss")
    assert sorted(m.step for m in metrics) == [0, 1]
    for key in ("train_loss", "tokens_per_s", "lr", "val_perplexity"):
        assert client.get_metric_history(summary["mlflow_run_id"], key)
    assert "test_perplexity" in client.get_run(summary["mlflow_run_id"]).data.metrics
    artifacts = [a.path for a in client.list_artifacts(summary["mlflow_run_id"], "viz")]
    assert "viz/embeddings_animation.html" in artifacts
    # beside the sqlite store, not in ./mlruns of the folder the job was started from
    artifact_uri = client.get_run(summary["mlflow_run_id"]).info.artifact_uri
    assert artifact_uri.startswith(tmp_path.absolute().as_uri()), artifact_uri

    # same run name, more epochs: continues from the last checkpoint instead of starting over
    again = job.run(make_cfg(tmp_path, "train.epochs=3", "mlflow.viz_interval=2"))
    history = json.loads((run_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert again["mlflow_run_id"] == summary["mlflow_run_id"]
    assert (run_dir / "viz" / "embeddings_epoch002.html").exists()  # the last epoch always has its page
