"""The TensorFlow checkpoint reader (simclr.tfimport.bundle / sstable / crc32c), without TensorFlow.

Fixtures in tests/data/tf_bundle were written by TensorFlow itself (tests/data/make_tf_fixtures.py, with
tf.compat.v1.train.Saver); their values are in expected.npz. Damaged copies are made here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from simclr.errors import SimCLRError
from simclr.tfimport import crc32c as crc_mod
from simclr.tfimport.bundle import TensorBundle, resolve_prefix, slice_key
from simclr.tfimport.crc32c import crc32c_numpy, mask, unmask
from tfbundle_writer import write_bundle

FIXTURES = Path(__file__).parent / "data" / "tf_bundle"


def expected() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "expected.npz") as z:
        return {k.replace("|", "/"): z[k] for k in z.files}


def crc32c_bitwise(data: bytes) -> int:
    """Reference CRC-32C, one bit at a time (RFC 3720 polynomial 0x1EDC6F41, reflected 0x82F63B78)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


# --------------------------------------------------------------------------------------------- crc32c
def test_crc32c_check_value_and_reference():
    assert crc32c_numpy(b"123456789") == 0xE3069283  # the standard check value
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 8, 9, 255, 511, 512, 4097, 70001):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert crc32c_numpy(data) == crc32c_bitwise(data), n
    big = rng.integers(0, 256, 300_001, dtype=np.uint8)  # many lanes joined by the zeros operator
    assert crc32c_numpy(big) == crc32c_numpy(big, max_lanes=1) == crc_mod.crc32c(big)
    assert unmask(mask(0xDEADBEEF)) == 0xDEADBEEF and mask(0) == 0xA282EAD8


# ------------------------------------------------------------------------------- TensorFlow fixtures
def test_reads_tensorflow_written_bundle_exactly():
    exp = expected()
    b = TensorBundle(FIXTURES / "small")
    assert b.num_shards == 1
    for name in b.names:
        got, want = b.read(name), exp[name]
        assert got.shape == want.shape, name
        if name != "bfloat16_vector":  # widened to float32 on read
            assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    assert {"empty", "global_step", "bool_mask", "half_vector", "uint8_image"} <= set(b.names)
    assert b.read("global_step").dtype == np.int64 and int(b.read("global_step")) == 250228


def test_partitioned_variable_is_assembled_from_its_slices():
    b = TensorBundle(FIXTURES / "small")
    e = b.entries["head/partitioned_kernel"]
    assert len(e.slices) == 2 and e.shape == (200, 3)  # TF stored two slices, starts 0 and 100
    assert sorted(s[0][0] for s in e.slices) == [0, 100]
    assert all(slice_key("head/partitioned_kernel", s) in b._raw for s in e.slices)
    np.testing.assert_array_equal(b.read("head/partitioned_kernel"), expected()["head/partitioned_kernel"])


def test_sharded_bundle_reads_both_data_files():
    exp = expected()
    b = TensorBundle(FIXTURES / "sharded.index")  # an .index path resolves to its prefix
    assert b.num_shards == 2 and {b.entries[n].shard_id for n in b.names} == {0, 1}
    for name in b.names:
        np.testing.assert_array_equal(b.read(name), exp[f"sharded:{name}"])
    assert b.verify() == 3


def test_prefix_from_folder_checkpoint_file(tmp_path):
    for f in FIXTURES.glob("small.*"):
        shutil.copy(f, tmp_path / f.name.replace("small", "model.ckpt-751"))
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-751"\n'
                                         'all_model_checkpoint_paths: "model.ckpt-751"\n')  # fmt: skip
    assert resolve_prefix(tmp_path) == tmp_path / "model.ckpt-751"
    assert TensorBundle(tmp_path).read("global_step") == 250228


# ------------------------------------------------------------------------------------ the test writer
def test_test_writer_round_trip_with_sparse_zeros(tmp_path):
    rng = np.random.default_rng(1)
    tensors = {f"scope_{i:02d}/v": rng.standard_normal((i + 1, 2)).astype(np.float32) for i in range(40)}
    tensors["big/zeros"] = ((1000, 250), np.float32)  # sparse on disk, CRC from the zeros operator
    tensors["ints"] = np.arange(5, dtype=np.int64)
    b = TensorBundle(write_bundle(tmp_path / "ck", tensors))
    for name, value in tensors.items():
        got = b.read(name)
        if isinstance(value, tuple):
            assert got.shape == value[0] and not got.any()
        else:
            np.testing.assert_array_equal(got, value)


# --------------------------------------------------------------------------------------- damaged files
def _copy_small(tmp_path: Path) -> Path:
    for f in FIXTURES.glob("small.*"):
        shutil.copy(f, tmp_path / f.name)
    return tmp_path / "small"


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def _read_all(prefix: Path) -> None:
    TensorBundle(prefix).verify()


@pytest.mark.parametrize(
    "damage, expect",
    [
        ("truncate_data", "truncated data file"),
        ("flip_data", "checksum mismatch"),
        ("flip_index", "small.index: damaged index file"),
        ("truncate_index", "small.index"),
        ("missing_index", "small.index: index file not found"),
        ("missing_data", "data shard missing"),
    ],
)
def test_damaged_bundle_is_one_error_naming_the_file(tmp_path, damage, expect):
    prefix = _copy_small(tmp_path)
    data, index = tmp_path / "small.data-00000-of-00001", tmp_path / "small.index"
    if damage == "truncate_data":
        data.write_bytes(data.read_bytes()[:-40])
    elif damage == "flip_data":
        _flip(data, 100)
    elif damage == "flip_index":
        _flip(index, 20)
    elif damage == "truncate_index":
        index.write_bytes(index.read_bytes()[:-10])
    elif damage == "missing_index":
        index.unlink()
    else:
        data.unlink()
    with pytest.raises(SimCLRError, match=expect) as info:
        _read_all(prefix)
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)
