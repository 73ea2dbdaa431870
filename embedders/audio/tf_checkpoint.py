"""Read TensorFlow checkpoints (the V2 "tensor bundle" format) without TensorFlow.

A checkpoint with prefix ``P`` is two kinds of file:

- ``P.index``: a LevelDB-style sorted table (SSTable). Keys are variable names (``conv2d/kernel``);
  the value of each is a serialised ``BundleEntryProto`` (dtype, shape, shard_id, offset, size,
  crc32c of the tensor's bytes). The empty key holds a ``BundleHeaderProto`` (number of shards,
  byte order). Table layout: data blocks of prefix-compressed entries with a restart array, an
  index block whose values are handles (offset, size varints) of the data blocks, and a 48-byte
  footer (metaindex handle, index handle, padding, magic 0xdb4775248b80fb57). Every block is
  followed by a 5-byte trailer: compression type (TensorFlow writes 0, uncompressed) and the
  masked CRC-32C of block + type byte.
- ``P.data-SSSSS-of-NNNNN``: the tensors' raw bytes, little-endian, C order, at ``offset``.

The protobuf messages are decoded by hand (a few varint fields), so neither ``tensorflow`` nor
generated protobuf classes are needed. Checksums of the index blocks and of every tensor read are
verified (CRC-32C, computed with numpy). Not supported (raise ``CheckpointError``): compressed
blocks, partitioned variables (entries with ``slices``), string tensors, big-endian bundles.
"""

from __future__ import annotations

import dataclasses
import os
import struct

import numpy as np

from embedders.base import CheckpointError

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
BLOCK_TRAILER_SIZE = 5
# TensorFlow's DataType enum (types.proto) -> numpy, for the types a bundle stores as raw bytes.
DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),  # DT_FLOAT
    2: np.dtype("<f8"),  # DT_DOUBLE
    3: np.dtype("<i4"),  # DT_INT32
    4: np.dtype("u1"),  # DT_UINT8
    5: np.dtype("<i2"),  # DT_INT16
    6: np.dtype("i1"),  # DT_INT8
    9: np.dtype("<i8"),  # DT_INT64
    10: np.dtype("?"),  # DT_BOOL
    17: np.dtype("<u2"),  # DT_UINT16
    19: np.dtype("<f2"),  # DT_HALF
    22: np.dtype("<u4"),  # DT_UINT32
    23: np.dtype("<u8"),  # DT_UINT64
}


# -- CRC-32C (Castagnoli), as LevelDB and TensorFlow checksum their files ------------------------
def _crc_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0x82F63B78), table >> 1).astype(np.uint32)
    return table


_TABLE = _crc_table()
_TABLE_LIST = [int(v) for v in _TABLE]


