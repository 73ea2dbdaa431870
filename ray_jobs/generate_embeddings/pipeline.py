"""The stages of the embedding job, as plain callables: decode, prepare, embed, commit. No Ray here:
``ray_data.py`` runs them on Ray Data, ``local.py`` in a local process pool.

Two layouts:

- GPU layout, per medium whose embedder runs on an accelerator: CPU tasks decode each file and run
  the embedder's CPU preprocessing (``prepare_batch``: ``for_prepare(config).prepare_items``:
  resampling, log-mel, CLaMP patches, MidiTok token ids), and a pool of ``PartsActor`` batches the
  prepared items on the GPU (``embed_items(..., prepared=True)``), at most ``max_batch_bytes`` of
  prepared input per model call (an item larger than that alone).
- CPU layout, every other medium at once: ``MediaActor`` decodes, prepares and embeds the rows of
  its batches itself (on CPUs the stages compete for the same cores anyway, and nothing decoded
  crosses processes).

Either way the embedding process commits its rows as Parquet parts straight to the store (a folder
or a URI; ``embedders.store.parts.ShardWriter``) before it answers, with the embedder's own
``average`` per row and the config hash and description of its own embedder instance (which may
resolve device or precision otherwise than the driver assumed: the rows carry the process's hash,
and the description names the requested one). The driver gets one small row per (id, medium):
``RESULT_COLUMNS``, never an embedding. Only the narrow ``ITEM_ERRORS`` are caught per item; anything
else stops the job.
"""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any

import numpy as np

from embedders.base import ITEM_ERRORS, ConfigError, ItemError
from embedders.io import decode_audio, decode_midi, read_bytes
from embedders.store import filesystem as fs
from embedders.store.parts import REQUESTED_HASH_KEY, ShardWriter
from embedders.store.transcriptions import medium_config_hash

RESULT_COLUMNS = ("id", "medium", "status", "error_type", "error_message", "stage", "n_frames", "config_hash")
ERROR_FIELDS = ("error_type", "error_message", "stage")
#: Default bound on the prepared input of one model call in a GPU actor (``--max_batch_bytes``).
MAX_BATCH_BYTES = 256 * 2**20


@dataclasses.dataclass(frozen=True)
class MediumSpec:
    """What one medium embeds: which column of info.csv, with which embedder and config."""

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
    config_hash: str            # what the driver assumed (the request); rows carry their process's own
    description: dict[str, Any]
    rows_per_part: int
    batch_size: int             # items per embed_items call


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
    return {k: [""] * n for k in ERROR_FIELDS}


def _record(fields: dict[str, list[str]], k: int, exc: ItemError, stage: str) -> None:
    fields["error_type"][k] = type(exc).__name__
    fields["error_message"][k] = exc.reason.replace("\n", " ")
    fields["stage"][k] = stage


# ---------------------------------------------------------------------------------------------
# Decoding and preparing (CPU)
# ---------------------------------------------------------------------------------------------
def decode_batch(batch: dict[str, np.ndarray], *, spec: MediumSpec, root: str,
                 keep_scores: bool = False) -> dict[str, Any]:
    """Read and decode each file. Audio becomes a mono float32 waveform at the embedder's rate;
    MIDI is parsed once to validate it and travels on as its bytes, or, with ``keep_scores``, as
    the parsed Score."""
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
            payloads.append(None)
    return {"id": np.array(ids, dtype=object), "payload": payloads, **fields}


_PREPARERS: dict[tuple, Any] = {}  # per process: one cheap instance per (embedder, options)


def preparer(spec: MediumSpec):
    """This process's ``for_prepare`` instance of the spec's embedder (no network, no device)."""
    from embedders.registry import get_embedder_class

    key = (spec.embedder, tuple(sorted((k, repr(v)) for k, v in spec.options.items())))
    if key not in _PREPARERS:
        cls = get_embedder_class(spec.embedder)
        _PREPARERS[key] = cls.for_prepare(cls.make_config(**local_options(spec.options)))
    return _PREPARERS[key]


def wants_midi_bytes(embedder) -> bool:
    """Embedders that read Standard MIDI File bytes themselves (clamp: the authors' converter works
    on the file) get the original file, not a Score re-encoded from it."""
    return bool(getattr(embedder, "accepts_midi_bytes", False))


def pack(item: Any) -> np.ndarray:
    """A prepared item as one uint8 array (its pickle): a column of these is one Arrow type in a Ray
    Data block whatever the embedder prepares (waveforms, patch tables, lists of token chunks), and
    its length is the item's size for ``max_batch_bytes``."""
    return np.frombuffer(pickle.dumps(item, protocol=5), dtype=np.uint8)


def unpack(packed: np.ndarray) -> Any:
    return pickle.loads(np.asarray(packed, dtype=np.uint8).tobytes())


