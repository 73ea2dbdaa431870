"""Build a real paired dataset in the seed format from the music21 corpus (a Ray Data job).

    python -m ray_jobs.prepare_dataset --source maestro|slakh|lakh_matched --dataset NAME [--overwrite]

instead writes info.csv for that corpus, unpacked as ``<data_root>/raw/NAME/`` (``index``; the recipes
are in docs/datasets.md).

    python -m ray_jobs.prepare_dataset --source music21 --dataset music21 [--limit N]
        [--per_composer N] [--composers bach,palestrina,...] [--max_seconds S] [--seed N]
        [--program P] [--performance none|light|strong] [--families keyboards,strings,...]
        [--soundfont PATH] [--data_root data] [--num_cpus N]

Writes under ``<data_root>/raw/<dataset>/``: ``midi/<id>.mid`` (written from the parsed score by
``recipes.music21``), ``audio/<id>.wav`` (rendered with the SoundFont: 48 kHz, mono 16-bit, the
renderer's stereo mix averaged; with ``--performance none`` from that very MIDI, otherwise from a
drawn performance of the score, ``recipes.performance``: tempo curve, phrase dynamics, timing and
velocity variation, General MIDI programs of a drawn family), ``info.csv`` (sorted by id; columns
``CSV_COLUMNS``, plus ``recipes.performance.COLUMNS``, every drawn parameter, with a performance),
``build_failures.csv`` (id, corpus_path, reason: every work that could not be built) and
``.build/<id>.json`` (one record per built work, the resume state). Each Ray task parses one work
and writes its files atomically; the record is written last. A rerun skips works whose record,
MIDI and WAV exist and whose record was made with the same settings (``build_hash``).
``--data_root`` may be a URI (``s3://bucket/data``, ``gs://...``): every task then writes its files
straight to the store from its own node, so a cluster needs no shared filesystem. A local
``data_root`` under ``ray job submit`` with several nodes must be a shared filesystem.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from embedders.store import filesystem as fs
from embedders.store.atomic import json_bytes
from ray_jobs.console import Progress, add_verbose_flag
from ray_jobs.prepare_dataset import index
from ray_jobs.prepare_dataset.recipes import music21 as db
from ray_jobs.prepare_dataset.recipes import performance as perf

CSV_COLUMNS = ("id", "audio_filename", "midi_filename", "composer", "era", "time_signature", "key",
               "mode", "n_parts", "bpm", "duration", "split", "corpus_path")
FAILURE_COLUMNS = ("id", "corpus_path", "reason")
MERGE_OPUS = frozenset({"josquin"})  # files whose numbered ABC tunes are the voices of one piece
FORMAT_RANK = {".mxl": 0, ".xml": 0, ".musicxml": 0, ".krn": 1, ".abc": 2}  # same work twice: keep best
SKIP_SUFFIXES = frozenset({".rntxt"})  # Roman-numeral analyses, not scores
VARIANT = re.compile(r"^(bwv[0-9.]+)-[A-Za-z0-9]+$")  # bwv18.5-lz / bwv18.5-w: versions of one chorale
BUILD_VERSION = 1  # bump when the conversion changes: older records are then rebuilt
PERFORMANCE_VERSION = 1  # bump when recipes.performance changes what a drawn performance sounds like
DEFAULT_MAX_SECONDS = 60.0
DEFAULT_PER_COMPOSER = 36


def default_soundfont() -> str:
    """The General MIDI SoundFont shipped inside pretty_midi's package folder."""
    spec = importlib.util.find_spec("pretty_midi")
    folder = os.path.dirname(spec.origin) if spec and spec.origin else ""
    return os.path.join(folder, "TimGM6mb.sf2")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.prepare_dataset", description=__doc__.splitlines()[0])
    p.add_argument("--source", default="music21", choices=["music21", *index.SOURCES],
                   help="music21: build MIDI and audio from the music21 corpus; maestro, slakh, lakh_matched: write "
                        "info.csv for that corpus unpacked as <data_root>/raw/<dataset>/ (docs/datasets.md)")
    p.add_argument("--dataset", default="music21", help="dataset name: writes <data_root>/raw/<dataset>/")
    p.add_argument("--data_root", default="data", help="a folder or a URI (s3://bucket/data, gs://...)")
    p.add_argument("--limit", type=int, default=None, help="a balanced subset of N works (round-robin over composers)")
    p.add_argument("--per_composer", type=int, default=DEFAULT_PER_COMPOSER, help="works per composer/collection")
    p.add_argument("--composers", default=None,
                   help="comma-separated corpus folders (default: " + ",".join(db.DEFAULT_COMPOSERS) + ")")
    p.add_argument("--max_seconds", type=float, default=DEFAULT_MAX_SECONDS, help="cut every piece here")
    p.add_argument("--seed", type=int, default=0, help="selection and drawn tempos")
    p.add_argument("--program", type=int, default=0, help="General MIDI program for every part (0: piano)")
    p.add_argument("--performance", default="none", choices=perf.LEVELS,
                   help="render the audio from a drawn performance of the score (tempo curve, phrase dynamics, "
                        "timing and velocity variation, instruments of a drawn family) while the paired MIDI stays "
                        "the score; none: render the paired MIDI itself with --program (default: none)")
    p.add_argument("--families", default=None,
                   help="instrument families a performance draws from, comma-separated (default: all: "
                        + ",".join(perf.FAMILIES) + ")")
    p.add_argument("--soundfont", default=None,
                   help="SoundFont .sf2 (default: pretty_midi's small TimGM6mb.sf2); richer General MIDI sets: Debian's "
                        "fluid-soundfont-gm (/usr/share/sounds/sf2/FluidR3_GM.sf2) or "
                        "musescore-general-soundfont-lossless (/usr/share/sounds/sf2/MuseScore_General.sf2)")
    p.add_argument("--num_cpus", type=int, default=None, help="CPUs for a local Ray instance (default: all)")
    p.add_argument("--slakh_stems", action="store_true", help="slakh: one row per stem (stem audio + MIDI) instead of per mix")
    p.add_argument("--slakh_omitted", action="store_true", help="slakh: include the omitted/ tracks (split 'omitted')")
    p.add_argument("--all_matches", action="store_true",
                   help="lakh_matched: one row per (MSD id, matched MIDI) pair instead of the best match per MSD id")
    p.add_argument("--overwrite", action="store_true", help="maestro/slakh/lakh_matched: replace a differing info.csv")
    add_verbose_flag(p)
    return p


def parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    p = build_parser()
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be >= 1")
    if args.per_composer < 1 or args.max_seconds <= 0:
        p.error("--per_composer must be >= 1 and --max_seconds > 0")
    if not 0 <= args.program <= 127:
        p.error("--program must be a General MIDI program 0-127")
    args.families = [f for f in (args.families.split(",") if args.families else perf.FAMILIES) if f]
    unknown_families = [f for f in args.families if f not in perf.FAMILIES]
    if unknown_families:
        p.error(f"--families: unknown {unknown_families}; families: {', '.join(perf.FAMILIES)}")
    args.soundfont = args.soundfont or default_soundfont()
    if not fs.is_file(args.soundfont):
        p.error(f"--soundfont: SoundFont file not found: {args.soundfont}")
    args.composers = [c for c in (args.composers.split(",") if args.composers else db.DEFAULT_COMPOSERS) if c]
    unknown = [c for c in args.composers if c not in db.ERA]
    if unknown:
        p.error(f"--composers: unknown {unknown}; known corpus folders: {', '.join(sorted(db.ERA))}")
    return p, args


def load_catalogue(composers: Iterable[str]) -> list[db.Work]:
    """Every usable work of ``composers`` in music21's core corpus, from its metadata bundle alone."""
    from music21 import corpus

    bundle = corpus.corpora.CoreCorpus().metadataBundle
    # Iterating the bundle indexes it one item at a time, rebuilding a list each step (30 s here).
    entries = getattr(bundle, "_metadataEntries", None)
    entries = list(entries.values()) if entries is not None else list(bundle)
    wanted, best, voices = set(composers), {}, defaultdict(list)
    for entry in entries:
        path = PurePosixPath(str(entry.sourcePath))
        composer, md = path.parts[0], entry.metadata
        if composer not in wanted or path.suffix in SKIP_SUFFIXES or path.stem.endswith("_old") or md is None:
            continue
        if composer in MERGE_OPUS:
            voices[str(path)].append(md)
            continue
        ql, n_parts = float(md.scoreQuarterLength or 0), md.numberOfParts or 0
        if ql <= 0 or n_parts <= 0:
            continue
        variant = VARIANT.match(path.stem)  # one version per work, so no work is in two splits
        key = (composer, str(path.parent / (variant.group(1) if variant else path.stem)), entry.number)
        rank = (FORMAT_RANK.get(path.suffix, 9), len(path.stem), path.stem)
        if key not in best or rank < best[key][0]:
            best[key] = (rank, db.make_work(composer, str(path), entry.number, ql, md.timeSignatureFirst, False))
    works = [w for _, w in best.values()]
    for path, mds in voices.items():
        ql = max(float(md.scoreQuarterLength or 0) for md in mds)
        works.append(db.make_work(path.split("/")[0], path, None, ql, mds[0].timeSignatureFirst, True))
    duplicates = sorted(i for i, n in Counter(w.id for w in works).items() if n > 1)
    if duplicates:
        raise RuntimeError(f"corpus paths map to duplicate ids: {duplicates}")
    return sorted(works, key=lambda w: w.id)