def _raw_crc(data: bytes, crc: int) -> int:
    """CRC register after feeding ``data`` (no final xor), byte by byte: for short inputs."""
    for byte in data:
        crc = _TABLE_LIST[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


def _zeros_operator(n_bytes: int) -> list[int]:
    """Columns of the GF(2) matrix that advances a CRC register over ``n_bytes`` zero bytes."""
    columns = []
    for bit in range(32):
        crc = 1 << bit
        for _ in range(n_bytes):
            crc = _TABLE_LIST[crc & 0xFF] ^ (crc >> 8)
        columns.append(crc)
    return columns


def _apply(columns: list[int], crc: int) -> int:
    out = 0
    for bit in range(32):
        if crc >> bit & 1:
            out ^= columns[bit]
    return out


def crc32c(data: bytes | memoryview) -> int:
    """CRC-32C of ``data`` (init and final xor 0xFFFFFFFF; crc32c(b"123456789") == 0xE3069283).

    Long inputs are cut into equal chunks whose registers advance in lockstep as numpy arrays, then
    combined with the zero-byte operator (CRC is linear over GF(2)): ~50 ms for 10 MB.
    """
    data = memoryview(data).cast("B")
    n = len(data)
    chunk = 2048
    n_chunks = n // chunk
    if n_chunks < 8:
        return _raw_crc(data, 0xFFFFFFFF) ^ 0xFFFFFFFF
    block = np.frombuffer(data, dtype=np.uint8, count=n_chunks * chunk).reshape(n_chunks, chunk)
    regs = np.zeros(n_chunks, dtype=np.uint32)
    for i in range(chunk):  # every chunk's register from 0, in parallel
        regs = _TABLE[(regs ^ block[:, i]) & 0xFF] ^ (regs >> 8)
    shift = _zeros_operator(chunk)
    crc = 0xFFFFFFFF
    for reg in regs.tolist():  # crc(A || B) = shift_len(B)(crc(A)) ^ crc_from_zero(B)
        crc = _apply(shift, crc) ^ reg
    return _raw_crc(data[n_chunks * chunk:], crc) ^ 0xFFFFFFFF


def unmask_crc(masked: int) -> int:
    """LevelDB/TensorFlow store ``rotate_right(crc, 15) + 0xa282ead8``; undo it."""
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def mask_crc(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


# -- protobuf wire format -------------------------------------------------------------------------
def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, next position) of the base-128 varint at ``pos``."""
    value, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def parse_message(buf: bytes) -> list[tuple[int, int | bytes]]:
    """The (field number, value) pairs of a protobuf message: ints for varint/fixed, bytes for
    length-delimited fields, in wire order (repeated fields appear several times)."""
    fields, pos = [], 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(buf, pos)
        elif wire == 1:
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 2:
            length, pos = read_varint(buf, pos)
            value, pos = bytes(buf[pos:pos + length]), pos + length
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} (field {number})")
        if pos > len(buf):
            raise ValueError(f"truncated protobuf field {number}")
        fields.append((number, value))
    return fields


@dataclasses.dataclass(frozen=True)
class BundleEntry:
    """One tensor's ``BundleEntryProto``: where its bytes are and what they hold."""

    dtype: int
    shape: tuple[int, ...]
    shard_id: int = 0
    offset: int = 0
    size: int = 0
    crc32c: int | None = None  # masked, as stored
    sliced: bool = False


def parse_entry(buf: bytes) -> BundleEntry:
    dtype, shape, shard, offset, size, crc, sliced = 0, (), 0, 0, 0, None, False
    for number, value in parse_message(buf):
        if number == 1:
            dtype = value
        elif number == 2:  # TensorShapeProto: repeated dim {size = 1}
            dims = []
            for sub, dim in parse_message(value):
                if sub == 2:
                    dims.append(next((_signed64(v) for n, v in parse_message(dim) if n == 1), 0))
                elif sub == 3 and dim:
                    raise ValueError("tensor of unknown rank")
            shape = tuple(dims)
        elif number == 3:
            shard = value
        elif number == 4:
            offset = _signed64(value)
        elif number == 5:
            size = _signed64(value)
        elif number == 6:
            crc = value
        elif number == 7:
            sliced = True
    return BundleEntry(dtype, shape, shard, offset, size, crc, sliced)


# -- the sorted table -----------------------------------------------------------------------------
def _read_block(data: bytes, offset: int, size: int, path: str) -> bytes:
    end = offset + size + BLOCK_TRAILER_SIZE
    if offset < 0 or end > len(data):
        raise CheckpointError(f"{path}: block [{offset}, {end}) lies outside the file ({len(data)} bytes)")
    block, kind = data[offset:offset + size], data[offset + size]
    (stored,) = struct.unpack_from("<I", data, offset + size + 1)
    if unmask_crc(stored) != crc32c(data[offset:offset + size + 1]):
        raise CheckpointError(f"{path}: checksum mismatch in the block at offset {offset} (corrupt index file)")
    if kind != 0:
        raise CheckpointError(f"{path}: block at offset {offset} is compressed (type {kind}); only "
                              "uncompressed tables (what TensorFlow writes) are supported")
    return block


def _block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs of one table block: keys share a prefix with the previous key."""
    (n_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 - 4 * n_restarts
    entries, pos, key = [], 0, b""
    while pos < end:
        shared, pos = read_varint(block, pos)
        unshared, pos = read_varint(block, pos)
        length, pos = read_varint(block, pos)
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        entries.append((key, block[pos:pos + length]))
        pos += length
    return entries


def read_table(path: str) -> dict[bytes, bytes]:
    """All (key, value) pairs of an SSTable file such as a checkpoint's ``.index``."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < FOOTER_SIZE or int.from_bytes(data[-8:], "little") != TABLE_MAGIC:
        raise CheckpointError(f"{path}: not a TensorFlow checkpoint index (no table magic in the last 8 bytes)")
    footer = data[-FOOTER_SIZE:]
    try:
        _, pos = read_varint(footer, 0)  # metaindex handle (offset, size): unused by bundles
        _, pos = read_varint(footer, pos)
        index_offset, pos = read_varint(footer, pos)
        index_size, pos = read_varint(footer, pos)
        table = {}
        for _, handle in _block_entries(_read_block(data, index_offset, index_size, path)):
            offset, p = read_varint(handle, 0)
            size, _ = read_varint(handle, p)
            table.update(_block_entries(_read_block(data, offset, size, path)))
    except (ValueError, IndexError, struct.error) as exc:
        raise CheckpointError(f"{path}: malformed checkpoint index ({exc})") from None
    return table


# -- the bundle -----------------------------------------------------------------------------------
class TensorBundle:
    """A checkpoint opened by prefix: ``names()``, ``entry(name)``, ``read(name)``.

    ``prefix`` is what ``tf.train.Saver`` saved to: ``prefix + ".index"`` must exist (musicnn's
    checkpoints use a directory prefix such as ``.../MTT_musicnn/``, so the files are ``.index``
    and ``.data-00000-of-00001`` inside it). Every failure raises ``CheckpointError`` naming the file.
    """

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = os.fspath(prefix)
        self.index_path = self.prefix + ".index"
        if not os.path.isfile(self.index_path):
            raise CheckpointError(f"no TensorFlow checkpoint index at {self.index_path}")
        table = read_table(self.index_path)
        header = table.pop(b"", None)
        self.num_shards = 1
        for number, value in parse_message(header or b""):
            if number == 1:
                self.num_shards = value
            elif number == 2 and value != 0:
                raise CheckpointError(f"{self.index_path}: big-endian checkpoint; only little-endian is supported")
        try:
            self._entries = {key.decode(): parse_entry(value) for key, value in table.items()}
        except (ValueError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{self.index_path}: malformed tensor entry ({exc})") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entry(self, name: str) -> BundleEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise CheckpointError(f"{self.index_path} has no tensor '{name}'") from None

    def data_path(self, shard_id: int) -> str:
        return f"{self.prefix}.data-{shard_id:05d}-of-{self.num_shards:05d}"

    def read(self, name: str, verify: bool = True) -> np.ndarray:
        """The tensor ``name`` as a numpy array of its stored dtype and shape (a fresh copy)."""
        entry = self.entry(name)
        where = f"{self.index_path}, tensor '{name}'"
        if entry.sliced:
            raise CheckpointError(f"{where}: partitioned variable (slices) is not supported")
        if entry.dtype not in DTYPES:
            raise CheckpointError(f"{where}: dtype enum {entry.dtype} is not supported (strings and "
                                  f"resources are not raw bytes); supported: {sorted(DTYPES)}")
        dtype = DTYPES[entry.dtype]
        if any(d < 0 for d in entry.shape):
            raise CheckpointError(f"{where}: shape {entry.shape} has unknown dimensions")
        expected = int(np.prod(entry.shape, dtype=np.int64)) * dtype.itemsize
        if entry.size != expected:
            raise CheckpointError(f"{where}: {entry.size} bytes stored, {expected} expected for {dtype} {entry.shape}")
        path = self.data_path(entry.shard_id)
        try:
            with open(path, "rb") as f:
                f.seek(entry.offset)
                raw = f.read(entry.size)
        except OSError as exc:
            raise CheckpointError(f"{where}: cannot read {path}: {exc}") from None
        if len(raw) != entry.size:
            raise CheckpointError(f"{where}: {path} ends before byte {entry.offset + entry.size} (truncated)")
        if verify and entry.crc32c is not None and unmask_crc(entry.crc32c) != crc32c(raw):
            raise CheckpointError(f"{where}: checksum mismatch in {path} (corrupt data file)")
        return np.frombuffer(raw, dtype=dtype).reshape(entry.shape).copy()


def read_checkpoint(prefix: str | os.PathLike, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Tensors of the checkpoint at ``prefix`` by name: all of them, or only ``names``."""
    bundle = TensorBundle(prefix)
    return {name: bundle.read(name) for name in (bundle.names() if names is None else names)}
