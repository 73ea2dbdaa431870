"""Embed every recording of a paired dataset in both media, on Ray Data; consolidate embeddings.h5.

    python -m ray_jobs.generate_embeddings --dataset music21 [--data_root data]
        [--audio_embedder melstats] [--symbolic_embedder pianoroll] [--num_gpus 0]
        [--batch_size N] [--max_actors N] [--overwrite] [--h5_layout columnar|legacy]

Resumable: ids already embedded with the same embedder config are skipped, so a killed job rerun
ends with every id exactly once. Bad recordings land in errors.parquet; the job finishes the rest.
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

from embedders.base import MEDIUM_BY_MODALITY, ConfigError
from embedders.dataset import InfoCsvError, dataset_dir, embeddings_dir, info_hash, package_versions, read_info_csv
from embedders.registry import available, get_embedder_class
from embedders.store import filesystem as fs
from embedders.store.atomic import json_bytes
from embedders.store.h5 import consolidate, export_legacy
from embedders.store.parts import (
    ShardWriter,
    StoreError,
    check_shard_config,
    completed_ids,
    errors_path,
    remove_shards,
    write_errors,
)
from ray_jobs.generate_embeddings.pipeline import MediumSpec, build_dataset, build_media_dataset, local_options

PATH_COLUMN = {"audio_embeddings": "audio_filename", "symbolic_embeddings": "midi_filename"}


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
    p.add_argument("--data_root", default="data", help="root holding raw/ and embeddings/: a folder or a URI such as s3://bucket/data or gs://bucket/data (default: data)")
    p.add_argument("--audio_embedder", default="melstats", help="audio embedder name (default: melstats)")
    p.add_argument("--symbolic_embedder", default="pianoroll", help="symbolic embedder name (default: pianoroll)")
    p.add_argument("--audio_option", action="append", default=[], metavar="KEY=VALUE", help="audio embedder config option (repeatable)")
    p.add_argument("--symbolic_option", action="append", default=[], metavar="KEY=VALUE", help="symbolic embedder config option (repeatable)")
    p.add_argument("--audio_checkpoint", help="weights file for the audio embedder (sets its 'checkpoint' option); "
                                              "a path or a URI (each node keeps one local copy)")
    p.add_argument("--symbolic_checkpoint", help="weights file for the symbolic embedder (sets its 'checkpoint' option); "
                                                 "a path or a URI (each node keeps one local copy)")
    p.add_argument("--media", default="audio_embeddings,symbolic_embeddings", help="comma-separated media to embed")
    p.add_argument("--num_gpus", type=float, default=0.0, help="GPUs per embedding actor (default 0: CPU actors)")
    p.add_argument("--batch_size", type=int, default=None, help="items per embedding batch (default: the embedder's)")
    p.add_argument("--max_actors", type=int, default=None, help="embedding actor pool size (default: one per CPU, each decoding its own batches; with --num_gpus, GPUs / --num_gpus)")
    p.add_argument("--rows_per_part", type=int, default=256, help="rows per Parquet part file (resume granularity)")
    p.add_argument("--overwrite", action="store_true", help="recompute everything for the chosen embedders")
    p.add_argument("--h5_layout", choices=("columnar", "legacy"), default="columnar", help="layout of embeddings.h5")
    p.add_argument("--num_cpus", type=int, default=None, help="CPUs for a local Ray instance (default: all)")
    return p


def medium_specs(args) -> list[MediumSpec]:
    chosen = [m.strip() for m in args.media.split(",") if m.strip()]
    specs = []
    for medium in chosen:
        modality = {v: k for k, v in MEDIUM_BY_MODALITY.items()}.get(medium)
        if modality is None:
            raise ConfigError(f"--media: unknown medium {medium!r}; choose from {list(MEDIUM_BY_MODALITY.values())}")
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
        specs.append(MediumSpec(medium, PATH_COLUMN[medium], name, options, cls.sample_rate))
    return specs


@dataclasses.dataclass
class MediumRun:
    """One medium during the job: its pending rows, shard writer, errors and counts."""

    spec: MediumSpec
    counts: dict[str, Any]
    pending: list[dict[str, str]]
    writer: ShardWriter | None
    replaced: list[tuple[str, str]]
    errors: list[dict] = dataclasses.field(default_factory=list)
    succeeded: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)

    def take(self, batch: dict[str, Any]) -> None:
        """Route result rows (those of this medium, when the batch carries several) to shards or errors."""
        mine = batch.get("medium")
        for k, (item_id, seq, etype, message, stage) in enumerate(zip(
                batch["id"], batch["sequence"], batch["error_type"], batch["error_message"], batch["stage"])):
            if mine is not None and mine[k] != self.spec.medium:
                continue
            if etype:
                self.errors.append({"id": str(item_id), "medium": self.spec.medium, "embedder": self.spec.embedder,
                                    "stage": str(stage), "error_type": str(etype), "message": str(message)})
            else:
                self.writer.add(str(item_id), seq)
                self.succeeded.append((str(item_id), self.spec.medium, self.spec.embedder))


def start_medium(spec: MediumSpec, info, emb_dir: Path | str, args) -> MediumRun:
    """Apply --overwrite, check the stored config, and find the rows of one medium still to embed."""
    cls = get_embedder_class(spec.embedder)
    config = cls.make_config(**local_options(spec.options))
    config_hash = cls.hash_config(config)
    replaced = []
    if args.overwrite:
        removed = remove_shards(emb_dir, spec.medium, spec.embedder)
        replaced.append((spec.medium, spec.embedder))
        if removed:
            print(f"[{spec.medium}/{spec.embedder}] --overwrite: removed {removed} part file(s)")
    check_shard_config(emb_dir, spec.medium, spec.embedder, config_hash)
    done = completed_ids(emb_dir, spec.medium, spec.embedder, config_hash)
    ids = info["id"].tolist()
    pending = [{"id": i, "path": p} for i, p in zip(ids, info[spec.path_column]) if i not in done]
    skipped = len(ids) - len(pending)
    print(f"[{spec.medium}/{spec.embedder}] {len(ids)} rows: {skipped} already embedded, {len(pending)} to do")
    counts = {"embedder": spec.embedder, "config": dataclasses.asdict(config), "config_hash": config_hash,
              "rows": len(ids), "skipped": skipped,
              "done": 0, "failed": 0, "seconds": 0.0}
    writer = None
    if pending:
        description = {**cls.describe_config(config), "config_hash": config_hash}
        if spec.options.get("checkpoint") != getattr(config, "checkpoint", None):  # a URI: say where it came from
            description["checkpoint_source"] = spec.options["checkpoint"]
        writer = ShardWriter(emb_dir, spec.medium, spec.embedder, config_hash, description, args.rows_per_part)
    return MediumRun(spec, counts, pending, writer, replaced)


def embed_pending(runs: list[MediumRun], root: Path | str, args) -> None:
    """Stream every pending row through Ray Data into the runs' writers.

    With GPUs each medium has its own pipeline (CPU decode tasks feeding GPU actors); on CPUs only
    all media go through one pool of actors that decode and embed (embedding_pipeline.MediaActor).
    """
    import ray

    todo = [r for r in runs if r.pending]
    if not todo:
        return
    cpus = int(ray.cluster_resources().get("CPU", 1))
    gpus = int(ray.cluster_resources().get("GPU", 0))
    max_actors = args.max_actors or (max(1, int(gpus / args.num_gpus)) if args.num_gpus > 0 else max(1, cpus))
    batch_sizes = {r.spec.medium: args.batch_size or get_embedder_class(r.spec.embedder).default_batch_size for r in todo}
    if args.num_gpus > 0:
        for run in todo:
            started = time.perf_counter()
            ds = build_dataset(run.pending, run.spec, str(root), batch_size=batch_sizes[run.spec.medium],
                               max_actors=max_actors, num_gpus=args.num_gpus)
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                run.take(batch)
            run.counts["seconds"] = round(time.perf_counter() - started, 2)
        return
    started = time.perf_counter()
    paths = [{row["id"]: row["path"] for row in run.pending} for run in todo]
    rows = [{"id": item_id, **{f"path_{k}": p.get(item_id, "") for k, p in enumerate(paths)}}
            for item_id in dict.fromkeys(row["id"] for run in todo for row in run.pending)]
    ds = build_media_dataset(rows, [r.spec for r in todo], str(root), batch_size=min(batch_sizes.values()),
                             max_actors=max_actors)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for run in todo:
            run.take(batch)
    for run in todo:  # one pass embedded all media: each medium's time is the pass's
        run.counts["seconds"] = round(time.perf_counter() - started, 2)


def finish_medium(run: MediumRun, emb_dir: Path | str) -> dict[str, Any]:
    """Flush the shards, merge the errors into errors.parquet, print the failures; return the counts."""
    counts, errors = run.counts, run.errors
    if run.writer is not None:
        run.writer.flush()
        counts.update(done=run.writer.rows_written, failed=len(errors))
        write_errors(emb_dir, errors, resolved=run.succeeded, replaced_scopes=run.replaced)
    elif run.replaced:
        write_errors(emb_dir, [], replaced_scopes=run.replaced)
    counts["valid_total"] = counts["skipped"] + counts["done"]
    for err in errors[:20]:
        print(f"  failed {err['id']} [{err['stage']}] {err['error_type']}: {err['message']}")
    if len(errors) > 20:
        print(f"  ... and {len(errors) - 20} more in {errors_path(emb_dir)}")
    return counts


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = dataset_dir(args.data_root, args.dataset)
    emb_dir = embeddings_dir(args.data_root, args.dataset)
    try:
        specs = medium_specs(args)
        info = read_info_csv(root, id_column=args.id_column)
    except (InfoCsvError, ConfigError, fs.StorageError, OSError) as exc:  # OSError: an unreachable store
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from ray_jobs.ray_session import ensure_ray

    ensure_ray(args.num_cpus)
    started = time.perf_counter()
    summary: dict[str, Any] = {"dataset": args.dataset, "rows": len(info), "media": {}}
    try:
        runs = [start_medium(spec, info, emb_dir, args) for spec in specs]
        embed_pending(runs, root, args)
        for run in runs:
            summary["media"][run.spec.medium] = finish_medium(run, emb_dir)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    h5_path = fs.join(emb_dir, "embeddings.h5")
    provenance = {
        "dataset": args.dataset, "info_csv_sha256": info_hash(root), "layout": "columnar",
        "package_versions": package_versions(), "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    # HDF5 needs a local, seekable file: a remote store is consolidated from a local copy of its
    # shards into a local file that is uploaded once complete (local stores are used in place).
    with fs.local_copy(fs.join(emb_dir, "parquet"), missing_ok=True) as local_parquet, \
            fs.local_output_file(h5_path) as local_h5:
        summary["h5"] = consolidate(local_parquet.parent, info, local_h5, provenance=provenance)
        if args.h5_layout == "legacy":
            # export_legacy writes a temporary file beside its target and renames it over the columnar one
            export_legacy(local_h5, local_h5, {s.medium: s.embedder for s in specs})
    summary["h5_path"] = str(h5_path)
    summary["h5_layout"] = args.h5_layout
    summary["seconds"] = round(time.perf_counter() - started, 2)
    print_summary(summary)
    fs.write_bytes(fs.join(emb_dir, "summary.json"), json_bytes(summary))
    embedded = sum(m["valid_total"] for m in summary["media"].values())
    return 0 if embedded > 0 else 1


def print_summary(summary: dict[str, Any]) -> None:
    print(f"\n{'medium':<22}{'embedder':<18}{'done':>7}{'skipped':>9}{'failed':>8}{'valid':>8}{'rows/s':>9}")
    for medium, c in summary["media"].items():
        rate = c["done"] / c["seconds"] if c["seconds"] else 0.0
        print(f"{medium:<22}{c['embedder']:<18}{c['done']:>7}{c['skipped']:>9}{c['failed']:>8}{c['valid_total']:>8}{rate:>9.1f}")
    print(f"wrote {summary['h5_path']} ({summary['h5_layout']} layout) in {summary['seconds']} s")
