"""The ``openl3`` embedder: torchopenl3's network loaded from weight files in the published format
(built by tests/pretrained_factories/openl3.py), framing on the project's time grid, errors, and
equality with torchopenl3's own loader and ``get_audio_embedding`` for the same weights and audio.
"""

from __future__ import annotations

import os
import sys
import warnings
import zipfile

import numpy as np
import pytest

from embedders.audio import openl3
from embedders.audio.openl3 import OpenL3Config, weights_path
from embedders.base import CheckpointError, ConfigError, EmptyInputError, FrameGrid, MissingDependencyError
from embedders.registry import get_embedder
from tests.factory import sine_wave
from tests.pretrained_factories.openl3 import file_name, write_hub_cache, write_weights

SR = 48000
FAST = {"input_repr": "mel128"}  # the cheapest real configuration; mel256 is covered once below
CPU = {"device": "cpu"}  # reference numbers are CPU fp32; under device=auto a GPU would run bf16


def have_torchopenl3() -> bool:
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            import torchopenl3  # noqa: F401
    except ImportError as exc:
        if os.environ.get("CI") == "true":
            raise RuntimeError(f"CI=true but torchopenl3 does not import ({exc}); CI installs the [openl3] extra") from exc
        return False
    return True


needs_torchopenl3 = pytest.mark.skipif(not have_torchopenl3(), reason="torchopenl3 not installed: "
                                       "pip install 'audio-vs-symbolic[openl3]' -c constraints.txt")


def items():
    """1.6 s of chords (4 frames at hop 0.5), 0.7 s of noise and 0.3 s of sine (shorter than a window)."""
    noise = (np.random.default_rng(0).standard_normal(int(0.7 * SR)) * 0.1).astype(np.float32)
    return [sine_wave([440, 660], 1.6), noise, sine_wave(220, 0.3)]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return write_weights(tmp_path_factory.mktemp("openl3"), **FAST)


@pytest.fixture(scope="module")
def embedder(weights):
    return get_embedder("openl3", checkpoint=str(weights), **CPU, **FAST)


@pytest.fixture(scope="module")
def expected(embedder):
    """``embedder``'s frames of ``items()``, computed once for the tests that compare against them."""
    return embedder.embed(items())


# -- config and errors (no torchopenl3 needed) -------------------------------------------------------
def test_config_choices_and_dim():
    assert OpenL3Config().weights_file_name == "torchopenl3_mel256_music_512.pth.tar"
    assert openl3.OpenL3.output_dim(OpenL3Config(embedding_size=6144)) == 6144
    assert OpenL3Config().window_seconds == 1.0 and OpenL3Config().hop_seconds == 0.5
    for bad in ({"content_type": "speech"}, {"input_repr": "mel64"}, {"embedding_size": 1024},
                {"precision": "int8"}, {"hop_seconds": 0.0}, {"batch_size": -1}, {"device": "tpu"},
                {"hop_seconds": 1 / 7}, {"center": "yes"}):  # 6857.14 samples: not a whole number
        with pytest.raises(ConfigError, match="openl3"):
            OpenL3Config(**bad)


def test_missing_weights_say_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    expected = tmp_path / "th" / "hub" / "checkpoints" / "torchopenl3_mel256_env_6144.pth.tar"
    with pytest.raises(CheckpointError) as info:
        weights_path(OpenL3Config(content_type="env", embedding_size=6144))
    msg = str(info.value)
    assert str(expected) in msg and "torchopenl3_mel256_env_6144.pth.tar" in msg
    assert "https://github.com/torchopenl3/torchopenl3-models/raw/master/torchopenl3_mel256_env_6144.pth.tar" in msg
    assert "--audio_checkpoint" in msg and "Apache-2.0" in msg and "never downloads" in msg
    with pytest.raises(CheckpointError, match=f"OpenL3 weights not found: {tmp_path / 'nope.pth.tar'}"):
        weights_path(OpenL3Config(checkpoint=str(tmp_path / "nope.pth.tar")))


