"""Embed every recording of a paired dataset in both media, on Ray Data; consolidate embeddings.h5.

    python -m ray_jobs.generate_embeddings --dataset music21 [--data_root data]
        [--audio_embedder melstats] [--symbolic_embedder pianoroll] [--num_gpus 0]
        [--batch_size N] [--max_actors N] [--overwrite] [--h5 write|none] [--h5_layout columnar|legacy]
        [--media audio_embeddings,symbolic_embeddings,transcribed_embeddings] [--transcriber basic_pitch]

The third medium, ``transcribed_embeddings``, is the symbolic embedder run on each recording's
audio transcribed to MIDI (``transcription.py``: transcriptions kept under the store's
``transcriptions/``, their quality in ``transcription_quality.parquet``).

The embedding workers write the Parquet parts of ``<data_root>/embeddings/<dataset>/`` themselves,
each part committed atomically; the driver receives one small row per (id, medium) (status, error,
frame count), writes errors.parquet, metadata.parquet and summary.json, and then streams the parts
into embeddings.h5 (``--h5 none`` skips that: downstream jobs read the store folder directly).

Resumable: ids already in committed parts of the same embedder config are skipped, and a killed
run's uncommitted temporary files are removed, so a rerun ends with every id exactly once. Bad
recordings land in errors.parquet; the job finishes the rest.

A row whose ``audio_filename`` (``midi_filename``) is empty has no audio (MIDI): that medium lists
it in errors.parquet with stage ``input`` and error type ``AbsentMedium`` (not a failure: it is
counted as ``absent`` in the summary and never retried), while the other medium embeds it. Pairing
jobs use the rows valid in both media.
Exit status: 0 done, 1 nothing embedded, 2 invalid input or flags.
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
from embedders.dataset import InfoCsvError, dataset_dir, embeddings_dir, info_hash, package_versions, read_info_csv
from embedders.registry import available, get_embedder_class
from embedders.store import filesystem as fs
from embedders.store.atomic import json_bytes
from embedders.store.h5 import consolidate, export_legacy
from embedders.store.parts import StoreError, errors_path, prepare_medium, write_errors, write_metadata
from embedders.store.transcriptions import TRANSCRIBED
from ray_jobs.generate_embeddings import transcription
from ray_jobs.generate_embeddings.pipeline import MediumSpec, PartTarget, build_dataset, build_media_dataset, local_options

PATH_COLUMN = {"audio_embeddings": "audio_filename", "symbolic_embeddings": "midi_filename",
               "transcribed_embeddings": "audio_filename"}
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
    p.add_argument("--num_gpus", type=float, default=0.0, help="GPUs per embedding actor (default 0: CPU actors)")
    p.add_argument("--batch_size", type=int, default=None, help="items per embedding batch (default: the embedder's)")
    p.add_argument("--max_actors", type=int, default=None, help="embedding actor pool size (default: one per CPU, each "
                                                                "decoding its own batches; with --num_gpus, GPUs / --num_gpus)")
    p.add_argument("--rows_per_part", type=int, default=256,
                   help="most rows per Parquet part, the resume granularity (default 256). A part is what one actor "
                        "call embeds: on CPUs up to this many rows (fewer when that spreads the rows over every "
                        "actor), with --num_gpus one embedding batch; a part also closes at 256 MB of frames")
    p.add_argument("--overwrite", action="store_true", help="recompute everything for the chosen embedders")
    p.add_argument("--h5", choices=("write", "none"), default="write",
                   help="write: consolidate the store into embeddings.h5 (default); none: skip it (stores too large "
                        "for one file: downstream jobs take the store folder as --h5_path)")
    p.add_argument("--h5_layout", choices=("columnar", "legacy"), default="columnar", help="layout of embeddings.h5")
    p.add_argument("--num_cpus", type=int, default=None, help="CPUs for a local Ray instance (default: all)")
    return p


def medium_specs(args) -> list[MediumSpec]:
    for flag in ("rows_per_part", "batch_size", "max_actors"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ConfigError(f"--{flag} must be at least 1, got {value}")
    chosen = [m.strip() for m in args.media.split(",") if m.strip()]
    specs = []
    for medium in chosen:
        # the transcribed medium is embedded as symbolic (same embedder), from transcriptions
        modality = {v: k for k, v in MEDIUM_BY_MODALITY.items()}.get(medium, "symbolic" if medium == TRANSCRIBED else None)
        if modality is None:
            raise ConfigError(f"--media: unknown medium {medium!r}; choose from {list(PATH_COLUMN)}")
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
        spec = MediumSpec(medium, PATH_COLUMN[medium], name, options, cls.sample_rate)
        if medium == TRANSCRIBED:
            spec = transcription.transcribed_spec(spec, args.transcriber, parse_options(
                args.transcriber_option, "--transcriber_option"), embeddings_dir(args.data_root, args.dataset))
        specs.append(spec)
    return specs


@dataclasses.dataclass
class MediumRun:
    """One medium during the job: where its parts go, its pending rows, and what the workers reported."""

    spec: MediumSpec
    target: PartTarget
    counts: dict[str, Any]
    pending: list[dict[str, str]]
    errors: list[dict] = dataclasses.field(default_factory=list)      # absent and failed rows
    succeeded: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)

    def error(self, item_id: str, stage: str, error_type: str, message: str) -> None:
        self.errors.append({"id": item_id, "medium": self.spec.medium, "embedder": self.spec.embedder,
                            "stage": stage, "error_type": error_type, "message": message})

    def take(self, batch: dict[str, Any]) -> None:
        """Count the result rows of this medium (a batch may carry several media)."""
        for item_id, medium, status, etype, message, stage, n_frames in zip(
                batch["id"], batch["medium"], batch["status"], batch["error_type"], batch["error_message"],
                batch["stage"], batch["n_frames"]):
            if medium != self.spec.medium:
                continue
            if status == "done":
                self.succeeded.append((str(item_id), self.spec.medium, self.spec.embedder))
                self.counts["done"] += 1
                self.counts["frames"] += int(n_frames)
            else:
                self.error(str(item_id), str(stage), str(etype), str(message))
                self.counts["failed"] += 1


def is_absent(path) -> bool:
    return path is None or pd.isna(path) or not str(path).strip()


def start_medium(spec: MediumSpec, info: pd.DataFrame, store, args) -> MediumRun:
    """Prepare the medium's parts (--overwrite, config check, ids done) and find the rows still to embed."""
    cls = get_embedder_class(spec.embedder)
    config = cls.make_config(**local_options(spec.options))
    config_hash = cls.hash_config(config)
    description = {**cls.describe_config(config), "config_hash": config_hash}
    if spec.transcriber is not None:  # same embedder, on transcriptions: the transcriber is part of the identity
        config_hash, description = transcription.medium_identity(spec, config_hash, description)
    state = prepare_medium(store, spec.medium, spec.embedder, config_hash, overwrite=args.overwrite)
    tag = f"[{spec.medium}/{spec.embedder}]"
    if state.removed_parts:
        print(f"{tag} --overwrite: removed {state.removed_parts} part file(s)")
    if state.removed_temporary:
        print(f"{tag} removed {state.removed_temporary} uncommitted part file(s) left by a killed run")
    if spec.options.get("checkpoint") != getattr(config, "checkpoint", None):  # a URI: say where it came from
        description["checkpoint_source"] = spec.options["checkpoint"]
    target = PartTarget(str(store), config_hash, description, args.rows_per_part,
                        args.batch_size or cls.default_batch_size)
    counts = {"embedder": spec.embedder, "config": dataclasses.asdict(config), "config_hash": config_hash,
              "rows": len(info), "absent": 0, "skipped": 0, "done": 0, "failed": 0, "frames": 0, "seconds": 0.0}
    run = MediumRun(spec, target, counts, pending=[])
    column = spec.path_column
    for item_id, path in zip(info["id"], info[column]):
        if is_absent(path):
            kind = "audio" if column == "audio_filename" else "MIDI"
            run.error(item_id, "input", ABSENT, f"info.csv has no {column} for this recording, so it has no "
                                                f"{kind}; the media it has are embedded")
            counts["absent"] += 1
        elif item_id in state.done_ids:
            counts["skipped"] += 1
        else:
            run.pending.append({"id": item_id, "path": str(path)})
    print(f"{tag} {len(info)} rows: {counts['absent']} absent, {counts['skipped']} already embedded, "
          f"{len(run.pending)} to do")
    return run