def parse_work(work: db.Work):
    """Parse one work from the corpus into a music21 Score (no pickle cache read or written)."""
    from music21 import common, converter, stream
    from music21.exceptions21 import Music21Exception

    path = common.getCorpusFilePath() / work.corpus_path
    try:
        parsed = converter.parse(path, number=work.number, forceSource=True, storePickle=False)
    except (Music21Exception, ValueError, IndexError, KeyError, TypeError, AttributeError,
            ZeroDivisionError, UnicodeDecodeError, OSError) as exc:
        raise db.WorkError("parse", f"{type(exc).__name__}: {exc}") from None
    if isinstance(parsed, stream.Opus):
        if not work.merge_opus:
            raise db.WorkError("parse", f"{work.corpus_path} holds {len(parsed.scores)} scores, expected one")
        parsed = parsed.mergeScores()
    if not isinstance(parsed, stream.Score):
        score = stream.Score()
        score.insert(0, parsed)
        parsed = score
    return parsed


def build_hash(args: argparse.Namespace, soundfont_bytes: bytes) -> str:
    settings = {"version": BUILD_VERSION, "max_seconds": args.max_seconds, "program": args.program,
                "seed": args.seed, "velocity": db.VELOCITY, "soundfont": hashlib.sha256(soundfont_bytes).hexdigest()}
    if args.performance != "none":  # without one, the hash (and so a rerun) is what it always was
        settings.update(performance=args.performance, families=sorted(args.families), performance_version=PERFORMANCE_VERSION)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _paths(dataset_dir: Path | str, work_id: str) -> tuple[Path | str, Path | str, Path | str]:
    return (fs.join(dataset_dir, "midi", f"{work_id}.mid"), fs.join(dataset_dir, "audio", f"{work_id}.wav"),
            fs.join(dataset_dir, ".build", f"{work_id}.json"))


def load_done(dataset_dir: Path | str, work_id: str, settings_hash: str) -> dict[str, Any] | None:
    """The record of a work already built with these settings whose two files exist, else None."""
    midi, audio, record_path = _paths(dataset_dir, work_id)
    try:
        record = json.loads(fs.read_bytes(record_path))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if record.get("build_hash") != settings_hash or not (fs.is_file(midi) and fs.is_file(audio)):
        return None
    return record


_SOUNDFONTS: dict[str, bytes] = {}


def build_one(row: dict[str, Any], *, dataset_dir: str, soundfont: str, seed: int, max_seconds: float,
              program: int, settings_hash: str, performance: str = "none",
              families: tuple[str, ...] = tuple(perf.FAMILIES)) -> dict[str, Any]:
    """One Ray task: parse, convert, render and write one work. WorkError -> a 'failed' row."""
    work = db.Work(**json.loads(row["work"]))
    out = {"id": work.id, "corpus_path": work.corpus_path, "status": "failed", "reason": "", "record": ""}
    if soundfont not in _SOUNDFONTS:
        _SOUNDFONTS[soundfont] = fs.read_bytes(soundfont)
    started = time.perf_counter()
    try:
        score = parse_work(work)
        title = score.metadata.title if score.metadata is not None else None
        midi_bytes, conv = db.score_to_midi(score, work.id, seed=seed, max_seconds=max_seconds, program=program)
        del score
        drawn = None
        if performance != "none":
            drawn = perf.draw_performance(performance, work.id, len(conv.track_names), seed, families)
            rendered = perf.performance_midi(drawn, conv.notes, conv.bpm, db.TPQ, conv.track_names)
        wav_bytes, audio_seconds = db.render_audio(rendered if drawn else midi_bytes, _SOUNDFONTS[soundfont])
    except db.WorkError as exc:
        return {**out, "reason": str(exc)}
    midi_path, audio_path, record_path = _paths(dataset_dir, work.id)
    fs.write_bytes(midi_path, midi_bytes)  # atomic locally, one upload on an object store
    fs.write_bytes(audio_path, wav_bytes)
    ts = conv.time_signature
    record = {
        "id": work.id, "audio_filename": f"audio/{work.id}.wav", "midi_filename": f"midi/{work.id}.mid",
        "composer": work.composer, "era": db.ERA[work.composer],
        "time_signature": f"{ts[0]}-{ts[1]}" if ts else "unknown", "key": conv.key, "mode": conv.mode,
        "n_parts": conv.n_parts, "bpm": conv.bpm, "duration": conv.duration, "corpus_path": work.corpus_path,
        "number": work.number, "title": title, "bpm_source": conv.bpm_source, "truncated": conv.truncated,
        "grace_notes_skipped": conv.grace_skipped, "n_notes": len(conv.notes),
        "audio_seconds": round(audio_seconds, 3), "build_seconds": round(time.perf_counter() - started, 2),
        "build_hash": settings_hash, **(drawn.columns() if drawn else {}),
    }
    fs.write_bytes(record_path, json_bytes(record))
    return {**out, "status": "built", "record": json.dumps(record)}


