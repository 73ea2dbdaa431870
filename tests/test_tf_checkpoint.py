"""embedders.audio.tf_checkpoint against hand-built checkpoints (tests/tf_checkpoint_factory.py, an
independent writer) and published CRC-32C test vectors; the real musicnn wheel's files when installed."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

from embedders.audio import tf_checkpoint as tfc
from embedders.base import CheckpointError
from tests.tf_checkpoint_factory import crc32c_bitwise, entry_proto, field, masked, write_bundle, write_table


def tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "conv2d/kernel": rng.standard_normal((7, 5, 1, 3)).astype(np.float32),
        "conv2d/bias": np.arange(3, dtype=np.float32),
        "conv2d_1/kernel": rng.standard_normal((6000,)).astype(np.float32),  # 24 kB: the chunked CRC path
        "batch_normalization/gamma": np.array([1.5], dtype=np.float32),
        "batch_normalization/moving_mean": np.array([0.25], dtype=np.float64),
        "global_step": np.array(123456789012, dtype=np.int64),
        "counts": np.array([[-1, 2], [3, -4]], dtype=np.int32),
        "half": np.array([0.5, -2.0, 65504.0], dtype=np.float16),
        "mask": np.array([True, False, True]),
        "bytes": np.array([0, 255, 7], dtype=np.uint8),
    }


@pytest.mark.parametrize(("data", "expected"), [
    (b"123456789", 0xE3069283),  # the check value of CRC-32C
    (bytes(32), 0x8A9136AA),  # RFC 3720 B.4 test vectors
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
])
def test_crc32c_known_vectors(data, expected):
    assert tfc.crc32c(data) == expected


def test_crc32c_chunked_path_equals_bitwise():
    data = np.random.default_rng(1).integers(0, 256, 2048 * 9 + 777, dtype=np.uint8).tobytes()
    assert tfc.crc32c(data) == crc32c_bitwise(data)
    assert tfc.unmask_crc(masked(0xE3069283)) == 0xE3069283 and tfc.mask_crc(0xE3069283) == masked(0xE3069283)


@pytest.mark.parametrize("table_options", [{"entries_per_block": 3, "restart_interval": 2},
                                           {"entries_per_block": 100, "restart_interval": 16}])
def test_reads_every_tensor_of_a_hand_built_bundle(tmp_path, table_options):
    expected = tensors()
    prefix = write_bundle(tmp_path / "model.ckpt", expected, **table_options)
    bundle = tfc.TensorBundle(prefix)
    assert bundle.names() == sorted(expected)
    assert bundle.entry("conv2d/kernel").shape == (7, 5, 1, 3)
    got = tfc.read_checkpoint(prefix)
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
        np.testing.assert_array_equal(got[name], value)
    assert set(tfc.read_checkpoint(prefix, ["mask"])) == {"mask"}


def test_directory_prefix_as_musicnn_saves_it(tmp_path):
    folder = tmp_path / "MTT_musicnn"
    folder.mkdir()
    write_bundle(str(folder) + os.sep, {"dense/bias": np.ones(4, np.float32)})
    assert sorted(os.listdir(folder)) == [".data-00000-of-00001", ".index"]
    np.testing.assert_array_equal(tfc.TensorBundle(str(folder) + os.sep).read("dense/bias"), np.ones(4))


def test_negative_varint_and_unknown_fields():
    entry = tfc.parse_entry(entry_proto(1, (2, 3), 10, 24, 5) + field(15, b"future field"))
    assert entry == tfc.BundleEntry(1, (2, 3), 0, 10, 24, 5, False)
    assert tfc.parse_entry(entry_proto(1, (-1,), 0, 0, None)).shape == (-1,)


def flip_byte(path, offset):
    data = bytearray(open(path, "rb").read())
    data[offset] ^= 0x01
    open(path, "wb").write(bytes(data))


def test_corrupt_data_is_refused(tmp_path):
    prefix = write_bundle(tmp_path / "m", tensors())
    offset = tfc.TensorBundle(prefix).entry("conv2d/bias").offset
    flip_byte(prefix + ".data-00000-of-00001", offset + 5)
    bundle = tfc.TensorBundle(prefix)
    with pytest.raises(CheckpointError, match=r"tensor 'conv2d/bias': checksum mismatch"):
        bundle.read("conv2d/bias")
    assert bundle.read("conv2d/bias", verify=False)[1] != 1.0  # the flipped bit is really read
    np.testing.assert_array_equal(bundle.read("conv2d/kernel"), tensors()["conv2d/kernel"])  # others intact


def test_corrupt_or_foreign_index_is_refused(tmp_path):
    prefix = write_bundle(tmp_path / "m", tensors())
    flip_byte(prefix + ".index", 12)
    with pytest.raises(CheckpointError, match=r"m\.index: checksum mismatch in the block at offset 0"):
        tfc.TensorBundle(prefix)
    (tmp_path / "x.index").write_bytes(b"not a table" * 10)
    with pytest.raises(CheckpointError, match="no table magic"):
        tfc.TensorBundle(tmp_path / "x")
    with pytest.raises(CheckpointError, match="no TensorFlow checkpoint index at .*missing.index"):
        tfc.TensorBundle(tmp_path / "missing")


def test_truncated_data_missing_tensor_and_unsupported_entries(tmp_path):
    prefix = write_bundle(tmp_path / "m", tensors())
    bundle = tfc.TensorBundle(prefix)
    with pytest.raises(CheckpointError, match="has no tensor 'nope'"):
        bundle.read("nope")
    data_path = prefix + ".data-00000-of-00001"
    os.truncate(data_path, os.path.getsize(data_path) - 1)
    last = max(bundle.names(), key=lambda n: bundle.entry(n).offset)
    with pytest.raises(CheckpointError, match="truncated"):
        bundle.read(last)
    items = {b"": field(1, 1), b"s": entry_proto(7, (2,), 0, 8, None), b"p": entry_proto(1, (2,), 0, 8, None, sliced=True),
             b"w": entry_proto(1, (3,), 0, 8, None), b"u": entry_proto(1, (-1,), 0, 0, None)}
    write_table(str(tmp_path / "odd.index"), items)
    odd = tfc.TensorBundle(tmp_path / "odd")
    for name, message in (("s", "dtype enum 7 is not supported"), ("p", "partitioned"),
                          ("w", "8 bytes stored, 12 expected"), ("u", "unknown dimensions")):
        with pytest.raises(CheckpointError, match=message):
            odd.read(name)


def test_big_endian_and_compressed_tables_are_refused(tmp_path):
    write_table(str(tmp_path / "be.index"), {b"": field(1, 1) + field(2, 1)})
    with pytest.raises(CheckpointError, match="big-endian"):
        tfc.TensorBundle(tmp_path / "be")
    write_table(str(tmp_path / "c.index"), {b"": field(1, 1)}, block_type=1)  # snappy, valid checksum
    with pytest.raises(CheckpointError, match="is compressed"):
        tfc.TensorBundle(tmp_path / "c")


def musicnn_prefix(name: str) -> str | None:
    spec = importlib.util.find_spec("musicnn")
    return None if spec is None else os.path.join(list(spec.submodule_search_locations)[0], name) + os.sep


@pytest.mark.skipif(musicnn_prefix("MTT_musicnn") is None,
                    reason="musicnn wheel not installed (pip install --no-deps musicnn==0.1.0)")
def test_reads_the_musicnn_wheel_checkpoint():
    bundle = tfc.TensorBundle(musicnn_prefix("MTT_musicnn"))
    assert bundle.num_shards == 1
    assert bundle.entry("conv2d/kernel").shape == (7, 38, 1, 204)  # timbral 7 x int(0.4 * 96), 204 filters
    assert bundle.entry("conv2d_5/kernel").shape == (7, 561, 1, 64)
    assert bundle.entry("dense_1/kernel").shape == (200, 50)
    gamma = bundle.read("batch_normalization_9/gamma")  # checksum verified
    assert gamma.shape == (1506,) and gamma.dtype == np.float32 and np.isfinite(gamma).all()
