"""Data readers: tiny files in each real format, the error for each broken file, and the batch source."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from simclr.data import (
    ImageData,
    channel_stats,
    dataset_stats,
    detect_format,
    load_dataset,
    make_batch_source,
)
from simclr.data.access import take
from simclr.data.cifar import safe_unpickle
from simclr.data.folder import load_folder
from simclr.data.idx import read_idx
from simclr.data.npz import load_npz
from simclr.data.packed import PackedImages
from simclr.data.stl10 import read_stl_images, read_stl_labels
from simclr.data.stream import ImageStream, open_image_stream
from simclr.errors import SimCLRError

RNG = np.random.default_rng(0)
FASHION = Path("/usr/share/datasets/fashion-mnist")


# ---- writers for the real formats ---------------------------------------------------------------------


def idx_bytes(arr: np.ndarray, type_code: int = 0x08) -> bytes:
    return bytes([0, 0, type_code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_idx_split(root: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
        data = idx_bytes(arr)
        path = root / f"{prefix}-{kind}-ubyte{'.gz' if gz else ''}"
        path.write_bytes(gzip.compress(data) if gz else data)


def make_idx(root: Path, n: int = 6, gz: bool = True) -> tuple[np.ndarray, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    images = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    write_idx_split(root, "train", images, labels, gz)
    write_idx_split(root, "t10k", images[:2], labels[:2], gz)
    return images, labels


def make_cifar(root: Path, n: int = 4, hundred: bool = False, protocol: int = 4) -> np.ndarray:
    """Write a tiny CIFAR tree; returns the train images (N, 3, 32, 32) in file order."""
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    key = b"fine_labels" if hundred else b"labels"
    files = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
    all_images = []
    for name in [*files, "test" if hundred else "test_batch"]:
        data = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
        batch = {b"data": data, key: [int(i) % 10 for i in range(n)], b"batch_label": name.encode()}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        if name in files:
            all_images.append(data.reshape(n, 3, 32, 32))
    meta_key = b"fine_label_names" if hundred else b"label_names"
    count = 100 if hundred else 10
    with open(folder / ("meta" if hundred else "batches.meta"), "wb") as f:
        pickle.dump({meta_key: [f"c{i}".encode() for i in range(count)]}, f)
    return np.concatenate(all_images)


def make_stl(root: Path, train: np.ndarray, unlabeled: int = 3) -> Path:
    """STL-10 files from images (N, 3, 96, 96); written column-major per channel like the real release."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    column_major = np.ascontiguousarray(train.transpose(0, 1, 3, 2))
    for split in ("train", "test"):
        (folder / f"{split}_X.bin").write_bytes(column_major.tobytes())
        (folder / f"{split}_y.bin").write_bytes((np.arange(len(train)) % 10 + 1).astype(np.uint8).tobytes())
    (folder / "unlabeled_X.bin").write_bytes(RNG.integers(0, 256, unlabeled * 3 * 96 * 96, dtype=np.uint8).tobytes())
    return folder


def solid(mode: str, size: tuple[int, int], value) -> Image.Image:
    return Image.new(mode, size, value)


