"""``hearbaseline.naive`` (the HEAR 2021 baseline: mel spectrogram + seeded random projection) as a HEAR
module that loads with librosa >= 0.10.

hearbaseline 2021.1.1 (every release) calls ``librosa.filters.mel(sample_rate, n_fft=..., n_mels=...)``
with the rate as a positional argument, which librosa made keyword-only in 0.10, so its own
``load_model`` raises TypeError with the project's librosa 0.11. ``load_model`` here runs hearbaseline's
with ``librosa.filters.mel`` accepting that positional rate for the duration of the call only; the
model, ``get_timestamp_embeddings`` and ``get_scene_embeddings`` are hearbaseline's own.
Use as ``--audio_option module=tests.pretrained_factories.hear_naive``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os

import pytest


def require_hearbaseline() -> None:
    """Skip without hearbaseline, except under CI=true, which installs it (then fail)."""
    if importlib.util.find_spec("hearbaseline") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but hearbaseline is not installed; CI installs it with --no-deps")
        pytest.skip("hearbaseline not installed: pip install --no-deps hearbaseline==2021.1.1")


@contextlib.contextmanager
def positional_rate_mel():
    import librosa.filters

    original = librosa.filters.mel

    def mel(*args, **kwargs):
        if args:  # librosa < 0.10 signature: mel(sr, n_fft, n_mels, ...)
            kwargs.update(zip(("sr", "n_fft", "n_mels"), args))
        return original(**kwargs)

    librosa.filters.mel = mel
    try:
        yield
    finally:
        librosa.filters.mel = original


def load_model(model_file_path: str = ""):
    from hearbaseline import naive

    with positional_rate_mel():
        return naive.load_model(model_file_path)


def get_timestamp_embeddings(audio, model):
    from hearbaseline import naive

    return naive.get_timestamp_embeddings(audio, model)


def get_scene_embeddings(audio, model):
    from hearbaseline import naive

    return naive.get_scene_embeddings(audio, model)


def hear_contract_config(tmp_path_factory) -> dict:
    """Embedder options for the registry contract test: the HEAR baseline through this module."""
    require_hearbaseline()
    return {"module": __name__}
