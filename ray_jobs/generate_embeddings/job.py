"""Embed every recording of a paired dataset in both media; consolidate embeddings.h5.

    python -m ray_jobs.generate_embeddings --dataset music21 [--data_root data]
        [--audio_embedder melstats] [--symbolic_embedder pianoroll] [--num_gpus 0]
        [--executor auto|local|ray] [--batch_size N] [--max_actors N] [--overwrite]
        [--h5 write|none] [--h5_layout columnar|legacy] [--verbose]
        [--media audio_embeddings,symbolic_embeddings,transcribed_embeddings] [--transcriber basic_pitch]

The third medium, ``transcribed_embeddings``, is the symbolic embedder run on each recording's
audio transcribed to MIDI (``transcription.py``: transcriptions kept under the store's
``transcriptions/``, their quality in ``transcription_quality.parquet``).

The embedding workers write the Parquet parts of ``<data_root>/embeddings/<dataset>/`` themselves,
each part committed atomically; the driver receives one small row per (id, medium) (status, error,
frame count, config hash), prints one progress line per medium, writes errors.parquet,
metadata.parquet and summary.json, and then streams the parts into embeddings.h5 (``--h5 none``
skips that: downstream jobs read the store folder directly). Where the rows run (a local process
pool for small inputs, Ray Data otherwise; CPU or GPU layout per medium): ``execute.py``.

Config hashes: the driver hashes each embedder's config as its workers will resolve it
(``hash_config(config, cuda=<the medium requests GPUs>)``): the resume check and the parts'
descriptions use that request. Each worker writes its rows under its own instance's
``config_hash()``, the authoritative one: when a worker resolves device or precision otherwise
(a GPU without native bf16, no CUDA where GPUs were assumed) its rows carry its hash, the part
names the requested one, a note says so, and a rerun of the same request treats those rows as
done (``embedders.store.parts.prepare_medium``); a different request still needs --overwrite.

Resumable: ids already in committed parts of the same request are skipped, and a killed run's
uncommitted temporary files are removed, so a rerun ends with every id exactly once. Bad
recordings land in errors.parquet; the job finishes the rest.

A row whose ``audio_filename`` (``midi_filename``) is empty has no audio (MIDI): that medium lists
it in errors.parquet with stage ``input`` and error type ``AbsentMedium`` (not a failure: it is
counted as ``absent`` in the summary and never retried), while the other medium embeds it. Pairing
jobs use the rows valid in both media.
Exit status: 0 done, 1 nothing embedded, 2 invalid input or flags (GPUs that cannot exist included).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from embedders.base import MEDIUM_BY_MODALITY, ConfigError
from embedders.dataset import (
    MEDIUM_PATH_COLUMN,
    InfoCsvError,
    absent_reason,
    dataset_dir,
    embeddings_dir,
    has_medium,
    info_hash,
    package_versions,
    path_column,
    read_info_csv,
)
from embedders.registry import available, get_embedder_class
from embedders.store import filesystem as fs
from embedders.store.atomic import json_bytes
from embedders.store.h5 import consolidate, export_legacy
from embedders.store.parts import StoreError, errors_path, prepare_medium, write_errors, write_metadata
from embedders.store.transcriptions import TRANSCRIBED
from ray_jobs.console import add_verbose_flag
from ray_jobs.generate_embeddings import transcription
from ray_jobs.generate_embeddings.execute import LOCAL_MAX_ROWS, MediumRun, choose_executor, embed_pending
from ray_jobs.generate_embeddings.pipeline import MAX_BATCH_BYTES, MediumSpec, PartTarget, local_options
from ray_jobs.generate_embeddings.resources import cluster_view, gpu_pool, uses_gpu

ABSENT = "AbsentMedium"


def parse_options(pairs: list[str], flag: str) -> dict[str, Any]:
    """KEY=VALUE pairs; values parse as JSON when they can (numbers, booleans), else stay strings."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} expects KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.generate_embeddings", description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True, help="folder name under <data_root>/raw/ holding info.csv")
    p.add_argument("--id_column", default=None, help="info.csv column identifying a recording when the file has no "
                                                      "'id' column (MAESTRO: midi_filename); default: id")
    p.add_argument("--data_root", default="data", help="root holding raw/ and embeddings/: a folder or a URI such as "
                                                       "s3://bucket/data or gs://bucket/data (default: data)")
    p.add_argument("--audio_embedder", default="melstats", help="audio embedder name (default: melstats)")
    p.add_argument("--symbolic_embedder", default="pianoroll", help="symbolic embedder name (default: pianoroll)")
    p.add_argument("--audio_option", action="append", default=[], metavar="KEY=VALUE",
                   help="audio embedder config option (repeatable)")
    p.add_argument("--symbolic_option", action="append", default=[], metavar="KEY=VALUE",
                   help="symbolic embedder config option (repeatable)")
    p.add_argument("--audio_checkpoint", help="weights file for the audio embedder (sets its 'checkpoint' option); "
                                              "a path or a URI (each node keeps one local copy)")
    p.add_argument("--symbolic_checkpoint", help="weights file for the symbolic embedder (sets its 'checkpoint' option); "
                                                 "a path or a URI (each node keeps one local copy)")
    p.add_argument("--media", default="audio_embeddings,symbolic_embeddings",
                   help="comma-separated media to embed: audio_embeddings, symbolic_embeddings, transcribed_embeddings "
                        "(the symbolic embedder on each audio's transcription by --transcriber)")
    p.add_argument("--transcriber", default="basic_pitch",
                   help="audio-to-MIDI transcriber of the transcribed_embeddings medium (default: basic_pitch)")
    p.add_argument("--transcriber_option", action="append", default=[], metavar="KEY=VALUE",
                   help="transcriber config option (repeatable), e.g. onset_threshold=0.6")
    p.add_argument("--num_gpus", type=float, default=0.0,
                   help="GPUs per embedding actor of each medium whose embedder runs on an accelerator (openl3, clap, "
                        "clamp, ...; never melstats or pianoroll) (default 0: CPU actors only)")
    p.add_argument("--actor_cpus", type=float, default=0.25,
                   help="CPUs each GPU embedding actor reserves (default 0.25: the cores stay with the tasks that "
                        "decode and preprocess for it); CPU actors take 1")
    p.add_argument("--max_batch_bytes", type=int, default=MAX_BATCH_BYTES,
                   help=f"most bytes of preprocessed input per model call in a GPU actor (default {MAX_BATCH_BYTES}); "
                        "a larger item is embedded alone")
    p.add_argument("--batch_size", type=int, default=None, help="items per embedding batch (default: the embedder's)")
    p.add_argument("--max_actors", type=int, default=None,
                   help="embedding actors (local executor: processes) per pool (default: one per CPU the cluster can "
                        "have, each decoding its own batches; with --num_gpus, the GPUs it can have / --num_gpus)")
    p.add_argument("--executor", choices=("auto", "local", "ray"), default="auto",
                   help="auto (default): a local process pool when no cluster is named (RAY_ADDRESS), no GPUs are "
                        "requested and at most --local_max_rows rows are pending, else Ray; local: always the pool "
                        "(no GPUs); ray: always Ray Data")
    p.add_argument("--local_max_rows", type=int, default=LOCAL_MAX_ROWS,
                   help=f"most pending rows that --executor auto embeds without Ray (default {LOCAL_MAX_ROWS})")
    p.add_argument("--rows_per_part", type=int, default=256,
                   help="most rows per Parquet part, the resume granularity (default 256). A part is what one worker "
                        "call embeds: on CPUs up to this many rows (fewer when that gives each worker a few calls), "
                        "with --num_gpus one embedding batch; a part also closes at 256 MB of frames")
    p.add_argument("--overwrite", action="store_true", help="recompute everything for the chosen embedders")
    p.add_argument("--h5", choices=("write", "none"), default="write",
                   help="write: consolidate the store into embeddings.h5 (default); none: skip it (stores too large "
                        "for one file: downstream jobs take the store folder as --h5_path)")
    p.add_argument("--h5_layout", choices=("columnar", "legacy"), default="columnar", help="layout of embeddings.h5")
    p.add_argument("--num_cpus", type=int, default=None,
                   help="CPUs for a local Ray instance or the local executor (default: all)")
    add_verbose_flag(p)
    return p


