"""The Ray Data pipelines of the embedding job: decode in CPU tasks and embed in an actor pool per
medium (with GPUs), or decode and embed every medium in one pool of CPU actors (CPUs only).

Rows carry their own error fields, so a recording that fails at any stage travels to the driver as
an error row instead of vanishing; the driver writes successes to Parquet shards and failures to
errors.parquet. Only the narrow ``ITEM_ERRORS`` are caught; anything else stops the job.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from embedders.base import ITEM_ERRORS, ConfigError, ItemError
from embedders.io import decode_audio, decode_midi, read_bytes
from embedders.store import filesystem as fs

EMPTY = np.zeros(0, dtype=np.float32)
DECODE_MEMORY_BYTES = 512 * 1024**2


@dataclasses.dataclass(frozen=True)
class MediumSpec:
    """What one pipeline embeds: which column of info.csv, with which embedder and config."""

    medium: str                 # audio_embeddings | symbolic_embeddings
    path_column: str            # audio_filename | midi_filename
    embedder: str
    options: dict[str, Any]
    sample_rate: int | None     # audio embedders' input rate; None for symbolic


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
        path = fs.join(root, str(rel))  # root may be a URI: the file is read on this task's node
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
    """Actor-pool worker: builds the embedder once (weights load once per actor), embeds batches.

    With ``root`` it first decodes the batch's files itself (rows are then ``{id, path}``): the
    CPU-only layout, where every actor decodes and embeds and no waveform crosses the object store.
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


class MediaActor:
    """The CPU-only layout: one actor per CPU decodes and embeds, for every medium, the rows of its
    batches still pending there. Input rows are ``{id, path_0, path_1, ...}`` (``path_k`` is the
    file for ``specs[k]``, empty when that medium is done); output rows are those of EmbedActor
    plus ``medium``, one per (id, pending medium).
    """

    def __init__(self, specs: list[MediumSpec], root: str):
        self.actors = [EmbedActor(spec, root) for spec in specs]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        out: dict[str, list] = {k: [] for k in ("id", "sequence", "error_type", "error_message", "stage", "medium")}
        for k, actor in enumerate(self.actors):
            paths = batch[f"path_{k}"]
            rows = np.flatnonzero([bool(p) for p in paths])
            if not len(rows):
                continue
            part = actor({"id": batch["id"][rows], "path": paths[rows]})
            for key in ("id", "sequence", "error_type", "error_message", "stage"):
                out[key].extend(part[key])
            out["medium"].extend([actor.spec.medium] * len(rows))
        return {**out, "id": np.array(out["id"], dtype=object), "medium": np.array(out["medium"], dtype=object)}


def build_media_dataset(rows: list[dict[str, str]], specs: list[MediumSpec], root: str, *, batch_size: int,
                        max_actors: int):
    """Lazy Ray Dataset for CPU-only embedding of several media in one pass (see MediaActor).

    The decode and embed stages compete for the same cores anyway, so each actor does both for
    its own batches: no decoded waveform crosses the object store (~5 MB per 4 rows of 15 s
    audio), and one pool of ``max_actors`` worker processes starts once for all media instead of
    a decode pool plus an embedding pool per medium (each new Ray Data worker costs seconds).
    The pool starts at full size (growing from one actor leaves cores idle for seconds), but
    never larger than the number of batches.
    """
    import ray
    from ray.data import ActorPoolStrategy

    n_batches = max(1, -(-len(rows) // batch_size))
    ds = ray.data.from_items(rows, override_num_blocks=n_batches)  # one block per actor call
    return ds.map_batches(
        MediaActor, fn_constructor_kwargs={"specs": list(specs), "root": root}, batch_size=batch_size,
        batch_format="numpy", compute=ActorPoolStrategy(size=max(1, min(max_actors, n_batches))),
        num_cpus=1, memory=DECODE_MEMORY_BYTES,
    )


def build_dataset(rows: list[dict[str, str]], spec: MediumSpec, root: str, *, batch_size: int,
                  max_actors: int, num_gpus: float, decode_batch_size: int = 4):
    """Lazy Ray Dataset of (id, sequence, error fields) rows for ``rows`` = [{id, path}, ...], one
    medium: decoding in CPU tasks, embedding in a pool of actors (the GPU layout: the CPUs decode
    while the GPUs embed)."""
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
        EmbedActor, fn_constructor_kwargs={"spec": spec}, batch_size=batch_size, batch_format="numpy",
        compute=ActorPoolStrategy(min_size=1, max_size=max(1, max_actors)), **actor_resources,
    )