def make_folder(root: Path) -> None:
    """Class folders with every awkward kind of image, plus junk that must be skipped or ignored."""
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    solid("RGB", (40, 30), (200, 10, 20)).save(root / "cat" / "rgb.png")
    solid("L", (30, 30), 77).save(root / "cat" / "gray.png")
    solid("RGBA", (30, 40), (255, 0, 0, 128)).save(root / "cat" / "rgba.png")
    Image.fromarray(np.full((30, 30), 257 * 100, dtype=np.uint16)).save(root / "dog" / "deep.png")
    pal = Image.new("P", (30, 30), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.save(root / "dog" / "pal.png")
    solid("RGB", (50, 30), (0, 0, 255)).save(root / "dog" / "photo.jpg", quality=95)
    (root / "dog" / "empty.jpg").write_bytes(b"")
    (root / "dog" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (root / "dog" / "notes.txt").write_text("not an image")


def image_at(data: ImageData, i: int) -> torch.Tensor:
    """Image ``i`` (C, H, W) of in-memory data, stacked or packed (folders of images of several sizes)."""
    return data.images.image(i) if isinstance(data.images, PackedImages) else data.images[i]


def assert_error(fn, *names: str) -> SimCLRError:
    with pytest.raises(SimCLRError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    for name in names:
        assert name in message, message
    return info.value


# ---- IDX ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reads_images_and_labels(tmp_path, gz):
    images, labels = make_idx(tmp_path, gz=gz)
    data = load_dataset("mnist", tmp_path)
    assert data.images.dtype == torch.uint8 and data.images.shape == (6, 1, 28, 28)
    assert torch.equal(data.images[:, 0], torch.from_numpy(images))
    assert data.labels.dtype == torch.int64 and data.labels.tolist() == labels.tolist()
    assert data.classes == [str(i) for i in range(10)]
    assert load_dataset("fashion-mnist", tmp_path, split="test").images.shape == (2, 1, 28, 28)
    assert load_dataset("auto", tmp_path).images.shape == (6, 1, 28, 28)


def test_idx_other_dtypes_are_big_endian(tmp_path):
    values = np.arange(6, dtype=">i4").reshape(2, 3)
    (tmp_path / "x.idx").write_bytes(idx_bytes(values, 0x0C))
    assert read_idx(tmp_path / "x.idx").tolist() == values.tolist()


@pytest.mark.parametrize(
    "case, expect",
    [
        ("magic", "magic number"),
        ("truncated", "truncated"),
        ("trailing", "unexpected bytes"),
        ("count", "labels for"),
        ("range", "out of range"),
        ("gzip", "gzip"),
    ],
)
def test_idx_errors_name_the_file(tmp_path, case, expect):
    images, labels = make_idx(tmp_path, gz=False)
    img, lab = tmp_path / "train-images-idx3-ubyte", tmp_path / "train-labels-idx1-ubyte"
    bad = {"magic": img, "truncated": img, "trailing": img, "count": lab, "range": lab, "gzip": img}[case]
    if case == "magic":
        img.write_bytes(b"\x00\x01" + img.read_bytes()[2:])
    elif case == "truncated":
        img.write_bytes(img.read_bytes()[:-5])
    elif case == "trailing":
        img.write_bytes(img.read_bytes() + b"xx")
    elif case == "count":
        lab.write_bytes(idx_bytes(labels[:-1]))
    elif case == "range":
        lab.write_bytes(idx_bytes(np.full_like(labels, 10)))
    else:
        img.write_bytes(gzip.compress(img.read_bytes())[:-20])
    assert_error(lambda: load_dataset("mnist", tmp_path), bad.name, expect)


def test_idx_missing_files(tmp_path):
    assert_error(lambda: load_dataset("mnist", tmp_path / "nowhere"), "nowhere")
    make_idx(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    assert_error(lambda: load_dataset("mnist", tmp_path), "train-labels-idx1-ubyte", "not found")


@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST not installed")
def test_real_fashion_mnist_reads_correctly():
    data = load_dataset("fashion-mnist")  # the default location
    assert data.images.shape == (60000, 1, 28, 28) and data.images.dtype == torch.uint8
    assert data.labels.min() == 0 and data.labels.max() == 9 and torch.bincount(data.labels).tolist() == [6000] * 10
    mean, std = channel_stats(data.images)
    assert abs(mean[0] - dataset_stats("fashion-mnist")[0][0]) < 0.005
    assert abs(std[0] - dataset_stats("fashion-mnist")[1][0]) < 0.005


# ---- CIFAR ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar10_batches(tmp_path, protocol):
    train = make_cifar(tmp_path, protocol=protocol)
    data = load_dataset("cifar10", tmp_path)
    assert data.images.shape == (20, 3, 32, 32) and data.images.dtype == torch.uint8
    assert torch.equal(data.images, torch.from_numpy(train))
    # the first 1024 bytes of a row are the red plane, row-major
    assert data.images[0, 0, 0, 1] == train.reshape(20, 3072)[0, 1]
    assert data.images[0, 2, 1, 0] == train.reshape(20, 3072)[0, 2048 + 32]
    assert data.labels.tolist() == [0, 1, 2, 3] * 5 and data.classes[3] == "c3"
    # given the batches folder itself rather than its parent
    assert len(load_dataset("cifar10", tmp_path / "cifar-10-batches-py", split="test")) == 4


def test_cifar100_fine_labels(tmp_path):
    make_cifar(tmp_path, hundred=True)
    data = load_dataset("auto", tmp_path)
    assert data.images.shape == (4, 3, 32, 32) and len(data.classes) == 100


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize(
    "case, expect",
    [
        ("evil", "refusing"),
        ("garbage", "not a valid CIFAR pickle"),
        ("nokey", "missing key"),
        ("shape", "expected (N, 3072)"),
        ("count", "labels for"),
        ("range", "out of range"),
        ("notdict", "expected a dict"),
    ],
)
def test_cifar_errors_name_the_file(tmp_path, case, expect):
    make_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    ok = np.zeros((2, 3072), np.uint8)
    payload = {
        "evil": {b"data": _Evil(), b"labels": [0]},
        "nokey": {b"data": ok},
        "shape": {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 0]},
        "count": {b"data": ok, b"labels": [0]},
        "range": {b"data": ok, b"labels": [0, 10]},
        "notdict": [1, 2, 3],
    }
    if case == "garbage":
        path.write_bytes(b"\x80\x04this is not a pickle")
    else:
        path.write_bytes(pickle.dumps(payload[case]))
    assert_error(lambda: load_dataset("cifar10", tmp_path), "data_batch_3", expect)


def test_cifar_missing_batch(tmp_path):
    make_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_5").unlink()
    assert_error(lambda: load_dataset("cifar10", tmp_path), "data_batch_5", "not found")
    assert_error(lambda: load_dataset("cifar100", tmp_path), "cifar-100-python")


# ---- STL-10 ---------------------------------------------------------------------------------------------


def test_stl10_column_major_pixel_lands_where_expected(tmp_path):
    raw = np.zeros(2 * 3 * 96 * 96, np.uint8)
    # image 1, channel 2 (blue), row 5, column 7: column-major within the plane -> offset col * 96 + row
    raw[1 * 27648 + 2 * 9216 + 7 * 96 + 5] = 255
    (tmp_path / "x.bin").write_bytes(raw.tobytes())
    images = read_stl_images(tmp_path / "x.bin")
    assert images.shape == (2, 3, 96, 96)
    assert images[1, 2, 5, 7] == 255 and int(images.sum()) == 255


def test_stl10_splits(tmp_path):
    train = RNG.integers(0, 256, (4, 3, 96, 96), dtype=np.uint8)
    make_stl(tmp_path, train)
    data = load_dataset("stl10", tmp_path)
    assert torch.equal(data.images, torch.from_numpy(train))
    assert data.labels.tolist() == [0, 1, 2, 3] and data.classes[0] == "airplane"
    unl = load_dataset("stl10", tmp_path, split="unlabeled")
    assert unl.images.shape == (3, 3, 96, 96) and unl.labels is None
    both = load_dataset("auto", tmp_path / "stl10_binary", split="train+unlabeled")
    assert both.images.shape == (7, 3, 96, 96) and both.labels is None
    assert torch.equal(both.images[:4], data.images) and torch.equal(both.images[4:], unl.images)
    small = load_dataset("stl10", tmp_path, split="test", image_size=32)
    assert small.images.shape == (4, 3, 32, 32)


@pytest.mark.parametrize(
    "case, name, expect",
    [
        ("truncated", "train_X.bin", "not a multiple"),
        ("label0", "train_y.bin", "out of range"),
        ("label11", "train_y.bin", "out of range"),
        ("count", "train_y.bin", "labels for"),
        ("missing", "train_y.bin", "not found"),
    ],
)
def test_stl10_errors_name_the_file(tmp_path, case, name, expect):
    folder = make_stl(tmp_path, np.zeros((4, 3, 96, 96), np.uint8))
    path = folder / name
    if case == "truncated":
        path.write_bytes(path.read_bytes()[:-1])
    elif case == "missing":
        path.unlink()
    else:
        labels = {"label0": [0, 1, 2, 3], "label11": [1, 2, 3, 11], "count": [1, 2, 3]}[case]
        path.write_bytes(bytes(labels))
    assert_error(lambda: load_dataset("stl10", tmp_path), name, expect)
    assert_error(lambda: load_dataset("stl10", tmp_path, split="extra"), "extra")


# ---- image folders --------------------------------------------------------------------------------------


def test_folder_classes_modes_and_bad_files(tmp_path):
    make_folder(tmp_path)
    data = load_dataset("folder", tmp_path, image_size=16, max_bad_fraction=0.5)
    assert len(data) == 6 and image_at(data, 0).dtype == torch.uint8
    # each image keeps its aspect ratio, shorter side 16 (issue 17: views come from the whole image)
    shapes = {name: tuple(image_at(data, i).shape) for i, name in enumerate(data.names)}
    assert shapes["cat/rgb.png"] == (3, 16, 21) and shapes["cat/rgba.png"] == (3, 21, 16)
    assert shapes["cat/gray.png"] == (3, 16, 16) and shapes["dog/photo.jpg"] == (3, 16, 27)
    assert data.classes == ["cat", "dog"]
    assert data.names == [
        "cat/gray.png",
        "cat/rgb.png",
        "cat/rgba.png",
        "dog/deep.png",
        "dog/pal.png",
        "dog/photo.jpg",
    ]
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert sorted(Path(p).name for p in data.bad_files) == ["corrupt.jpg", "empty.jpg"]
    centre = {name: image_at(data, i)[:, 8, 8].tolist() for i, name in enumerate(data.names)}
    assert centre["cat/gray.png"] == [77, 77, 77]
    assert centre["cat/rgb.png"] == [200, 10, 20]
    assert centre["cat/rgba.png"] == [128, 0, 0]  # composited on black
    assert centre["dog/deep.png"] == [100, 100, 100]  # 16-bit scaled by 1/257
    assert centre["dog/pal.png"] == [10, 200, 30]
    assert all(abs(a - b) <= 6 for a, b in zip(centre["dog/photo.jpg"], [0, 0, 255], strict=True))


def test_folder_resize_policy_keeps_the_aspect_ratio_up_to_two(tmp_path):
    bands = np.zeros((20, 60, 3), np.uint8)  # 60 wide, 20 high: red | green | blue vertical bands
    bands[:, :20, 0], bands[:, 20:40, 1], bands[:, 40:, 2] = 255, 255, 255
    Image.fromarray(bands).save(tmp_path / "bands.png")
    data = load_dataset("folder", tmp_path, image_size=10)
    # 3:1 is cropped to the 2:1 centre (columns 10-50), then the shorter side resized to 10: 10 x 20
    assert data.images.shape == (1, 3, 10, 20) and data.labels is None and data.classes is None
    image = data.images[0]
    assert (image[0, :, :2] > 200).all() and (image[1, :, 8:12] > 200).all() and (image[2, :, -2:] > 200).all()
    square = np.zeros((30, 40, 3), np.uint8)
    Image.fromarray(square).save(tmp_path / "bands.png")
    assert load_dataset("folder", tmp_path).images.shape == (1, 3, 224, 299)  # the documented default side


def test_folder_errors(tmp_path):
    make_folder(tmp_path)
    assert_error(lambda: load_folder(tmp_path, 8), "corrupt.jpg", "max_bad_fraction")
    (tmp_path / "loose.png").write_bytes((tmp_path / "cat" / "rgb.png").read_bytes())
    assert_error(lambda: load_folder(tmp_path, 8, 0.5), "loose.png", "class")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    assert_error(lambda: load_dataset("folder", empty), "empty", "no image files")
    assert_error(lambda: load_dataset("folder", tmp_path / "missing"), "missing")
    assert_error(lambda: load_dataset("folder", empty, split="test"), "test")
    assert_error(lambda: load_dataset("folder"), "needs a path")


def test_folder_split_subfolders(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split / "a").mkdir(parents=True)
        solid("RGB", (8, 8), (1, 2, 3)).save(tmp_path / split / "a" / "x.png")
    assert load_dataset("folder", tmp_path, split="test", image_size=8).names == ["a/x.png"]
    assert list(open_image_stream(tmp_path, split="test", image_size=8).names) == ["a/x.png"]
    assert detect_format(tmp_path) == "folder"


def test_folder_stream(tmp_path):
    make_folder(tmp_path)
    stream = ImageStream(tmp_path, image_size=16, max_bad_fraction=0.5)
    assert len(stream) == 7 and [Path(p).name for p in stream.bad_files] == ["empty.jpg"]  # zero-byte dropped
    memory = load_folder(tmp_path, 16, 0.5)
    good = [i for i, name in enumerate(stream.names) if name in memory.names]
    streamed, s_sizes, labels = take(stream, good)  # the same decoding as the in-memory reader
    held, m_sizes, _ = take(memory, [memory.names.index(stream.names[i]) for i in good])
    assert labels[0] == 0 and torch.equal(streamed, held)
    assert (s_sizes is None and m_sizes is None) or torch.equal(s_sizes, m_sizes)


# ---- npz ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
def test_npz_layouts(tmp_path, layout):
    nchw = RNG.integers(0, 256, (5, 1 if layout == "NHW" else 3, 8, 6), dtype=np.uint8)
    stored = {"NHW": nchw[:, 0], "NHWC": nchw.transpose(0, 2, 3, 1), "NCHW": nchw}[layout]
    np.savez(tmp_path / "d.npz", images=stored, labels=np.arange(5) % 2, classes=np.array(["a", "b"]),
             test_images=stored[:2])  # fmt: skip
    data = load_dataset("auto", tmp_path / "d.npz")
    assert torch.equal(data.images, torch.from_numpy(nchw)) and data.classes == ["a", "b"]
    assert data.labels.tolist() == [0, 1, 0, 1, 0]
    test = load_dataset("npz", tmp_path / "d.npz", split="test")
    assert test.images.shape[0] == 2 and test.labels is None


_TWO = {"images": np.zeros((2, 4, 4), np.uint8)}


@pytest.mark.parametrize(
    "arrays, expect",
    [
        ({"pixels": np.zeros((2, 4, 4), np.uint8)}, "no images"),
        ({"images": np.zeros((2, 4, 4), np.float32)}, "uint8"),
        ({"images": np.zeros((2, 5, 4, 4), np.uint8)}, "channel"),
        ({"images": np.zeros((2, 4, 4), np.uint8), "labels": np.zeros(3, int)}, "labels for"),
        (dict(_TWO, labels=np.array([0, 2]), classes=np.array(["a", "b"])), "out of range"),
    ],
)  # fmt: skip
def test_npz_errors_name_the_file(tmp_path, arrays, expect):
    np.savez(tmp_path / "bad.npz", **arrays)
    assert_error(lambda: load_npz(tmp_path / "bad.npz"), "bad.npz", expect)


def test_npz_not_an_archive(tmp_path):
    (tmp_path / "fake.npz").write_bytes(b"hello")
    assert_error(lambda: load_npz(tmp_path / "fake.npz"), "fake.npz", "zip")
    assert_error(lambda: load_npz(tmp_path / "none.npz"), "none.npz", "not found")


# ---- statistics and dataset names -----------------------------------------------------------------------


def test_channel_stats_matches_numpy():
    x = RNG.integers(0, 256, (50, 3, 5, 7), dtype=np.uint8)
    mean, std = channel_stats(torch.from_numpy(x))
    ref = x.astype(np.float64).transpose(1, 0, 2, 3).reshape(3, -1) / 255
    assert np.allclose(mean, ref.mean(1), atol=1e-4) and np.allclose(std, ref.std(1), atol=1e-4)
    assert dataset_stats("cifar10")[0] == (0.4914, 0.4822, 0.4465)
    data = ImageData(torch.from_numpy(x), None, None, None, "mem")
    assert dataset_stats("folder", data) == (mean, std)


def test_unknown_names_and_missing_defaults(tmp_path, monkeypatch):
    assert_error(lambda: load_dataset("imagenet-22k", tmp_path), "imagenet-22k")
    monkeypatch.setenv("SIMCLR_DATA", str(tmp_path / "cache"))
    monkeypatch.setitem(__import__("simclr.data").data.SYSTEM_PATHS, "fashion-mnist", tmp_path / "none")
    assert_error(lambda: load_dataset("fashion-mnist"), "download=True")
    assert_error(lambda: load_dataset("cifar10"), "cache")


# ---- batch source ---------------------------------------------------------------------------------------


def tiny_data(n: int = 50) -> ImageData:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return ImageData(images, torch.arange(n) % 7, None, None, "tiny")


def epoch(source, e: int, start: int = 0) -> list[tuple]:
    source.set_epoch(e, start_batch=start)
    return [(x.clone(), None if y is None else y.clone(), i.clone()) for x, y, i, *_ in source]


def test_batch_source_is_deterministic_and_correct():
    data = tiny_data()
    a, b = make_batch_source(data, 8, "cpu", seed=3), make_batch_source(data, 8, "cpu", seed=3)
    assert len(a) == 6
    ea, eb = epoch(a, 0), epoch(b, 0)
    assert all(torch.equal(p[2], q[2]) for p, q in zip(ea, eb, strict=True))
    seen = torch.cat([i for _, _, i in ea])
    assert len(seen.unique()) == 48  # a permutation, last 2 images dropped
    for x, y, i in ea:
        assert x.dtype == torch.uint8 and x.shape == (8, 1, 2, 2) and y.dtype == torch.int64
        assert torch.equal(x[:, 0, 0, 0].long(), i) and torch.equal(y, i % 7)
    assert not torch.equal(seen, torch.cat([i for _, _, i in epoch(a, 1)]))
    assert not torch.equal(seen, torch.cat([i for _, _, i in epoch(make_batch_source(data, 8, "cpu", seed=4), 0)]))


def test_batch_source_shards_are_disjoint_and_cover_the_global_batch():
    data = tiny_data()
    whole = epoch(make_batch_source(data, 8, "cpu", seed=1), 2)
    ranks = [epoch(make_batch_source(data, 8, "cpu", seed=1, rank=r, world_size=2), 2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(whole)
    for k, (_, _, idx) in enumerate(whole):
        r0, r1 = ranks[0][k][2], ranks[1][k][2]
        assert len(r0) == len(r1) == 4 and not set(r0.tolist()) & set(r1.tolist())
        assert torch.equal(torch.cat([r0, r1]), idx)
    assert_error(lambda: make_batch_source(data, 9, "cpu", world_size=2), "divisible")


def test_batch_source_resumes_mid_epoch():
    source = make_batch_source(tiny_data(), 8, "cpu", seed=5)
    full = epoch(source, 3)
    resumed = epoch(source, 3, start=4)
    assert len(resumed) == 2 and all(torch.equal(p[2], q[2]) for p, q in zip(full[4:], resumed, strict=True))
    assert len(list(source)) == 6  # the start batch applies to one iteration only
    source.set_epoch(3)
    assert torch.equal(next(source.iter_from(5))[2], full[5][2])


def test_batch_source_keeps_last_partial_batch():
    source = make_batch_source(tiny_data(), 8, "cpu", shuffle=False, drop_last=False)
    batches = epoch(source, 0)
    assert len(source) == 7 and len(batches[-1][2]) == 2
    assert torch.equal(torch.cat([i for _, _, i in batches]), torch.arange(50))


@pytest.mark.parametrize("threads", [1, 2])
def test_streamed_source_matches_in_memory(tmp_path, threads):
    for i in range(10):
        (tmp_path / f"c{i % 2}").mkdir(exist_ok=True)
        solid("RGB", (12 + i, 10), (i * 20, 0, 0)).save(tmp_path / f"c{i % 2}" / f"{i}.png")  # several sizes
    memory = load_folder(tmp_path, 8)
    streamed = make_batch_source(ImageStream(tmp_path, 8), 4, "cpu", seed=2, threads=threads)
    in_memory = make_batch_source(memory, 4, "cpu", seed=2)
    for s_batch, m_batch in zip(streamed, in_memory, strict=True):
        assert torch.equal(s_batch.indices, m_batch.indices) and torch.equal(s_batch.labels, m_batch.labels)
        assert torch.equal(s_batch.sizes, m_batch.sizes) and torch.equal(s_batch.images, m_batch.images)


# ---- fuzzing: random bytes give SimCLRError, nothing else --------------------------------------------------

FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _valid_pickle() -> bytes:
    return pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [1]}, protocol=2)


def _mutate(base: bytes):
    return st.lists(st.tuples(st.integers(0, len(base) - 1), st.integers(0, 255)), max_size=4).map(
        lambda edits: bytes(_apply(bytearray(base), edits))
    )


def _apply(buf: bytearray, edits) -> bytearray:
    for pos, val in edits:
        buf[pos] = val
    return buf


def _fuzz_file(tmp_path: Path, name: str, blob: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(blob)
    return path


def fuzz_read(read, path: Path, valid: bool):
    """``read(path)``, or None after checking the error: one line, ``<path>: <problem>``; a valid file must parse."""
    try:
        return read(path)
    except SimCLRError as e:
        message = str(e)
        assert not valid, f"a valid file was refused: {message}"
        assert message.startswith(f"{path}: ") and len(message) > len(f"{path}: ") + 3 and "\n" not in message
        return None


VALID_IDX = idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4))


@FUZZ
@example(blob=VALID_IDX)
@given(blob=st.one_of(st.binary(max_size=300), st.binary(max_size=60).map(lambda b: b"\x00\x00\x08\x02" + b)))
def test_fuzz_idx(tmp_path, blob):
    out = fuzz_read(read_idx, _fuzz_file(tmp_path, "f-idx", blob), valid=blob == VALID_IDX)
    if out is not None and not blob.startswith(b"\x1f\x8b"):  # a plain (not gzipped) file: header + data
        assert isinstance(out, np.ndarray) and 4 + 4 * out.ndim + out.nbytes == len(blob)
    if blob == VALID_IDX:
        np.testing.assert_array_equal(out, np.arange(12).reshape(3, 4))


@FUZZ
@example(blob=_valid_pickle())
@given(blob=st.one_of(st.binary(max_size=300), _mutate(_valid_pickle())))
def test_fuzz_cifar_pickle(tmp_path, blob):
    out = fuzz_read(safe_unpickle, _fuzz_file(tmp_path, "data_batch_1", blob), valid=blob == _valid_pickle())
    if blob == _valid_pickle():
        assert out[b"labels"] == [1] and out[b"data"].shape == (1, 3072)


STL_RECORD = 3 * 96 * 96


@FUZZ
@example(blob=bytes(STL_RECORD), n=1)
@example(blob=bytes([1, 10, 3]), n=3)
@given(blob=st.binary(max_size=300), n=st.integers(0, 3))
def test_fuzz_stl(tmp_path, blob, n):
    """A file of whole 96 x 96 x 3 records is images; n bytes in 1..10 are n labels; anything else is an error."""
    images_ok = len(blob) > 0 and len(blob) % STL_RECORD == 0
    images = fuzz_read(read_stl_images, _fuzz_file(tmp_path, "train_X.bin", blob), valid=images_ok)
    assert (images is not None) == images_ok
    if images_ok:
        assert images.shape == (len(blob) // STL_RECORD, 3, 96, 96)
    labels_ok = len(blob) == n and all(1 <= b <= 10 for b in blob)
    labels = fuzz_read(lambda p: read_stl_labels(p, n), _fuzz_file(tmp_path, "train_y.bin", blob), valid=labels_ok)
    assert (labels is not None) == labels_ok
    if labels_ok:
        assert labels.tolist() == [b - 1 for b in blob]


def _valid_npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, images=np.zeros((2, 3, 3), np.uint8), labels=np.array([0, 1]))
    return buf.getvalue()


@FUZZ
@example(blob=_valid_npz())
@given(blob=st.one_of(st.binary(max_size=300), _mutate(_valid_npz())))
def test_fuzz_npz(tmp_path, blob):
    out = fuzz_read(load_npz, _fuzz_file(tmp_path, "f.npz", blob), valid=blob == _valid_npz())
    if out is not None:
        assert out.images.dtype == torch.uint8 and out.images.ndim == 4
    if blob == _valid_npz():
        assert out.images.shape == (2, 1, 3, 3) and out.labels.tolist() == [0, 1]
