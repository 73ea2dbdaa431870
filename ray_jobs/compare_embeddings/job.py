"""Compare the audio and symbolic embedding spaces of the same recordings, with statistics.

    python -m ray_jobs.compare_embeddings --h5_path data/embeddings/music21/embeddings.h5 \
        --output_dir results/compare [--label composer]

Rows are paired by id (``embedders.store.reader.load_pair``: rows valid in both media; the counts of
used and dropped rows go into every output). Features:

* ``--embedding_type average`` (default): the store's per-recording mean over frames.
* ``--embedding_type sequence``: each recording's (T, D) frames pooled to ``concat(mean, std)``
  over frames (population std), a (2D)-vector (``analysis.pooling.mean_std_pool``).

Without ``--label``: ``analysis.compare.compare_spaces`` (linear/debiased CKA, CCA, SVCCA,
Procrustes, RBF CKA, RSA, mutual kNN, cross-modal retrieval), each with a jackknife interval (none
for the biased statistics: their excess over the null instead), a permutation null and a
Holm-adjusted p; the primary metric is debiased linear CKA (fields: ``analysis.compare``). The
retrieval projection is fitted on the rows whose metadata ``split`` is not ``test`` (train and
validation together) and evaluated on the ``test`` rows; without a ``split`` column, or with fewer
than 10 rows on either side, a seeded random 50/50 split is used instead; ``--group_column`` keeps
each group on one side of it and of every label CV fold (details and ``--media A,B`` for other
pairs of media: ``ray_jobs.compare_embeddings.rows``).
With ``--label``: the same, plus ``compare_labels`` (kNN score, silhouette, label-RDM correlation
per medium, and the paired audio - symbolic difference) on the same rows, and every space metric
gets a second null with the pairing shuffled only within the label's classes (numeric labels
binned): does a recording match its own counterpart beyond what the label explains? With
``--group_column`` and no label, the second null permutes within groups instead. A label is numeric
(regression: kNN R^2, no silhouette) when its metadata column is numeric with at least 20 distinct
values (bpm, duration; ``analysis.labels.resolve_task``, the rule every job uses); ``--task``
overrides the choice (e.g. ``--task regression`` for a numeric label with few values).

Outputs in ``--output_dir``: metrics.json, metrics.csv, null_distributions.npz, report.html.
No Ray: the work is numpy on one process (it runs as is under ``ray job submit``).
Exit codes: 0 done, 2 bad flags / missing file / unknown embedder, label or column / too few rows.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from analysis.compare import compare_labels, compare_spaces
from analysis.labels import resolve_task
from analysis.pooling import mean_std_pool, zscore_features
from analysis.report import compare_page, compare_rows
from embedders.store import filesystem as fs
from embedders.store.atomic import atomic_write_bytes, write_json
from embedders.store.parts import StoreError
from embedders.store.reader import describe, local_input
from ray_jobs.compare_embeddings.rows import RowsError, label_folds, load_media_pair, parse_media, retrieval_split


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.compare_embeddings", description=__doc__.split("\n")[0])
    p.add_argument("--h5_path", required=True,
                   help="consolidated embeddings.h5 (or a legacy-layout file), or the store folder "
                        "data/embeddings/<dataset> itself (read from its Parquet parts; no .h5 needed): a path or a URI")
    p.add_argument("--output_dir", required=True,
                   help="folder (or URI) for metrics.json/.csv, null_distributions.npz, report.html")
    p.add_argument("--label", default=None, help="metadata column to compare label structure on (e.g. composer, bpm)")
    p.add_argument("--audio_embedder", default=None, help="needed when the file holds several audio embedders")
    p.add_argument("--symbolic_embedder", default=None, help="needed when the file holds several symbolic embedders")
    p.add_argument("--embedding_type", choices=("average", "sequence"), default="average",
                   help="average: mean over frames; sequence: mean and std over frames concatenated (2D)")
    p.add_argument("--media", default="audio_embeddings,symbolic_embeddings",
                   help="the two media to compare, each MEDIUM or MEDIUM:EMBEDDER (the first is x / 'audio' in the "
                        "outputs, the second y / 'symbolic')")
    p.add_argument("--group_column", default=None,
                   help="metadata column whose groups stay on one side: of the retrieval split and of every CV fold "
                        "of the label metrics (fewer than 5 groups: leave-one-group-out)")
    p.add_argument("--task", choices=("auto", "classification", "regression"), default="auto",
                   help="auto: regression when the label column is numeric with at least 20 distinct values "
                        "(bpm, duration), else classification; the same rule as train_classifier and sweep")
    p.add_argument("--standardize", choices=("zscore", "none"), default="zscore",
                   help="z-score each feature over the paired rows first (default; features in different units "
                        "would otherwise be weighted by their range) or use raw coordinates")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n_permutations", type=_positive, default=1000, help="permutation-null draws per metric")
    p.add_argument("--n_boot", type=_positive, default=1000,
                   help="bootstrap replicates of a regression label's pooled out-of-fold R^2 interval (the "
                        "other intervals are delete-a-group jackknife intervals)")
    p.add_argument("--max_n_kernel", type=_positive, default=2000,
                   help="rows for RBF CKA / RSA and queries for the retrieval null (random subsample above it)")
    return p


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2




def run(args) -> int:
    """A remote .h5 --h5_path is read from a local copy, a store folder where it is; a remote
    --output_dir gets the outputs uploaded once all four are written (a failed run uploads nothing)."""
    try:
        with local_input(args.h5_path) as h5_local, fs.local_output_dir(args.output_dir) as out_dir:
            return _run(args, h5_local, out_dir)
    except FileNotFoundError as exc:
        return _fail(str(exc))
    except (fs.StorageError, OSError) as exc:  # an unreachable or misconfigured store
        return _fail(f"{type(exc).__name__}: {exc}")


def _run(args, h5_local, out_dir: Path) -> int:
    started = time.perf_counter()
    try:
        media = parse_media(args.media, args.audio_embedder, args.symbolic_embedder)
        pair = load_media_pair(h5_local, media, args.embedding_type, args.label)
        attrs = describe(h5_local)
    except (StoreError, FileNotFoundError, ValueError, OSError, KeyError) as exc:
        return _fail(str(exc))
    if args.group_column and args.group_column not in pair.metadata.columns:
        return _fail(f"no group column '{args.group_column}'; the metadata columns are {sorted(pair.metadata.columns)}")
    groups = pair.metadata[args.group_column].astype(str).to_numpy() if args.group_column else None
    if args.embedding_type == "sequence":
        Xa, Xs = mean_std_pool(pair.first), mean_std_pool(pair.second)
    else:
        Xa, Xs = np.asarray(pair.first), np.asarray(pair.second)
    # z-scored over all rows (no label involved): the label metrics and the figures; compare_spaces gets the raw
    # features and standardises itself, retrieval with the training rows' statistics only
    Za, Zs = (zscore_features(Xa), zscore_features(Xs)) if args.standardize == "zscore" else (Xa, Xs)
    task = None
    if args.label:
        try:
            task, _ = resolve_task(args.task, pair.metadata[args.label], source=f"--task {args.task}")
        except ValueError as exc:
            return _fail(str(exc))
    try:
        train, test, split_desc = retrieval_split(pair.metadata, args.seed, args.group_column)
        n_splits, cv_desc = label_folds(groups, args.group_column) if args.label else (None, None)
    except RowsError as exc:
        return _fail(str(exc))
    common = dict(seed=args.seed, n_permutations=args.n_permutations, n_boot=args.n_boot)
    try:
        strata = groups  # within-stratum nulls: by the label (numeric labels binned, analysis.nulls), else by group
        if args.label:
            y = pair.labels.astype(np.float64) if task == "regression" else pair.labels.astype(str)
            strata = y
        spaces = compare_spaces(Xa, Xs, train_idx=train, test_idx=test, strata=strata, max_n_kernel=args.max_n_kernel,
                                standardize=args.standardize, **common)
        labels = None
        if args.label:
            labels = compare_labels(Za, Zs, y, numeric=task == "regression", groups=groups, n_splits=n_splits,
                                    max_n=args.max_n_kernel, standardize=args.standardize, **common)
            labels["cv"] = cv_desc
    except ValueError as exc:
        return _fail(f"{exc} ({pair.counts['paired']} paired rows)")
    payload = {"inputs": {"h5_path": fs.display(args.h5_path), "dataset": attrs.get("dataset"),
                          "media": list(pair.media), "embedders": list(pair.embedders), "label_cv": cv_desc,
                          # x = media[0], y = media[1]; named audio/symbolic after the seed's pair
                          "audio_embedder": pair.embedders[0], "symbolic_embedder": pair.embedders[1],
                          "embedding_type": args.embedding_type,
                          "pooling": "mean" if args.embedding_type == "average" else "concat(mean, std) over frames",
                          "standardize": args.standardize,
                          "label": args.label, "task": task, "strata": args.label or args.group_column,
                          "group_column": args.group_column, "seed": args.seed,
                          "n_permutations": args.n_permutations, "n_boot": args.n_boot,
                          "max_n_kernel": args.max_n_kernel},
               "counts": pair.counts, "retrieval_split": split_desc, "spaces": spaces, "labels": labels}
    payload["wall_time_s"] = time.perf_counter() - started
    clean, nulls = compare_rows.split_nulls(payload)
    rows = compare_rows.metric_rows(clean["spaces"], clean["labels"])
    figures = compare_page.figures(Za, Zs, pair.ids, pair.metadata, pair.labels, payload, nulls)
    page = compare_page.render(clean, rows, figures)
    clean["wall_time_s"] = time.perf_counter() - started
    paths = {"json": out_dir / "metrics.json", "csv": out_dir / "metrics.csv",
             "npz": out_dir / "null_distributions.npz", "html": out_dir / "report.html"}
    write_json(paths["json"], clean)
    atomic_write_bytes(paths["csv"], compare_rows.metrics_csv(rows).encode())
    atomic_write_bytes(paths["npz"], compare_rows.nulls_npz(nulls))
    atomic_write_bytes(paths["html"], page.encode())
    if fs.is_remote(args.output_dir):  # name where they will be, not the local staging folder
        paths = {kind: fs.join(args.output_dir, Path(p).name) for kind, p in paths.items()}
    _print_summary(clean, paths)
    return 0


def _print_summary(payload: dict, paths: dict) -> None:
    m, c = payload["spaces"]["metrics"], payload["counts"]
    print(f"paired {c['paired']} of {c['rows_in_file']} rows (dropped {c['dropped']}); "
          f"wall time {payload['wall_time_s']:.1f} s")
    primary = payload["spaces"]["primary"]["metric"]
    for name in (primary, "linear_cka", "mutual_knn", "retrieval_ridge_x_to_y_recall@1", "retrieval_ridge_y_to_x_recall@1"):
        e = m[name]
        lo = e.get("ci_lo")
        interval = (f" [{lo:.3f}, {e['ci_hi']:.3f}]" if lo is not None and np.isfinite(lo)
                    else f" (biased: excess over null {e['excess']:.3f})")
        chance = f", chance {e['chance']:.3f}" if e.get("chance") is not None else ""
        within = e.get("null_within")
        within = f", within-label p {within['p_value']:.3g}" if within else ""
        print(f"  {name}{' (primary)' if name == primary else ''}: {e['value']:.3f}{interval}, null mean "
              f"{e['null_mean']:.3f}, p {e['p_value']:.3g}, Holm p {e['p_holm']:.3g}{within}{chance}")
    if payload["labels"]:
        lab = payload["labels"]
        for medium in ("audio", "symbolic"):
            k = lab[medium]["knn"]
            interval = "pooled R^2 CI" if lab["task"] == "regression" else "CI"
            print(f"  {payload['inputs']['label']} kNN {medium}: {k['value']:.3f} ({interval} [{k['ci_lo']:.3f}, "
                  f"{k['ci_hi']:.3f}])"
                  + (f", chance {k['chance']:.3f}" if k.get("chance") is not None else ""))
        print(f"  label CV: {lab.get('cv')}")
        d = lab["difference_audio_minus_symbolic"]["knn_by_recording"]
        print(f"  audio - symbolic (by recording): {d['mean_difference']:.3f}, p {d['p_value']:.3g}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse printed the usage and the message
        return int(exc.code or 0)
    return run(args)
