"""Pretrain the MIDI transformer encoder on a paired dataset's MIDI files, with Ray Train (DDP).

    python -m ray_jobs.pretrain                                        # default config
    python -m ray_jobs.pretrain train.batch_size=16 train.epochs=20    # Hydra overrides
    python -m ray_jobs.pretrain --config-name=large_model
    python -m ray_jobs.pretrain ray.num_workers=4 ray.use_gpu=true     # DDP over 4 GPUs of this node

Steps: tokenizer (loaded, or trained on the training split and saved) -> token cache built by
parallel Ray tasks -> TorchTrainer (checkpoint every epoch, best kept by validation loss, restarts after
worker failures, a rerun with the same train.model_name continues) -> the best checkpoint copied to
``<output_dir>/<model_name>/model.pt`` (the ``midi_transformer`` embedder's weights) -> test loss
and perplexity beside a unigram baseline. Metrics and pages go to MLflow and the run folder.

Placement (``ray_jobs.pretrain.placement``): the workers, the token-cache tasks and the test-set
evaluation run on the driver's node, where the cache and the run folder are; a request that
cannot be met there (``ray.use_gpu=true`` without a GPU) fails at once with exit status 2.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from embedders.store.atomic import atomic_path, write_json
from ray_jobs.pretrain.config import PretrainConfigError, register_schema, validate

register_schema()


def resolve_paths(cfg: DictConfig) -> dict[str, Path]:
    d = cfg.dataset
    root = Path(d.info_csv).parent if d.info_csv else Path(d.data_root) / "raw" / d.name
    name = d.name if not d.info_csv else root.name
    out = Path(cfg.output_dir).absolute()
    return {
        "root": root,
        "tokenizer": (Path(d.tokenizer_path) if d.tokenizer_path
                      else Path(d.data_root) / "tokenizers" / f"{name}_remi_bpe{d.vocab_size}.json"),
        "cache": Path(d.cache_dir) if d.cache_dir else Path(d.data_root) / "token_cache" / name,
        "output": out,
        "run_dir": out / cfg.train.model_name,
    }


def build_token_cache(files: list[str], tokenizer_path: Path, max_seq_len: int, cache_dir: Path,
                      files_per_task: int = 32, task_options: dict[str, Any] | None = None) -> dict[str, str]:
    """Tokenize the files missing from the cache in parallel Ray tasks (one shard per task of
    ``files_per_task`` files); return {file: error}.

    ``task_options`` (e.g. ``Placement.task_options()``) go to the tasks: the cache is a local path,
    so they run where it is. Plain tasks, not a Ray Data pipeline: nothing flows back but a count,
    and Ray Data's start-up (seconds) would dominate a small dataset's cache build."""
    import ray

    from embedders.symbolic.midi_transformer import tokenizer as tk
    from training.midi_datasets import MIDIDatasetPresaved, build_cache, stale_files

    tokenizer = tk.load_tokenizer(tokenizer_path)

    def tokenize_files(paths: list[str]) -> int:
        return build_cache(tk.load_tokenizer(tokenizer_path), paths, max_seq_len, str(cache_dir))["chunks"]

    missing = [str(p) for p in stale_files(files, tokenizer, max_seq_len, cache_dir)]
    if missing:
        batches = [missing[i:i + files_per_task] for i in range(0, len(missing), files_per_task)]
        print(f"tokenizing {len(missing)} MIDI files into {cache_dir} ({len(batches)} Ray task(s) of at most "
              f"{files_per_task} files)")
        task = ray.remote(tokenize_files).options(**(task_options or {}))
        ray.get([task.remote(batch) for batch in batches])
    # one process merges the shards into the index, so the DDP workers only read it
    return MIDIDatasetPresaved(files, tokenizer, max_seq_len, str(cache_dir)).errors


def mlflow_run(cfg: DictConfig, tracking_uri: str, params: dict[str, Any]) -> str:
    """The MLflow run of this model name: the existing one (a rerun continues it) or a new one."""
    from mlflow.tracking import MlflowClient

    from training.mlflow_store import artifact_location

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        cfg.mlflow.experiment, artifact_location=artifact_location(tracking_uri, cfg.mlflow.experiment))
    found = client.search_runs([experiment_id], filter_string=f"tags.`avs.model_name` = '{cfg.train.model_name}'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=cfg.train.model_name, tags={"avs.model_name": cfg.train.model_name})
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    return run.info.run_id


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def run(cfg: DictConfig) -> dict[str, Any]:
    """Everything after config parsing; returns the summary (also written to test_metrics.json).

    Remote locations (``dataset.data_root``, ``dataset.info_csv``, ``output_dir`` as s3://, gs://,
    ...) are staged locally first and the outputs uploaded at the end: see ``ray_jobs.pretrain.staging``.
    """
    from embedders.store import filesystem as fs
    from ray_jobs.pretrain.staging import staged

    with staged(cfg) as local:
        summary = _run(local)
    if fs.is_remote(cfg.output_dir):
        summary["model_path"] = str(fs.join(cfg.output_dir, cfg.train.model_name, Path(summary["model_path"]).name))
        print(f"uploaded {local.output_dir} to {cfg.output_dir}; model: {summary['model_path']}")
    return summary


def load_splits(cfg: DictConfig, paths: dict[str, Path]):
    """info.csv and the MIDI files of each split; PretrainConfigError (one message naming the config
    keys and the file) when the dataset is missing or invalid or a split has no MIDI file.

    Rows without MIDI (an empty ``midi_filename``) are not for pretraining and are left out; so are
    listed MIDI files that do not exist (counted in a printed line).
    """
    from embedders.dataset import InfoCsvError, has_medium, read_info_csv, resolve_item_path

    d = cfg.dataset
    source = f"dataset.info_csv={d.info_csv}" if d.info_csv else f"dataset.name={d.name} (dataset.data_root={d.data_root})"
    try:
        info = read_info_csv(paths["root"], id_column=d.id_column)
    except InfoCsvError as exc:
        from ray_jobs.pretrain.cli import one_line

        raise PretrainConfigError(f"{source}: {one_line(exc)}") from None
    csv = paths["root"] / "info.csv"
    if "split" not in info.columns:
        raise PretrainConfigError(f"{source}: {csv} has no 'split' column (train/validation/test); it has {list(info.columns)}")
    info = info[has_medium(info, "midi_filename")].reset_index(drop=True)
    splits, missing = {}, {}
    for split in ("train", "validation", "test"):
        rows = info["split"].astype(str).str.strip() == split  # as training.midi_datasets.split_files
        files = [str(resolve_item_path(paths["root"], m)) for m in info.loc[rows, "midi_filename"]]
        splits[split] = [f for f in files if Path(f).is_file()]
        missing[split] = len(files) - len(splits[split])
    if any(missing.values()):
        print(f"{sum(missing.values())} MIDI file(s) listed in {csv} do not exist and are left out: {missing}")
    empty = [s for s, files in splits.items() if not files]
    if empty:
        detail = "; ".join(f"{s}: {missing[s]} listed file(s) missing" for s in empty if missing[s])
        raise PretrainConfigError(f"{source}: {csv} has no MIDI file in split(s) {empty}; the split column needs "
                                  f"train, validation and test rows with a midi_filename" + (f" ({detail})" if detail else ""))
    return info, splits


def _run(cfg: DictConfig) -> dict[str, Any]:
    paths = resolve_paths(cfg)
    info, splits = load_splits(cfg, paths)  # before the heavy imports: input errors come at once

    import ray.train
    from ray.train.torch import TorchTrainer

    from embedders.symbolic.midi_transformer import tokenizer as tk
    from ray_jobs.pretrain.placement import check_local_gpus, local_ray, plan
    from ray_jobs.ray_session import ensure_ray
    from training.midi_datasets import visualisation_set
    from training.pretrain_worker import MODEL_FILE, train_loop_per_worker

    if local_ray() and not ray.is_initialized():
        check_local_gpus(cfg)
    ensure_ray(dashboard=True)  # Ray Train's controller polls the state API the dashboard serves
    placement = plan(cfg)  # before any work: a request that cannot be met fails now, not after the tokenizer
    print(f"pretraining placement: {placement.describe()}", flush=True)
    viz_files, viz_meta = visualisation_set(info, paths["root"], cfg.dataset.visualisation_size,
                                            stratify=cfg.mlflow.color_by if cfg.mlflow.color_by in info.columns else None,
                                            seed=cfg.seed)
    # BPE learns from the whole training split; dataset.limit only shortens what the model trains on
    tokenizer = tk.load_or_train_tokenizer(paths["tokenizer"], splits["train"], cfg.dataset.vocab_size)
    if cfg.dataset.limit:
        splits["train"] = splits["train"][: cfg.dataset.limit]
    special = tk.special_ids(tokenizer)
    all_files = sorted({*splits["train"], *splits["validation"], *splits["test"], *map(str, viz_files)})
    if cfg.dataset.presaved:
        errors = build_token_cache(all_files, paths["tokenizer"], cfg.train.max_seq_len, paths["cache"],
                                   task_options=placement.task_options())
        if errors:
            print(f"{len(errors)} MIDI file(s) yield no tokens and are left out, e.g. {next(iter(errors.items()))}")

    paths["run_dir"].mkdir(parents=True, exist_ok=True)
    tracking_uri = cfg.mlflow.tracking_uri or f"sqlite:///{paths['output'] / 'mlflow.db'}"
    run_id = mlflow_run(cfg, tracking_uri, _flatten(OmegaConf.to_container(cfg, resolve=True)))
    t = cfg.train
    worker_cfg = {
        "model": {"vocab_size": tk.vocab_size(tokenizer), "max_seq_len": t.max_seq_len, "embed_dim": t.embed_dim,
                  "nhead": t.nhead, "num_layers": t.num_layers, "dropout": t.dropout, "pad_id": special.pad,
                  "mask_id": special.mask, "bos_id": special.bos, "eos_id": special.eos},
        "tokenizer_path": str(paths["tokenizer"].absolute()), "presaved": bool(cfg.dataset.presaved),
        "cache_dir": str(paths["cache"].absolute()),
        "train_files": [str(Path(f).absolute()) for f in splits["train"]],
        "val_files": [str(Path(f).absolute()) for f in splits["validation"]],
        "viz_files": [str(Path(f).absolute()) for f in viz_files], "viz_meta": viz_meta.to_dict("records"),
        "batch_size": t.batch_size, "bucket_by_length": bool(t.bucket_by_length), "epochs": t.epochs,
        "learning_rate": t.learning_rate,
        "weight_decay": t.weight_decay, "warmup_steps": t.warmup_steps, "grad_clip": t.grad_clip,
        "precision": t.precision, "loader_workers": loader_workers(cfg, placement.use_gpu),
        "seed": cfg.seed, "model_name": t.model_name, "run_dir": str(paths["run_dir"]),
        "viz_interval": cfg.mlflow.viz_interval,
        "mlflow": {"tracking_uri": tracking_uri, "run_id": run_id, "color_by": cfg.mlflow.color_by},
    }
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config=worker_cfg,
        scaling_config=placement.scaling_config(),
        run_config=ray.train.RunConfig(
            name=t.model_name, storage_path=str(paths["output"] / "ray"),
            failure_config=ray.train.FailureConfig(max_failures=cfg.ray.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="val_loss",
                                                         checkpoint_score_order="min"),
        ),
    )
    result = trainer.fit()
    best_checkpoint, best_metrics = min(result.best_checkpoints, key=lambda cm: cm[1]["val_loss"])
    model_path = paths["run_dir"] / MODEL_FILE
    with best_checkpoint.as_directory() as d, atomic_path(model_path) as tmp:
        shutil.copyfile(Path(d) / MODEL_FILE, tmp)
    summary = {"model_path": str(model_path), "best_epoch": int(best_metrics["epoch"]),
               "best_val_loss": best_metrics["val_loss"], "epochs_run": int(result.metrics["epoch"]) + 1,
               "mlflow_run_id": run_id, "tracking_uri": tracking_uri,
               **test_metrics(cfg, model_path, splits, paths, placement)}
    log_summary(tracking_uri, run_id, summary, paths["run_dir"])
    print(f"\nbest epoch {summary['best_epoch']}: val loss {summary['best_val_loss']:.4f}")
    print(f"test loss {summary['test_loss']:.4f}, perplexity {summary['test_perplexity']:.2f} "
          f"(unigram baseline perplexity {summary['unigram_test_perplexity']:.2f})")
    print(f"model: {model_path}\nuse it: python -m ray_jobs.generate_embeddings --dataset <name> "
          f"--symbolic_embedder midi_transformer --symbolic_checkpoint {model_path}")
    return summary


def loader_workers(cfg: DictConfig, use_gpu: bool) -> int:
    """``train.loader_workers``, with -1 resolved: 2 reading processes beside a GPU worker (the GPU
    must not wait for collation), none beside a CPU worker (they would take its cores)."""
    n = int(cfg.train.loader_workers)
    return n if n >= 0 else (2 if use_gpu else 0)


def test_metrics(cfg: DictConfig, model_path: Path, splits: dict[str, list[str]], paths: dict[str, Path],
                 placement) -> dict[str, Any]:
    """Test loss/perplexity of the best model and of a unigram model on the same masked positions.

    The model is scored in a Ray task on the driver's node (``placement``), with a GPU when the
    workers had one, in the precision of validation; the unigram counts stay here (numpy).
    """
    import functools

    import ray
    from torch.utils.data import DataLoader

    from embedders.symbolic.midi_transformer import tokenizer as tk
    from embedders.symbolic.midi_transformer.transformer import config_from_checkpoint, read_checkpoint
    from training.midi_datasets import collate
    from training.pretrain_loop import count_tokens, unigram_perplexity
    from training.pretrain_worker import make_dataset, test_evaluation

    config = config_from_checkpoint(read_checkpoint(model_path, mmap=True), model_path)
    tokenizer = tk.load_tokenizer(paths["tokenizer"])
    ds_cfg = {"presaved": bool(cfg.dataset.presaved), "cache_dir": str(paths["cache"]),
              "model": {"max_seq_len": cfg.train.max_seq_len}}
    task = ray.remote(test_evaluation).options(**placement.task_options(num_gpus=1 if placement.use_gpu else 0))
    model_eval = ray.get(task.remote(str(model_path), ds_cfg, splits["test"], str(paths["tokenizer"]),
                                     cfg.train.batch_size, cfg.seed, cfg.train.precision,
                                     loader_workers(cfg, placement.use_gpu)))
    test_loader = DataLoader(make_dataset(ds_cfg, splits["test"], tokenizer), batch_size=cfg.train.batch_size,
                             collate_fn=functools.partial(collate, pad_id=config.pad_id))
    train_ds = make_dataset(ds_cfg, splits["train"], tokenizer)
    counts = count_tokens((train_ds[i]["input_ids"] for i in range(len(train_ds))), config.vocab_size,
                          config.special_ids)
    baseline = unigram_perplexity(counts, test_loader, config.mask_id, config.special_ids, generator_seed=cfg.seed)
    return {"test_loss": model_eval["loss"], "test_perplexity": model_eval["perplexity"],
            "test_masked_tokens": model_eval["tokens"], "test_device": model_eval["device"],
            "test_precision": model_eval["precision"], "unigram_test_loss": baseline["loss"],
            "unigram_test_perplexity": baseline["perplexity"]}


def log_summary(tracking_uri: str, run_id: str, summary: dict[str, Any], run_dir: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    for key in ("test_loss", "test_perplexity", "unigram_test_loss", "unigram_test_perplexity", "best_val_loss"):
        client.log_metric(run_id, key, float(summary[key]))
    path = run_dir / "test_metrics.json"
    write_json(path, summary)
    client.log_artifact(run_id, str(path))


def main(argv: list[str] | None = None) -> int:
    """The command line: Hydra's, with every input error as one line on stderr and exit status 2.

    The overrides are composed once before Hydra runs, so an unknown key, a wrong type or a missing
    config file is reported as ``error: <key or file>: <what>`` instead of Hydra's multi-line
    report (exit 1); a missing or invalid dataset, empty splits or out-of-range values likewise.
    """
    import hydra

    from ray_jobs.pretrain.cli import InputError, check_overrides, input_errors, one_line

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        check_overrides(argv)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    @hydra.main(version_base=None, config_path="configs", config_name="config")
    def _entry(cfg: DictConfig) -> None:
        try:
            validate(cfg)
            run(cfg)
        except input_errors() as exc:
            # SystemExit passes through Hydra's error report untouched
            print(f"error: {one_line(exc)}", file=sys.stderr)
            sys.exit(2)

    saved = sys.argv
    sys.argv = [saved[0] if saved else "ray_jobs.pretrain", *argv]
    try:
        _entry()
    finally:
        sys.argv = saved
    return 0
