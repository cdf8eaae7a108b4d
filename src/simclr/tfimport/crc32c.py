"""CRC-32C (Castagnoli), the checksum of TensorFlow tensor bundles and of their SSTable blocks.

``crc32c(data)`` uses the ``crc32c`` package (hardware CRC instructions) when it is installed and a
numpy implementation otherwise. The numpy one splits the data into many equal lanes, runs a slicing-by-8
table CRC on all lanes at once (one numpy operation per 8 bytes of every lane), then joins the lane CRCs
with the GF(2) "append n zero bytes" operator of zlib's ``crc32_combine``, pairwise in a tree.
TensorFlow stores *masked* CRCs (``mask``), so that a CRC of data holding CRCs stays well spread.
"""

from __future__ import annotations

import functools

import numpy as np

POLY = 0x82F63B78  # the Castagnoli polynomial, bit-reflected
_MASK_DELTA = 0xA282EAD8


def _tables() -> np.ndarray:
    """(8, 256) uint32 slicing-by-8 tables: row k maps a byte followed by k zero bytes."""
    t = np.zeros((8, 256), dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (POLY if c & 1 else 0)
        t[0, i] = c
    for k in range(1, 8):
        prev = t[k - 1]
        t[k] = (prev >> 8) ^ t[0][prev & 0xFF]
    return t


_T = _tables()
_T0 = [int(v) for v in _T[0]]

try:  # optional: hardware-accelerated CRC-32C
    import crc32c as _crc32c_pkg
except ImportError:  # pragma: no cover - depends on the environment
    _crc32c_pkg = None


def mask(crc: int) -> int:
    """TensorFlow's masked CRC: rotate right by 15 bits and add a constant (mod 2^32)."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def unmask(masked: int) -> int:
    """Inverse of :func:`mask`."""
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def _as_bytes(data) -> np.ndarray:
    arr = np.asarray(data) if not isinstance(data, bytes | bytearray | memoryview) else np.frombuffer(data, np.uint8)
    return np.ascontiguousarray(arr).reshape(-1).view(np.uint8)


def _crc_small(data: np.ndarray, crc: int = 0) -> int:
    reg = crc ^ 0xFFFFFFFF
    for b in data.tobytes():
        reg = (reg >> 8) ^ _T0[(reg ^ b) & 0xFF]
    return reg ^ 0xFFFFFFFF


def _apply(op: np.ndarray, v: np.ndarray) -> np.ndarray:
    """op (32,) uint32 columns of a GF(2) 32x32 matrix, v (K,) uint32 -> op . v for every entry of v."""
    if v.size > 1024:  # four byte-indexed tables of op: 4 lookups per entry instead of 32 bit tests
        t = _apply(op, np.arange(256, dtype=np.uint32) << (np.arange(4, dtype=np.uint32)[:, None] * np.uint32(8)))
        m8 = np.uint32(0xFF)
        return (
            t[0][v & m8] ^ t[1][(v >> np.uint32(8)) & m8] ^ t[2][(v >> np.uint32(16)) & m8] ^ t[3][v >> np.uint32(24)]
        )
    out = np.zeros_like(v)
    for bit in range(32):
        out ^= np.where((v >> np.uint32(bit)) & np.uint32(1), op[bit], np.uint32(0))
    return out


def _square(op: np.ndarray) -> np.ndarray:
    return _apply(op, op)


@functools.lru_cache(maxsize=4096)
def zeros_operator(n_bytes: int) -> np.ndarray:
    """The GF(2) operator that advances a CRC over ``n_bytes`` zero bytes (zlib ``crc32_combine``)."""
    op = np.array([POLY] + [1 << i for i in range(31)], dtype=np.uint32)  # one zero bit
    for _ in range(3):  # 2, 4, 8 zero bits: one zero byte
        op = _square(op)
    result = None
    while n_bytes:
        if n_bytes & 1:
            result = op if result is None else _apply(op, result)
        n_bytes >>= 1
        if n_bytes:
            op = _square(op)
    result = np.array([1 << i for i in range(32)], dtype=np.uint32) if result is None else result
    result.flags.writeable = False  # cached: shared by every caller
    return result


def combine(crc_a: int, crc_b: int, len_b: int) -> int:
    """CRC of A + B from crc(A), crc(B) and len(B)."""
    return int(_apply(zeros_operator(len_b), np.array([crc_a], dtype=np.uint32))[0]) ^ crc_b


def _pair_tables() -> np.ndarray:
    """(4, 65536) uint32: row z maps a 16-bit little-endian pair followed by 2 z zero bytes."""
    v = np.arange(1 << 16, dtype=np.uint32)
    lo, hi = v & 0xFF, v >> 8
    return np.stack([_T[2 * z + 1][lo] ^ _T[2 * z][hi] for z in range(4)])


_P = _pair_tables()


def _lanes_crc(words: np.ndarray) -> np.ndarray:
    """words (2W, K) uint32, lane k in column k: the CRC of each of the K lanes of 8W bytes.

    Each step consumes 8 bytes of every lane through four 16-bit lookup tables (slicing-by-8 with
    16-bit indices: half the lookups of byte tables).
    """
    reg = np.full(words.shape[1], 0xFFFFFFFF, dtype=np.uint32)
    p0, p1, p2, p3 = _P
    low16, s16 = np.uint32(0xFFFF), np.uint32(16)
    for j in range(0, words.shape[0], 2):
        lo = reg ^ words[j]
        hi = words[j + 1]
        reg = p3[lo & low16] ^ p2[lo >> s16] ^ p1[hi & low16] ^ p0[hi >> s16]
    return reg ^ np.uint32(0xFFFFFFFF)


def crc32c_numpy(data, max_lanes: int = 1 << 16) -> int:
    """CRC-32C of ``data`` (bytes or any numpy array, read as its raw bytes) in numpy alone."""
    buf = _as_bytes(data)
    n = buf.size
    lanes = 1
    while lanes * 2 <= max_lanes and n >= lanes * 2 * 256:  # lanes of at least 256 bytes
        lanes *= 2
    lane_len = (n // lanes) // 8 * 8
    if lane_len == 0:
        return _crc_small(buf)
    # (lanes, lane_len) bytes -> (lane_len / 4, lanes) little-endian words: each step reads one row
    body = np.ascontiguousarray(buf[: lanes * lane_len].view("<u4").reshape(lanes, lane_len // 4).T)
    crcs = _lanes_crc(body)
    length = lane_len
    while crcs.size > 1:  # join neighbouring lanes pairwise: crc(A + B) = Z_len(B) . crc(A) ^ crc(B)
        crcs = _apply(zeros_operator(length), crcs[0::2]) ^ crcs[1::2]
        length *= 2
    crc = int(crcs[0])
    tail = buf[lanes * lane_len :]
    if tail.size:
        crc = combine(crc, crc32c_numpy(tail, max_lanes), tail.size)
    return crc


def crc32c(data) -> int:
    """CRC-32C of ``data`` (bytes or a numpy array's raw bytes); the ``crc32c`` package when installed."""
    if _crc32c_pkg is not None:
        return int(_crc32c_pkg.crc32c(_as_bytes(data)))
    return crc32c_numpy(data)