def medium_specs(args) -> list[MediumSpec]:
    for flag in ("rows_per_part", "batch_size", "max_actors", "max_batch_bytes", "num_cpus"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ConfigError(f"--{flag} must be at least 1, got {value}")
    if args.num_gpus < 0 or args.actor_cpus < 0:
        raise ConfigError(f"--num_gpus and --actor_cpus must be >= 0, got {args.num_gpus:g} and {args.actor_cpus:g}")
    chosen = [m.strip() for m in args.media.split(",") if m.strip()]
    specs = []
    for medium in chosen:
        # the transcribed medium is embedded as symbolic (same embedder), from transcriptions
        modality = {v: k for k, v in MEDIUM_BY_MODALITY.items()}.get(medium, "symbolic" if medium == TRANSCRIBED else None)
        if modality is None:
            raise ConfigError(f"--media: unknown medium {medium!r}; choose from {list(MEDIUM_PATH_COLUMN)}")
        name = args.audio_embedder if modality == "audio" else args.symbolic_embedder
        cls = get_embedder_class(name)
        if cls.modality != modality:
            raise ConfigError(f"--{modality}_embedder {name!r} is a {cls.modality} embedder; "
                              f"{modality} embedders are {available(modality)}")
        options = parse_options(getattr(args, f"{modality}_option"), f"--{modality}_option")
        checkpoint = getattr(args, f"{modality}_checkpoint")
        if checkpoint:
            options["checkpoint"] = checkpoint
        cls.make_config(**options)  # fail fast on unknown options, before any work
        spec = MediumSpec(medium, path_column(medium), name, options, cls.sample_rate)
        if medium == TRANSCRIBED:
            spec = transcription.transcribed_spec(spec, args.transcriber, parse_options(
                args.transcriber_option, "--transcriber_option"), embeddings_dir(args.data_root, args.dataset))
        specs.append(spec)
    return specs


def gpu_media(specs: list[MediumSpec], args) -> set[str]:
    """The media whose actors request GPUs: --num_gpus > 0 and an embedder that uses an accelerator."""
    return {s.medium for s in specs if uses_gpu(get_embedder_class(s.embedder), args.num_gpus)}


def start_medium(spec: MediumSpec, info: pd.DataFrame, store, args, *, gpu: bool = False) -> MediumRun:
    """Prepare the medium's parts (--overwrite, config check, ids done) and find the rows still to embed.

    ``gpu``: the medium's actors get GPUs, so the config is hashed as it resolves there."""
    cls = get_embedder_class(spec.embedder)
    config = cls.make_config(**local_options(spec.options))
    config_hash = cls.hash_config(config, cuda=gpu)
    description = {**cls.describe_config(config, cuda=gpu), "config_hash": config_hash}
    if spec.transcriber is not None:  # same embedder, on transcriptions: the transcriber is part of the identity
        config_hash, description = transcription.medium_identity(spec, config_hash, description)
    state = prepare_medium(store, spec.medium, spec.embedder, config_hash, overwrite=args.overwrite)
    tag = f"[{spec.medium}/{spec.embedder}]"
    if state.removed_parts:
        print(f"{tag} --overwrite: removed {state.removed_parts} part file(s)")
    if state.removed_temporary:
        print(f"{tag} removed {state.removed_temporary} uncommitted part file(s) left by a killed run")
    source = spec.options.get("checkpoint")
    if source and source != getattr(config, "checkpoint", None):  # a URI: say where it came from
        description["checkpoint_source"] = source
    target = PartTarget(str(store), config_hash, description, args.rows_per_part,
                        args.batch_size or cls.default_batch_size)
    counts = {"embedder": spec.embedder, "config": dataclasses.asdict(config), "config_hash": config_hash,
              "rows": len(info), "absent": 0, "skipped": 0, "done": 0, "failed": 0, "frames": 0, "seconds": 0.0}
    run = MediumRun(spec, target, counts, pending=[], gpu=gpu, hashes=set(state.stored_hashes))
    present = has_medium(info, spec.medium)
    for item_id, path, here in zip(info["id"], info[spec.path_column], present):
        if not here:
            run.error(item_id, "input", ABSENT, absent_reason(spec.medium))
            counts["absent"] += 1
        elif item_id in state.done_ids:
            counts["skipped"] += 1
        else:
            run.pending.append({"id": item_id, "path": str(path)})
    print(f"{tag} {len(info)} rows: {counts['absent']} absent, {counts['skipped']} already embedded, "
          f"{len(run.pending)} to do")
    return run


def report_hashes(run: MediumRun) -> None:
    """The workers' hashes are authoritative: say when they differ from the request, and record them."""
    requested = run.counts["config_hash"]
    written = sorted(run.hashes)
    if written and written != [requested]:
        run.counts["requested_config_hash"] = requested
        run.counts["config_hash"] = written[0] if len(written) == 1 else written
        print(f"note: [{run.label}] the embedding workers resolved device/precision otherwise than assumed: rows "
              f"carry config hash {', '.join(written)} (requested {requested}); reruns of this request resume "
              "them" + ("; the store mixes several runtimes: --overwrite recomputes them on one" if len(written) > 1
                        else ""))


def record_errors(runs: list[MediumRun], store, overwrite: bool) -> None:
    """Merge the run's absent and failed rows into errors.parquet; print the failures."""
    errors = [e for run in runs for e in run.errors]
    write_errors(store, errors, resolved=[s for run in runs for s in run.succeeded],
                 replaced_scopes=[(r.spec.medium, r.spec.embedder) for r in runs] if overwrite else ())
    failed = [e for e in errors if e["error_type"] != ABSENT]
    for err in failed[:20]:
        print(f"  failed {err['id']} [{err['stage']}] {err['error_type']}: {err['message']}")
    if len(failed) > 20:
        print(f"  ... and {len(failed) - 20} more in {errors_path(store)}")


def write_h5(store, info: pd.DataFrame, provenance: dict, specs: list[MediumSpec], layout: str) -> tuple[str, dict]:
    """Stream the parts (from wherever the store is) into embeddings.h5. HDF5 needs a local,
    seekable file: a remote store's file is written locally and uploaded once complete."""
    h5_path = fs.join(store, "embeddings.h5")
    with fs.local_output_file(h5_path) as local_h5:
        counts = consolidate(store, info, local_h5, provenance=provenance)
        if layout == "legacy":
            # export_legacy writes a temporary file beside its target and renames it over the columnar one
            export_legacy(local_h5, local_h5, {s.medium: s.embedder for s in specs})
    return str(h5_path), counts


def start_ray(args) -> float:
    """Join or start Ray (quiet unless --verbose); the seconds it took."""
    from ray_jobs.ray_session import ensure_ray

    started = time.perf_counter()
    ensure_ray(args.num_cpus, verbose=args.verbose)
    return round(time.perf_counter() - started, 2)


def check_gpus(specs: list[MediumSpec], gpu: set[str], args) -> None:
    """Raise ResourceError (before any work) when a GPU medium's actors can never be placed."""
    view = cluster_view()
    for spec in specs:
        if spec.medium in gpu:
            gpu_pool(f"{spec.medium}/{spec.embedder}", args.num_gpus, args.actor_cpus, args.max_actors, view)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    root = dataset_dir(args.data_root, args.dataset)
    store = embeddings_dir(args.data_root, args.dataset)
    ray_seconds = 0.0
    try:
        specs = medium_specs(args)
        info = read_info_csv(root, id_column=args.id_column)
        gpu = gpu_media(specs, args)
        if args.num_gpus > 0 and not gpu:
            print(f"note: --num_gpus {args.num_gpus:g} ignored: no chosen embedder runs on an accelerator "
                  f"({', '.join(s.embedder for s in specs)} use CPUs)")
        if gpu and args.executor == "local":
            raise ConfigError(f"--executor local runs no GPU actors, and {', '.join(sorted(gpu))} request GPUs "
                              "(--num_gpus); use --executor auto or ray, or drop --num_gpus")
        if gpu:
            ray_seconds = start_ray(args)
            check_gpus(specs, gpu, args)
    except (InfoCsvError, ConfigError, fs.StorageError, OSError) as exc:  # OSError: an unreachable store
        print(f"error: {exc}", file=sys.stderr)
        return 2
    provenance = {
        "dataset": args.dataset, "info_csv_sha256": info_hash(root), "layout": "columnar",
        "package_versions": package_versions(), "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    summary: dict[str, Any] = {"dataset": args.dataset, "rows": len(info), "store": fs.display(store), "media": {}}
    try:
        runs = [start_medium(spec, info, store, args, gpu=spec.medium in gpu) for spec in specs]
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_metadata(store, info, provenance)  # the folder is readable as a store from now on
    if any(run.spec.medium == TRANSCRIBED and run.pending for run in runs) and not ray_seconds:
        ray_seconds = start_ray(args)  # transcription runs on a Ray Data actor pool
    transcribed = transcription.run_stage(runs, info, store, root, args)  # points the medium at its MIDI files
    if transcribed is not None:
        summary["transcription"] = transcribed
    executor = choose_executor(runs, args)
    if executor == "ray" and not ray_seconds:
        ray_seconds = start_ray(args)
    summary["executor"], summary["ray_start_seconds"] = executor, ray_seconds
    embed_pending(runs, root, args, executor)
    record_errors(runs, store, args.overwrite)
    for run in runs:
        report_hashes(run)
        run.counts["valid_total"] = run.counts["skipped"] + run.counts["done"]
        summary["media"][run.spec.medium] = run.counts
    summary["h5_path"], summary["h5"] = (None, {}) if args.h5 == "none" else \
        write_h5(store, info, provenance, specs, args.h5_layout)
    if args.h5 == "none" and fs.exists(fs.join(store, "embeddings.h5")):
        print(f"note: {fs.join(store, 'embeddings.h5')} is from an earlier run and lacks what this one added; "
              "read the store folder, or rerun without --h5 none")
    summary["h5_layout"] = None if args.h5 == "none" else args.h5_layout
    summary["seconds"] = round(time.perf_counter() - started, 2)
    print_summary(summary)
    fs.write_bytes(fs.join(store, "summary.json"), json_bytes(summary))
    embedded = sum(m["valid_total"] for m in summary["media"].values())
    return 0 if embedded > 0 else 1


def print_summary(summary: dict[str, Any]) -> None:
    print(f"\n{'medium':<24}{'embedder':<18}{'done':>7}{'skipped':>9}{'failed':>8}{'absent':>8}{'valid':>8}{'rows/s':>9}")
    for medium, c in summary["media"].items():
        rate = c["done"] / c["seconds"] if c["seconds"] else 0.0
        print(f"{medium:<24}{c['embedder']:<18}{c['done']:>7}{c['skipped']:>9}{c['failed']:>8}{c['absent']:>8}"
              f"{c['valid_total']:>8}{rate:>9.1f}")
    where = "Ray" if summary["executor"] == "ray" else "the local executor"
    if "transcription" in summary:
        print(transcription.summary_line(summary["transcription"]))
    if summary["h5_path"]:
        print(f"wrote {summary['h5_path']} ({summary['h5_layout']} layout) in {summary['seconds']} s on {where}")
    else:
        print(f"store {summary['store']} ready in {summary['seconds']} s on {where} (--h5 none: no embeddings.h5; "
              "downstream jobs take this folder as --h5_path)")
