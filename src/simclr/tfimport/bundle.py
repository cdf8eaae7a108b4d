"""TensorFlow's name-based checkpoint (a "tensor bundle"), read without TensorFlow.

A checkpoint ``PREFIX`` (e.g. ``model.ckpt-250228``) is ``PREFIX.index``, an SSTable
(:mod:`simclr.tfimport.sstable`) whose entry ``""`` is a ``BundleHeaderProto`` (number of data shards,
endianness, format version) and whose other entries map each variable name to a ``BundleEntryProto``
(dtype, shape, data shard, byte offset and size, masked CRC-32C of the bytes), plus the data shards
``PREFIX.data-00000-of-0000N`` holding the raw little-endian tensor bytes. A partitioned variable's entry
lists its slices instead of bytes; each slice is stored under a key encoded from the name and the slice
(``checkpoint::EncodeTensorNameSlice``). The protobuf messages are decoded with the small wire-format
reader below (field numbers from ``tensor_bundle.proto``, ``tensor_shape.proto``, ``tensor_slice.proto``).
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simclr.errors import SimCLRError
from simclr.tfimport.crc32c import crc32c, unmask
from simclr.tfimport.sstable import read_table, read_varint

# TensorFlow DataType enum (types.proto) -> numpy dtype. bfloat16 is widened to float32 by read().
DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"), 2: np.dtype("<f8"), 3: np.dtype("<i4"), 4: np.dtype("u1"), 5: np.dtype("<i2"),
    6: np.dtype("i1"), 8: np.dtype("<c8"), 9: np.dtype("<i8"), 10: np.dtype("?"), 14: np.dtype("<u2"),
    17: np.dtype("<u2"), 18: np.dtype("<c16"), 19: np.dtype("<f2"), 22: np.dtype("<u4"), 23: np.dtype("<u8"),
}  # fmt: skip
DT_BFLOAT16 = 14
DTYPE_NAMES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string",
               8: "complex64", 9: "int64", 10: "bool", 14: "bfloat16", 17: "uint16", 18: "complex128",
               19: "float16", 20: "resource", 21: "variant", 22: "uint32", 23: "uint64"}  # fmt: skip


def parse_message(buf: bytes) -> dict[int, list]:
    """Protobuf wire format -> {field number: [values]} (varints and fixed ints as int, the rest as bytes)."""
    fields: dict[int, list] = {}
    pos = 0
    while pos < len(buf):
        tag, pos = read_varint(buf, pos, "field tag")
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = read_varint(buf, pos)
        elif wire == 1:
            if pos + 8 > len(buf):
                raise ValueError("truncated fixed64")
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            length, pos = read_varint(buf, pos, "length")
            if pos + length > len(buf):
                raise ValueError("truncated length-delimited field")
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            if pos + 4 > len(buf):
                raise ValueError("truncated fixed32")
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def _int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _last(fields: dict[int, list], number: int, default=0):
    return fields[number][-1] if number in fields else default


@dataclass
class Entry:
    """One ``BundleEntryProto``: where a tensor's bytes are and what they are."""

    dtype: int
    shape: tuple[int, ...]
    shard_id: int = 0
    offset: int = 0
    size: int = 0
    crc32c: int | None = None  # masked, as stored
    slices: list[list[tuple[int, int]]] = field(default_factory=list)  # per slice, (start, length or -1) per dim

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES.get(self.dtype, f"dtype {self.dtype}")


def parse_entry(value: bytes) -> Entry:
    f = parse_message(value)
    shape: tuple[int, ...] = ()
    if 2 in f:
        shape_f = parse_message(f[2][-1])
        shape = tuple(_int64(_last(parse_message(d), 1)) for d in shape_f.get(2, []))
    slices = []
    for s in f.get(7, []):
        extents = []
        for e in parse_message(s).get(1, []):
            ef = parse_message(e)
            extents.append((_int64(_last(ef, 1)), _int64(_last(ef, 2, -1))))
        slices.append(extents)
    crc = _last(f, 6, None)
    return Entry(_last(f, 1), shape, _last(f, 3), _int64(_last(f, 4)), _int64(_last(f, 5)), crc, slices)


# ---- EncodeTensorNameSlice (tensorflow/core/util/saved_tensor_slice_util.cc, OrderedCode) ----------------
_SIGNED_HEADER = [(0, 0), (0x80, 0), (0xC0, 0), (0xE0, 0), (0xF0, 0), (0xF8, 0), (0xFC, 0), (0xFE, 0),
                  (0xFF, 0), (0xFF, 0x80), (0xFF, 0xC0)]  # fmt: skip


