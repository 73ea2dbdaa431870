"""The transcription stage of the ``transcribed_embeddings`` medium: audio -> MIDI, before embedding.

The medium is a symbolic embedder run on each recording's transcription, so that symbolic and
transcribed embeddings differ in the medium only, never in the model. This stage turns the
pending rows' audio into MIDI files beside the store; the ordinary symbolic path then embeds
those files (the medium's ``MediumSpec`` reads its paths from the store: ``files_root``).

Per row with audio (a row without one is ``AbsentMedium``, as in every medium):

1. reuse: a transcription already in the store's index with the same transcriber config hash and
   the same bpm is taken as it is (``embedders.store.transcriptions``);
2. otherwise an actor of a Ray Data pool (one transcriber per actor) decodes the audio at the
   transcriber's rate, transcribes it with the row's ``bpm`` (info.csv column; 120 when absent),
   writes ``<store>/transcriptions/<transcriber>/<safe id>.mid`` atomically, scores it against the
   paired MIDI when the row has one (``note_onset_scores``: mir_eval onset precision / recall /
   F1, on the written file, i.e. exactly what the embedder reads) and commits the index rows of
   its call; the driver gets one small result row per id;
3. a row that cannot be transcribed (missing, corrupt or silent audio; a bpm that is not a
   positive number) fails in this medium with stage ``transcribe`` and its named error.

The driver then writes ``transcription_quality.parquet`` (one row per info.csv row) and returns
the summary's ``transcription`` section (counts, mean and median onset F1, seconds per audio minute).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np
import pandas as pd

from embedders.base import ITEM_ERRORS, CheckpointError, ConfigError, ItemError, MissingDependencyError
from embedders.io import decode_audio, read_bytes
from embedders.store import filesystem as fs
from embedders.store import transcriptions as tx
from embedders.store.parts import StoreError
from embedders.store.transcriptions import TRANSCRIBED
from ray_jobs.generate_embeddings.pipeline import MediumSpec
from ray_jobs.generate_embeddings.ray_data import DECODE_MEMORY_BYTES, map_batches_no_restart

RESULT_COLUMNS = ("id", "status", "error_type", "error_message")
SCORE_KEYS = ("precision", "recall", "f1", "n_reference", "n_estimate")
_TRANSCRIBERS: dict[str, Any] = {}  # the driver's transcriber per (name, options): hashing needs the weights


def _driver_transcriber(name: str, options: dict[str, Any]):
    """The transcriber built once on the driver (to hash and describe it). Its missing extra or
    weights become a ConfigError: the job's one-line exit 2."""
    from embedders.transcribe import get_transcriber

    key = repr((name, sorted(options.items())))
    if key not in _TRANSCRIBERS:
        try:
            _TRANSCRIBERS[key] = get_transcriber(name, **options)
        except (MissingDependencyError, CheckpointError) as exc:
            raise ConfigError(f"--transcriber {name}: {exc}") from None
    return _TRANSCRIBERS[key]


def transcribed_spec(symbolic: MediumSpec, transcriber: str, options: dict[str, Any], store) -> MediumSpec:
    """The transcribed medium's spec: ``symbolic``'s embedder and options, files from the store's
    transcriptions. Raises ConfigError for an unknown transcriber or option (before any work)."""
    _driver_transcriber(transcriber, options)
    return dataclasses.replace(symbolic, medium=TRANSCRIBED, path_column="audio_filename", files_root=str(store),
                               transcriber=(transcriber, dict(options)))


def medium_identity(spec: MediumSpec, config_hash: str, description: dict) -> tuple[str, dict]:
    """(config hash, description) of the transcribed medium's parts: the embedder's, joined with the
    transcriber's. ``embedder_config_hash`` equals the symbolic medium's hash for the same embedder config."""
    transcriber = _driver_transcriber(*spec.transcriber)
    combined = tx.medium_config_hash(config_hash, transcriber.config_hash())
    return combined, {**description, "config_hash": combined, "embedder_config_hash": config_hash,
                      "transcriber": transcriber.describe(), "transcriber_config_hash": transcriber.config_hash(),
                      "transcriptions": f"{tx.FOLDER}/{transcriber.name}/"}


