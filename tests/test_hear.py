"""HEAR 2021 both ways: the registry's audio embedders pass the official ``hearvalidator`` through
``embedders.hear_module``, and any HEAR module (the HEAR baseline, or ours) serves as the ``hear`` embedder.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import sys
import textwrap
import types

import numpy as np
import pytest
import torch

from embedders import hear_module
from embedders.base import ConfigError
from embedders.io import resample
from embedders.registry import get_embedder
from tests.factory import sine_wave
from tests.pretrained_factories.hear_naive import require_hearbaseline

MODULE = "embedders.hear_module"


def require(module: str, hint: str) -> None:
    if importlib.util.find_spec(module) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {module} is not installed; CI installs it ({hint})")
        pytest.skip(f"{module} not installed: {hint}")


@pytest.fixture(scope="module")
def validator():
    """hearvalidator's ``validate`` module. It imports tensorflow at module level but touches it only for
    TensorFlow models (``isinstance(model, tf.Module)`` aside), so without TensorFlow it gets a stand-in
    for the import, removed again afterwards."""
    require("hearvalidator", "pip install --no-deps hearvalidator==2021.0.2")
    with pytest.MonkeyPatch.context() as mp:
        if importlib.util.find_spec("tensorflow") is None:
            stub = types.ModuleType("tensorflow")
            stub.__spec__ = importlib.machinery.ModuleSpec("tensorflow", None)
            stub.Module = type("Module", (), {})  # nothing of ours is one
            mp.setitem(sys.modules, "tensorflow", stub)
        mp.delitem(sys.modules, "hearvalidator.validate", raising=False)
        from hearvalidator import validate
    return validate


def spec_file(tmp_path, **spec) -> str:
    path = tmp_path / f"{spec['embedder']}-{len(list(tmp_path.glob('*.json')))}.json"
    path.write_text(json.dumps(spec))
    return str(path)


def run_validator(validate, module: str, model_file: str, capsys) -> str:
    validate.ValidateModel(module, model_file, device="cpu")()  # raises validate.ModelError on any failure
    out = capsys.readouterr().out
    assert "Checking get_timestamp_embeddings" in out and "Checking get_scene_embeddings" in out
    return out


# -- (a) our embedders as HEAR modules ---------------------------------------------------------------
def test_melstats_passes_the_validator(validator, tmp_path, capsys):
    out = run_validator(validator, MODULE, spec_file(tmp_path, embedder="melstats", hop_seconds=0.05), capsys)
    assert "Model sample rate is: 22050" in out and "scene_embedding_size: 161" in out
    assert "Received embedding of shape: torch.Size([16, 40, 161])" in out  # 2 s at a 50 ms hop


def test_default_load_model_is_melstats(validator, capsys):
    with pytest.warns(UserWarning, match="less than or equal to 50ms"):  # the default 0.5 s hop
        run_validator(validator, MODULE, "", capsys)


@pytest.mark.slow  # 16 x 2 s + 8 x 3.74 s of white noise through a full-size OpenL3 network
def test_openl3_from_a_small_checkpoint_passes_the_validator(validator, tmp_path, capsys):
    require("torchopenl3", "pip install '.[openl3]' -c constraints.txt")
    from tests.pretrained_factories.openl3 import CONTRACT_OPTIONS, write_weights

    ckpt = write_weights(tmp_path, **CONTRACT_OPTIONS)
    spec = spec_file(tmp_path, embedder="openl3", checkpoint=str(ckpt), hop_seconds=1.0, batch_size=32, **CONTRACT_OPTIONS)
    with pytest.warns(UserWarning, match="less than or equal to 50ms"):
        out = run_validator(validator, MODULE, spec, capsys)
    assert "Model sample rate is: 48000" in out and "scene_embedding_size: 512" in out


def test_basic_pitch_passes_the_validator(validator, tmp_path, capsys):
    from tests.pretrained_factories.basic_pitch import require_basic_pitch

    require_basic_pitch()
    with pytest.warns(UserWarning, match="less than or equal to 50ms"):
        out = run_validator(validator, MODULE, spec_file(tmp_path, embedder="basic_pitch", threads=1), capsys)
    assert "scene_embedding_size: 880" in out


def test_the_validator_catches_a_broken_module(validator, tmp_path, monkeypatch):
    """Our harness really fails: a module whose embeddings are float64 does not pass."""
    (tmp_path / "broken_hear.py").write_text(textwrap.dedent("""
        from embedders.hear_module import get_scene_embeddings, load_model  # noqa: F401
        from embedders import hear_module

        def get_timestamp_embeddings(audio, model):
            emb, ts = hear_module.get_timestamp_embeddings(audio, model)
            return emb.double(), ts
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(validator.ModelError, match="Expected embeddings to be torch.float32"):
        validator.ValidateModel("broken_hear", "", device="cpu")()


