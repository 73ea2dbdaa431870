"""Classifier sweeps per label and medium with Ray Tune, tracked in MLflow; the audio-vs-symbolic answer.

    python -m ray_jobs.sweep --h5_path data/embeddings/music21/embeddings.h5 --labels composer,time_signature
    python -m ray_jobs.sweep --h5_path ... --labels style,bpm:regression --num_samples 40 --scheduler fifo \
        --media audio_embeddings,symbolic_embeddings --embedders melstats,pianoroll --output_dir results/sweep_style

For every (medium, embedder, label): a Ray Tune search (function trainable, ASHA early stopping
on the validation metric unless ``--scheduler fifo``) over probe type, hidden size, dropout,
learning rate (log), weight decay (log) and batch size; every trial an MLflow run with its
parameters, per-epoch metrics and best model. The best configuration (by validation metric) is
then retrained with ``--seeds`` seeds and scored once on the test split beside a majority-class
baseline and a shuffled-label control. Every task uses the rows valid in every swept medium and
embedder and one split (or one set of cross-validation folds over ``--group_column`` groups, see
``--cv``), so the media are scored on the same test recordings; each record carries their
``test_ids_sha256`` and every seed's per-item predictions. The table (``summary.csv``,
``summary.md``, an MLflow run) sets the two media against each other per label with intervals and
flags. Details: ``ray_jobs.sweep.runner`` (why one Tune run per task), ``ray_jobs.sweep.tracking``
(MLflow layout), ``ray_jobs.sweep.plan`` (output folder and rerun behaviour),
``analysis.sweep_table`` (the statistics).

Exit codes: 0 every task finished; 1 some task failed (listed; a rerun retries it);
2 bad flags or inputs (unknown medium, embedder, label or column; an output folder holding a
sweep with other search settings).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

from embedders.store.parts import SEED_MEDIA


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.sweep", description=__doc__.split("\n")[0])
    p.add_argument("--h5_path", required=True,
                   help="consolidated embeddings.h5 (or a legacy-layout file), or the store folder data/embeddings/<dataset> "
                        "itself (read from its Parquet parts; a remote folder is copied locally first)")
    p.add_argument("--labels", required=True,
                   help="comma-separated metadata columns; force a task with label:regression or label:classification "
                        "(auto: a numeric column with at least 20 distinct values is a regression)")
    p.add_argument("--media", type=_csv, default=list(SEED_MEDIA),
                   help="one medium, or two set side by side on the same rows and split, e.g. "
                        f"symbolic_embeddings,transcribed_embeddings (default: {','.join(SEED_MEDIA)})")
    p.add_argument("--embedders", type=_csv, default=None,
                   help="comma-separated embedder names (default: every embedder stored for each medium)")
    p.add_argument("--embedding_type", choices=("average", "sequence"), default="average",
                   help="average: linear / mlp probes; sequence: attention / bilstm probes over frames")
    p.add_argument("--num_samples", type=_positive, default=20, help="configurations sampled per task (default 20)")
    p.add_argument("--max_concurrent", type=_positive, default=None,
                   help="most trials at once (default: as many as the CPUs/GPUs allow)")
    p.add_argument("--scheduler", choices=("asha", "fifo"), default="asha",
                   help="asha: stop weak trials early at rungs; fifo: every trial runs until max_epochs or patience")
    p.add_argument("--max_epochs", type=_positive, default=50, help="epochs per trial at most (ASHA's max_t)")
    p.add_argument("--patience", type=_positive, default=10, help="epochs without validation improvement before stop")
    p.add_argument("--grace_period", type=_positive, default=5, help="ASHA: epochs before a trial can be stopped")
    p.add_argument("--reduction_factor", type=float, default=3.0, help="ASHA: keep 1/reduction_factor at each rung")
    p.add_argument("--seeds", type=_positive, default=5,
                   help="seeds the best configuration is retrained with (default 5)")
    p.add_argument("--seed", type=int, default=0,
                   help="search seed (same configurations for every task) and first retraining seed")
    p.add_argument("--group_column", default=None, help="metadata column whose groups stay on one side of a split")
    p.add_argument("--split_column", default="split",
                   help="column holding train/validation/test (default split; 'none' or absent: a seeded stratified "
                        "70/15/15 split is drawn)")
    p.add_argument("--cv", choices=("auto", "none", "logo", "group_kfold"), default="auto",
                   help="auto: one split, or cross-validation over --group_column groups when a grouped split leaves a "
                        "split without rows (leave-one-group-out up to 10 groups, else grouped 5-fold); none: one "
                        "split or an error; logo / group_kfold: always cross-validate over groups")
    p.add_argument("--output_dir", default=None,
                   help="default results/sweep_<timestamp>; rerun with the same folder to continue a sweep")
    p.add_argument("--mlflow_tracking_uri", default=None,
                   help="default sqlite:///<output_dir>/mlflow.db (e.g. http://127.0.0.1:5000 for a server)")
    p.add_argument("--experiment_name", default=None, help="MLflow experiment (default <dataset>/<output folder name>)")
    p.add_argument("--cpus_per_trial", type=float, default=1.0, help="CPUs reserved per trial and per retraining")
    p.add_argument("--gpus_per_trial", type=_non_negative_float, default=0.0, help="GPUs per trial (fractions allowed)")
    p.add_argument("--num_cpus", type=_positive, default=None, help="CPUs of a local Ray instance (default: all)")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=0,
                   help="0: this job's lines only (default); 1: also Tune's status tables and Ray's own logs; 2: Tune's most")
    return p


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _dataset_name(h5_path: Path) -> str:
    from embedders.store.parts import StoreError
    from embedders.store.reader import describe

    try:
        name = describe(h5_path).get("dataset")
        if name:
            return str(name)
    except (OSError, StoreError):
        pass
    return h5_path.name if h5_path.is_dir() else (h5_path.parent.name or h5_path.stem)


def settings_from_args(args):
    from ray_jobs.sweep.plan import Settings, SweepError, read_json
    from ray_jobs.sweep.space import parse_labels
    from ray_jobs.sweep.tracking import default_tracking_uri

    try:
        labels = parse_labels(args.labels)
    except ValueError as exc:
        raise SweepError(str(exc)) from None
    if args.cpus_per_trial <= 0:
        raise SweepError(f"--cpus_per_trial: expected a number > 0, got {args.cpus_per_trial}")
    if not args.reduction_factor > 1:
        raise SweepError(f"--reduction_factor: expected a number > 1, got {args.reduction_factor}")
    if args.scheduler == "asha" and args.grace_period > args.max_epochs:
        print(f"note: --grace_period {args.grace_period} > --max_epochs {args.max_epochs}; using {args.max_epochs}")
    h5 = Path(args.h5_path)
    output_dir = Path(args.output_dir or f"results/sweep_{time.strftime('%Y%m%d-%H%M%S')}").absolute()
    recorded = read_json(output_dir / "sweep.json") if (output_dir / "sweep.json").exists() else {}
    tracking_uri = args.mlflow_tracking_uri or recorded.get("tracking_uri") or default_tracking_uri(output_dir)
    label = getattr(args, "output_label", None) or output_dir.name  # a staged remote folder: the URI's last part
    experiment = args.experiment_name or recorded.get("experiment_name") or f"{_dataset_name(h5)}/{label}"
    return Settings(
        h5_path=h5, labels=labels, media=args.media, embedders=args.embedders, output_dir=output_dir,
        tracking_uri=tracking_uri, experiment_name=experiment, embedding_type=args.embedding_type,
        num_samples=args.num_samples, max_concurrent=args.max_concurrent, seeds=args.seeds, scheduler=args.scheduler,
        max_epochs=args.max_epochs, patience=args.patience, grace_period=min(args.grace_period, args.max_epochs),
        reduction_factor=args.reduction_factor, group_column=args.group_column,
        split_column=None if args.split_column.lower() == "none" else args.split_column, cv=args.cv,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial, num_cpus=args.num_cpus, seed=args.seed, verbose=args.verbose)


def run(args) -> int:
    """A remote --h5_path (file or store folder) is read from a local copy. A remote --output_dir is staged: its contents
    come down first (finished tasks are skipped), and everything goes back up when the run ends,
    also after a failure. MLflow then lives in the staged folder's sqlite file unless
    --mlflow_tracking_uri names a server, which a cluster should."""
    from embedders.store import filesystem as fs

    out = args.output_dir or f"results/sweep_{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        if not fs.exists(args.h5_path):
            return _fail(f"--h5_path: no file at {args.h5_path} (nor a store folder); "
                         "run python -m ray_jobs.generate_embeddings first")
        staging = fs.staged_dir(out) if fs.is_remote(out) else contextlib.nullcontext(out)  # local: made once the flags pass
        with fs.local_copy(args.h5_path) as h5_local, staging as out_local:
            source = args.h5_path if fs.is_remote(args.h5_path) else None
            staged = argparse.Namespace(**{**vars(args), "h5_path": str(h5_local), "output_dir": str(out_local),
                                           "output_label": fs.name(out)})
            return _run(staged, source, out)
    except (fs.StorageError, OSError) as exc:  # an unreachable or misconfigured store
        return _fail(f"{type(exc).__name__}: {exc}")


def _run(args, h5_source: str | None, output_name: str) -> int:
    from ray_jobs.sweep.plan import SweepError, check_or_record_settings, plan_tasks

    try:
        settings = settings_from_args(args)
        settings.h5_source = h5_source
        tasks = plan_tasks(settings)
        settings.output_dir.mkdir(parents=True, exist_ok=True)
        check_or_record_settings(settings)
    except SweepError as exc:
        return _fail(str(exc))

    from ray_jobs.ray_session import ensure_ray
    from ray_jobs.sweep.runner import run_sweep
    from ray_jobs.sweep.tracking import SweepTracking, sweep_id
    from training.mlflow_store import sqlite_path

    # with num_to_keep=1 Tune snapshots its (local, ~0.05 s) state after every checkpoint; its warning
    # about that is noise here
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # every trial metric goes to MLflow (TrialLogger); Tune's own CSV and TensorBoard files per trial would
    # duplicate it, and importing tensorboardX alone costs seconds per sweep (the runner keeps its JSON logger)
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    tracking = SweepTracking(settings.tracking_uri, settings.experiment_name, sweep_id(settings.output_dir))
    print(f"sweep of {len(tasks)} task(s) into {settings.output_dir}; MLflow experiment "
          f"'{settings.experiment_name}' (id {tracking.experiment_id}) at {settings.tracking_uri}")
    ensure_ray(settings.num_cpus, verbose=settings.verbose > 0)
    summary = run_sweep(settings, tasks, tracking)
    if summary.get("markdown"):
        print("\n" + summary["markdown"])
    print(f"done in {summary['seconds']:.0f} s: {output_name}/summary.md, summary.csv, summary.json")
    db = sqlite_path(settings.tracking_uri)
    if db is not None:
        print(f"browse: mlflow ui --backend-store-uri sqlite:///{db} --host 127.0.0.1  "
              f"then open http://127.0.0.1:5000/{tracking.run_url()}")
    if summary["failures"]:
        print(f"{len(summary['failures'])} task(s) failed (a rerun retries them): {', '.join(summary['failures'])}",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse printed the usage and the message
        return int(exc.code or 0)
    return run(args)
