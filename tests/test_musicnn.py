"""The PyTorch musicnn port against the ORIGINAL package's outputs (tests/data/musicnn_reference.npz,
made once with TensorFlow by tests/data/make_musicnn_reference.py), its float32 front end against the
original's float16 one, the embedder's framing, errors and self-description.

"Relative error" below is max |port - original| / max |original| over one output array.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from embedders.audio import musicnn as mn
from embedders.audio.tf_checkpoint import TensorBundle, read_checkpoint
from embedders.base import AudioDecodeError, CheckpointError, ConfigError, EmptyInputError
from embedders.registry import get_embedder
from tests.tf_checkpoint_factory import write_bundle

DATA = Path(__file__).parent / "data"
_spec = importlib.util.spec_from_file_location("make_musicnn_reference", DATA / "make_musicnn_reference.py")
reference_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference_script)  # numpy only at import: the inputs the original saw
OUTPUTS = ("taggram", "penultimate", "mean_pool", "max_pool")
DIMS = {"taggram": 50, "penultimate": 200, "mean_pool": 753, "max_pool": 753}
TOLERANCE = 1e-4  # the bar for the port (measured: <= 5.1e-6)
# float16 rounding of the original's log-mel (three roundings before the log's, <= 0.002 for values
# below 8) moves its outputs by up to ~1e-3 relative: the bar when the port sees float32 log-mel.
FRONT_END_TOLERANCE = 5e-3


def wheel_installed() -> bool:
    if importlib.util.find_spec("musicnn") is None:
        if os.environ.get("CI") == "true":
            raise RuntimeError("CI=true but the musicnn wheel is not installed; CI installs it with --no-deps")
        return False
    return True


pytestmark = pytest.mark.skipif(not wheel_installed(), reason="musicnn wheel not installed: "
                                "pip install --no-deps musicnn==0.1.0 -c constraints.txt")


def relative_error(port: np.ndarray, original: np.ndarray) -> float:
    assert port.shape == original.shape
    return float(np.abs(port - original).max() / np.abs(original).max())


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(DATA / "musicnn_reference.npz"))


@pytest.fixture(scope="module", params=mn.MODELS)
def network(request):
    return request.param, mn.load_musicnn(request.param)


def run(net, patches: np.ndarray) -> dict[str, np.ndarray]:
    import torch

    with torch.no_grad():
        return {k: v.numpy() for k, v in net(torch.from_numpy(np.asarray(patches, dtype=np.float32))).items()}


def original_patches(logmel: np.ndarray) -> np.ndarray:
    """musicnn.extractor.batch_data's non-overlapping 187-frame patches of its own log-mel."""
    return np.stack([logmel[s:s + 187] for s in range(0, len(logmel) - 187 + 1, 187)]).astype(np.float32)


# -- the network ------------------------------------------------------------------------------------
def test_reference_inputs_are_those_the_original_saw(reference):
    assert reference_script.patches_sha256(reference_script.reference_patches()) == str(reference["random__sha256"])


def test_network_matches_the_original_on_fixed_patches(network, reference):
    name, net = network
    out = run(net, reference_script.reference_patches())
    for key in OUTPUTS:
        assert out[key].shape == (6, DIMS[key]) and out[key].dtype == np.float32
        assert relative_error(out[key], reference[f"{name}__random__{key}"]) <= TOLERANCE, key


@pytest.mark.parametrize("wave", ["chords", "noise"])
def test_network_matches_the_original_on_its_own_log_mel(network, reference, wave):
    name, net = network
    out = run(net, original_patches(reference[f"logmel__{wave}"]))
    for key in OUTPUTS:
        assert relative_error(out[key], reference[f"{name}__{wave}__network__{key}"]) <= TOLERANCE, key
        extracted = reference[f"{name}__{wave}__{key}"]  # musicnn.extractor.extractor's own result
        if key == "penultimate":  # extractor() repeats the first patch's penultimate (a stale variable)
            out[key], extracted = out[key][:1], extracted[:1]
        assert relative_error(out[key], extracted) <= TOLERANCE, key