def test_timestamps_are_frame_centres_and_scene_is_the_average():
    model = hear_module.load_model(embedder="melstats", hop_seconds=0.25, window_seconds=0.5)
    audio = torch.from_numpy(np.stack([sine_wave(440, 1.3, sr=22050), sine_wave(660, 1.3, sr=22050)]))
    emb, ts = hear_module.get_timestamp_embeddings(audio, model)
    assert emb.shape == (2, 6, 161) and ts.shape == (2, 6) and emb.dtype == torch.float32
    np.testing.assert_allclose(ts[1].numpy(), [250, 500, 750, 1000, 1250, 1500])  # 0.25 t + 0.25 s
    direct = get_embedder("melstats", hop_seconds=0.25, window_seconds=0.5).embed([audio[1].numpy()])[0]
    np.testing.assert_array_equal(emb[1].numpy(), direct)
    np.testing.assert_allclose(hear_module.get_scene_embeddings(audio, model)[1].numpy(), direct.mean(0), rtol=1e-6)


def test_load_model_options_and_errors(tmp_path):
    spec = spec_file(tmp_path, embedder="melstats", n_mels=32)
    assert hear_module.load_model(spec).scene_embedding_size == 2 * 32 + 33
    assert hear_module.load_model(spec, n_mels=16).scene_embedding_size == 2 * 16 + 33  # keywords win
    with pytest.raises(ConfigError, match="audio; embedder 'pianoroll' is symbolic"):
        hear_module.load_model(embedder="pianoroll")
    with pytest.raises(ConfigError, match="has no option"):  # melstats takes no weights file
        hear_module.load_model(spec_file(tmp_path, embedder="melstats") and __file__)
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        hear_module.load_model(str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match="2-D tensor"):
        hear_module.get_scene_embeddings(torch.zeros(100), hear_module.load_model())


# -- (b) HEAR modules as the `hear` embedder -----------------------------------------------------------
def test_hear_baseline_as_an_embedder():
    require_hearbaseline()
    from hearbaseline import naive

    from tests.pretrained_factories.hear_naive import load_model

    audio = sine_wave([330, 550], 1.5, sr=48000)
    timestamp = get_embedder("hear", module="tests.pretrained_factories.hear_naive")
    scene = get_embedder("hear", module="tests.pretrained_factories.hear_naive", layer="scene")
    assert timestamp.dim == scene.dim == 4096
    (frames,), (one,) = timestamp.embed([audio]), scene.embed([audio])
    reference_model = load_model()
    x = torch.from_numpy(resample(audio, 48000, 44100))[None]
    expected, stamps = naive.get_timestamp_embeddings(x, reference_model)
    assert frames.shape == (len(stamps[0]), 4096) == (31, 4096)  # 1.5 s at hearbaseline's 50 ms hop, centred
    np.testing.assert_allclose(frames, expected[0].numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(one[0], naive.get_scene_embeddings(x, reference_model)[0].numpy(), rtol=1e-5, atol=1e-4)
    d = timestamp.describe()
    assert d["module_sample_rate"] == 44100 and len(d["module_file_sha256"]) == 64


def test_hearbaseline_naive_itself_does_not_load_with_librosa_0_10_or_later():
    """hearbaseline 2021.1.1 passes the rate to librosa.filters.mel positionally (keyword-only since
    librosa 0.10); the embedder says so in one line instead of a traceback."""
    require_hearbaseline()
    with pytest.raises(ConfigError, match=r"hearbaseline\.naive\.load_model\(''\) failed: TypeError: mel\(\)"):
        get_embedder("hear", module="hearbaseline.naive")


def test_our_hear_module_round_trips(tmp_path):
    spec = spec_file(tmp_path, embedder="melstats")
    wrapped = get_embedder("hear", module=MODULE, model_file=spec)
    audio = sine_wave(440, 2.2, sr=48000)
    expected = get_embedder("melstats").embed([resample(audio, 48000, 22050)])[0]
    np.testing.assert_array_equal(wrapped.embed([audio])[0], expected)
    other = get_embedder("hear", module=MODULE, model_file=spec_file(tmp_path, embedder="melstats", n_mels=32))
    assert wrapped.config_hash() != other.config_hash() and other.dim == 2 * 32 + 33


def test_hear_embedder_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="'module' is required"):
        get_embedder("hear")
    with pytest.raises(ConfigError, match="cannot import HEAR module 'no_such_hear_module'"):
        get_embedder("hear", module="no_such_hear_module")
    with pytest.raises(ConfigError, match=r"not a HEAR 2021 module: it lacks \['load_model'"):
        get_embedder("hear", module="json")
    with pytest.raises(ConfigError, match="layer must be one of"):
        get_embedder("hear", module=MODULE, layer="penultimate")
    with pytest.raises(ConfigError, match="model_file not found"):
        get_embedder("hear", module=MODULE, model_file=str(tmp_path / "none.pt"))
    (tmp_path / "tf_like_hear.py").write_text(textwrap.dedent("""
        class Model:
            sample_rate, scene_embedding_size, timestamp_embedding_size = 16000, 4, 4
        def load_model(model_file_path=""): return Model()
        def get_timestamp_embeddings(audio, model): raise AssertionError
        def get_scene_embeddings(audio, model): raise AssertionError
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="returned a Model; only PyTorch HEAR modules"):
        get_embedder("hear", module="tf_like_hear")