def prepare_batch(batch: dict[str, np.ndarray], *, spec: MediumSpec, root: str) -> dict[str, Any]:
    """The GPU layout's CPU task: decode each file and run the embedder's ``prepare`` on it, so the
    GPU actor only batches tensors. Output rows: id, ``payload`` (``pack``ed prepared item; empty
    for a failed row), error fields (stage ``decode`` or, when ``prepare`` refuses the item,
    ``embed``, as in the CPU layout where it runs inside ``embed_items``)."""
    embedder = preparer(spec)
    decoded = decode_batch(batch, spec=spec, root=root, keep_scores=not wants_midi_bytes(embedder))
    ids, fields = list(decoded["id"]), {k: decoded[k] for k in ERROR_FIELDS}
    todo, items = embeddable(spec, embedder, ids, decoded["payload"], fields)
    payloads = [np.zeros(0, np.uint8)] * len(ids)
    for k, result in zip(todo, embedder.prepare_items([ids[k] for k in todo], items)):
        if isinstance(result, ItemError):
            _record(fields, k, result, "embed")
        else:
            payloads[k] = pack(result)
    return {"id": decoded["id"], "payload": payloads, **fields}


def embeddable(spec: MediumSpec, embedder, ids: list[str], payloads, fields) -> tuple[list[int], list[Any]]:
    """(positions, items) of the rows without an error so far, each payload as the embedder takes
    it: a float32 waveform, a Score, or (clamp) the MIDI file's bytes. MIDI that arrives as bytes
    for an embedder that takes Scores is parsed here (a failure is recorded in ``fields``)."""
    todo, items = [], []
    for k, payload in enumerate(payloads):
        if fields["error_type"][k]:
            continue
        if spec.sample_rate is not None:
            item = np.asarray(payload, dtype=np.float32)
        elif not isinstance(payload, np.ndarray):
            item = payload  # a Score parsed by decode_batch(keep_scores=True)
        elif wants_midi_bytes(embedder):
            item = np.asarray(payload, dtype=np.uint8).tobytes()
        else:
            try:
                item = decode_midi(np.asarray(payload, dtype=np.uint8).tobytes(), ids[k])
            except ITEM_ERRORS as exc:
                _record(fields, k, exc, "decode")
                continue
        todo.append(k)
        items.append(item)
    return todo, items


def byte_bounded_groups(sizes: list[int], max_bytes: int) -> list[list[int]]:
    """Consecutive positions grouped so each group's sizes sum to at most ``max_bytes``; an item of
    ``max_bytes`` or more forms a group alone (long recordings are batched alone)."""
    groups: list[list[int]] = []
    current: list[int] = []
    total = 0
    for k, size in enumerate(sizes):
        if current and total + size > max_bytes:
            groups.append(current)
            current, total = [], 0
        current.append(k)
        total += size
    if current:
        groups.append(current)
    return groups


# ---------------------------------------------------------------------------------------------
# Embedding and committing
# ---------------------------------------------------------------------------------------------
class EmbedActor:
    """The model part of an embedding process: builds the embedder once (weights load once per
    process) and turns a batch into (id, sequence, average, error fields) rows. With ``root`` it
    first decodes the batch's files itself (rows are then ``{id, path}``); without, rows carry
    decoded ``payload``s (``decode_batch``). ``config_hash`` and ``description`` are this
    instance's own (the device and precision it resolved), the authoritative ones for its rows.
    """

    def __init__(self, spec: MediumSpec, root: str | None = None):
        from embedders.registry import get_embedder

        self.spec = spec
        self.root = root
        self.embedder = get_embedder(spec.embedder, **local_options(spec.options))
        self.wants_bytes = wants_midi_bytes(self.embedder)
        self.config_hash = self.embedder.config_hash()
        self.description = self.embedder.describe()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        if self.root is not None:
            batch = decode_batch(batch, spec=self.spec, root=self.root, keep_scores=not self.wants_bytes)
        ids = [str(i) for i in batch["id"]]
        fields = {k: [str(v) for v in batch[k]] for k in ERROR_FIELDS}
        todo, items = embeddable(self.spec, self.embedder, ids, batch["payload"], fields)
        results = self.embedder.embed_items([ids[k] for k in todo], items, with_average=True) if items else []
        return self._collect(ids, fields, todo, results)

    def embed_prepared(self, batch: dict[str, np.ndarray], max_batch_bytes: int = MAX_BATCH_BYTES) -> dict[str, Any]:
        """Rows of ``prepare_batch``: the prepared items batched through the model, each model call
        holding at most ``max_batch_bytes`` of prepared input (an item larger than that alone)."""
        ids = [str(i) for i in batch["id"]]
        fields = {k: [str(v) for v in batch[k]] for k in ERROR_FIELDS}
        todo = [k for k in range(len(ids)) if not fields["error_type"][k]]
        results: list[Any] = []
        for group in byte_bounded_groups([len(batch["payload"][k]) for k in todo], max_batch_bytes):
            picked = [todo[g] for g in group]
            results += self.embedder.embed_items([ids[k] for k in picked], [unpack(batch["payload"][k]) for k in picked],
                                                 prepared=True, with_average=True)
        return self._collect(ids, fields, todo, results)

    def _collect(self, ids: list[str], fields: dict[str, list[str]], todo: list[int], results: list) -> dict[str, Any]:
        empty = np.zeros((0, self.embedder.dim), np.float32)
        sequences: list[np.ndarray] = [empty] * len(ids)
        averages: list[np.ndarray | None] = [None] * len(ids)
        for k, result in zip(todo, results):
            if isinstance(result, ItemError):
                _record(fields, k, result, "embed")
            else:  # an Embedding: embed_items(with_average=True)
                sequences[k], averages[k] = result.sequence, result.average
        return {"id": np.array(ids, dtype=object), "sequence": sequences, "average": averages, **fields}

    def writer(self, target: PartTarget) -> ShardWriter:
        """A writer of this medium's parts under this instance's hash; the description also names
        the hash the driver requested (``REQUESTED_HASH_KEY``), which resume matches on."""
        own = self.config_hash
        description = {**target.description, **self.description}
        transcriber_hash = target.description.get("transcriber_config_hash")
        if transcriber_hash:  # the transcribed medium: the rows' identity is the embedder's and the transcriber's
            own = medium_config_hash(own, transcriber_hash)
            description["embedder_config_hash"] = self.config_hash
        description.update({"config_hash": own, REQUESTED_HASH_KEY: target.config_hash})
        return ShardWriter(target.store, self.spec.medium, self.spec.embedder, own, description, target.rows_per_part)


