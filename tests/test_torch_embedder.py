"""The torch-embedder base (embedders/torch_embedder.py) and the batch plumbing of embedders/base.py.

``Tiny`` below is a complete torch embedder written the way the base's docstring says to add one
(config, ``load_model``, ``prepare``, ``forward``); it is not registered, so the registry-wide tests
never see it. CUDA is simulated where a rule depends on it (out-of-memory, bf16 support).
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import types
from typing import ClassVar

import numpy as np
import pytest
import torch

from embedders import base, torch_embedder
from embedders.base import ConfigError, Embedding, EmptyInputError, ItemError, ItemTooLargeError
from embedders.registry import available, get_embedder_class
from embedders.torch_embedder import (
    Runtime,
    TorchEmbedder,
    TorchEmbedderConfig,
    fp32_module,
    ieee_fp32,
    resolve_runtime,
)


@dataclasses.dataclass(frozen=True)
class TinyConfig(TorchEmbedderConfig):
    embedder: ClassVar[str] = "tiny"
    scale: float = 1.0  # an option that changes outputs (and so the hash)


class Tiny(TorchEmbedder):
    """Items are flat lists of numbers, read as (n, 2) rows; each row becomes one 3-d frame."""

    name, modality, dim, hop_seconds = "tiny-test", "symbolic", 3, None
    Config = TinyConfig
    loads = 0

    def load_model(self, path):
        type(self).loads += 1
        model = torch.nn.Linear(2, 3)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model

    def prepare(self, item):
        x = np.asarray(item, dtype=np.float32).reshape(-1, 2)
        if not len(x):
            raise EmptyInputError(None, "no rows")
        return x

    def forward(self, prepared):
        rows = torch.from_numpy(np.concatenate(prepared))
        with self.inference():
            out = self.model(self.to_device(rows)).float().cpu().numpy() * self.config.scale
        return list(np.split(out, np.cumsum([len(p) for p in prepared])[:-1]))


def write_weights(path, seed=0):
    gen = torch.Generator().manual_seed(seed)
    torch.save({"weight": torch.randn(3, 2, generator=gen), "bias": torch.randn(3, generator=gen)}, path)
    return path


@pytest.fixture()
def weights(tmp_path):
    return write_weights(tmp_path / "tiny.pt")


def tiny(weights, **options) -> Tiny:
    return Tiny(TinyConfig(checkpoint=str(weights), device="cpu", **options))


# -- the recipe works: load_model + prepare + forward is a whole embedder --------------------------------
def test_a_model_is_its_network_plus_a_loader(weights):
    emb = tiny(weights)
    items = [[1, 2, 3, 4], [0.5, -1]]
    out = emb.embed(items)
    state = torch.load(weights, weights_only=True)
    for item, got in zip(items, out):
        x = torch.tensor(item, dtype=torch.float32).reshape(-1, 2)
        np.testing.assert_allclose(got, (x @ state["weight"].T + state["bias"]).numpy(), rtol=1e-6)
    assert emb.device.type == "cpu" and emb.autocast_dtype is None and emb.batch_size == 1
    assert not any(p.requires_grad for p in emb.model.parameters()) and not emb.model.training
    for x, y in zip(emb.forward([emb.prepare(i) for i in items]), out):
        np.testing.assert_array_equal(x, y)


def test_missing_checkpoint_names_the_fix(tmp_path):
    with pytest.raises(base.CheckpointError, match="embedder 'tiny-test' needs a checkpoint: pass a weights file"):
        Tiny(TinyConfig())
    with pytest.raises(base.CheckpointError, match=f"checkpoint not found: {tmp_path / 'x.pt'}"):
        Tiny(TinyConfig(checkpoint=str(tmp_path / "x.pt")))


def test_config_is_validated_with_the_embedders_name():
    for bad, match in (({"device": "tpu"}, "tiny: device must be auto, cpu, cuda or cuda:N"),
                       ({"precision": "int8"}, "tiny: precision must be one of"),
                       ({"batch_size": -1}, "tiny: batch_size must be >= 0")):
        with pytest.raises(ConfigError, match=match):
            TinyConfig(**bad)


def test_one_load_per_file_version_and_network(weights):
    Tiny.loads = 0
    a, b = tiny(weights), tiny(weights, batch_size=4)  # batch size does not change the network
    assert a.model is b.model and Tiny.loads == 1
    write_weights(weights, seed=3)  # a new version of the file
    c = tiny(weights)
    assert c.model is not a.model and Tiny.loads == 2
    d = tiny(weights, scale=2.0)  # network_fields None: every option except checkpoint/device/precision/batch
    assert d.model is not c.model and Tiny.loads == 3


def test_for_prepare_loads_nothing_and_chooses_no_device(weights):
    Tiny.loads = 0
    preparer = Tiny.for_prepare(TinyConfig(checkpoint=str(weights), device="cuda:9"))  # no CUDA here
    assert preparer.prepare([1, 2]).shape == (1, 2) and Tiny.loads == 0 and preparer._model is None
    with pytest.raises(ConfigError, match=r"tiny-test: device 'cuda:9' requested but CUDA is not available"):
        preparer.forward([preparer.prepare([1, 2])])  # the device is chosen when the network is needed


# -- device and precision -----------------------------------------------------------------------------
def fake_cuda(monkeypatch, major: int):
    """A visible CUDA device of compute capability ``major``; torch's own check says bf16 works either
    way (it counts emulation), so only a native-bf16 rule picks fp16 below Ampere."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: types.SimpleNamespace(major=major))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation or major >= 8)