def test_load_musicnn_contract():
    import torch

    net = mn.load_musicnn("MTT_musicnn")
    assert isinstance(net, torch.nn.Module) and not net.training
    assert all(not p.requires_grad for p in net.parameters())
    with pytest.raises(ValueError, match=r"expects a \(B, 187, 96\) log-mel batch, got \(2, 96, 187\)"):
        net(torch.zeros(2, 96, 187))
    with pytest.raises(CheckpointError, match="unknown musicnn model 'MTT_vgg'"):
        mn.load_musicnn("MTT_vgg")


# -- the front end -----------------------------------------------------------------------------------
def test_front_end_is_the_originals_without_float16(reference):
    waves = reference_script.reference_waveforms()
    for wave, audio in waves.items():
        original = reference[f"logmel__{wave}"]
        mel = mn.mel_power(audio)
        with np.errstate(over="ignore"):  # the original's float16 steps, replayed on our float32 mel
            replayed = np.log10(10000 * mel.astype(np.float16) + 1)
        np.testing.assert_array_equal(replayed, original)  # same mel; the only change is the dtype
        ours = mn.log_mel(audio)
        assert ours.dtype == np.float32 and np.isfinite(ours).all()
        finite = np.isfinite(original)
        assert np.abs(ours[finite] - original[finite].astype(np.float32)).max() <= 3e-3  # float16 rounding
    assert np.isinf(reference["logmel__loud"]).sum() > 0  # the original overflows on loud audio
    assert np.isfinite(reference["MTT_musicnn__loud__mean_pool"]).mean() < 1  # and its features do too


def test_embedder_reproduces_the_originals_patches(reference):
    """hop 2.992 s = 187 frames, musicnn's own patching: the first frames are the extractor's patches."""
    waves = reference_script.reference_waveforms()
    embedder = get_embedder("musicnn", device="cpu", hop_seconds=2.992)
    out = embedder.embed([waves["chords"], waves["noise"]])
    assert [len(o) for o in out] == [3, 2]  # ceil(6.5 / 2.992), ceil(3.5 / 2.992): tails are kept
    for wave, frames in zip(["chords", "noise"], out):
        original = reference[f"MTT_musicnn__{wave}__network__penultimate"]
        assert relative_error(frames[:len(original)], original) <= FRONT_END_TOLERANCE, wave
        logmel, starts = embedder.prepare(waves[wave])  # the same patches, every output
        every = run(embedder.model, np.stack([logmel[s:s + 187] for s in starts[:len(original)]]))
        np.testing.assert_allclose(every["penultimate"], frames[:len(original)], rtol=1e-5, atol=1e-5)
        for key in OUTPUTS:
            original = reference[f"MTT_musicnn__{wave}__network__{key}"]
            assert relative_error(every[key], original) <= FRONT_END_TOLERANCE, (key, wave)


# -- the embedder ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def embedder():
    return get_embedder("musicnn", device="cpu")


def chords(seconds: float, amplitude: float = 0.1) -> np.ndarray:
    t = np.arange(int(seconds * mn.SAMPLE_RATE)) / mn.SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 1.3 * t))).astype(np.float32)


