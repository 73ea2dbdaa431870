"""The embedding job's stages (``pipeline.py``) on Ray Data: lazy datasets of result rows.

Actor pools are created with ``max_restarts=0``. Ray Data hands every pool actor its data context
and stage code as object-store references, and Ray warns about every restartable actor created
that way ("constructor arguments in the object store and max_restarts > 0"), whatever the stage's
own constructor arguments are. Not restarting is also what this job wants: an actor lost mid-run
stops the job, and the rerun resumes from the parts already committed (an actor restarted by Ray
would redo its batch and could commit rows already committed before it died). Ray 2.60 takes
``max_restarts`` only among the ``**ray_remote_args`` of ``map_batches``, which it marks deprecated
without a named replacement yet: ``map_batches_no_restart`` passes it with that one deprecation notice muted.
"""

from __future__ import annotations

import warnings

from ray_jobs.generate_embeddings.pipeline import (
    MAX_BATCH_BYTES,
    MediaActor,
    MediumSpec,
    PartsActor,
    PartTarget,
    prepare_batch,
)
from ray_jobs.generate_embeddings.resources import Pool

#: Decoding reserves memory for a few minutes of 48 kHz audio plus its resampled copy.
DECODE_MEMORY_BYTES = 512 * 1024**2


def map_batches_no_restart(ds, fn, **kwargs):
    """``ds.map_batches(fn, **kwargs, max_restarts=0)`` (see the module docstring)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        return ds.map_batches(fn, max_restarts=0, **kwargs)


def build_media_dataset(rows: list[dict[str, str]], specs: list[MediumSpec], targets: list[PartTarget], root: str, *,
                        rows_per_call: int, pool: Pool):
    """Lazy Ray Dataset of result rows for the CPU layout: several media in one pass (``MediaActor``).

    The decode and embed stages compete for the same cores anyway, so each actor does both for
    its own batches: no decoded waveform crosses the object store, and one pool of worker
    processes starts once for all media instead of a decode pool plus an embedding pool per
    medium (each new Ray Data worker costs seconds). An actor call handles ``rows_per_call`` rows
    (one part per medium).
    """
    import ray
    from ray.data import ActorPoolStrategy

    n_calls = max(1, -(-len(rows) // rows_per_call))
    ds = ray.data.from_items(rows, override_num_blocks=n_calls)  # one block per actor call
    return map_batches_no_restart(
        ds, MediaActor, fn_constructor_kwargs={"specs": list(specs), "targets": list(targets), "root": root},
        batch_size=rows_per_call, batch_format="numpy",
        compute=ActorPoolStrategy(min_size=pool.min_size, max_size=pool.max_size),
        num_cpus=pool.num_cpus, memory=DECODE_MEMORY_BYTES,
    )


def build_dataset(rows: list[dict[str, str]], spec: MediumSpec, target: PartTarget, root: str, *, pool: Pool,
                  decode_batch_size: int = 4, max_batch_bytes: int = MAX_BATCH_BYTES):
    """Lazy Ray Dataset of result rows for the GPU layout of one medium, ``rows`` = [{id, path}, ...]:
    CPU tasks decode and prepare (``prepare_batch``), a pool of ``PartsActor`` (``pool``: GPUs and
    a fraction of a CPU each) embeds the prepared items; a part is one actor batch of
    ``min(batch_size, rows_per_part)`` rows."""
    import ray
    from ray.data import ActorPoolStrategy

    n_blocks = max(1, min(len(rows), -(-len(rows) // decode_batch_size)))
    ds = ray.data.from_items(rows, override_num_blocks=n_blocks)
    # Besides being true, the memory request differs from the actors', which keeps Ray Data from
    # fusing decoding into the embedding actors: the CPUs decode while the GPUs embed.
    ds = ds.map_batches(
        prepare_batch, fn_kwargs={"spec": spec, "root": root}, batch_size=decode_batch_size,
        batch_format="numpy", num_cpus=1, memory=DECODE_MEMORY_BYTES,
    )
    return map_batches_no_restart(
        ds, PartsActor, fn_constructor_kwargs={"spec": spec, "target": target, "max_batch_bytes": max_batch_bytes},
        batch_size=min(target.batch_size, target.rows_per_part), batch_format="numpy",
        compute=ActorPoolStrategy(min_size=pool.min_size, max_size=pool.max_size),
        num_cpus=pool.num_cpus, num_gpus=pool.num_gpus,
    )