def _num_increasing(v: int) -> bytes:
    body = v.to_bytes((v.bit_length() + 7) // 8, "big") if v else b""
    return bytes([len(body)]) + body


def _signed_num_increasing(v: int) -> bytes:
    x = ~v if v < 0 else v
    n = max(1, -(-(x.bit_length() + 1) // 7))  # n bytes hold 7n - 1 magnitude bits
    buf = bytearray((v & ((1 << 80) - 1)).to_bytes(10, "big"))[-n:]
    buf[0] ^= _SIGNED_HEADER[n][0]
    if n > 1:
        buf[1] ^= _SIGNED_HEADER[n][1]
    return bytes(buf)


def slice_key(name: str, extents: list[tuple[int, int]]) -> bytes:
    """The index key under which a slice of variable ``name`` is stored."""
    escaped = name.encode().replace(b"\xff", b"\xff\x00").replace(b"\x00", b"\x00\xff")
    key = _num_increasing(0) + escaped + b"\x00\x01" + _num_increasing(len(extents))
    for start, length in extents:
        key += _signed_num_increasing(start) + _signed_num_increasing(length)
    return key


def resolve_prefix(path: str | os.PathLike) -> Path:
    """A checkpoint prefix from a prefix, an ``.index`` / ``.data-*`` file, or a folder with a ``checkpoint``."""
    p = Path(path).expanduser()
    if p.is_dir():
        state = p / "checkpoint"
        if not state.is_file():
            indexes = sorted(p.glob("*.index"))
            if len(indexes) == 1:
                return indexes[0].with_suffix("")
            raise SimCLRError(f"{p}: folder has no 'checkpoint' file (and {len(indexes)} .index files)")
        m = re.search(r'^model_checkpoint_path:\s*"([^"]+)"', state.read_text(errors="replace"), re.M)
        if m is None:
            raise SimCLRError(f"{state}: no model_checkpoint_path line")
        target = Path(m.group(1))
        return target if target.is_absolute() and target.with_name(target.name + ".index").exists() else p / target.name
    name = p.name
    if name.endswith(".index"):
        return p.with_name(name[: -len(".index")])
    m = re.fullmatch(r"(.+)\.data-\d{5}-of-\d{5}", name)
    if m:
        return p.with_name(m.group(1))
    if name.endswith(".meta"):
        return p.with_name(name[: -len(".meta")])
    return p


class TensorBundle:
    """A TF1 name-based checkpoint: ``names``, ``entries`` (name -> :class:`Entry`), ``read(name)``.

    Opening parses and checks the index (checksums, header, data shards present); ``read`` checks the
    tensor's size and CRC-32C. Every problem is one :class:`SimCLRError` line naming the file.
    """

    def __init__(self, path: str | os.PathLike):
        self.prefix = resolve_prefix(path)
        self.index_path = self.prefix.with_name(self.prefix.name + ".index")
        if not self.index_path.is_file():
            raise SimCLRError(f"{self.index_path}: index file not found (is {path} a TensorFlow checkpoint prefix?)")
        raw = read_table(self.index_path)
        try:
            header = parse_message(raw.pop(b""))
            self._raw = {k: parse_entry(v) for k, v in raw.items()}
        except KeyError:
            raise SimCLRError(f"{self.index_path}: damaged index file (no bundle header)") from None
        except ValueError as e:
            raise SimCLRError(f"{self.index_path}: damaged index file ({e})") from None
        self.num_shards = int(_last(header, 1, 1))
        if _last(header, 2) != 0:
            raise SimCLRError(f"{self.index_path}: big-endian checkpoint; only little-endian ones are supported")
        # Slice entries are stored under keys that start with a 0 byte; names never do.
        self.entries = {k.decode(errors="replace"): e for k, e in self._raw.items() if not k.startswith(b"\x00")}
        self.names = sorted(self.entries)
        self.shard_paths = [
            self.prefix.with_name(f"{self.prefix.name}.data-{i:05d}-of-{self.num_shards:05d}")
            for i in range(self.num_shards)
        ]
        self._sizes = []
        for shard in self.shard_paths:
            if not shard.is_file():
                raise SimCLRError(f"{shard}: data shard missing")
            self._sizes.append(shard.stat().st_size)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name].shape

    def _read_entry(self, name: str, e: Entry, shape: tuple[int, ...]) -> np.ndarray:
        if e.dtype not in DTYPES:
            raise SimCLRError(f"{self.index_path}: {name}: {e.dtype_name} tensors are not supported")
        dt = DTYPES[e.dtype]
        count = int(np.prod(shape, dtype=np.int64))
        if e.size != count * dt.itemsize:
            raise SimCLRError(f"{self.index_path}: {name}: entry size {e.size} != {count} x {dt.itemsize} bytes")
        if not 0 <= e.shard_id < self.num_shards:
            raise SimCLRError(f"{self.index_path}: {name}: shard {e.shard_id} of {self.num_shards}")
        shard = self.shard_paths[e.shard_id]
        if e.offset < 0 or e.offset + e.size > self._sizes[e.shard_id]:
            raise SimCLRError(
                f"{shard}: truncated data file ({name} needs bytes up to {e.offset + e.size}, "
                f"the file has {self._sizes[e.shard_id]})"
            )
        with open(shard, "rb") as f:
            arr = np.fromfile(f, dtype=dt, count=count, offset=e.offset)
        if e.crc32c is not None and crc32c(arr) != unmask(e.crc32c):
            raise SimCLRError(f"{shard}: damaged data file (checksum mismatch in {name})")
        if e.dtype == DT_BFLOAT16:
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        return arr.reshape(shape)

    def read(self, name: str) -> np.ndarray:
        """The tensor ``name`` as a numpy array (bfloat16 widened to float32), checked against its CRC."""
        if name not in self.entries:
            raise SimCLRError(f"{self.index_path}: no variable {name!r} in this checkpoint")
        e = self.entries[name]
        if not e.slices:
            return self._read_entry(name, e, e.shape)
        out = None
        for extents in e.slices:  # a partitioned variable: assemble its slices
            key = slice_key(name, extents)
            if key not in self._raw:
                raise SimCLRError(f"{self.index_path}: damaged index file (a slice of {name} is missing)")
            region = tuple(slice(s, dim if n < 0 else s + n) for (s, n), dim in zip(extents, e.shape, strict=True))
            part_shape = tuple(r.stop - r.start for r in region)
            part = self._read_entry(name, self._raw[key], part_shape)
            if out is None:
                out = np.zeros(e.shape, dtype=part.dtype)
            out[region] = part
        return out

    def verify(self) -> int:
        """Read every tensor, checking sizes and checksums; returns the number of tensors."""
        for name in self.names:
            if self.entries[name].dtype in DTYPES:
                self.read(name)
        return len(self.names)