def test_frames_are_patches_on_the_hop_grid(embedder):
    assert embedder.dim == 200 and embedder.sample_rate == 16000 and embedder.hop_seconds == 3.0
    np.testing.assert_array_equal(embedder.patch_starts(int(10.0 * 16000)), [0, 188, 375, 563])  # 187.5 frames
    half = get_embedder("musicnn", device="cpu", hop_seconds=0.5, layer="max_pool")
    np.testing.assert_array_equal(half.patch_starts(int(2.0 * 16000)), [0, 31, 63, 94])  # 31.25 frames
    audio = chords(3.7)
    out = half.embed([audio])[0]
    assert out.shape == (8, 753)  # ceil(3.7 / 0.5)
    padded = np.concatenate([audio, np.zeros(int(3.5 * 16000), np.float32)])  # the tail hears silence
    logmel = mn.log_mel(padded)
    starts = half.patch_starts(audio.size)
    expected = run(mn.load_musicnn("MTT_musicnn"), np.stack([logmel[s:s + 187] for s in starts]))["max_pool"]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_patches_of_several_items_share_forward_passes_in_order():
    items = [chords(7.0), chords(0.5, amplitude=0.3), chords(4.0, amplitude=0.02)]  # 3 + 1 + 2 patches
    one = get_embedder("musicnn", device="cpu", batch_size=1, layer="taggram").embed(items)
    four = get_embedder("musicnn", device="cpu", batch_size=4, layer="taggram").embed(items)
    assert [len(o) for o in four] == [3, 1, 2]
    for a, b in zip(one, four):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_short_audio_is_one_patch_of_it_and_silence(embedder):
    audio = chords(0.8)
    (out,) = embedder.embed([audio])
    (padded,) = embedder.embed([np.concatenate([audio, np.zeros(3 * 16000, np.float32)])[:int(2.9 * 16000)]])
    assert out.shape == (1, 200)
    np.testing.assert_allclose(out, padded, rtol=1e-5, atol=1e-6)


def test_loud_audio_stays_finite(embedder):
    """Where the original's float16 log-mel gives inf, the float32 front end gives usable features."""
    for audio in (reference_script.reference_waveforms()["loud"], chords(3.0, amplitude=0.99)):
        logmel, starts = embedder.prepare(audio)
        assert logmel.max() > np.log10(65504)  # beyond float16
        out = run(embedder.model, np.stack([logmel[s:s + 187] for s in starts]))
        assert all(np.isfinite(v).all() for v in out.values())


def test_layers_models_and_tags():
    audio = [chords(3.0)]
    tags = get_embedder("musicnn", device="cpu", layer="taggram").embed(audio)[0]
    assert tags.shape == (1, 50) and ((tags > 0) & (tags < 1)).all()
    msd = get_embedder("musicnn", device="cpu", model="MSD_musicnn", layer="taggram").embed(audio)[0]
    assert not np.allclose(tags, msd)  # the other weights
    mean, peak = (get_embedder("musicnn", device="cpu", layer=k).embed(audio)[0] for k in ("mean_pool", "max_pool"))
    assert mean.shape == peak.shape == (1, 753) and (peak >= mean - 1e-6).all()
    labels = mn.tag_labels("MTT_musicnn")
    assert len(labels) == 50 and labels[:3] == ["guitar", "classical", "slow"]
    assert mn.tag_labels("MSD_musicnn")[0] == "rock"


def network_tensors(embedder) -> dict[str, np.ndarray]:
    """The wheel checkpoint's tensors without the optimiser's (Adam slots): what the network reads."""
    prefix = mn.weights_prefix(embedder.config)
    names = [n for n in TensorBundle(prefix).names() if "Adam" not in n and not n.endswith("_power")]
    return read_checkpoint(prefix, names)


def test_describe_and_hash(embedder, tmp_path):
    d = embedder.describe()
    assert d["dim"] == 200 and d["window_seconds"] == 3.0 and d["hop_seconds"] == 3.0
    assert d["musicnn_version"] == "0.1.0" and len(d["weights_sha256"]) == 64 and "ISC" in d["licence"]
    assert get_embedder("musicnn", device="cpu", layer="taggram").describe()["columns"] == mn.tag_labels("MTT_musicnn")
    options = ({}, {"layer": "max_pool"}, {"model": "MSD_musicnn"}, {"hop_seconds": 1.0})
    hashes = {get_embedder("musicnn", device="cpu", **o).config_hash() for o in options}
    assert len(hashes) == 4
    # the same config over other weights (rewritten in place): a new hash, new outputs
    folder = tmp_path / "weights"
    folder.mkdir()
    tensors = network_tensors(embedder)
    prefix = write_bundle(str(folder) + os.sep, tensors, entries_per_block=64, restart_interval=16)
    before = get_embedder("musicnn", device="cpu", checkpoint=str(folder), layer="taggram")
    before_hash = before.config_hash()
    tensors["dense_1/bias"] = tensors["dense_1/bias"] + 1
    write_bundle(prefix, tensors, entries_per_block=64, restart_interval=16)
    for name in os.listdir(folder):  # a later write: file versions are (path, size, mtime)
        os.utime(folder / name, ns=(os.stat(folder / name).st_atime_ns, os.stat(folder / name).st_mtime_ns + 10**9))
    after = get_embedder("musicnn", device="cpu", checkpoint=str(folder), layer="taggram")
    assert before.config == after.config and before_hash != after.config_hash()
    audio = [chords(3.0)]
    assert (after.embed(audio)[0] > before.embed(audio)[0]).all()  # +1 on every logit