def test_file_named_for_another_config_is_refused(tmp_path):
    path = tmp_path / file_name("mel128", "env", 6144)
    path.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="named for input_repr=mel128, content_type=env, but"):
        weights_path(OpenL3Config(checkpoint=str(path), input_repr="mel128", content_type="music"))
    with pytest.raises(CheckpointError, match="named for input_repr=mel128, content_type=env, but"):
        weights_path(OpenL3Config(checkpoint=str(path), input_repr="mel256", content_type="env"))
    # one set of weights serves both sizes (only the last pooling differs), as in OpenL3 itself
    for size in (512, 6144):
        cfg = OpenL3Config(checkpoint=str(path), input_repr="mel128", content_type="env", embedding_size=size)
        assert weights_path(cfg) == str(path)


def test_missing_package_gives_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchopenl3", None)  # import fails as if not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'audio-vs-symbolic\[openl3\]'"):
        openl3.OpenL3(OpenL3Config())
    missing = openl3.dependency_error(ModuleNotFoundError("No module named 'pkg_resources'", name="pkg_resources"))
    assert "setuptools<81" in str(missing) and "pip install 'audio-vs-symbolic[openl3]'" in str(missing)


# -- framing ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("seconds, hop, center, expected", [
    (1.6, 0.5, False, 3),  # windows [0, 1), [0.5, 1.5), [1.0, 2.0): the third reaches 1.6 s; the grid has 4
    (1.0, 0.5, False, 1),  # the first window ends exactly at the end
    (0.3, 0.5, False, 1),  # shorter than a window: one (padded) frame
    (1.6, 0.25, False, 4),  # starts 0 .. 0.75: the fourth is the first to reach 1.6 s; the grid has 7
    (1.6, 0.5, True, 4),  # centred: the left half window of padding counts, as in torchopenl3
    (1.6, 0.1, True, 12),  # torchopenl3's defaults: 1 + ceil((1.6 - 0.5) / 0.1); the grid has 16
    (0.3, 0.1, True, 1),
])
def test_averaged_frames_known_answers(seconds, hop, center, expected):
    n = int(round(seconds * SR))
    grid = FrameGrid(hop, 1.0).n_frames(seconds)
    assert openl3.averaged_frames(n, grid, int(round(hop * SR)), SR, center) == expected
    assert openl3.averaged_frames(n, 2, int(round(hop * SR)), SR, center) == min(2, expected)  # never past T


@needs_torchopenl3
def test_reference_preset_is_torchopenl3s_defaults(weights):
    import inspect

    import torchopenl3

    defaults = {k: p.default for k, p in inspect.signature(torchopenl3.get_audio_embedding).parameters.items()}
    cfg = openl3.OpenL3.make_config(preset="reference")
    assert (cfg.input_repr, cfg.content_type, cfg.embedding_size, cfg.hop_seconds, cfg.center) == tuple(
        defaults[k] for k in ("input_repr", "content_type", "embedding_size", "hop_size", "center"))
    assert (OpenL3Config().embedding_size, OpenL3Config().hop_seconds, OpenL3Config().center) == (512, 0.5, False)
    explicit = get_embedder("openl3", preset="reference", checkpoint=str(weights), embedding_size=512, **CPU, **FAST)
    assert explicit.config.input_repr == "mel128" and explicit.dim == 512 and explicit.config.hop_seconds == 0.1
    with pytest.raises(ConfigError, match=r"no preset 'nope'; its presets are \['reference'\]"):
        openl3.OpenL3.make_config(preset="nope")