@pytest.mark.parametrize("major, dtype", [(7, "float16"), (8, "bfloat16"), (9, "bfloat16")])
def test_auto_precision_uses_native_bf16_only(monkeypatch, major, dtype):
    fake_cuda(monkeypatch, major)
    assert resolve_runtime("x", "auto", "auto") == Runtime("cuda", dtype)
    assert resolve_runtime("x", "cuda:1", "auto") == Runtime("cuda:1", dtype)
    assert resolve_runtime("x", "cpu", "auto") == Runtime("cpu", "float32")
    assert resolve_runtime("x", "auto", "fp32") == Runtime("cuda", "float32")
    assert resolve_runtime("x", "auto", "bf16") == Runtime("cuda", "bfloat16")  # asked for: emulated if need be


def test_strict_resolution_refuses_what_cannot_run_here():
    assert not torch.cuda.is_available()  # this suite's machines; the gpu tests cover a real device
    assert resolve_runtime("x", "auto", "auto") == Runtime("cpu", "float32")
    with pytest.raises(ConfigError, match=r"x: device 'cuda' requested but CUDA is not available here"):
        resolve_runtime("x", "cuda", "auto")
    with pytest.raises(ConfigError, match="x: precision=bf16 is autocast on CUDA only"):
        resolve_runtime("x", "cpu", "bf16")
    # a driver hashing for GPU actors it cannot see: nothing refused, auto taken as native bf16
    assert resolve_runtime("x", "auto", "auto", cuda=True, strict=False) == Runtime("cuda", "bfloat16")
    assert resolve_runtime("x", "cuda", "auto", cuda=False, strict=False) == Runtime("cuda", "bfloat16")
    assert resolve_runtime("x", "auto", "fp16", cuda=False, strict=False) == Runtime("cpu", "float16")