def test_weights_identity_is_the_index_and_the_data(embedder, tmp_path):
    """The digest is hashlib's SHA-256 of the two files' digests; a change to the data file alone (the
    index untouched) gives a new hash, and the model cache key follows the data file's version too."""
    import hashlib

    prefix = write_bundle(tmp_path / "w", network_tensors(embedder))
    index, data = prefix + ".index", prefix + ".data-00000-of-00001"
    assert mn.MusicnnEmbedder.weights_files(prefix) == (index, data)
    digests = [hashlib.sha256(open(f, "rb").read()).hexdigest() for f in (index, data)]
    expected = hashlib.sha256(f"{digests[0]}:{digests[1]}".encode()).hexdigest()
    config = mn.MusicnnEmbedderConfig(checkpoint=prefix, device="cpu")
    assert mn.MusicnnEmbedder.weights_sha256(prefix) == expected
    assert mn.MusicnnEmbedder.describe_config(config)["weights_sha256"] == expected
    before = get_embedder("musicnn", device="cpu", checkpoint=prefix)
    before_hash = before.config_hash()
    raw = bytearray(open(data, "rb").read())
    raw[-1] ^= 0x01  # one bit of the last tensor; the index and the file's size stay as they were
    with open(data, "wb") as f:
        f.write(raw)
    os.utime(data, ns=(os.stat(data).st_atime_ns, os.stat(data).st_mtime_ns + 10**9))
    assert mn.MusicnnEmbedder.hash_config(config) != before_hash
    # a new file version of the data: loaded anew (not the cached network), and refused
    with pytest.raises(CheckpointError, match="checksum mismatch in .*corrupt data file"):
        get_embedder("musicnn", device="cpu", checkpoint=prefix).model  # noqa: B018
    os.remove(data)
    with pytest.raises(CheckpointError, match=r"lists the data file .*w\.data-00000-of-00001, which is missing"):
        mn.MusicnnEmbedder.hash_config(config)


def test_checkpoint_that_does_not_fit_is_refused(embedder, tmp_path):
    tensors = network_tensors(embedder)
    tensors["conv2d/kernel"] = tensors["conv2d/kernel"][:, :30]  # a 7 x 30 kernel where musicnn has 7 x 38
    prefix = write_bundle(tmp_path / "bad", tensors)
    with pytest.raises(CheckpointError, match=r"'conv2d' gives weight of shape \(204, 1, 7, 30\).*has \(204, 1, 7, 38\)"):
        mn.load_musicnn("MTT_musicnn", prefix)
    del tensors["batch_normalization/gamma"]
    write_bundle(tmp_path / "partial", tensors)
    with pytest.raises(CheckpointError, match="has no tensor 'batch_normalization/gamma'"):
        get_embedder("musicnn", device="cpu", checkpoint=str(tmp_path / "partial"))
    with pytest.raises(CheckpointError, match=r"names no TensorFlow checkpoint \(no file .*nothing\.index\)"):
        get_embedder("musicnn", device="cpu", checkpoint=str(tmp_path / "nothing"))


@pytest.mark.parametrize(("options", "message"), [
    ({"model": "MTT_vgg"}, "model must be one of"),
    ({"layer": "cnn1"}, "layer must be one of"),
    ({"hop_seconds": 0.01}, "hop_seconds must be >= 0.016"),
    ({"batch_size": -1}, "batch_size must be >= 0"),
    ({"device": "tpu"}, "device must be auto, cpu"),
])
def test_bad_options(options, message):
    with pytest.raises(ConfigError, match=message):
        get_embedder("musicnn", **options)


