"""The Ray Data pipeline of one (medium, embedder): decode in CPU tasks, embed in an actor pool.

Rows carry their own error fields, so a recording that fails at any stage travels to the driver as
an error row instead of vanishing; the driver writes successes to Parquet shards and failures to
errors.parquet. Only the narrow ``ITEM_ERRORS`` are caught; anything else stops the job.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from embedders.base import ITEM_ERRORS, ItemError
from embedders.io import decode_audio, decode_midi, read_bytes

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


def _error_fields(n: int) -> dict[str, list[str]]:
    return {"error_type": [""] * n, "error_message": [""] * n, "stage": [""] * n}


def _record(fields: dict[str, list[str]], k: int, exc: ItemError, stage: str) -> None:
    fields["error_type"][k] = type(exc).__name__
    fields["error_message"][k] = exc.reason.replace("\n", " ")
    fields["stage"][k] = stage


def decode_batch(batch: dict[str, np.ndarray], *, spec: MediumSpec, root: str) -> dict[str, Any]:
    """CPU task: read and decode each file. Audio becomes a mono float32 waveform at the embedder's
    rate; MIDI is parsed once to validate it and travels on as its bytes (cheap to re-parse)."""
    ids = [str(i) for i in batch["id"]]
    fields = _error_fields(len(ids))
    payloads: list[Any] = []
    for k, (item_id, rel) in enumerate(zip(ids, batch["path"])):
        path = Path(root) / str(rel)
        try:
            if spec.sample_rate is not None:
                payloads.append(decode_audio(path, spec.sample_rate, item_id))
            else:
                data = read_bytes(path, item_id)
                decode_midi(data, item_id)
                payloads.append(np.frombuffer(data, dtype=np.uint8))
        except ITEM_ERRORS as exc:
            _record(fields, k, exc, "decode")
            payloads.append(EMPTY if spec.sample_rate is not None else np.zeros(0, np.uint8))
    return {"id": np.array(ids, dtype=object), "payload": payloads, **fields}


class EmbedActor:
    """Actor-pool worker: builds the embedder once (weights load once per actor), embeds batches."""

    def __init__(self, spec: MediumSpec):
        from embedders.registry import get_embedder

        self.spec = spec
        self.embedder = get_embedder(spec.embedder, **spec.options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        ids = [str(i) for i in batch["id"]]
        fields = {k: [str(v) for v in batch[k]] for k in ("error_type", "error_message", "stage")}
        sequences: list[np.ndarray] = [np.zeros((0, self.embedder.dim), np.float32)] * len(ids)
        todo = [k for k in range(len(ids)) if not fields["error_type"][k]]
        items, todo_ok = [], []
        for k in todo:
            payload = batch["payload"][k]
            if self.spec.sample_rate is None:
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


def build_dataset(rows: list[dict[str, str]], spec: MediumSpec, root: str, *, batch_size: int,
                  max_actors: int, num_gpus: float, decode_batch_size: int = 4):
    """Lazy Ray Dataset of (id, sequence, error fields) rows for ``rows`` = [{id, path}, ...]."""
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
