"""One contract test over the whole registry (HEAR-validator style): every embedder, same numbers.

An embedder that cannot be built from its default config (it needs weights) must have an entry in
CONFIG_FACTORIES that builds a small checkpoint in the model's true format; a registered embedder
without one fails here, so no model escapes the contract.
"""

from __future__ import annotations

import numpy as np
import pytest

from embedders.base import ConfigError, Embedder, EmbedderConfig, FrameGrid
from embedders.io import midi_duration_seconds
from embedders.registry import available, get_embedder, get_embedder_class, register
from tests.factory import scale_notes, score_from_notes, sine_wave
from tests.midi_model_factory import tiny_checkpoint
from tests.pretrained_factories.basic_pitch import basic_pitch_contract_config
from tests.pretrained_factories.clamp import clamp_contract_config
from tests.pretrained_factories.clap import clap_contract_config
from tests.pretrained_factories.hear_naive import hear_contract_config
from tests.pretrained_factories.openl3 import openl3_contract_config

# name -> callable(tmp_path_factory) -> config options (for embedders that need checkpoints)
CONFIG_FACTORIES: dict[str, callable] = {
    "midi_transformer": lambda tmp: {"checkpoint": str(tiny_checkpoint(tmp.mktemp("midi_transformer"))), "device": "cpu"},
    "clamp": clamp_contract_config,
    "clap": clap_contract_config,
    "openl3": openl3_contract_config,
    "basic_pitch": basic_pitch_contract_config,
    "hear": hear_contract_config,
}


def audio_items(sr: int):
    return [sine_wave([440, 660], 2.3, sr=sr), sine_wave(220, 4.0, sr=sr),
            (np.random.default_rng(0).standard_normal(int(0.7 * sr)) * 0.1).astype(np.float32)]


def symbolic_items():
    return [score_from_notes(scale_notes(60, 8), bpm=120), score_from_notes(scale_notes(48, 12), bpm=90),
            score_from_notes([(0, 4, 60), (0, 4, 64), (0, 4, 67), (4, 0.5, 72)], bpm=140)]


def items_for(cls):
    return audio_items(cls.sample_rate) if cls.modality == "audio" else symbolic_items()


@pytest.fixture(scope="module", params=available())
def built(request, tmp_path_factory):
    name = request.param
    options = CONFIG_FACTORIES[name](tmp_path_factory) if name in CONFIG_FACTORIES else {}
    embedder = get_embedder(name, **options)
    return embedder, items_for(type(embedder))


def test_registry_holds_both_modalities():
    assert available("audio") and available("symbolic")
    assert set(available()) == set(available("audio")) | set(available("symbolic"))


def test_class_attributes(built):
    embedder, _ = built
    cls = type(embedder)
    assert cls.modality in ("audio", "symbolic")
    assert isinstance(embedder.dim, int) and embedder.dim > 0
    if cls.modality == "audio":
        assert isinstance(cls.sample_rate, int) and 8000 <= cls.sample_rate <= 96000
    assert dataclass_is_frozen(cls.Config)


def dataclass_is_frozen(config_cls) -> bool:
    return config_cls.__dataclass_params__.frozen


def test_output_contract(built):
    embedder, items = built
    outputs = embedder.embed(items)
    assert len(outputs) == len(items)
    for out in outputs:
        assert isinstance(out, np.ndarray) and out.dtype == np.float32
        assert out.ndim == 2 and out.shape[0] >= 1 and out.shape[1] == embedder.dim
        assert np.isfinite(out).all()
    assert not np.array_equal(outputs[0].mean(0), outputs[1].mean(0)), "different inputs, identical embeddings"


def test_two_stages_and_the_average(built):
    """prepare on an instance built for it, then embed_items on prepared items, gives embed's frames;
    every item also gets a finite (dim,) float32 average (the store's other embedding type)."""
    embedder, items = built
    ids = [f"item{k}" for k in range(len(items))]
    prepared = type(embedder).for_prepare(embedder.config).prepare_items(ids, items)
    results = embedder.embed_items(ids, prepared, prepared=True, with_average=True)
    for result, expected in zip(results, embedder.embed(items)):
        np.testing.assert_allclose(result.sequence, expected, rtol=1e-5, atol=1e-6)
        assert result.average.shape == (embedder.dim,) and result.average.dtype == np.float32
        assert np.isfinite(result.average).all()
    assert isinstance(type(embedder).uses_accelerator, bool)


def test_frames_follow_the_time_grid(built):
    embedder, items = built
    if embedder.hop_seconds is None:
        pytest.skip(f"{embedder.name} has no fixed frame hop")
    grid = FrameGrid(embedder.config.hop_seconds, embedder.config.window_seconds)
    for item, out in zip(items, embedder.embed(items)):
        seconds = (len(item) / embedder.sample_rate if embedder.modality == "audio"
                   else midi_duration_seconds(item))
        assert out.shape[0] == grid.n_frames(seconds)


def test_deterministic(built):
    embedder, items = built
    for a, b in zip(embedder.embed(items), embedder.embed(items)):
        np.testing.assert_array_equal(a, b)


def test_batch_size_invariance(built):
    embedder, items = built
    batched = embedder.embed(items)
    for item, expected in zip(items, batched):
        (single,) = embedder.embed([item])
        np.testing.assert_allclose(single, expected, rtol=1e-5, atol=1e-6)


def test_describe_is_self_contained(built):
    embedder, _ = built
    d = embedder.describe()
    assert d["embedder"] == embedder.name and d["dim"] == embedder.dim and len(d["source_hash"]) == 16
    assert embedder.config_hash() == type(embedder).hash_config(embedder.config)


# -- registry behaviour ----------------------------------------------------------------------------
def test_unknown_name_lists_choices():
    with pytest.raises(ConfigError, match="unknown embedder 'nope'; available: .*melstats"):
        get_embedder("nope")


def test_unknown_option_lists_options():
    with pytest.raises(ConfigError, match=r"has no option\(s\) \['bogus'\]; its options are"):
        get_embedder("melstats", bogus=1)


def test_duplicate_name_raises():
    cls = get_embedder_class("melstats")

    class Impostor(Embedder):
        name, modality, dim, sample_rate = "melstats", "audio", 3, 16000

        def embed(self, items):
            return []

    with pytest.raises(ConfigError, match="already registered"):
        register(Impostor)
    assert get_embedder_class("melstats") is cls


def test_bad_class_attributes_raise():
    class NoRate(Embedder):
        name, modality, dim = "norate-test", "audio", 3
        Config = EmbedderConfig

        def embed(self, items):
            return []

    with pytest.raises(ConfigError, match="must set sample_rate"):
        register(NoRate)
