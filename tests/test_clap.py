"""The ``clap`` embedder: LAION-CLAP's audio branch loaded from a checkpoint in the published layout
(tests/pretrained_factories/clap.py), checked against the laion_clap library itself.

The reference is laion_clap's own ``CLAP_Module``: ``load_ckpt`` (strict, after its own ``module.``
stripping and position_ids removal) on the same file, then ``get_audio_embedding_from_data`` (its
int16 round trip, repeat-padding and ``CLAP.get_audio_embedding``). Importing laion_clap needs
packages its audio path never uses, so the ``laion`` fixture stands in for them, and only them:
- torchvision: PyPI's wheels do not load against this project's CPU torch; laion_clap imports it at
  module level for image transforms, FrozenBatchNorm2d (training) and fusion's >10 s crop (unused);
- transformers: text encoder and tokenizer classes; ``from_pretrained`` would download roberta-base
  (at import time for the tokenizers). RobertaModel.from_pretrained returns a module holding the
  factory's text-branch stand-ins, so load_ckpt's strict load of the whole file is a real check;
- webdataset, braceexpand, wget, ftfy, regex: training data, downloads and the text tokenizer.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types

import numpy as np
import pytest

from embedders.base import AudioDecodeError, CheckpointError, ConfigError, EmptyInputError, FrameGrid, MissingDependencyError
from embedders.registry import get_embedder
from tests.pretrained_factories.clap import (
    FUSION_NAME,
    POSITION_IDS,
    PUBLISHED_NAME,
    TEXT_BRANCH_STANDINS,
    published_dict,
    random_tower,
    require_extra,
    write_checkpoint,
)

SR = 48000
CPU = {"device": "cpu"}  # reference numbers are CPU fp32; under device=auto a GPU would run bf16


@pytest.fixture(scope="module")
def extra():
    require_extra()


needs_extra = pytest.mark.usefixtures("extra")


def tone(seconds: float, seed: int) -> np.ndarray:
    """A chirp plus noise with a slow tremolo, so every 10 s window differs from the others."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * SR))) / SR
    wave = 0.4 * np.sin(2 * np.pi * (200 + 40 * seed + 60 * t) * t) + 0.05 * rng.standard_normal(len(t))
    return (wave * (0.6 + 0.4 * np.sin(2 * np.pi * 0.3 * t))).astype(np.float32)


@pytest.fixture(scope="module")
def ckpt(extra, tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("clap") / PUBLISHED_NAME)


@pytest.fixture(scope="module")
def fusion_ckpt(extra, tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("clap_fusion") / FUSION_NAME, enable_fusion=True, seed=1)


