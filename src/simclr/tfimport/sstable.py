"""Read-only SSTable (LevelDB table format), the container of a TensorFlow bundle's ``.index`` file.

Layout (TensorFlow ``core/lib/io/table``, from LevelDB): data blocks, a meta-index block, an index block,
then a 48-byte footer holding the meta-index and index block handles (varint64 offset + size) and a magic
number. Each block is followed by a 5-byte trailer: a compression byte and the masked CRC-32C of the block
and that byte. A block is a run of entries ``varint32 shared, varint32 non_shared, varint32 value_len,
key suffix, value`` (keys are prefix-compressed against the previous key, restarted at the offsets listed
in the block's uint32 restart array) followed by the restart count. The index block maps a separator key
to the handle of each data block.

TensorFlow has written bundle indexes uncompressed since release 1.2; a snappy-compressed block (written by
releases 1.0-1.1) is refused with a clear message rather than decoded.
"""

from __future__ import annotations

import struct
from pathlib import Path

from simclr.errors import SimCLRError
from simclr.tfimport.crc32c import crc32c, unmask

MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
TRAILER_SIZE = 5


def read_varint(buf: bytes, pos: int, what: str = "varint") -> tuple[int, int]:
    """(value, next position) of the base-128 varint at ``buf[pos]``; ValueError when it runs off the end."""
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError(f"truncated {what}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _handle(buf: bytes, pos: int) -> tuple[tuple[int, int], int]:
    offset, pos = read_varint(buf, pos, "block handle")
    size, pos = read_varint(buf, pos, "block handle")
    return (offset, size), pos


def _block(data: bytes, handle: tuple[int, int], path: Path) -> bytes:
    offset, size = handle
    end = offset + size + TRAILER_SIZE
    if end > len(data):
        raise SimCLRError(f"{path}: truncated index file (a block ends at byte {end}, the file has {len(data)})")
    contents = data[offset : offset + size]
    kind = data[offset + size]
    (stored,) = struct.unpack_from("<I", data, offset + size + 1)
    if crc32c(data[offset : offset + size + 1]) != unmask(stored):
        raise SimCLRError(f"{path}: damaged index file (checksum mismatch in the block at byte {offset})")
    if kind == 1:
        raise SimCLRError(
            f"{path}: snappy-compressed index (written by TensorFlow 1.0/1.1); re-save it with a newer TensorFlow"
        )
    if kind != 0:
        raise SimCLRError(f"{path}: damaged index file (unknown block compression {kind})")
    return contents


def _entries(block: bytes, path: Path) -> list[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise ValueError("block shorter than its restart count")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 * (num_restarts + 1)
    if limit < 0:
        raise ValueError("restart array larger than the block")
    restarts = set(struct.unpack_from(f"<{num_restarts}I", block, limit))
    out: list[tuple[bytes, bytes]] = []
    key = b""
    pos = 0
    while pos < limit:
        start = pos
        shared, pos = read_varint(block, pos)
        non_shared, pos = read_varint(block, pos)
        value_len, pos = read_varint(block, pos)
        if start in restarts and shared:
            raise ValueError("prefix-compressed key at a restart point")
        if shared > len(key) or pos + non_shared + value_len > limit:
            raise ValueError("entry runs past the block")
        key = key[:shared] + block[pos : pos + non_shared]
        pos += non_shared
        out.append((key, block[pos : pos + value_len]))
        pos += value_len
    return out


def read_table(path: str | Path) -> dict[bytes, bytes]:
    """All key -> value pairs of the SSTable at ``path``, checksums verified; keys must be increasing."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SimCLRError(f"{path}: index file not found") from None
    except OSError as e:
        raise SimCLRError(f"{path}: cannot read index file ({e.strerror or e})") from None
    if len(data) < FOOTER_SIZE:
        raise SimCLRError(f"{path}: not a TensorFlow checkpoint index ({len(data)} bytes, shorter than a footer)")
    footer = data[-FOOTER_SIZE:]
    if struct.unpack_from("<Q", footer, 40)[0] != MAGIC:
        raise SimCLRError(f"{path}: not a TensorFlow checkpoint index (no table magic number; truncated?)")
    table: dict[bytes, bytes] = {}
    try:
        _meta, pos = _handle(footer, 0)
        index_handle, _ = _handle(footer, pos)
        previous = None
        for _sep, handle_bytes in _entries(_block(data, index_handle, path), path):
            handle, _ = _handle(handle_bytes, 0)
            for key, value in _entries(_block(data, handle, path), path):
                if previous is not None and key <= previous:
                    raise ValueError("keys out of order")
                table[key] = value
                previous = key
    except ValueError as e:
        raise SimCLRError(f"{path}: damaged index file ({e})") from None
    return table
