"""One registry for every embedder: ``@register`` on the class, ``get_embedder(name, **config)`` to build one.

Built-in embedder modules are imported lazily on first lookup; each is small and keeps its heavy
imports inside the class, so listing what is available never loads a model.
"""

from __future__ import annotations

import importlib
from typing import Any

from embedders.base import MODALITIES, ConfigError, Embedder

_REGISTRY: dict[str, type[Embedder]] = {}

# Modules that define the built-in embedders. A new embedder is one module added here.
BUILTIN_MODULES = (
    "embedders.audio.melstats",
    "embedders.audio.openl3",
    "embedders.audio.clap",
    "embedders.audio.basic_pitch",
    "embedders.audio.hear",
    "embedders.audio.musicnn",
    "embedders.symbolic.pianoroll",
    "embedders.symbolic.midi_transformer.embedder",
    "embedders.symbolic.clamp",
)
_builtins_loaded = False


def register(cls: type[Embedder]) -> type[Embedder]:
    """Class decorator adding an embedder to the registry. Duplicate names raise."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{cls.__qualname__} must set a non-empty class attribute 'name'")
    if getattr(cls, "modality", None) not in MODALITIES:
        raise ConfigError(f"embedder '{name}' has modality {getattr(cls, 'modality', None)!r}; expected one of {MODALITIES}")
    if cls.modality == "audio" and not getattr(cls, "sample_rate", None):
        raise ConfigError(f"audio embedder '{name}' must set sample_rate (Hz)")
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls:
        raise ConfigError(
            f"an embedder named '{name}' is already registered ({existing.__module__}.{existing.__qualname__}); "
            f"cannot register {cls.__module__}.{cls.__qualname__} under the same name"
        )
    _REGISTRY[name] = cls
    return cls


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
        _builtins_loaded = True


def available(modality: str | None = None) -> list[str]:
    """Names of registered embedders, optionally only those of one modality."""
    _load_builtins()
    return sorted(n for n, c in _REGISTRY.items() if modality is None or c.modality == modality)


def get_embedder_class(name: str) -> type[Embedder]:
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown embedder '{name}'; available: {', '.join(available())}") from None


def get_embedder(name: str, **config: Any) -> Embedder:
    """Build the embedder ``name`` with config options as keyword arguments."""
    cls = get_embedder_class(name)
    return cls(cls.make_config(**config))
