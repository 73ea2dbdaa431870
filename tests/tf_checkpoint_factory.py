"""Write TensorFlow V2 checkpoints (tensor bundles) by hand, for tests of embedders.audio.tf_checkpoint.

Written from the format's description (LevelDB table format: prefix-compressed block entries with
restart points, block trailers with a masked CRC-32C, index block of block handles, 48-byte footer;
TensorFlow's BundleHeaderProto / BundleEntryProto / TensorShapeProto field numbers), with its own
bit-by-bit CRC-32C, so the reader is checked against an independent writer.
"""

from __future__ import annotations

import os
import struct

import numpy as np

DTYPE_ENUM = {np.dtype("<f4"): 1, np.dtype("<f8"): 2, np.dtype("<i4"): 3, np.dtype("u1"): 4, np.dtype("<i2"): 5,
              np.dtype("i1"): 6, np.dtype("<i8"): 9, np.dtype("?"): 10, np.dtype("<f2"): 19}
MAGIC = 0xDB4775248B80FB57


def _table() -> list[int]:
    table = []
    for n in range(256):
        for _ in range(8):  # one bit at a time: the polynomial's definition
            n = (n >> 1) ^ (0x82F63B78 if n & 1 else 0)
        table.append(n)
    return table


_TABLE = _table()


def crc32c_bitwise(data: bytes) -> int:
    """CRC-32C, one byte at a time through a table built bit by bit (no numpy, no chunking)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 as protobuf writes it: ten bytes
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, value: int | bytes, fixed32: bool = False) -> bytes:
    if fixed32:
        return varint(number << 3 | 5) + struct.pack("<I", value)
    if isinstance(value, bytes):
        return varint(number << 3 | 2) + varint(len(value)) + value
    return varint(number << 3 | 0) + varint(value)


def entry_proto(dtype: int, shape: tuple[int, ...], offset: int, size: int, crc: int | None, shard: int = 0,
                sliced: bool = False) -> bytes:
    shape_msg = b"".join(field(2, field(1, d)) for d in shape)  # TensorShapeProto.dim {size}
    out = field(1, dtype) + field(2, shape_msg)
    out += (field(3, shard) if shard else b"") + (field(4, offset) if offset else b"") + field(5, size)
    if crc is not None:
        out += field(6, crc, fixed32=True)
    if sliced:
        out += field(7, field(1, b""))  # one TensorSliceProto
    return out


def table_block(items: list[tuple[bytes, bytes]], restart_interval: int) -> bytes:
    out, restarts, previous = bytearray(), [], b""
    for i, (key, value) in enumerate(items):
        shared = 0
        if i % restart_interval == 0:
            restarts.append(len(out))
        else:
            while shared < min(len(key), len(previous)) and key[shared] == previous[shared]:
                shared += 1
        out += varint(shared) + varint(len(key) - shared) + varint(len(value)) + key[shared:] + value
        previous = key
    out += b"".join(struct.pack("<I", r) for r in restarts) + struct.pack("<I", len(restarts))
    return bytes(out)


def write_table(path: str, items: dict[bytes, bytes], entries_per_block: int = 3, restart_interval: int = 2,
                block_type: int = 0) -> None:
    """An SSTable of ``items`` (sorted by key) in blocks of ``entries_per_block`` entries; ``block_type``
    is the compression byte written in the data blocks' trailers (0: none, 1: snappy)."""
    data = bytearray()

    def put_block(contents: bytes, kind: int = 0) -> bytes:
        handle = varint(len(data)) + varint(len(contents))
        trailer = bytes([kind])
        data.extend(contents + trailer + struct.pack("<I", masked(crc32c_bitwise(contents + trailer))))
        return handle

    pairs = sorted(items.items())
    index = []
    for start in range(0, len(pairs), entries_per_block):
        chunk = pairs[start:start + entries_per_block]
        index.append((chunk[-1][0], put_block(table_block(chunk, restart_interval), block_type)))
    meta_handle = put_block(table_block([], 1))
    index_handle = put_block(table_block(index, 1))
    footer = (meta_handle + index_handle).ljust(40, b"\x00") + struct.pack("<Q", MAGIC)
    with open(path, "wb") as f:
        f.write(bytes(data) + footer)


def write_bundle(prefix: str | os.PathLike, tensors: dict[str, np.ndarray], **table_options) -> str:
    """A one-shard checkpoint at ``prefix`` holding ``tensors``; returns the prefix."""
    prefix = os.fspath(prefix)
    blob, items = bytearray(), {}
    for name in sorted(tensors):
        arr = np.asarray(tensors[name], order="C")  # (ascontiguousarray would make a scalar 1-d)
        arr = arr.astype(arr.dtype.newbyteorder("<"))
        raw = arr.tobytes()
        items[name.encode()] = entry_proto(DTYPE_ENUM[arr.dtype], arr.shape, len(blob), len(raw),
                                           masked(crc32c_bitwise(raw)))
        blob += raw
    items[b""] = field(1, 1) + field(3, field(1, 1))  # BundleHeaderProto: num_shards 1, version {producer 1}
    with open(prefix + ".data-00000-of-00001", "wb") as f:
        f.write(bytes(blob))
    write_table(prefix + ".index", items, **table_options)
    return prefix
