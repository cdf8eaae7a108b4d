"""A small writer of TensorFlow's tensor-bundle format, for tests that need synthetic checkpoints.

Independent of the reader in ``simclr.tfimport`` except for the CRC function: it writes the SSTable with
prefix-compressed keys and a restart every ``restart_interval`` entries, data blocks of about
``block_size`` bytes, the index and meta-index blocks and the footer; BundleHeaderProto / BundleEntryProto
are encoded field by field. Tensors given as ``(shape, dtype)`` instead of arrays are zeros that take no
disk space: the data file is extended past them (a sparse file) and their CRC is computed from the
"n zero bytes" operator, so a 3 GB checkpoint costs nothing to write.
"""

from __future__ import annotations

import functools
import struct
from pathlib import Path

import numpy as np

from simclr.tfimport.crc32c import _apply, crc32c, mask, zeros_operator

TF_DTYPES = {np.dtype("float32"): 1, np.dtype("float64"): 2, np.dtype("int32"): 3, np.dtype("uint8"): 4,
             np.dtype("int64"): 9, np.dtype("bool"): 10, np.dtype("float16"): 19}  # fmt: skip
MAGIC = 0xDB4775248B80FB57


def varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def field_varint(number: int, v: int) -> bytes:
    return varint(number << 3) + varint(v)


def field_bytes(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def entry_proto(dtype: int, shape: tuple[int, ...], offset: int, size: int, crc: int, shard: int = 0) -> bytes:
    shape_msg = b"".join(field_bytes(2, field_varint(1, d)) for d in shape)
    out = field_varint(1, dtype) + field_bytes(2, shape_msg)
    if shard:
        out += field_varint(3, shard)
    out += field_varint(4, offset) + field_varint(5, size)
    return out + varint(6 << 3 | 5) + struct.pack("<I", mask(crc))


@functools.cache
def zeros_crc(n: int) -> int:
    reg = _apply(zeros_operator(n), np.array([0xFFFFFFFF], dtype=np.uint32))[0]
    return int(reg) ^ 0xFFFFFFFF


def _block(entries: list[tuple[bytes, bytes]], restart_interval: int) -> bytes:
    out, restarts, prev = bytearray(), [], b""
    for i, (key, value) in enumerate(entries):
        shared = 0
        if i % restart_interval == 0:
            restarts.append(len(out))
        else:
            while shared < min(len(key), len(prev)) and key[shared] == prev[shared]:
                shared += 1
        out += varint(shared) + varint(len(key) - shared) + varint(len(value)) + key[shared:] + value
        prev = key
    restarts = restarts or [0]
    return bytes(out) + struct.pack(f"<{len(restarts)}I", *restarts) + struct.pack("<I", len(restarts))


def _write_block(f, contents: bytes) -> bytes:
    offset = f.tell()
    f.write(contents + b"\x00" + struct.pack("<I", mask(crc32c(contents + b"\x00"))))
    return varint(offset) + varint(len(contents))


def write_table(path: Path, items: list[tuple[bytes, bytes]], block_size: int = 256, restart_interval: int = 4):
    """An SSTable of the sorted ``items``; small blocks by default so that tests cross block boundaries."""
    with open(path, "wb") as f:
        index, block = [], []
        for i, (key, value) in enumerate(items):
            block.append((key, value))
            if sum(len(k) + len(v) for k, v in block) >= block_size or i == len(items) - 1:
                index.append((block[-1][0], _write_block(f, _block(block, restart_interval))))
                block = []
        meta = _write_block(f, _block([], restart_interval))
        idx = _write_block(f, _block(index, 1))
        footer = (meta + idx).ljust(40, b"\x00") + struct.pack("<Q", MAGIC)
        f.write(footer)


def write_bundle(prefix: str | Path, tensors: dict, **table_options) -> Path:
    """Write ``tensors`` (name -> array, or -> (shape, dtype) for sparse zeros) as ``prefix.{index,data-*}``."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    entries: dict[bytes, bytes] = {}
    offset = 0
    with open(prefix.with_name(prefix.name + ".data-00000-of-00001"), "wb") as f:
        for name, value in tensors.items():
            if isinstance(value, tuple):
                shape, dtype = value
                size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
                crc = zeros_crc(size)
                f.seek(offset + size)
            else:
                arr = np.asarray(value).copy(order="C")  # (ascontiguousarray would make a scalar 1-D)
                shape, dtype, size = arr.shape, arr.dtype, arr.nbytes
                crc = crc32c(arr)
                f.write(arr.tobytes())
            entries[name.encode()] = entry_proto(TF_DTYPES[np.dtype(dtype)], tuple(shape), offset, size, crc)
            offset += size
        f.truncate(offset)
    header = field_varint(1, 1) + field_bytes(3, field_varint(1, 1))
    write_table(prefix.with_name(prefix.name + ".index"), [(b"", header)] + sorted(entries.items()), **table_options)
    return prefix
