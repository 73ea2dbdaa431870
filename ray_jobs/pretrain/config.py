"""Typed schema of the pretraining config, so Hydra refuses unknown keys and wrong types at once.

The YAML files in ``ray_jobs/pretrain/configs`` hold the values (the defaults live only there); this schema
(registered in Hydra's ConfigStore as ``pretrain_schema``) holds the keys and types, and
``validate`` the value ranges.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import MISSING

from embedders.store import filesystem as fs


@dataclass
class TrainConfig:
    max_seq_len: int = MISSING
    embed_dim: int = MISSING
    nhead: int = MISSING
    num_layers: int = MISSING
    batch_size: int = MISSING
    bucket_by_length: bool = MISSING
    epochs: int = MISSING
    learning_rate: float = MISSING
    weight_decay: float = MISSING
    dropout: float = MISSING
    model_name: str = MISSING
    warmup_steps: int = MISSING
    grad_clip: float = MISSING
    precision: str = MISSING
    loader_workers: int = MISSING


@dataclass
class DatasetConfig:
    name: str = MISSING
    data_root: str = MISSING
    info_csv: Optional[str] = MISSING
    id_column: Optional[str] = MISSING
    tokenizer_path: Optional[str] = MISSING
    vocab_size: int = MISSING
    limit: Optional[int] = MISSING
    presaved: bool = MISSING
    cache_dir: Optional[str] = MISSING
    visualisation_size: int = MISSING


@dataclass
class MlflowConfig:
    experiment: str = MISSING
    tracking_uri: Optional[str] = MISSING
    viz_interval: int = MISSING
    color_by: str = MISSING


@dataclass
class RayConfig:
    num_workers: int = MISSING
    use_gpu: bool = MISSING
    max_failures: int = MISSING
    pin_to_driver_node: bool = MISSING


@dataclass
class PretrainConfig:
    train: TrainConfig = field(default_factory=TrainConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    device: str = MISSING
    seed: int = MISSING
    output_dir: str = MISSING


def register_schema() -> None:
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name="pretrain_schema", node=PretrainConfig)
    # hydra.run.dir: a remote output_dir's log folder goes to a local staging path, not to "s3:/..."
    OmegaConf.register_new_resolver("avs_local", local_dir_for, replace=True)


def stage_path(uri: str, kind: str) -> Path:
    """The local staging folder for ``uri`` (the same on every run from this machine)."""
    return fs.stage_root() / f"{kind}-{hashlib.sha1(uri.encode()).hexdigest()[:16]}"


def local_dir_for(location: str) -> str:
    """A local folder standing for ``location`` (itself when local): where Hydra may write its log."""
    return str(stage_path(location, "hydra")) if fs.is_remote(location) else location


class PretrainConfigError(ValueError):
    """A config value is out of range; the message names the key, the value and what is allowed."""


def unknown_keys(cfg, schema: type = PretrainConfig, prefix: str = "") -> list[str]:
    """Keys of ``cfg`` that the schema lacks (Hydra lets ``+key=value`` add them), as dotted paths."""
    from dataclasses import fields, is_dataclass

    from omegaconf import DictConfig

    known = {f.name: f for f in fields(schema)}
    out = []
    for key in cfg.keys():
        if key not in known:
            out.append(f"{prefix}{key}")
            continue
        child = cfg[key] if isinstance(cfg, DictConfig) else None
        nested = known[key].default_factory if callable(getattr(known[key], "default_factory", None)) else None
        if isinstance(child, DictConfig) and nested is not None and is_dataclass(nested):
            out += unknown_keys(child, nested, f"{prefix}{key}.")
    return out


def validate(cfg) -> None:
    """Range checks Hydra's types cannot express. Raises PretrainConfigError listing every problem."""
    t, d, m, r = cfg.train, cfg.dataset, cfg.mlflow, cfg.ray
    checks = [
        (t.max_seq_len >= 16, f"train.max_seq_len must be >= 16, got {t.max_seq_len}"),
        (t.embed_dim > 0 and t.nhead > 0 and t.embed_dim % t.nhead == 0,
         f"train.embed_dim ({t.embed_dim}) must be a positive multiple of train.nhead ({t.nhead})"),
        (t.num_layers >= 1, f"train.num_layers must be >= 1, got {t.num_layers}"),
        (t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}"),
        (t.epochs >= 1, f"train.epochs must be >= 1, got {t.epochs}"),
        (t.learning_rate > 0, f"train.learning_rate must be > 0, got {t.learning_rate}"),
        (t.weight_decay >= 0, f"train.weight_decay must be >= 0, got {t.weight_decay}"),
        (0 <= t.dropout < 1, f"train.dropout must be in [0, 1), got {t.dropout}"),
        (t.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {t.warmup_steps}"),
        (bool(t.model_name) and "/" not in t.model_name and ".." not in t.model_name,
         f"train.model_name must be a plain folder name, got {t.model_name!r}"),
        (d.vocab_size >= 100, f"dataset.vocab_size must be >= 100, got {d.vocab_size}"),
        (d.limit is None or d.limit >= 1, f"dataset.limit must be >= 1 or null, got {d.limit}"),
        (m.viz_interval >= 0, f"mlflow.viz_interval must be >= 0 (0: off), got {m.viz_interval}"),
        (r.num_workers >= 1, f"ray.num_workers must be >= 1, got {r.num_workers}"),
        (r.max_failures >= 0, f"ray.max_failures must be >= 0, got {r.max_failures}"),
        (cfg.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {cfg.device!r}"),
        (not (cfg.device == "cpu" and r.use_gpu),
         "device=cpu contradicts ray.use_gpu=true (device=auto follows ray.use_gpu; device=cuda asks for GPU workers)"),
        (t.precision in ("auto", "fp32", "bf16"), f"train.precision must be auto, fp32 or bf16, got {t.precision!r}"),
        (t.loader_workers >= -1, f"train.loader_workers must be >= 0, or -1 for automatic, got {t.loader_workers}"),
    ]
    problems = [f"unknown config key {key!r} (not in the schema ray_jobs.pretrain.config.PretrainConfig)"
                for key in unknown_keys(cfg)]
    problems += [message for ok, message in checks if not ok]
    if problems:
        raise PretrainConfigError("invalid pretraining config:\n  - " + "\n  - ".join(problems))
