"""The Ray Data pipelines of the embedding job. The workers write the embeddings; the driver coordinates.

Two layouts: with GPUs, CPU tasks decode and a pool of (GPU) actors per medium embeds; on CPUs
only, one pool of actors decodes and embeds every medium (no waveform crosses the object store).
Either way the embedding actor commits its rows as Parquet parts straight to the store (a folder
or a URI; ``embedders.store.parts.ShardWriter``) before it answers, and sends the driver one small
row per (id, medium): ``RESULT_COLUMNS``, never an embedding. A recording that fails at any stage
becomes a "failed" row with its error; only the narrow ``ITEM_ERRORS`` are caught, anything else
stops the job.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from embedders.base import ITEM_ERRORS, ConfigError, ItemError
from embedders.io import decode_audio, decode_midi, read_bytes
from embedders.store import filesystem as fs
from embedders.store.parts import ShardWriter

EMPTY = np.zeros(0, dtype=np.float32)
DECODE_MEMORY_BYTES = 512 * 1024**2
RESULT_COLUMNS = ("id", "medium", "status", "error_type", "error_message", "stage", "n_frames")


@dataclasses.dataclass(frozen=True)
class MediumSpec:
    """What one pipeline embeds: which column of info.csv, with which embedder and config."""

    medium: str                 # audio_embeddings | symbolic_embeddings | transcribed_embeddings
    path_column: str            # audio_filename | midi_filename (the transcribed medium: audio_filename)
    embedder: str
    options: dict[str, Any]
    sample_rate: int | None     # audio embedders' input rate; None for symbolic
    files_root: str | None = None     # folder the rows' paths are relative to when not the dataset's
    #                                   (the transcribed medium: the store, which holds the transcriptions)
    transcriber: tuple[str, dict[str, Any]] | None = None  # the transcribed medium's (transcriber, options)


@dataclasses.dataclass(frozen=True)
class PartTarget:
    """Where and how the workers of one medium commit their parts."""

    store: str                  # data/embeddings/<dataset>: a folder or a URI
    config_hash: str
    description: dict[str, Any]
    rows_per_part: int
    batch_size: int             # items per embed() call


def local_options(options: dict[str, Any]) -> dict[str, Any]:
    """Embedder options with a remote ``checkpoint`` (s3://, gs://, ...) replaced by a local copy on
    this machine (``fs.cached_file``: one download per node). Specs keep the URI, so every
    node (the driver hashing the config, each actor loading weights) resolves it for itself."""
    checkpoint = options.get("checkpoint")
    if not checkpoint or not fs.is_remote(checkpoint):
        return options
    try:
        return {**options, "checkpoint": str(fs.cached_file(checkpoint))}
    except FileNotFoundError:
        raise ConfigError(f"checkpoint {checkpoint}: no such file") from None


def _error_fields(n: int) -> dict[str, list[str]]:
    return {"error_type": [""] * n, "error_message": [""] * n, "stage": [""] * n}


def _record(fields: dict[str, list[str]], k: int, exc: ItemError, stage: str) -> None:
    fields["error_type"][k] = type(exc).__name__
    fields["error_message"][k] = exc.reason.replace("\n", " ")
    fields["stage"][k] = stage


def decode_batch(batch: dict[str, np.ndarray], *, spec: MediumSpec, root: str,
                 keep_scores: bool = False) -> dict[str, Any]:
    """CPU task: read and decode each file. Audio becomes a mono float32 waveform at the embedder's
    rate; MIDI is parsed once to validate it and travels on as its bytes (cheap to re-parse), or,
    with ``keep_scores`` (decoding inside the embedding actor: nothing travels), as the parsed Score."""
    ids = [str(i) for i in batch["id"]]
    fields = _error_fields(len(ids))
    payloads: list[Any] = []
    for k, (item_id, rel) in enumerate(zip(ids, batch["path"])):
        path = fs.join(spec.files_root or root, str(rel))  # a URI is read on this task's node
        try:
            if spec.sample_rate is not None:
                payloads.append(decode_audio(path, spec.sample_rate, item_id))
            else:
                data = read_bytes(path, item_id)
                score = decode_midi(data, item_id)
                payloads.append(score if keep_scores else np.frombuffer(data, dtype=np.uint8))
        except ITEM_ERRORS as exc:
            _record(fields, k, exc, "decode")
            payloads.append(EMPTY if spec.sample_rate is not None else np.zeros(0, np.uint8))
    return {"id": np.array(ids, dtype=object), "payload": payloads, **fields}


class EmbedActor:
    """The model part of an embedding actor: builds the embedder once (weights load once per actor)
    and turns a batch into (id, sequence, error fields) rows. With ``root`` it first decodes the
    batch's files itself (rows are then ``{id, path}``). The pipelines' actors (PartsActor,
    MediaActor) wrap it and commit the sequences; no sequence leaves the actor.
    """

    def __init__(self, spec: MediumSpec, root: str | None = None):
        from embedders.registry import get_embedder

        self.spec = spec
        self.root = root
        self.embedder = get_embedder(spec.embedder, **local_options(spec.options))
        # Embedders that read Standard MIDI File bytes themselves (clamp: the authors' converter
        # works on the file) get the original file, not a Score re-encoded from it.
        self.wants_bytes = bool(getattr(self.embedder, "accepts_midi_bytes", False))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        if self.root is not None:
            batch = decode_batch(batch, spec=self.spec, root=self.root, keep_scores=not self.wants_bytes)
        ids = [str(i) for i in batch["id"]]
        fields = {k: [str(v) for v in batch[k]] for k in ("error_type", "error_message", "stage")}
        sequences: list[np.ndarray] = [np.zeros((0, self.embedder.dim), np.float32)] * len(ids)
        todo = [k for k in range(len(ids)) if not fields["error_type"][k]]
        items, todo_ok = [], []
        for k in todo:
            payload = batch["payload"][k]
            if self.spec.sample_rate is None and not isinstance(payload, np.ndarray):
                items.append(payload)  # a Score parsed in this actor by decode_batch(keep_scores=True)
            elif self.spec.sample_rate is None and self.wants_bytes:
                items.append(np.asarray(payload, dtype=np.uint8).tobytes())  # the embedder parses it
            elif self.spec.sample_rate is None:
                try:
                    items.append(decode_midi(np.asarray(payload, dtype=np.uint8).tobytes(), ids[k]))
                except ITEM_ERRORS as exc:
                    _record(fields, k, exc, "decode")
                    continue
            else:
                items.append(np.asarray(payload, dtype=np.float32))
            todo_ok.append(k)
        results = self.embedder.embed_items([ids[k] for k in todo_ok], items) if items else []
        for k, result in zip(todo_ok, results):
            if isinstance(result, ItemError):
                _record(fields, k, result, "embed")
            else:
                sequences[k] = result
        return {"id": np.array(ids, dtype=object), "sequence": sequences, **fields}


def _results() -> dict[str, list]:
    return {k: [] for k in RESULT_COLUMNS}


def hand_over(embedded: dict[str, Any], writer: ShardWriter, medium: str, out: dict[str, list]) -> None:
    """Give the writer the embedded rows' sequences; append one result row per id to ``out``."""
    for k, item_id in enumerate(embedded["id"]):
        failed = bool(embedded["error_type"][k])
        if not failed:
            writer.add(str(item_id), embedded["sequence"][k])
        out["id"].append(str(item_id))
        out["medium"].append(medium)
        out["status"].append("failed" if failed else "done")
        for key in ("error_type", "error_message", "stage"):
            out[key].append(str(embedded[key][k]))
        out["n_frames"].append(0 if failed else int(embedded["sequence"][k].shape[0]))


def _as_batch(out: dict[str, list]) -> dict[str, np.ndarray]:
    return {k: np.array(v, dtype=np.int32 if k == "n_frames" else object) for k, v in out.items()}


def _writer(spec: MediumSpec, target: PartTarget) -> ShardWriter:
    return ShardWriter(target.store, spec.medium, spec.embedder, target.config_hash, target.description,
                       target.rows_per_part)


class PartsActor:
    """The GPU layout's actor: embeds one batch decoded by CPU tasks and commits it as one part."""

    def __init__(self, spec: MediumSpec, target: PartTarget):
        self.embed = EmbedActor(spec)
        self.writer = _writer(spec, target)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = _results()
        hand_over(self.embed(batch), self.writer, self.embed.spec.medium, out)
        self.writer.flush()  # committed before the driver hears "done"
        return _as_batch(out)


class MediaActor:
    """The CPU-only layout: one actor per CPU decodes and embeds, for every medium, the rows of its
    batches still pending there, one embedding batch at a time, and commits them as parts (one per
    medium per call, more past ``rows_per_part`` rows or the writer's byte limit). Input rows are
    ``{id, path_0, path_1, ...}`` (``path_k`` is the file for ``specs[k]``, empty when that medium
    has nothing to do for the row); output rows are ``RESULT_COLUMNS``, one per (id, medium).
    """

    def __init__(self, specs: list[MediumSpec], targets: list[PartTarget], root: str):
        self.media = [(EmbedActor(spec, root), _writer(spec, target), target.batch_size)
                      for spec, target in zip(specs, targets)]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = _results()
        for k, (embed, writer, size) in enumerate(self.media):
            paths = batch[f"path_{k}"]
            rows = np.flatnonzero([bool(p) for p in paths])
            for start in range(0, len(rows), size):  # memory: one embedding batch of decoded inputs
                chunk = rows[start:start + size]
                hand_over(embed({"id": batch["id"][chunk], "path": paths[chunk]}), writer, embed.spec.medium, out)
            writer.flush()  # committed before the driver hears "done"
        return _as_batch(out)


def build_media_dataset(rows: list[dict[str, str]], specs: list[MediumSpec], targets: list[PartTarget], root: str, *,
                        rows_per_call: int, max_actors: int):
    """Lazy Ray Dataset of result rows for CPU-only embedding of several media in one pass (see MediaActor).

    The decode and embed stages compete for the same cores anyway, so each actor does both for
    its own batches: no decoded waveform crosses the object store (~5 MB per 4 rows of 15 s
    audio), and one pool of ``max_actors`` worker processes starts once for all media instead of
    a decode pool plus an embedding pool per medium (each new Ray Data worker costs seconds).
    An actor call handles ``rows_per_call`` rows (one part per medium). The pool starts at full
    size (growing from one actor leaves cores idle for seconds), but never larger than the number of calls.
    """
    import ray
    from ray.data import ActorPoolStrategy

    n_calls = max(1, -(-len(rows) // rows_per_call))
    ds = ray.data.from_items(rows, override_num_blocks=n_calls)  # one block per actor call
    return ds.map_batches(
        MediaActor, fn_constructor_kwargs={"specs": list(specs), "targets": list(targets), "root": root},
        batch_size=rows_per_call, batch_format="numpy", compute=ActorPoolStrategy(size=max(1, min(max_actors, n_calls))),
        num_cpus=1, memory=DECODE_MEMORY_BYTES,
    )


def build_dataset(rows: list[dict[str, str]], spec: MediumSpec, target: PartTarget, root: str, *,
                  max_actors: int, num_gpus: float, decode_batch_size: int = 4):
    """Lazy Ray Dataset of result rows for ``rows`` = [{id, path}, ...] of one medium: decoding in
    CPU tasks, embedding in a pool of actors (the GPU layout: the CPUs decode while the GPUs
    embed); a part is one embedding batch."""
    import ray
    from ray.data import ActorPoolStrategy

    n_blocks = max(1, min(len(rows), (len(rows) + decode_batch_size - 1) // decode_batch_size))
    ds = ray.data.from_items(rows, override_num_blocks=n_blocks)
    # Decoding reserves memory for a few minutes of 48 kHz audio plus its resampled copy. Besides
    # being true, the differing resource request keeps Ray Data from fusing decode into the
    # (possibly GPU) embedding actors, so decoding overlaps with embedding instead of alternating.
    ds = ds.map_batches(
        decode_batch, fn_kwargs={"spec": spec, "root": root}, batch_size=decode_batch_size,
        batch_format="numpy", num_cpus=1, memory=DECODE_MEMORY_BYTES,
    )
    actor_resources = {"num_gpus": num_gpus} if num_gpus > 0 else {"num_cpus": 1}
    return ds.map_batches(
        PartsActor, fn_constructor_kwargs={"spec": spec, "target": target},
        batch_size=min(target.batch_size, target.rows_per_part), batch_format="numpy",
        compute=ActorPoolStrategy(min_size=1, max_size=max(1, max_actors)), **actor_resources,
    )