def test_bad_items(embedder):
    with pytest.raises(EmptyInputError):
        embedder.embed([np.zeros(0, np.float32)])
    with pytest.raises(AudioDecodeError, match="NaN or infinite"):
        embedder.embed([np.array([0.0, np.nan] * 8000, np.float32)])
    with pytest.raises(ValueError, match="mono 1-D"):
        embedder.embed([np.zeros((2, 16000), np.float32)])
    results = embedder.embed_items(["ok", "empty"], [chords(1.0), np.zeros(0, np.float32)])
    assert results[0].shape == (1, 200) and isinstance(results[1], EmptyInputError) and results[1].item_id == "empty"


def test_model_is_loaded_once_per_process():
    a, b = get_embedder("musicnn", device="cpu", layer="taggram"), get_embedder("musicnn", device="cpu", hop_seconds=1.0)
    assert a.model is b.model
    assert get_embedder("musicnn", device="cpu", model="MSD_musicnn").model is not a.model


def test_missing_wheel_or_librosa_says_what_to_install(monkeypatch):
    import sys

    from embedders.audio import musicnn_model
    from embedders.base import MissingDependencyError

    monkeypatch.setattr(musicnn_model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CheckpointError, match=r"musicnn wheel, which is not installed: pip install --no-deps musicnn==0\.1\.0"):
        get_embedder("musicnn", device="cpu", model="MSD_musicnn")
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "librosa", None)  # import librosa -> ModuleNotFoundError
    with pytest.raises(MissingDependencyError, match=r"needs the package 'librosa'.*audio-vs-symbolic\[musicnn\]"):
        mn.log_mel(np.zeros(16000, np.float32))


@pytest.mark.gpu
def test_gpu_matches_cpu():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    items = [chords(7.0), chords(0.8, amplitude=0.3), chords(3.7, amplitude=0.02)]
    for layer in ("penultimate", "mean_pool"):
        cpu = np.concatenate(get_embedder("musicnn", device="cpu", layer=layer).embed(items))  # the reference
        # relative error floor: IEEE fp32 on CUDA (TF32 off) 1e-4, the port's own bar; cosine floor: bf16 autocast 0.99
        fp32 = np.concatenate(get_embedder("musicnn", device="cuda", precision="fp32", layer=layer).embed(items))
        assert fp32.dtype == np.float32 and fp32.shape == cpu.shape
        assert relative_error(fp32, cpu) <= TOLERANCE, layer
        auto = get_embedder("musicnn", device="cuda", layer=layer)
        assert auto.runtime.dtype in ("bfloat16", "float16") and auto.batch_size == 64
        bf16 = np.concatenate(auto.embed(items))
        cosine = (bf16 * cpu).sum(1) / (np.linalg.norm(bf16, axis=1) * np.linalg.norm(cpu, axis=1))
        assert bf16.shape == cpu.shape and np.isfinite(bf16).all() and cosine.min() > 0.99, (layer, cosine.min())


def test_the_embedding_job_runs_musicnn_on_its_wheel_weights(ray_session, tmp_path):
    """No --audio_checkpoint: the weights come from the wheel (a torch embedder whose checkpoint option
    is left at its default once made the job fail while describing its parts)."""
    from embedders.store.reader import load
    from ray_jobs.generate_embeddings import job as generate_embeddings
    from tests.factory import make_dataset

    make_dataset(tmp_path / "raw" / "toy", n=2, seconds=4.0)
    assert generate_embeddings.main(["--dataset", "toy", "--data_root", str(tmp_path), "--media", "audio_embeddings",
                                     "--audio_embedder", "musicnn"]) == 0
    emb = load(tmp_path / "embeddings" / "toy" / "embeddings.h5", "audio_embeddings", "musicnn", "sequence")
    assert list(emb.ids) == ["rec0", "rec1"] and all(e.shape == (2, 200) for e in emb.embeddings)  # 4 s: 2 patches
    assert "checkpoint_source" not in emb.attrs["group.description"]
