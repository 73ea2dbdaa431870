"""Remote locations for pretraining: the dataset's MIDI files and the output folder, staged locally.

Pretraining reads every MIDI file several times (tokenizer training, token cache) and the Ray
Train workers open the token cache by path. So a remote dataset (``dataset.data_root`` or
``dataset.info_csv`` as s3://, gs://, ...) is copied once into a local staging folder: info.csv
and the MIDI files it lists, never the audio; files already there with the same size are kept.
The tokenizer and the token cache are written beside that copy unless ``dataset.tokenizer_path`` /
``dataset.cache_dir`` name local paths, so a rerun reuses them. A remote ``output_dir`` goes
through ``embedders.store.filesystem.staged_dir``: its contents come down first (a rerun with the same
``train.model_name`` continues from its checkpoints) and everything goes back up when the run
ends, also after a failure.

The staged paths are on the driver's machine, where the workers of a one-node run (one or several
GPUs) read them too. Staging folders live under ``embedders.store.filesystem.stage_root()``, named by a
hash of the URI, so reruns find the same paths.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from embedders.store import filesystem as fs
from embedders.store.atomic import atomic_write_bytes
from ray_jobs.pretrain.config import PretrainConfigError, stage_path


def stage_dataset(root_uri: str, local_root: Path, id_column: str | None = None) -> dict[str, int]:
    """Copy ``root_uri``'s info.csv and the MIDI files it lists to ``local_root``; counts what happened.

    Missing MIDI files are left out here and reported by the job as it reports a missing local file.
    """
    from embedders.dataset import has_medium, read_info_csv

    info = read_info_csv(root_uri, id_column=id_column)  # refuses paths that leave the dataset folder, as locally
    counts = {"copied": 0, "kept": 0, "missing": 0}
    for rel in info.loc[has_medium(info, "midi_filename"), "midi_filename"]:
        source, target = fs.join(root_uri, rel), local_root / rel
        try:
            size = fs.file_size(source)
        except FileNotFoundError:
            counts["missing"] += 1
            continue
        if target.is_file() and target.stat().st_size == size:
            counts["kept"] += 1
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, fs.read_bytes(source))
        counts["copied"] += 1
    local_root.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(local_root / "info.csv", fs.read_bytes(fs.join(root_uri, "info.csv")))
    return counts


def _localize_dataset(cfg: DictConfig) -> None:
    d = cfg.dataset
    for key in ("tokenizer_path", "cache_dir"):
        if d[key] and fs.is_remote(d[key]):
            raise PretrainConfigError(f"dataset.{key}={d[key]}: must be a local path (the workers open it); "
                                      "leave it null to keep it beside the staged dataset")
    if d.info_csv and fs.is_remote(d.info_csv):
        root_uri = str(d.info_csv).rstrip("/").rsplit("/", 1)[0]
        name = fs.name(root_uri)
    elif not d.info_csv and fs.is_remote(d.data_root):
        root_uri, name = str(fs.join(d.data_root, "raw", d.name)), d.name
    else:
        return
    base = stage_path(str(d.info_csv or d.data_root), "data")
    local_root = base / "raw" / name
    counts = stage_dataset(root_uri, local_root, d.id_column)
    print(f"staged {root_uri} -> {local_root}: {counts['copied']} MIDI file(s) copied, {counts['kept']} already "
          f"there, {counts['missing']} missing", flush=True)
    if d.info_csv:
        d.info_csv = str(local_root / "info.csv")
    else:
        d.data_root = str(base)
    if not d.tokenizer_path:
        d.tokenizer_path = str(base / "tokenizers" / f"{name}_remi_bpe{d.vocab_size}.json")
    if not d.cache_dir:
        d.cache_dir = str(base / "token_cache" / name)


@contextlib.contextmanager
def staged(cfg: DictConfig) -> Iterator[DictConfig]:
    """``cfg`` with every remote location replaced by a local staging path, for the duration."""
    local = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))  # same keys, a private copy
    _localize_dataset(local)
    with fs.staged_dir(cfg.output_dir) if fs.is_remote(cfg.output_dir) else \
            contextlib.nullcontext(cfg.output_dir) as out:
        local.output_dir = str(out)
        yield local
