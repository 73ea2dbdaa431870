"""Train a classifier on stored embeddings: the seed's `python -m src.main`, same flags and outputs.

    python -m ray_jobs.train_classifier --h5_path data/embeddings/music21/embeddings.h5 \
        --medium audio_embeddings --label composer [--batch_size 32 --learning_rate 0.001 \
        --num_epochs 50 --embedding_type average --save_dir DIR]

Writes to ``--save_dir`` (default ``results/{medium}_{label}_{timestamp}``): ``best_model.pth``
(the epoch with the best validation accuracy; self-contained, loads with ``weights_only=True``),
``training_history.json`` (per-epoch metrics, configuration, test metrics beside the
majority-class baseline, data provenance), ``confusion_matrix.json`` / ``.png``. With
``--seeds N`` the run is repeated over N seeds (mean, 95% t-interval, shuffled-label control) and
``seeds.json`` is written. ``--model_path`` evaluates a saved model without training.
Rows: by default only the rows valid in every medium and embedder of the store (``--rows
shared``), so runs on different media score the same test recordings with the same split.
Evaluation: one split, or with ``--group_column`` and too few groups for a grouped split,
cross-validation over groups (``--cv auto``; ``logo`` / ``group_kfold`` force it): every recording
is scored once as test, and ``best_model.pth`` is the model of the first fold.
No Ray: one process (it runs as is under ``ray job submit``).
Exit codes: 0 done, 2 bad flags, file, medium, label or column.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from embedders.store.parts import MEDIA


def _model_kwargs(text: str) -> dict:
    """A JSON object (``'{"num_layers": 2}'``) or ``KEY=VALUE[,KEY=VALUE...]`` with JSON-read values."""
    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"--model_kwargs is not valid JSON ({exc})") from exc
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError("--model_kwargs must be a JSON object")
        return value
    out: dict = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise argparse.ArgumentTypeError(f"--model_kwargs {text!r}: expected a JSON object or KEY=VALUE[,KEY=VALUE], "
                                             f"e.g. num_layers=2,bidirectional=true; {item!r} is neither")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw            # a bare word stays a string
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.train_classifier", description=__doc__.split("\n")[0])
    # the seed's flags, same defaults
    p.add_argument("--h5_path", required=True, help="embeddings.h5 (columnar or legacy layout), or the store folder "
                                                     "data/embeddings/<dataset> itself (read from its Parquet parts)")
    p.add_argument("--medium", required=True, choices=MEDIA, help="which embeddings to train on")
    p.add_argument("--label", required=True, help="metadata column to predict (e.g. style, composer, drummer)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--learning_rate", type=float, default=0.001)
    p.add_argument("--num_epochs", type=int, default=50)
    p.add_argument("--save_dir", default=None, help="default: results/{medium}_{label}_{timestamp}")
    p.add_argument("--embedding_type", choices=("average", "sequence"), default="average")
    # additions
    p.add_argument("--embedder", default=None, help="embedder in the store (needed when the medium holds several)")
    p.add_argument("--model", default="auto",
                   help="linear | mlp (average), attention | bilstm (sequence), auto, or module:Class")
    p.add_argument("--model_kwargs", type=_model_kwargs, default={},
                   help="extra model arguments: a JSON object or KEY=VALUE,KEY=VALUE")
    p.add_argument("--hidden_dim", type=int, default=256)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--weight_decay", type=float, default=0.0)
    p.add_argument("--patience", type=int, default=10, help="epochs without a better validation score before stopping")
    p.add_argument("--group_column", default=None, help="keep each group (e.g. drummer) on one side of every split")
    p.add_argument("--split_column", default="split", help="column holding train/validation/test ('none': draw one)")
    p.add_argument("--cv", choices=("auto", "none", "logo", "group_kfold"), default="auto",
                   help="auto: one split, or cross-validation over --group_column groups when a grouped split leaves "
                        "a split without rows (leave-one-group-out up to 10 groups, else grouped 5-fold); none: one "
                        "split or an error; logo / group_kfold: always cross-validate over groups")
    p.add_argument("--rows", choices=("shared", "medium"), default="shared",
                   help="shared: only rows valid in every medium and embedder of the store, so runs on different "
                        "media score the same test recordings; medium: every valid row of --medium")
    p.add_argument("--task", choices=("classification", "regression", "auto"), default="classification")
    p.add_argument("--seeds", type=int, default=1, help="repeat over N seeds: mean, 95%% CI, shuffled-label control")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model_path", default=None, help="evaluate this saved best_model.pth without training")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    return p


def _summary(name: str, result: dict, task: str) -> str:
    if task == "classification":
        b = result["baseline"]
        return (f"{name}: accuracy {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}, balanced accuracy "
                f"{result['balanced_accuracy']:.4f} (majority class '{b['predicts']}': accuracy {b['accuracy']:.4f}); "
                f"n = {result['n']}")
    b = result["baseline"]
    return (f"{name}: MAE {result['mae']:.4f}, RMSE {result['rmse']:.4f}, R^2 {result['r2']:.4f} "
            f"(train-mean predictor: MAE {b['mae']:.4f}, R^2 {b['r2']:.4f}); n = {result['n']}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for flag in ("batch_size", "num_epochs", "seeds", "hidden_dim"):
        if getattr(args, flag) < 1:
            print(f"error: --{flag} must be at least 1, got {getattr(args, flag)}", file=sys.stderr)
            return 2
    if args.device is not None:
        import torch

        try:
            device = torch.device(args.device)
        except RuntimeError as exc:
            print(f"error: --device {args.device}: {exc}", file=sys.stderr)
            return 2
        if device.type == "cuda" and not torch.cuda.is_available():
            print(f"error: --device {args.device}: no CUDA device is available here; use --device cpu", file=sys.stderr)
            return 2
    from embedders.store import filesystem as fs
    from embedders.store.reader import local_input

    try:  # a remote .h5 is read from a local copy, a store folder where it is; outputs are uploaded when complete
        with local_input(args.h5_path) as h5_local:
            return _run(args, argv, h5_local)
    except FileNotFoundError as exc:
        print(f"error: --h5_path {args.h5_path}: {exc}", file=sys.stderr)
        return 2
    except (fs.StorageError, OSError) as exc:  # an unreachable or misconfigured store
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


def _run(args, argv: list[str] | None, h5_local) -> int:
    from embedders.store import filesystem as fs
    from embedders.store.atomic import write_json
    from training.classifier_data import TaskDataError, load_task
    from training.classifiers import ModelSpecError
    from training.experiment import HISTORY_FILE, ClassificationExperiment, ModelFileError, TrainConfig

    try:
        data = load_task(h5_local, args.medium, args.label, embedder=args.embedder,
                         embedding_type=args.embedding_type, group_column=args.group_column, task=args.task,
                         split_column=None if args.split_column.lower() == "none" else args.split_column,
                         seed=args.seed, cv=args.cv, ids=_shared_rows(h5_local, args))
        rows = data.provenance["rows_per_split"]
        if data.folds is None:
            print(f"{args.medium}/{data.provenance['embedder']} -> {args.label} ({data.task}): {rows['train']} train, "
                  f"{rows['validation']} validation, {rows['test']} test rows; split {data.provenance['split_source']}")
        else:
            print(f"{args.medium}/{data.provenance['embedder']} -> {args.label} ({data.task}): "
                  f"{data.provenance['rows_used']} rows, {data.provenance['split_source']} ({data.n_folds} folds)")
        if args.model_path:
            with fs.local_copy(args.model_path) as model_local:
                exp = ClassificationExperiment.load(model_local, data, device=args.device)
            results = {split: exp.evaluate(split) for split in ("validation", "test")}
            for split, result in results.items():
                print(_summary(split, result, data.task))
            if args.save_dir:   # evaluation only: never overwrite a model, write beside nothing but this file
                record = {"model_path": str(args.model_path), **results, "provenance": data.provenance,
                          "argv": sys.argv[1:] if argv is None else list(argv), "package_versions": _versions()}
                with fs.local_output_dir(args.save_dir) as out_dir:
                    write_json(out_dir / "evaluation.json", record)
                print(f"saved {fs.join(args.save_dir, 'evaluation.json')}")
            return 0
        config = TrainConfig(model=args.model, hidden_dim=args.hidden_dim, dropout=args.dropout,
                             learning_rate=args.learning_rate, weight_decay=args.weight_decay,
                             batch_size=args.batch_size, num_epochs=args.num_epochs, patience=args.patience,
                             seed=args.seed, model_kwargs=args.model_kwargs)
        exp = ClassificationExperiment(data, config, device=args.device)
    except (TaskDataError, ModelSpecError, ModelFileError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    target = args.save_dir or f"results/{args.medium}_{args.label}_{stamp}"
    print(f"model {exp.spec}, {sum(p.numel() for p in exp.model.parameters())} parameters; saving to "
          f"{fs.display(target)}")
    with fs.local_output_dir(target) as save_dir:  # remote: uploaded once every file is written
        _train(args, argv, data, config, save_dir)
    print(f"saved {fs.join(target, 'best_model.pth')} and {fs.join(target, HISTORY_FILE)}")
    return 0


def _shared_rows(h5_local, args) -> list[str] | None:
    """--rows shared: the ids valid in every (medium, embedder) of the store; None for --rows medium."""
    if args.rows == "medium":
        return None
    from embedders.store.reader import list_embedders
    from training.classifier_data import shared_ids

    stored = list_embedders(h5_local)
    sources = [(medium, None if name == "legacy" else name) for medium, names in stored.items() for name in names]
    if args.medium not in stored:
        return None   # load_task names the missing medium
    shared = shared_ids(h5_local, sources, args.embedding_type)
    mine = max(n for key, n in shared["sources"].items() if key.startswith(args.medium + "/"))
    if len(shared["ids"]) < mine:
        print(f"note: --rows shared: {len(shared['ids'])} rows are valid in every stored medium and embedder "
              f"({', '.join(f'{k}: {n}' for k, n in shared['sources'].items())}); --rows medium uses all of "
              f"{args.medium}'s")
    return shared["ids"]


def _train(args, argv, data, config, save_dir: Path) -> None:
    from embedders.store.atomic import write_json
    from training.experiment import HISTORY_FILE
    from training.seed_runs import run_seeds

    def progress(epoch: int, m: dict) -> None:
        score = m.get("val_accuracy", m.get("val_r2"))
        print(f"epoch {epoch}/{config.num_epochs}: train loss {m['train_loss']:.4f}, val loss {m['val_loss']:.4f}, "
              f"val {'accuracy' if 'val_accuracy' in m else 'R^2'} {score:.4f}", flush=True)

    seeds = [args.seed + k for k in range(args.seeds)]
    metric = "accuracy" if data.task == "classification" else "r2"
    extra = {"argv": sys.argv[1:] if argv is None else list(argv), "package_versions": _versions()}
    saved: dict = {}

    def save_first(seed: int, fitted, control: dict, result: dict) -> None:
        """The first seed's model is the run's best_model.pth; later seeds only add to the interval.
        Under cross-validation it is the first fold's model, and the test scores are those of every fold."""
        print(f"seed {seed}: best epoch {fitted.best_epoch} of {len(fitted.history)}; shuffled-label control "
              f"(same configuration, permuted train/validation labels): test {metric} {control[metric]:.4f}",
              flush=True)
        if not saved:
            pooled = None
            if data.folds is not None:
                pooled = {k: v for k, v in result.items() if k not in ("seed", "best_epoch", "epochs_run")}
                extra["cv"] = {**data.provenance["evaluation"], "best_model": "the model of fold 1; 'test' holds "
                               f"the scores of all {data.n_folds} folds, every row test once"}
            saved.update(fitted.save(save_dir, extra={**extra, "shuffled_label_control": control},
                                     test_result=pooled))
            print(_summary("test", saved["test"], data.task), flush=True)

    out = run_seeds(data, config, seeds, on_epoch=progress, device=args.device, on_seed=save_first)
    # per-item test predictions of every seed (the item-level paired test between media reads them)
    saved["test_items"] = {k: out[k] for k in ("seeds", "test_ids_sha256", "test_ids", "test_targets", "test_folds",
                                               "test_predictions", "shuffled_test_predictions")}
    if args.seeds > 1:
        write_json(save_dir / "seeds.json", out)
        saved["seeds_summary"] = {k: out[k] for k in ("metric", "seeds", "test_scores", "shuffled_scores", "baseline",
                                                       "mean", "ci_lo", "ci_hi", "sd", "interval", "seed_interval",
                                                       "shuffled")}
        print(f"{args.seeds} seeds: test {out['metric']} {out['mean']:.4f} [{out['ci_lo']:.4f}, {out['ci_hi']:.4f}] "
              f"({out['interval']}); baseline {out['baseline']:.4f}; shuffled-label control "
              f"{out['shuffled']['mean']:.4f}")
    write_json(save_dir / HISTORY_FILE, saved)


def _versions() -> dict:
    from embedders.dataset import package_versions

    return package_versions() | package_versions(("scikit-learn", "scipy", "matplotlib"))