def test_ieee_fp32_turns_tf32_off_and_restores_it():
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = conv.fp32_precision, matmul.fp32_precision
    with ieee_fp32(False):
        assert (conv.fp32_precision, matmul.fp32_precision) == before
    with ieee_fp32(True):
        assert (conv.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")
    assert (conv.fp32_precision, matmul.fp32_precision) == before


@pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning")  # autocast("cuda") off on this host
def test_fp32_inference_on_cuda_is_ieee(weights):
    emb = Tiny.for_prepare(TinyConfig(checkpoint=str(weights)))
    default, seen = torch.backends.cudnn.conv.fp32_precision, {}
    for runtime in (Runtime("cuda", "float32"), Runtime("cuda", "bfloat16"), Runtime("cpu", "float32")):
        emb._runtime = runtime  # what a CUDA actor resolves; the context needs no device to enter
        with emb.inference():
            seen[runtime] = torch.backends.cudnn.conv.fp32_precision
    assert default != "ieee" and seen == {Runtime("cuda", "float32"): "ieee", Runtime("cuda", "bfloat16"): default,
                                          Runtime("cpu", "float32"): default}


def test_fp32_module_leaves_autocast():
    class Probe(torch.nn.Module):
        def forward(self, x):
            self.seen = (x.dtype, torch.is_autocast_enabled("cpu"))
            return x * 2

    probe = Probe()
    wrapped = fp32_module(probe)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = wrapped(torch.ones(2, dtype=torch.bfloat16))
    assert probe.seen == (torch.float32, False) and out.dtype == torch.float32
    assert set(wrapped.state_dict()) == set()  # no parameters of its own; inner keys gain "inner."


# -- the config hash ----------------------------------------------------------------------------------
def test_hash_records_resolved_device_and_dtype_not_batch_size(weights, tmp_path):
    cfg = TinyConfig(checkpoint=str(weights))
    h = Tiny.hash_config
    assert h(cfg, cuda=False) != h(cfg, cuda=True)  # CPU-fp32 and GPU-bf16 rows never mix
    assert h(cfg, cuda=True) == h(dataclasses.replace(cfg, device="cuda"), cuda=True)  # explicit = what auto chose
    assert h(cfg, cuda=True) == h(dataclasses.replace(cfg, precision="bf16"), cuda=True)
    assert h(cfg, cuda=True) != h(dataclasses.replace(cfg, precision="fp32"), cuda=True)
    assert h(cfg, cuda=True) != h(dataclasses.replace(cfg, precision="fp16"), cuda=True)
    assert h(cfg, cuda=False) == h(dataclasses.replace(cfg, device="cpu", precision="fp32"), cuda=True)
    assert h(cfg) == h(cfg, cuda=False) == h(dataclasses.replace(cfg, batch_size=7))  # no GPU here
    assert h(cfg) != h(dataclasses.replace(cfg, scale=2.0))
    copy = shutil.copy(weights, tmp_path / "elsewhere.pt")  # the same weights: the same rows
    assert h(dataclasses.replace(cfg, checkpoint=str(copy))) == h(cfg)
    write_weights(weights, seed=5)  # other weights at the same path: new rows
    assert h(cfg) != h(dataclasses.replace(cfg, checkpoint=str(copy)))
    emb = Tiny(cfg)
    assert emb.config_hash() == h(cfg) and len(emb.config_hash()) == 16


def test_hash_follows_source_modules(weights):
    class WithTokenizer(Tiny):
        source_modules = ("embedders.io",)

    cfg = TinyConfig(checkpoint=str(weights))
    assert WithTokenizer.source_hash() != Tiny.source_hash()
    assert WithTokenizer.hash_config(cfg) != Tiny.hash_config(cfg)


def test_describe_names_runtime_weights_and_versions(weights):
    cfg = TinyConfig(checkpoint=str(weights))
    d = Tiny.describe_config(cfg, cuda=True)
    assert d["runtime"] == {"device": "cuda", "dtype": "bfloat16"} and d["checkpoint_file"] == "tiny.pt"
    assert d["checkpoint_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest() and d["torch_version"]
    assert Tiny(cfg).describe()["runtime"] == {"device": "cpu", "dtype": "float32"}


def test_real_models_hash_cpu_and_gpu_rows_apart(tmp_path):
    from tests.pretrained_factories.clamp import SMALL, write_checkpoint

    cls = get_embedder_class("clamp")
    cfg = cls.make_config(checkpoint=str(write_checkpoint(tmp_path / "w.pth")), **SMALL)
    assert cls.hash_config(cfg, cuda=False) != cls.hash_config(cfg, cuda=True)
    assert cls.hash_config(cfg, cuda=True) == cls.hash_config(dataclasses.replace(cfg, device="cuda", batch_size=3),
                                                              cuda=True)


def test_every_embedder_says_whether_it_uses_an_accelerator():
    flags = {name: get_embedder_class(name).uses_accelerator for name in available()}
    assert all(isinstance(v, bool) for v in flags.values())
    expected = {"openl3": True, "clap": True, "clamp": True, "midi_transformer": True,
                "melstats": False, "pianoroll": False}
    assert {k: flags[k] for k in expected} == expected


# -- embed_items: out-of-memory splitting, prepared items, averages ------------------------------------
class OOMAbove(Tiny):
    """Simulates a GPU that holds at most ``limit`` rows per forward pass."""

    limit = 4

    def forward(self, prepared):
        self.calls.append([len(p) for p in prepared])
        if sum(len(p) for p in prepared) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return super().forward(prepared)


def test_out_of_memory_halves_the_batch_and_only_the_item_that_cannot_fit_fails(weights, monkeypatch):
    released = []
    monkeypatch.setattr(base, "_release_accelerator_memory", lambda: released.append(1))
    emb = OOMAbove(TinyConfig(checkpoint=str(weights), device="cpu"))
    emb.calls = []
    sizes = [1, 1, 1, 1, 5, 1, 2]  # rows per item; the fifth alone exceeds the limit
    items = [list(range(2 * n)) for n in sizes]
    ids = [f"r{k}" for k in range(len(items))]
    results = emb.embed_items(ids, items)
    alone = tiny(weights).embed(items[:4] + items[5:])
    kept = [r for k, r in enumerate(results) if k != 4]
    for got, expected in zip(kept, alone):
        np.testing.assert_array_equal(got, expected)  # every other item kept, in its slot
    assert isinstance(results[4], ItemTooLargeError) and results[4].item_id == "r4"
    assert "out of accelerator memory on this item alone" in str(results[4]) and "20.00 GiB" in str(results[4])
    # 7 items -> [3 | 4] -> the 4 OOM again -> [2 | 2] -> [5, 1] OOM -> [5] OOM alone, [1] fine
    assert emb.calls == [sizes, [1, 1, 1], [1, 5, 1, 2], [1, 5], [1], [5], [1, 2]] and len(released) == 4
    (avg,) = emb.embed_items(["a"], [items[0]], with_average=True)
    assert isinstance(avg, Embedding) and avg.average.shape == (3,)


def test_other_runtime_errors_are_not_swallowed(weights):
    class Broken(Tiny):
        def forward(self, prepared):
            raise RuntimeError("a bug, not memory")

    with pytest.raises(RuntimeError, match="a bug"):
        Broken(TinyConfig(checkpoint=str(weights), device="cpu")).embed_items(["a", "b"], [[1, 2], [3, 4]])


def test_prepared_items_errors_and_averages(weights):
    emb = tiny(weights)
    ids = ["two", "empty", "one"]
    ready = emb.prepare_items(ids, [[1, 2, 3, 4], [], [5, 6]])
    assert isinstance(ready[1], EmptyInputError) and ready[1].item_id == "empty"
    results = emb.embed_items(ids, ready, prepared=True, with_average=True)
    raw = emb.embed_items(ids, [[1, 2, 3, 4], [], [5, 6]], with_average=True)
    assert results[1] is ready[1] and isinstance(raw[1], EmptyInputError)
    for r, q in zip([results[0], results[2]], [raw[0], raw[2]]):
        np.testing.assert_array_equal(r.sequence, q.sequence)
        np.testing.assert_allclose(r.average, r.sequence.mean(0), rtol=1e-6)  # the default average
    plain = emb.embed_items(ids, ready, prepared=True)
    assert isinstance(plain[0], np.ndarray) and plain[0].shape == (2, 3)


def test_an_average_that_breaks_the_contract_is_that_items_error(weights):
    class BadAverage(Tiny):
        def average(self, prepared, sequence):
            return sequence[0, :2] if len(sequence) > 1 else sequence[0]

    emb = BadAverage(TinyConfig(checkpoint=str(weights), device="cpu"))
    bad, good = emb.embed_items(["two", "one"], [[1, 2, 3, 4], [5, 6]], with_average=True)
    assert isinstance(bad, base.EmbeddingFailedError) and bad.item_id == "two" and "average of shape (2,)" in str(bad)
    assert isinstance(good, Embedding)


def test_item_errors_in_forward_are_still_isolated(weights):
    class Picky(Tiny):
        def forward(self, prepared):
            if any(p[0, 0] < 0 for p in prepared):
                raise base.EmbeddingFailedError(None, "negative start")
            return super().forward(prepared)

    out = Picky(TinyConfig(checkpoint=str(weights), device="cpu")).embed_items(["a", "b", "c"], [[1, 2], [-1, 2], [3, 4]])
    assert isinstance(out[1], ItemError) and out[1].item_id == "b" and out[0].shape == out[2].shape == (1, 3)


def test_non_torch_embedders_keep_their_single_stage():
    cls = get_embedder_class("melstats")
    emb = cls.for_prepare()
    wave = np.sin(np.arange(16000, dtype=np.float32) / 10)
    assert emb.prepare(wave) is wave and not cls.uses_accelerator
    (seq,) = emb.forward([wave])
    np.testing.assert_array_equal(seq, emb.embed([wave])[0])


def test_torch_embedder_module_does_not_import_torch_at_the_top():
    assert "torch" not in vars(torch_embedder)  # the registry lists models without loading torch