# ---------------------------------------------------------------------------------------------
# The workers
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TranscriptionTarget:
    store: str            # data/embeddings/<dataset>: a folder or a URI
    root: str             # the dataset folder (audio and reference MIDI paths are relative to it)
    transcriber: str
    options: dict[str, Any]
    config_hash: str


def reference_quality(reference, midi: bytes, item_id: str) -> dict[str, Any]:
    """Onset scores of the transcription ``midi`` against the paired MIDI file (None: no pair)."""
    from embedders.transcribe import note_onset_scores

    if reference is None:
        return {"has_reference": False}
    try:
        scores = note_onset_scores(read_bytes(reference, item_id), midi)
    except ITEM_ERRORS as exc:
        return {"has_reference": True, "reference_error": f"{type(exc).__name__}: {exc.reason}"}
    return {"has_reference": True, **{k: scores[k] for k in SCORE_KEYS}}


class TranscribeActor:
    """Loads the transcriber once; per call transcribes its rows (``{id, audio, reference, bpm}``),
    writes each MIDI file, then commits the call's index rows, and answers ``RESULT_COLUMNS``."""

    def __init__(self, target: TranscriptionTarget):
        from embedders.transcribe import get_transcriber

        self.target = target
        self.transcriber = get_transcriber(target.transcriber, **target.options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t = self.target
        out: dict[str, list] = {k: [] for k in RESULT_COLUMNS}
        index_rows = []
        for item_id, audio, reference, bpm in zip(batch["id"], batch["audio"], batch["reference"], batch["bpm"]):
            item_id, bpm = str(item_id), float(bpm)
            started = time.perf_counter()
            error: ItemError | None = None
            try:
                wave = decode_audio(fs.join(t.root, str(audio)), self.transcriber.sample_rate, item_id)
                result = self.transcriber.transcribe(wave, bpm=None if math.isnan(bpm) else bpm)
            except ITEM_ERRORS as exc:
                error = exc
            out["id"].append(item_id)
            out["status"].append("failed" if error else "done")
            out["error_type"].append(type(error).__name__ if error else "")
            out["error_message"].append(error.reason.replace("\n", " ") if error else "")
            if error:
                continue
            row = {"id": item_id, "midi_file": tx.write_midi(t.store, t.transcriber, item_id, result.midi),
                   "config_hash": t.config_hash, "bpm": bpm, "audio_seconds": len(wave) / self.transcriber.sample_rate,
                   "n_notes": len(result.notes)}
            row.update(reference_quality(fs.join(t.root, str(reference)) if reference else None, result.midi, item_id))
            row["seconds"] = time.perf_counter() - started
            index_rows.append(row)
        tx.commit_index(t.store, t.transcriber, index_rows)  # after the files: an index row names a whole file
        return {k: np.array(v, dtype=object) for k, v in out.items()}


def collect(batch: dict[str, np.ndarray], results: dict[str, tuple[str, str]]) -> None:
    """Driver side: remember each failed id's (error type, message)."""
    for item_id, status, etype, message in zip(*(batch[k] for k in RESULT_COLUMNS)):
        if status != "done":
            results[str(item_id)] = (str(etype), str(message))


def transcribe_rows(rows: list[dict], target: TranscriptionTarget, *, max_actors: int, rows_per_call: int) -> dict:
    """Run ``rows`` through a pool of TranscribeActor; return {failed id: (error type, message)}."""
    import ray
    from ray.data import ActorPoolStrategy

    failed: dict[str, tuple[str, str]] = {}
    if not rows:
        return failed
    n_calls = max(1, -(-len(rows) // rows_per_call))
    # no restarts, as the embedding actors (ray_data.py): a lost actor stops the stage, the rerun reuses
    # what was committed
    ds = map_batches_no_restart(
        ray.data.from_items(rows, override_num_blocks=n_calls), TranscribeActor,
        fn_constructor_kwargs={"target": target}, batch_size=rows_per_call, batch_format="numpy",
        compute=ActorPoolStrategy(size=max(1, min(max_actors, n_calls))), num_cpus=1, memory=DECODE_MEMORY_BYTES)
    batches = ds.iter_batches(batch_size=None, batch_format="numpy")
    try:
        for batch in batches:
            collect(batch, failed)
    finally:  # an interrupted driver stops the pool now, not when the traceback is dropped
        close = getattr(batches, "close", None)
        if close is not None:
            close()
    return failed


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------
def row_bpm(value) -> float:
    """info.csv's bpm as the tempo to write: NaN when not given; ConfigError when not a positive number."""
    from embedders.transcribe.midi import tempo_bpm

    if value is None or (not isinstance(value, str) and pd.isna(value)) or (isinstance(value, str) and not value.strip()):
        return math.nan
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"bpm must be a number of quarter notes per minute, got {value!r}") from None
    return tempo_bpm(number)


def run_stage(runs: list, info: pd.DataFrame, store, root, args) -> dict | None:
    """Transcribe what the transcribed medium's run (a ``job.MediumRun``, if any) needs; point its
    pending rows at their MIDI files; record failures on it; write the quality table. Returns the
    summary's ``transcription`` section, or None when the job has no transcribed medium."""
    import ray

    run = next((r for r in runs if r.spec.medium == TRANSCRIBED), None)
    if run is None:
        return None
    started = time.perf_counter()
    name, options = run.spec.transcriber
    transcriber = _driver_transcriber(name, options)
    config_hash = transcriber.config_hash()
    tx.remove_temporary_files(store, name)
    if args.overwrite:
        tx.clear_index(store, name)
    bpm_column = info["bpm"] if "bpm" in info.columns else pd.Series([None] * len(info), index=info.index)
    bpm_of, midi_of = dict(zip(info["id"], bpm_column)), dict(zip(info["id"], info["midi_filename"]))
    known = tx.read_index(store, name, config_hash).set_index("id")

    failed: dict[str, tuple[str, str]] = {}
    bpms: dict[str, float] = {}
    stored: dict[str, str] = {}  # id -> its transcription of this config and bpm, per the index
    for row in run.pending:
        item_id = row["id"]
        try:
            bpms[item_id] = row_bpm(bpm_of[item_id])
        except ConfigError as exc:
            failed[item_id] = ("ConfigError", str(exc))
            continue
        if item_id in known.index and tx.same_bpm(known.at[item_id, "bpm"], bpms[item_id]):
            stored[item_id] = known.at[item_id, "midi_file"]
    present = tx.existing_files(store, stored.values())
    reused = sum(1 for f in stored.values() if f in present)
    todo = [{"id": r["id"], "audio": r["path"], "bpm": bpms[r["id"]], "reference": midi_of[r["id"]]}
            for r in run.pending if r["id"] in bpms and stored.get(r["id"]) not in present]
    print(f"[transcribe/{name}] {len(run.pending)} rows to embed: {reused} transcriptions reused, "
          f"{len(todo)} to transcribe, {len(failed)} with an invalid bpm")

    cpus = int(ray.cluster_resources().get("CPU", 1))
    max_actors = args.max_actors if args.max_actors and not args.num_gpus else max(1, cpus)
    target = TranscriptionTarget(str(store), str(root), name, dict(options), config_hash)
    rows_per_call = max(1, min(args.rows_per_part, -(-len(todo) // max_actors))) if todo else 1
    failed.update(transcribe_rows(todo, target, max_actors=max_actors, rows_per_call=rows_per_call))

    index = tx.read_index(store, name, config_hash).set_index("id")
    pending, empty = [], 0
    for row in run.pending:
        item_id = row["id"]
        if item_id not in failed and item_id not in index.index:
            raise StoreError(f"{item_id}: transcribed, but no index row in {tx.index_dir(store, name)}")
        if item_id in failed:
            run.error(item_id, "transcribe", *failed[item_id])
        elif index.at[item_id, "n_notes"] == 0:  # say so here: the embedder would only see a MIDI file without notes
            empty += 1
            run.error(item_id, "transcribe", "EmptyInputError", f"{name} transcribed no notes from the audio "
                                                                f"(the empty file {index.at[item_id, 'midi_file']} is kept)")
        else:
            pending.append({"id": item_id, "path": index.at[item_id, "midi_file"]})
            continue
        run.counts["failed"] += 1
    run.pending = pending

    rows = quality_rows(info, index, failed, name, config_hash)
    tx.write_quality_table(store, rows)
    new = index[index.index.isin([r["id"] for r in todo]) & ~index.index.isin(list(failed))]
    audio_seconds, item_seconds = float(new["audio_seconds"].sum()), float(new["seconds"].sum())
    section = {
        "transcriber": name, "config_hash": config_hash, "description": transcriber.describe(),
        "rows_with_audio": int(sum(r["status"] != "absent" for r in rows)), "transcribed": len(new), "reused": reused,
        "failed": len(failed), "without_notes": empty, "absent": int(sum(r["status"] == "absent" for r in rows)),
        "seconds": round(time.perf_counter() - started, 2), "audio_seconds": round(audio_seconds, 2),
        "seconds_per_audio_minute": round(60 * item_seconds / audio_seconds, 3) if audio_seconds else None,
        "quality": quality_summary(rows), "table": fs.display(tx.quality_path(store)),
    }
    return section


def quality_rows(info: pd.DataFrame, index: pd.DataFrame, failed: dict, name: str, config_hash: str) -> list[dict]:
    """One ``QUALITY_COLUMNS`` row per info.csv row, in info.csv order. ``scored``: the row counts in the
    summary's means (a readable reference with at least one pitched note)."""
    rows = []
    for item_id, audio in zip(info["id"], info["audio_filename"]):
        row: dict[str, Any] = {"id": item_id, "transcriber": name, "config_hash": config_hash}
        if not str(audio).strip():
            row["status"] = "absent"
        elif item_id in failed:
            row.update(status="failed", error_type=failed[item_id][0], message=failed[item_id][1])
        elif item_id in index.index:
            found = index.loc[item_id]
            row["status"] = "transcribed"
            row.update({k: found[k] for k in tx.QUALITY_COLUMNS if k in found.index and k != "config_hash"})
            row["scored"] = bool(row["has_reference"] and not _text(row.get("reference_error"))
                                 and (row.get("n_reference") or 0) > 0)
        else:  # embedded by an earlier run whose transcription has since been removed
            row["status"] = "missing"
        rows.append(row)
    return rows


def quality_summary(rows: list[dict]) -> dict[str, Any]:
    """Onset scores over the rows that have a reference with pitched notes (drum-only references have
    none: a pitched transcriber cannot be scored on them); counts of the rows left out and why."""
    done = [r for r in rows if r["status"] == "transcribed"]
    scored = [r for r in done if r["scored"]]
    f1 = np.array([r["f1"] for r in scored], dtype=np.float64)
    mean = (lambda key: float(np.mean([r[key] for r in scored]))) if scored else (lambda key: None)
    return {
        "rows_scored": len(scored), "mean_f1": mean("f1"), "median_f1": float(np.median(f1)) if scored else None,
        "mean_precision": mean("precision"), "mean_recall": mean("recall"),
        "rows_without_reference": sum(not r.get("has_reference") for r in done),
        "rows_with_unreadable_reference": sum(bool(r.get("has_reference") and _text(r.get("reference_error")))
                                              for r in done),
        "rows_without_pitched_reference": sum(bool(r.get("has_reference") and not _text(r.get("reference_error"))
                                                   and not (r.get("n_reference") or 0)) for r in done),
    }


def _text(value) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def summary_line(section: dict[str, Any]) -> str:
    q = section["quality"]
    score = (f"onset F1 mean {q['mean_f1']:.3f}, median {q['median_f1']:.3f} over {q['rows_scored']} scored rows"
             if q["rows_scored"] else "no row scored (no paired MIDI with pitched notes)")
    rate = section["seconds_per_audio_minute"]
    return (f"[transcribe/{section['transcriber']}] {section['rows_with_audio']} rows with audio: "
            f"{section['transcribed']} transcribed, {section['reused']} reused, {section['failed']} failed; {score}"
            + (f"; {rate:.2f} s per audio minute" if rate else ""))