@needs_torchopenl3
@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("hop", [0.5, 0.25])
def test_windows_sit_on_the_frame_grid(weights, center, hop):
    emb = get_embedder("openl3", checkpoint=str(weights), center=center, hop_seconds=hop, **CPU, **FAST)
    for audio in items():
        frames = emb.frames(audio).numpy()
        n = FrameGrid(hop, 1.0).n_frames(len(audio) / SR)
        assert frames.shape == (n, SR)
        padded = np.concatenate([np.zeros(SR // 2 if center else 0, np.float32), audio, np.zeros(2 * SR, np.float32)])
        for t in range(n):  # window t starts at t * hop (minus half a window when centred)
            np.testing.assert_array_equal(frames[t], padded[int(t * hop * SR):int(t * hop * SR) + SR])


# -- loading and output -----------------------------------------------------------------------------
@needs_torchopenl3
def test_output_shape_dtype_and_determinism(embedder, expected):
    a, b = expected, embedder.embed(items())
    assert [x.shape for x in a] == [(4, 512), (2, 512), (1, 512)]
    for x, y in zip(a, b):
        assert x.dtype == np.float32 and np.isfinite(x).all()
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(a[0][0], a[0][-1]), "different windows, identical embeddings"


@needs_torchopenl3
def test_hub_cache_and_checkpoint_give_the_same_model(weights, expected, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    cached = write_hub_cache(tmp_path / "th", **FAST)  # same seed: same tensors as ``weights``
    from_cache = get_embedder("openl3", **CPU, **FAST)
    assert from_cache.weights_path == str(cached)
    for x, y in zip(from_cache.embed(items()), expected):
        np.testing.assert_array_equal(x, y)
    other = get_embedder("openl3", checkpoint=str(write_weights(tmp_path / "other", seed=1, **FAST)), **CPU, **FAST)
    assert not np.allclose(other.embed(items()[:1])[0], expected[0])


@needs_torchopenl3
def test_prepare_then_forward_is_embed(weights, embedder, expected):
    """The job's two stages (prepare on a CPU task, forward in the actor) give embed's numbers; the
    preparing instance never loads the network, even when asked for a device this host lacks."""
    preparer = openl3.OpenL3.for_prepare(OpenL3Config(checkpoint=str(weights), device="cuda:7", **FAST))
    prepared = [preparer.prepare(a) for a in items()]
    assert preparer._model is None and all(p.dtype == np.float32 and p.ndim == 1 for p in prepared)
    for x, y in zip(embedder.forward(prepared), expected):
        np.testing.assert_array_equal(x, y)
    readonly = [np.frombuffer(p.tobytes(), dtype=np.float32) for p in prepared]  # as from Ray's object store
    results = embedder.embed_items(["a", "b", "c"], readonly, prepared=True)
    for x, y in zip(results, expected):
        np.testing.assert_array_equal(x, y)


@needs_torchopenl3
def test_batching_across_items_does_not_change_frames(weights, embedder, expected):
    assert embedder.batch_size == 1  # ``expected``: one window per forward on CPU
    for batch_size in (3, 16):  # 3: batches straddle items; 16: all 7 windows in one pass
        emb = get_embedder("openl3", checkpoint=str(weights), batch_size=batch_size, **CPU, **FAST)
        for x, y in zip(emb.embed(items()), expected):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


@needs_torchopenl3
@pytest.mark.filterwarnings("ignore:Empty filters detected:UserWarning")  # torchopenl3 builds mel256 with today's librosa
@pytest.mark.parametrize("options", [
    {"input_repr": "mel128", "center": False, "hop_seconds": 0.5},
    {"input_repr": "mel128", "center": True, "hop_seconds": 0.5},
    {"input_repr": "mel128", "center": False, "hop_seconds": 0.25},
    {"input_repr": "mel256", "content_type": "env", "embedding_size": 6144, "center": True, "hop_seconds": 0.5},
    {"input_repr": "linear", "center": False, "hop_seconds": 0.5},
])
def test_equals_torchopenl3_get_audio_embedding(tmp_path, monkeypatch, options):
    """torchopenl3 loads the same file from the hub cache itself (proving name, place and format) and
    embeds the same audio; its frames are a prefix of ours (all of them when centred at hop 0.5)."""
    import torchopenl3

    arch = {k: options[k] for k in ("input_repr", "content_type", "embedding_size") if k in options}
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    write_hub_cache(tmp_path, **arch)
    cfg = OpenL3Config(**arch)
    reference = torchopenl3.core.load_audio_embedding_model(cfg.input_repr, cfg.content_type, cfg.embedding_size)
    emb = get_embedder("openl3", **CPU, **options)
    ours = emb.embed(items())
    theirs, _ = torchopenl3.get_audio_embedding([a.copy() for a in items()], SR, model=reference,
                                                center=options["center"], hop_size=options["hop_seconds"],
                                                batch_size=16, verbose=False)
    # the stored average (embed_items(with_average=True) takes it from ``average``, as the registry
    # contract test checks for openl3), here from the frames just compared instead of a third forward pass
    averages = [emb.average(emb.prepare(a), x) for a, x in zip(items(), ours)]
    for x, y, avg in zip(ours, theirs, averages):
        y = y.numpy()
        assert y.shape[1] == cfg.embedding_size and 1 <= len(y) <= len(x)
        if options["center"] and options["hop_seconds"] == 0.5:
            assert len(y) == len(x)
        np.testing.assert_allclose(x[:len(y)], y, rtol=1e-5, atol=1e-5)
        # the stored average is over torchopenl3's frames only, not the grid's frames past the end
        np.testing.assert_allclose(avg, y.mean(axis=0), rtol=1e-5, atol=1e-5)
    if not options["center"]:  # here the grid has frames past torchopenl3's: the plain mean differs
        assert len(theirs[0]) < len(ours[0]) and not np.allclose(averages[0], ours[0].mean(0), atol=1e-4)


@needs_torchopenl3
def test_legacy_zipped_file_loads_like_the_hub(weights, embedder, tmp_path):
    zipped = tmp_path / weights.name
    with zipfile.ZipFile(zipped, "w") as zf:  # torch.hub's legacy layout: one member holding the file
        zf.write(weights, arcname="torchopenl3_mel128_music_512.pth")
    emb = get_embedder("openl3", checkpoint=str(zipped), **CPU, **FAST)
    np.testing.assert_array_equal(emb.embed(items()[:1])[0], embedder.embed(items()[:1])[0])


@needs_torchopenl3
def test_unfit_or_unreadable_weights_raise(weights, tmp_path):
    renamed = tmp_path / "my_openl3.pth"  # a mel128 file under a free name, loaded as mel256
    renamed.write_bytes(weights.read_bytes())
    with pytest.raises(CheckpointError, match=r"do not fit torchopenl3's mel256 network: .*speclayer.mel_basis"):
        get_embedder("openl3", checkpoint=str(renamed))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable torch state dict"):
        get_embedder("openl3", checkpoint=str(junk), **FAST)


@needs_torchopenl3
def test_bad_items_are_isolated(embedder):
    results = embedder.embed_items(["ok", "empty", "nan"], [items()[2], np.zeros(0, np.float32),
                                                             np.full(SR, np.nan, np.float32)])
    assert results[0].shape == (1, 512)
    assert isinstance(results[1], EmptyInputError) and results[1].item_id == "empty"
    assert type(results[2]).__name__ == "AudioDecodeError" and results[2].item_id == "nan"


@needs_torchopenl3
def test_describe_and_hash_follow_the_weights(weights, tmp_path):
    emb = get_embedder("openl3", checkpoint=str(weights), **FAST)
    d = emb.describe()
    assert d["dim"] == 512 and d["sample_rate"] == SR and d["hop_seconds"] == 0.5 and d["window_seconds"] == 1.0
    assert d["weights_file"] == weights.name and len(d["weights_sha256"]) == 64 and d["torchopenl3_version"]
    path = write_weights(tmp_path, **FAST)
    before = openl3.OpenL3.hash_config(OpenL3Config(checkpoint=str(path), **FAST))
    assert openl3.OpenL3.hash_config(OpenL3Config(checkpoint=str(path), **FAST)) == before
    write_weights(tmp_path, seed=5, **FAST)  # new weights at the same path: a new hash
    assert openl3.OpenL3.hash_config(OpenL3Config(checkpoint=str(path), **FAST)) != before


@needs_torchopenl3
def test_mixed_precision_is_cuda_only_and_front_end_stays_fp32(weights, embedder):
    import torch

    with pytest.raises(ConfigError, match="autocast on CUDA only"):
        get_embedder("openl3", checkpoint=str(weights), device="cpu", precision="bf16", **FAST)
    windows = embedder.frames(items()[0])[:, None, :]
    with torch.inference_mode():
        spec32 = embedder.model.speclayer(windows)
        # CPU autocast stands in for CUDA's (the CNN itself is left out: bf16 convolutions are
        # emulated on most CPUs and take minutes); without the wrapper the STFT would run in bf16.
        with torch.autocast("cpu", dtype=torch.bfloat16):
            spec16 = embedder.model.speclayer(windows)
    assert spec16.dtype == torch.float32
    torch.testing.assert_close(spec16, spec32)
    assert type(embedder.model.speclayer).__name__ == "FP32Module"  # also IEEE fp32 (no TF32) on CUDA


@needs_torchopenl3
def test_embed_actor_builds_it_from_job_options(weights):
    """The Ray Data actor's constructor path, with options as generate_embeddings passes them."""
    from ray_jobs.generate_embeddings.pipeline import EmbedActor, MediumSpec

    spec = MediumSpec("audio_embeddings", "audio_filename", "openl3",
                      {"checkpoint": str(weights), "input_repr": "mel128", "hop_seconds": 0.5, **CPU}, SR)
    batch = {"id": np.array(["a", "b"], dtype=object), "payload": [items()[0], np.zeros(0, np.float32)],
             "error_type": ["", ""], "error_message": ["", ""], "stage": ["", ""]}
    out = EmbedActor(spec)(batch)
    assert out["sequence"][0].shape == (4, 512) and out["error_type"] == ["", "EmptyInputError"]


@pytest.mark.slow
@needs_torchopenl3
def test_through_the_embedding_job(ray_session, tmp_path, weights, embedder):
    from embedders.io import decode_audio
    from embedders.store.reader import load
    from ray_jobs.generate_embeddings import job as generate_embeddings
    from tests.factory import make_dataset

    root = make_dataset(tmp_path / "raw" / "toy", n=2, seconds=1.5)
    assert generate_embeddings.main([
        "--dataset", "toy", "--data_root", str(tmp_path), "--media", "audio_embeddings", "--audio_embedder", "openl3",
        "--audio_checkpoint", str(weights), "--audio_option", "input_repr=mel128", "--batch_size", "2"]) == 0
    emb = load(tmp_path / "embeddings/toy/embeddings.h5", "audio_embeddings", "openl3", "sequence")
    assert list(emb.ids) == ["rec0", "rec1"] and '"weights_sha256"' in emb.attrs["group.description"]
    for item_id, got in zip(emb.ids, emb.embeddings):
        audio = decode_audio(str(root / "audio" / f"{item_id}.wav"), SR, item_id)
        assert got.shape == (3, 512)
        np.testing.assert_allclose(got, embedder.embed([audio])[0], rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@needs_torchopenl3
def test_cuda_matches_cpu(weights, embedder):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cpu = embedder.embed(items())  # CPU fp32: the reference
    assert embedder.device.type == "cpu" and embedder.autocast_dtype is None
    fp32 = get_embedder("openl3", checkpoint=str(weights), device="cuda", precision="fp32", **FAST)
    assert fp32.device.type == "cuda" and fp32.batch_size == 128
    # fp32 on CUDA is IEEE fp32 (TF32 off for the front end and the CNN): equal to CPU within 1e-3
    # relative (different kernels and summation orders only)
    for x, y in zip(fp32.embed(items()), cpu):
        np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-3 * np.abs(y).max())
    auto = get_embedder("openl3", checkpoint=str(weights), device="cuda", **FAST)
    assert auto.autocast_dtype == (torch.bfloat16 if torch.cuda.get_device_capability()[0] >= 8 else torch.float16)
    for x, y in zip(auto.embed(items()), cpu):  # bf16 CNN, fp32 front end: cosine > 0.99 per frame
        cos = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
        assert x.dtype == np.float32 and cos.min() > 0.99, cos