def embed_pending(runs: list[MediumRun], root, args) -> None:
    """Stream every pending row through Ray Data; the workers commit parts, the driver counts result rows.

    With GPUs each medium has its own pipeline (CPU decode tasks feeding GPU actors); on CPUs only
    all media go through one pool of actors that decode and embed (pipeline.MediaActor).
    """
    import ray

    todo = [r for r in runs if r.pending]
    if not todo:
        return
    cpus = int(ray.cluster_resources().get("CPU", 1))
    gpus = int(ray.cluster_resources().get("GPU", 0))
    max_actors = args.max_actors or (max(1, int(gpus / args.num_gpus)) if args.num_gpus > 0 else max(1, cpus))
    if args.num_gpus > 0:
        for run in todo:
            started = time.perf_counter()
            ds = build_dataset(run.pending, run.spec, run.target, str(root), max_actors=max_actors,
                               num_gpus=args.num_gpus)
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                run.take(batch)
            run.counts["seconds"] = round(time.perf_counter() - started, 2)
        return
    started = time.perf_counter()
    paths = [{row["id"]: row["path"] for row in run.pending} for run in todo]
    rows = [{"id": item_id, **{f"path_{k}": p.get(item_id, "") for k, p in enumerate(paths)}}
            for item_id in dict.fromkeys(row["id"] for run in todo for row in run.pending)]
    rows_per_call = max(1, min(args.rows_per_part, -(-len(rows) // max_actors)))
    ds = build_media_dataset(rows, [r.spec for r in todo], [r.target for r in todo], str(root),
                             rows_per_call=rows_per_call, max_actors=max_actors)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for run in todo:
            run.take(batch)
    for run in todo:  # one pass embedded all media: each medium's time is the pass's
        run.counts["seconds"] = round(time.perf_counter() - started, 2)


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = dataset_dir(args.data_root, args.dataset)
    store = embeddings_dir(args.data_root, args.dataset)
    try:
        specs = medium_specs(args)
        info = read_info_csv(root, id_column=args.id_column)
    except (InfoCsvError, ConfigError, fs.StorageError, OSError) as exc:  # OSError: an unreachable store
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from ray_jobs.ray_session import ensure_ray

    ensure_ray(args.num_cpus)
    started = time.perf_counter()
    provenance = {
        "dataset": args.dataset, "info_csv_sha256": info_hash(root), "layout": "columnar",
        "package_versions": package_versions(), "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    summary: dict[str, Any] = {"dataset": args.dataset, "rows": len(info), "store": fs.display(store), "media": {}}
    try:
        runs = [start_medium(spec, info, store, args) for spec in specs]
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_metadata(store, info, provenance)  # the folder is readable as a store from now on
    transcribed = transcription.run_stage(runs, info, store, root, args)  # points the medium at its MIDI files
    if transcribed is not None:
        summary["transcription"] = transcribed
    embed_pending(runs, root, args)
    record_errors(runs, store, args.overwrite)
    for run in runs:
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
    if "transcription" in summary:
        print(transcription.summary_line(summary["transcription"]))
    if summary["h5_path"]:
        print(f"wrote {summary['h5_path']} ({summary['h5_layout']} layout) in {summary['seconds']} s")
    else:
        print(f"store {summary['store']} ready in {summary['seconds']} s (--h5 none: no embeddings.h5; "
              "downstream jobs take this folder as --h5_path)")