# -- the library, with its text / training-only imports stood in for (see the module note) -------
def _placeholder_module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name, "test stand-in: laion_clap imports it, its audio path never uses it")

    def refuse(*args, **kwargs):
        raise AssertionError(f"{name} was used by the audio path")

    def __getattr__(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return type(attr, (), {"__init__": refuse, "from_pretrained": staticmethod(lambda *a, **k: object())})

    module.__getattr__ = __getattr__
    module.__dict__.update(attrs)
    return module


def _text_branch_standin():
    """A module whose state dict is the factory's text-branch stand-ins (position_ids is deleted by
    laion_clap's loader, as for current transformers, where it is a non-persistent buffer)."""
    import torch

    root = torch.nn.Module()
    for key, shape in TEXT_BRANCH_STANDINS.items():
        *path, leaf = key.split(".")
        node = root
        for part in path:
            if part not in node._modules:
                node.add_module(part, torch.nn.Module())
            node = node._modules[part]
        node.register_parameter(leaf, torch.nn.Parameter(torch.zeros(shape)))
    return root


@pytest.fixture(scope="module")
def laion(extra):
    """The real laion_clap package (CLAP_Module, training.data) imported with stand-ins for the
    modules listed in the module note; removed from sys.modules again afterwards."""
    roberta = type("RobertaModel", (), {"from_pretrained": staticmethod(lambda *a, **k: _text_branch_standin())})
    transformers = _placeholder_module("transformers", __version__="4.31.0", RobertaModel=roberta)
    stand_ins = {"transformers": transformers,
                 "transformers.tokenization_utils_base": _placeholder_module("transformers.tokenization_utils_base")}
    torchvision = stand_ins["torchvision"] = _placeholder_module("torchvision")
    for sub in ("ops", "ops.misc", "transforms", "datasets"):
        stand_ins[f"torchvision.{sub}"] = _placeholder_module(f"torchvision.{sub}")
    torchvision.ops, torchvision.transforms = stand_ins["torchvision.ops"], stand_ins["torchvision.transforms"]
    torchvision.datasets, stand_ins["torchvision.ops"].misc = stand_ins["torchvision.datasets"], stand_ins["torchvision.ops.misc"]
    for name in ("webdataset", "braceexpand", "wget", "ftfy", "progressbar"):
        stand_ins[name] = _placeholder_module(name)
    # clap_module/tokenizer.py builds its BPE text tokenizer at import, compiling a regex pattern
    stand_ins["regex"] = _placeholder_module("regex", compile=lambda *a, **k: object(), IGNORECASE=2)
    path = list(sys.path)
    with pytest.MonkeyPatch.context() as mp:
        for name, module in stand_ins.items():
            mp.setitem(sys.modules, name, module)
        import laion_clap
        from laion_clap.clap_module import factory
        from laion_clap.training import data

        yield types.SimpleNamespace(CLAP_Module=laion_clap.CLAP_Module, data=data, load_state_dict=factory.load_state_dict)
        for name in [n for n in sys.modules if n.split(".")[0] in ("laion_clap", "clap_module")]:
            del sys.modules[name]
    sys.path[:] = path  # laion_clap/__init__ appends its folder


@pytest.fixture(scope="module")
def reference(laion, ckpt):
    model = laion.CLAP_Module(enable_fusion=False, device="cpu", amodel="HTSAT-tiny", tmodel="roberta")
    model.load_ckpt(str(ckpt), verbose=False)  # strict: every key of our file, through the library's loader
    return model


@pytest.fixture(scope="module")
def embedder(ckpt):
    return get_embedder("clap", checkpoint=str(ckpt), batch_size=2, **CPU)


# -- import route and packaging ---------------------------------------------------------------------
def test_module_and_registry_import_without_the_extra():
    code = ("import sys\nfor m in ('laion_clap', 'torchlibrosa', 'librosa', 'torch'): sys.modules[m] = None\n"
            "from embedders.registry import available, get_embedder_class\n"
            "from embedders.audio import clap_model\n"
            "cls = get_embedder_class('clap')\n"
            "assert cls.dim == 512 and cls.sample_rate == 48000 and 'clap' in available('audio')\n"
            "try:\n    clap_model.htsat_module()\nexcept clap_model.MissingDependencyError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    assert "needs the package 'laion-clap" in out.stdout and "pip install 'audio-vs-symbolic[clap]'" in out.stdout


@needs_extra
def test_embedding_never_imports_laion_clap_package_text_side_or_torchvision(ckpt):
    code = ("import sys, numpy as np\nfrom embedders.registry import get_embedder\n"
            f"e = get_embedder('clap', checkpoint={str(ckpt)!r})\n"
            "out = e.embed([np.zeros(4800, np.float32) + 0.1])\n"
            "assert out[0].shape == (1, 512)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('laion_clap', 'clap_module', 'transformers', 'torchvision', 'torchaudio', 'webdataset', 'wget'))\n"
            "print('imported:', bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "imported: []" in out.stdout


@needs_extra
@pytest.mark.parametrize("blocked, package", [("laion_clap", "laion-clap"), ("torchlibrosa", "torchlibrosa")])
def test_missing_package_names_the_extra(monkeypatch, blocked, package):
    from embedders.audio import clap_model

    for name in [n for n in sys.modules if n.startswith(clap_model._PRIVATE)]:
        monkeypatch.delitem(sys.modules, name)  # restored afterwards
    monkeypatch.setitem(sys.modules, blocked, None)
    if blocked == "torchlibrosa":
        monkeypatch.setitem(sys.modules, "torchlibrosa.stft", None)
    with pytest.raises(MissingDependencyError, match=rf"needs the package '{package}.*pip install 'audio-vs-symbolic\[clap\]'"):
        clap_model.htsat_module()
    assert clap_model._PRIVATE not in sys.modules  # a failed load leaves nothing half-imported behind


# -- the same numbers as the library ----------------------------------------------------------------
@needs_extra
def test_quantize_and_fill_match_the_library(laion):
    import torch

    from embedders.audio.clap import CLIP_SAMPLES, fill_window, quantize_int16

    x = np.concatenate([tone(0.5, 3), np.array([1.7, -2.0, 0.99999, -1e-5], np.float32)])
    np.testing.assert_array_equal(quantize_int16(x), laion.data.int16_to_float32(laion.data.float32_to_int16(x)))
    cfg = {"hop_size": 480, "window_size": 1024, "mel_bins": 64, "sample_rate": 48000, "fmin": 50, "fmax": 14000}
    for n in (1, 4799, 33600, 240001, CLIP_SAMPLES):
        sig = np.resize(x, n)  # x repeated to n samples
        for mode in ("repeatpad", "pad", "repeat"):
            ref = laion.data.get_audio_features({}, torch.from_numpy(sig), CLIP_SAMPLES, "rand_trunc", mode, cfg)
            ours = fill_window(sig, mode)
            assert ours.shape == (CLIP_SAMPLES,) and not ref["longer"].item()
            np.testing.assert_array_equal(ours, ref["waveform"].numpy())


@needs_extra
def test_frames_equal_the_library_embedding_of_each_window(embedder, reference):
    items = [tone(0.7, 0), tone(10.0, 1), tone(23.5, 2)]
    out = embedder.embed(items)  # batch_size 2: batches cross item boundaries
    assert [o.shape for o in out] == [(1, 512), (1, 512), (3, 512)]
    assert all(o.dtype == np.float32 for o in out)
    np.testing.assert_allclose(np.linalg.norm(np.concatenate(out), axis=1), 1.0, atol=1e-5)
    windows = [a[s:s + 10 * SR] for a in items for s in range(0, len(a), 10 * SR)]
    expected = reference.get_audio_embedding_from_data(x=windows, use_tensor=False)  # (5, 512)
    np.testing.assert_allclose(np.concatenate(out), expected, rtol=0, atol=1e-6)  # measured: 7e-8
    assert np.abs(np.corrcoef(np.concatenate(out))[np.triu_indices(5, 1)]).max() < 0.9999  # inputs matter


@needs_extra
def test_deterministic_and_independent_of_batching(embedder, ckpt):
    item = tone(12.5, 4)  # two windows
    first, again = embedder.embed([item])[0], embedder.embed([item])[0]
    np.testing.assert_array_equal(first, again)
    single = get_embedder("clap", checkpoint=str(ckpt), batch_size=1, **CPU).embed([item])[0]
    np.testing.assert_allclose(single, first, rtol=0, atol=1e-6)  # measured: 4e-8


@needs_extra
def test_prepare_then_forward_is_embed(embedder, ckpt):
    """prepare (validation, int16 round trip) runs on an instance that never loads the tower, even
    one asked for a GPU this host lacks; forward over its output gives embed's numbers."""
    from embedders.audio.clap import CLAP, CLAPConfig, quantize_int16

    x = tone(0.7, 8)
    preparer = CLAP.for_prepare(CLAPConfig(checkpoint=str(ckpt), device="cuda:2"))
    prepared = preparer.prepare(x)
    assert preparer._model is None
    np.testing.assert_array_equal(prepared, quantize_int16(x))
    np.testing.assert_array_equal(embedder.forward([prepared])[0], embedder.embed([x])[0])


@needs_extra
@pytest.mark.parametrize("hop, window, seconds", [(10.0, 10.0, 23.5), (5.0, 10.0, 23.5), (2.5, 4.0, 9.0), (10.0, 10.0, 30.0)])
def test_windows_follow_the_frame_grid(ckpt, hop, window, seconds):
    from embedders.audio.clap import fill_window, quantize_int16

    e = get_embedder("clap", checkpoint=str(ckpt), hop_seconds=hop, window_seconds=window, **CPU)
    x = tone(seconds, 5)
    got = list(e.windows(x))
    assert len(got) == FrameGrid(hop, window).n_frames(seconds)
    q = quantize_int16(x)
    for t, w in enumerate(got):
        start = int(round(t * hop * SR))
        np.testing.assert_array_equal(w, fill_window(q[start:start + int(window * SR)], "repeatpad"))


@needs_extra
def test_fusion_checkpoint_matches_the_library(laion, fusion_ckpt):
    import librosa
    import torch

    e = get_embedder("clap", checkpoint=str(fusion_ckpt), enable_fusion=True, **CPU)
    x = tone(10.0, 6)
    (ours,) = e.embed([x])
    window = next(e.windows(x))
    mel = e.model.fusion_mel(torch.from_numpy(window)[None])[0, 0]  # (1001, 64) dB
    # torchaudio's MelSpectrogram + AmplitudeToDB as laion_clap's get_mel calls them, via librosa
    # with the parameters its own comment aligns them with (htk=True, norm=None, reflect padding).
    ref_mel = librosa.power_to_db(librosa.feature.melspectrogram(
        y=window.astype(np.float64), sr=SR, n_fft=1024, hop_length=480, win_length=1024, center=True,
        pad_mode="reflect", power=2.0, n_mels=64, fmin=50, fmax=14000, htk=True, norm=None), ref=1.0, amin=1e-10,
        top_db=None).T
    np.testing.assert_allclose(mel.numpy(), ref_mel, rtol=0, atol=1e-3)  # dB; measured: 3e-4 (fp32 vs fp64)
    model = laion.CLAP_Module(enable_fusion=True, device="cpu", amodel="HTSAT-tiny", tmodel="roberta")
    model.load_ckpt(str(fusion_ckpt), verbose=False)
    model.model.eval()
    sample = {"mel_fusion": torch.stack([mel] * 4), "longer": torch.tensor([False]), "waveform": torch.from_numpy(window)}
    with torch.no_grad():
        expected = model.model.get_audio_embedding([sample]).numpy()  # the library's fusion path for <= 10 s
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)


# -- checkpoints ------------------------------------------------------------------------------------
@needs_extra
def test_published_layout_is_what_the_library_loader_reads(laion, ckpt):
    state = laion.load_state_dict(str(ckpt))  # strips module., deletes text position_ids
    assert POSITION_IDS not in state and all(not k.startswith("module.") for k in state)
    assert any(k.startswith("text_branch.") for k in state) and "logit_scale_a" in state


@needs_extra
@pytest.mark.parametrize("prefix, nested", [("module.", True), ("", True), ("module.", False), ("", False)])
def test_every_layout_yields_the_same_audio_tensors(tmp_path, prefix, nested):
    import torch

    from embedders.audio.clap_model import read_audio_state

    path = tmp_path / "ckpt.pt"
    torch.save(published_dict(random_tower(), prefix=prefix, nested=nested), path)
    audio, meta = read_audio_state(str(path))
    expected = random_tower().state_dict()
    assert set(audio) == set(expected) and meta["nested"] == nested and meta["module_prefix"] == bool(prefix)
    assert meta["ignored_keys"] == len(TEXT_BRANCH_STANDINS) + 1 + 14  # text stand-ins, position_ids, heads
    for key, value in expected.items():
        assert torch.equal(audio[key], value), key


@needs_extra
def test_checkpoint_errors_name_the_file_and_the_fix(tmp_path, ckpt):
    import torch

    with pytest.raises(CheckpointError, match=r"needs a checkpoint: .*huggingface.co/lukewys/laion_clap"):
        get_embedder("clap")
    with pytest.raises(CheckpointError, match=r"not found: .*nope.pt; .*630k-audioset-best.pt"):
        get_embedder("clap", checkpoint=str(tmp_path / "nope.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=r"junk.pt is not a readable torch file"):
        get_embedder("clap", checkpoint=str(tmp_path / "junk.pt"))
    torch.save({"epoch": 3, "config": {"lr": 0.1}}, tmp_path / "meta.pt")
    with pytest.raises(CheckpointError, match=r"meta.pt: expected \{'state_dict'.*found \['config', 'epoch'\]"):
        get_embedder("clap", checkpoint=str(tmp_path / "meta.pt"))
    torch.save({"state_dict": {"module.text_branch.pooler.dense.weight": torch.zeros(2, 2)}}, tmp_path / "text.pt")
    with pytest.raises(CheckpointError, match=r"text.pt: expected keys audio_branch.\* and audio_projection.\* "
                                              r".*found key groups \['text_branch'\]"):
        get_embedder("clap", checkpoint=str(tmp_path / "text.pt"))
    with pytest.raises(CheckpointError, match=r"does not fit amodel=HTSAT-tiny enable_fusion=true: set "
                                              r"enable_fusion=false"):
        get_embedder("clap", checkpoint=str(ckpt), enable_fusion=True)
    with pytest.raises(CheckpointError, match=r"does not fit amodel=HTSAT-base .*set amodel=HTSAT-tiny \(its "
                                              r"audio_projection.0.weight takes 768 HTSAT features\)"):
        get_embedder("clap", checkpoint=str(ckpt), amodel="HTSAT-base")
    state = published_dict(random_tower())
    del state["state_dict"]["module.audio_branch.layers.3.blocks.1.mlp.fc2.weight"]
    torch.save(state, tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match=r"cut.pt does not fit HTSAT-tiny .*missing "
                                              r"\['audio_branch.layers.3.blocks.1.mlp.fc2.weight'\]"):
        get_embedder("clap", checkpoint=str(tmp_path / "cut.pt"))


def test_config_is_validated():
    from embedders.audio.clap import CLAPConfig

    for bad, match in (({"window_seconds": 12.0}, "at most 10"), ({"hop_seconds": 1e-5}, "whole number of samples"),
                       ({"amodel": "HTSAT-huge"}, "amodel must be one of"), ({"data_filling": "zeros"}, "data_filling"),
                       ({"precision": "int8"}, "precision"), ({"batch_size": -1}, "batch_size"),
                       ({"device": "tpu"}, "device")):
        with pytest.raises(ConfigError, match=match):
            CLAPConfig(**bad)


@needs_extra
def test_reduced_precision_is_refused_on_cpu(ckpt):
    with pytest.raises(ConfigError, match="autocast on CUDA only"):
        get_embedder("clap", checkpoint=str(ckpt), precision="bf16", device="cpu")


@needs_extra
def test_bad_items_are_named_and_the_rest_embedded(embedder):
    results = embedder.embed_items(["empty", "nan", "ok"], [np.zeros(0, np.float32),
                                                            np.array([0.1, np.nan], np.float32), tone(1.0, 7)])
    assert isinstance(results[0], EmptyInputError) and results[0].item_id == "empty"
    assert isinstance(results[1], AudioDecodeError) and results[1].item_id == "nan"
    assert results[2].shape == (1, 512)


@needs_extra
def test_describe_names_the_weights(embedder, ckpt):
    d = embedder.describe()
    assert d["dim"] == 512 and d["sample_rate"] == SR and d["hop_seconds"] == 10.0 and d["window_seconds"] == 10.0
    assert d["checkpoint_file"] == PUBLISHED_NAME and len(d["checkpoint_sha256"]) == 64
    assert d["laion-clap_version"] and d["config"]["amodel"] == "HTSAT-tiny"


@pytest.mark.gpu
@needs_extra
def test_gpu_matches_cpu(ckpt, embedder):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    items = [tone(0.7, 0), tone(23.5, 2)]
    cpu = np.concatenate(embedder.embed(items))  # CPU fp32: the reference
    # cosine floors: IEEE fp32 on CUDA (TF32 off) 0.9999; bf16 autocast (fp32 front end) 0.99
    for precision, floor in (("fp32", 0.9999), ("auto", 0.99)):
        gpu = np.concatenate(get_embedder("clap", checkpoint=str(ckpt), device="cuda", precision=precision).embed(items))
        assert gpu.dtype == np.float32 and gpu.shape == cpu.shape
        assert (gpu * cpu).sum(axis=1).min() > floor, precision  # cosine: both are unit vectors