def _results() -> dict[str, list]:
    return {k: [] for k in RESULT_COLUMNS}


def hand_over(embedded: dict[str, Any], writer: ShardWriter, medium: str, out: dict[str, list]) -> None:
    """Give the writer the embedded rows (sequence and average); append one result row per id to ``out``."""
    for k, item_id in enumerate(embedded["id"]):
        failed = bool(embedded["error_type"][k])
        if not failed:
            writer.add(str(item_id), embedded["sequence"][k], embedded["average"][k])
        out["id"].append(str(item_id))
        out["medium"].append(medium)
        out["status"].append("failed" if failed else "done")
        for key in ERROR_FIELDS:
            out[key].append(str(embedded[key][k]))
        out["n_frames"].append(0 if failed else int(embedded["sequence"][k].shape[0]))
        out["config_hash"].append(writer.config_hash)


def _as_batch(out: dict[str, list]) -> dict[str, np.ndarray]:
    return {k: np.array(v, dtype=np.int32 if k == "n_frames" else object) for k, v in out.items()}


class PartsActor:
    """The GPU layout's actor: embeds one batch prepared by CPU tasks and commits it as one part."""

    def __init__(self, spec: MediumSpec, target: PartTarget, max_batch_bytes: int = MAX_BATCH_BYTES):
        self.embed = EmbedActor(spec)
        self.writer = self.embed.writer(target)
        self.max_batch_bytes = max_batch_bytes

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = _results()
        hand_over(self.embed.embed_prepared(batch, self.max_batch_bytes), self.writer, self.embed.spec.medium, out)
        self.writer.flush()  # committed before the driver hears "done"
        return _as_batch(out)


class MediaActor:
    """The CPU layout: one process per CPU decodes, prepares and embeds, for every medium, the rows
    of its batches still pending there, one embedding batch at a time, and commits them as parts
    (one per medium per call, more past ``rows_per_part`` rows or the writer's byte limit). Input
    rows are ``{id, path_0, path_1, ...}`` (``path_k`` is the file for ``specs[k]``, empty when that
    medium has nothing to do for the row); output rows are ``RESULT_COLUMNS``, one per (id, medium).
    """

    def __init__(self, specs: list[MediumSpec], targets: list[PartTarget], root: str):
        self.media = []
        for spec, target in zip(specs, targets):
            embed = EmbedActor(spec, root)
            self.media.append((embed, embed.writer(target), target.batch_size))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = _results()
        for k, (embed, writer, size) in enumerate(self.media):
            paths = np.asarray(batch[f"path_{k}"], dtype=object)
            rows = np.flatnonzero([bool(p) for p in paths])
            ids = np.asarray(batch["id"], dtype=object)
            for start in range(0, len(rows), size):  # memory: one embedding batch of decoded inputs
                chunk = rows[start:start + size]
                hand_over(embed({"id": ids[chunk], "path": paths[chunk]}), writer, embed.spec.medium, out)
            writer.flush()  # committed before the driver hears "done"
        return _as_batch(out)