def csv_columns(performance: str) -> tuple[str, ...]:
    """info.csv's columns: ``CSV_COLUMNS``, then with a performance every drawn parameter."""
    return CSV_COLUMNS if performance == "none" else CSV_COLUMNS + perf.COLUMNS


def write_csv(path: Path | str, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    import pandas as pd

    fs.write_bytes(path, pd.DataFrame(rows, columns=list(columns)).to_csv(index=False).encode())


def _disk_bytes(dataset_dir: Path | str, records: list[dict[str, Any]]) -> int:
    return sum(fs.file_size(fs.join(dataset_dir, r[col])) for r in records for col in ("audio_filename", "midi_filename"))


def main(argv: list[str] | None = None) -> int:
    _, args = parse_args(argv)
    if args.source != "music21":
        return index.main(args)
    started = time.perf_counter()
    catalogue = load_catalogue(args.composers)
    works = db.select_works(catalogue, args.composers, args.per_composer, args.max_seconds, args.seed, args.limit)
    if not works:
        print(f"no works of {args.composers} fit --max_seconds {args.max_seconds}; nothing to build")
        return 1
    dataset_dir = fs.join(args.data_root, "raw", args.dataset)
    if not fs.is_remote(dataset_dir):
        for sub in ("midi", "audio", ".build"):
            (dataset_dir / sub).mkdir(parents=True, exist_ok=True)
    settings_hash = build_hash(args, fs.read_bytes(args.soundfont))
    records: dict[str, dict[str, Any]] = {}
    todo = []
    for work in works:
        done = load_done(dataset_dir, work.id, settings_hash)
        if done is not None:
            records[work.id] = done
        else:
            todo.append(work)
    skipped = len(records)
    print(f"prepare_dataset: {len(works)} works selected from {len(catalogue)} of {len(args.composers)} "
          f"composers/collections; {skipped} already built, building {len(todo)} -> {dataset_dir}", flush=True)
    failures: list[dict[str, Any]] = []
    if todo:
        import ray

        from ray_jobs.ray_session import ensure_ray

        ensure_ray(args.num_cpus, verbose=args.verbose)
        items = [{"work": json.dumps(dataclasses.asdict(w))} for w in todo]
        # absolute paths (or URIs): tasks on other nodes, or in another working directory, see the same
        kwargs = dict(dataset_dir=fs.display(dataset_dir), soundfont=fs.display(args.soundfont),
                      seed=args.seed, max_seconds=args.max_seconds, program=args.program, settings_hash=settings_hash,
                      performance=args.performance, families=tuple(args.families))
        dataset = ray.data.from_items(items, override_num_blocks=len(items))
        with Progress("prepare_dataset", len(todo), unit="works") as progress:
            for row in dataset.map(build_one, fn_kwargs=kwargs, num_cpus=1).iter_rows():
                if row["status"] == "built":
                    records[row["id"]] = json.loads(row["record"])
                else:
                    failures.append({k: row[k] for k in FAILURE_COLUMNS})
                progress.update(done=1, failed=row["status"] != "built")
    failures.sort(key=lambda f: f["id"])
    write_csv(fs.join(dataset_dir, "build_failures.csv"), failures, FAILURE_COLUMNS)
    rows = [records[w.id] for w in works if w.id in records]  # works are sorted by id
    for row, split in zip(rows, db.assign_splits([r["id"] for r in rows], [r["composer"] for r in rows])):
        row["split"] = split
    if rows:
        write_csv(fs.join(dataset_dir, "info.csv"), rows, csv_columns(args.performance))
    for f in failures:
        print(f"  FAILED {f['id']} ({f['corpus_path']}): {f['reason']}")
    per_composer = Counter(r["composer"] for r in rows)
    splits = Counter(r["split"] for r in rows)
    minutes = sum(r["audio_seconds"] for r in rows) / 60
    print(f"prepare_dataset: built {len(rows) - skipped}, skipped (already present) {skipped}, failed {len(failures)}"
          f" in {time.perf_counter() - started:.1f} s; {len(rows)} rows in {fs.join(dataset_dir, 'info.csv')}")
    print(f"  per composer: {dict(sorted(per_composer.items()))}")
    print(f"  splits: {dict(splits)}; audio {minutes:.1f} min; "
          f"{_disk_bytes(dataset_dir, rows) / 2**20:.1f} MiB of MIDI+WAV")
    return 0 if rows else 1
