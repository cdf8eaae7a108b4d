"""Bad input, reader by reader: every broken file is one clear line naming it, or a documented policy.

Policy for image folders (see ``simclr.data.folder``): undecodable images are skipped, counted and listed in
``ImageData.bad_files``; more than ``data.max_bad_fraction`` of them is an error naming the first one. Odd but
valid images (grayscale, RGBA, 16-bit, huge, tiny) are converted, never rejected.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from simclr.augment import Augment
from simclr.cli import main
from simclr.config import AugmentConfig
from simclr.data import load_dataset, make_batch_source
from simclr.data.folder import BadImage, decode_image, load_folder
from simclr.data.stream import ImageStream
from simclr.errors import SimCLRError

RNG = np.random.default_rng(0)
TINY = ["--set", "model.width_multiplier=0.125", "--set", "train.batch_size=4", "--set", "monitor.knn=false"]


def one_line_error(fn, *expect: str) -> str:
    with pytest.raises(SimCLRError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, message
    for text in expect:
        assert text in message, message
    return message


# ---- writers for the real formats ---------------------------------------------------------------------------


def idx_bytes(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def make_idx(root: Path, n: int = 6) -> tuple[Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    images, labels = root / "train-images-idx3-ubyte", root / "train-labels-idx1-ubyte"
    images.write_bytes(idx_bytes(RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)))
    labels.write_bytes(idx_bytes((np.arange(n) % 10).astype(np.uint8)))
    return images, labels


def make_cifar(root: Path, n: int = 4) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": RNG.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": [i % 10 for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return folder


def make_stl(root: Path, n: int = 3) -> Path:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    for split in ("train", "test"):
        (folder / f"{split}_X.bin").write_bytes(RNG.integers(0, 256, n * 3 * 96 * 96, dtype=np.uint8).tobytes())
        (folder / f"{split}_y.bin").write_bytes((np.arange(n) % 10 + 1).astype(np.uint8).tobytes())
    return folder


def make_npz(path: Path, **arrays) -> Path:
    arrays = arrays or {"images": RNG.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8), "labels": np.arange(6) % 2}
    np.savez(path, **arrays)
    return path


def png_bytes(mode: str = "RGB", size=(12, 10), value=(10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, value).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(size=(12, 10)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def bomb_png(side: int = 60000) -> bytes:
    """A 200-byte PNG whose header claims side x side pixels (a decompression bomb by its size alone)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


# ---- array formats: each broken file is one line naming it -----------------------------------------------------


def _idx_case(root: Path, case: str) -> str:
    images, labels = make_idx(root)
    if case == "truncated":
        images.write_bytes(images.read_bytes()[:-100])
    elif case == "magic":
        images.write_bytes(b"\x08\x03\x00\x00" + images.read_bytes()[4:])
    elif case == "count":
        labels.write_bytes(idx_bytes(np.zeros(5, np.uint8)))
    elif case == "gzip":
        images.unlink()
        (root / "train-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(idx_bytes(np.zeros((6, 28, 28), np.uint8)))[:-30]
        )
        return "train-images-idx3-ubyte.gz"
    elif case == "zero-bytes":
        images.write_bytes(b"")
    elif case == "huge-header":  # claims 2^31 images: must be "truncated", not a 50 GB allocation
        images.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", 2**31, 28, 28) + b"\0" * 100)
    elif case == "labels-missing":
        labels.unlink()
        return "train-labels-idx1-ubyte"
    return labels.name if case == "count" else images.name


IDX_CASES = {
    "truncated": "truncated", "magic": "wrong magic number", "count": "5 labels for 6 images",
    "gzip": "gzip", "zero-bytes": "too short", "huge-header": "truncated", "labels-missing": "not found",
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(IDX_CASES))
def test_idx_bad_files(tmp_path, case):
    name = _idx_case(tmp_path, case)
    one_line_error(lambda: load_dataset("mnist", tmp_path), name, IDX_CASES[case])


def _cifar_case(root: Path, case: str) -> str:
    folder = make_cifar(root)
    batch = folder / "data_batch_3"
    if case == "truncated":
        batch.write_bytes(batch.read_bytes()[: len(batch.read_bytes()) // 2])
    elif case == "not-a-pickle":
        batch.write_bytes(os.urandom(5000))
    elif case == "zero-bytes":
        batch.write_bytes(b"")
    elif case == "count":
        batch.write_bytes(pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [1, 2, 3]}, protocol=2))
    elif case == "shape":
        batch.write_bytes(pickle.dumps({b"data": np.zeros((4, 1000), np.uint8), b"labels": [1] * 4}, protocol=2))
    elif case == "range":
        batch.write_bytes(pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [1, 2, 3, 10]}, protocol=2))
    elif case == "wrong-type":
        batch.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    elif case == "missing":
        batch.unlink()
    return batch.name


CIFAR_CASES = {
    "truncated": "not a valid CIFAR pickle", "not-a-pickle": "not a valid CIFAR pickle",
    "zero-bytes": "not a valid CIFAR pickle", "count": "3 labels for 4 images", "shape": "expected (N, 3072)",
    "range": "label 10 out of range", "wrong-type": "expected a dict", "missing": "not found",
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CIFAR_CASES))
def test_cifar_bad_files(tmp_path, case):
    name = _cifar_case(tmp_path, case)
    one_line_error(lambda: load_dataset("cifar10", tmp_path), name, CIFAR_CASES[case])


def test_cifar_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    folder = make_cifar(tmp_path)
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Payload(), b"labels": []}, protocol=2))
    one_line_error(lambda: load_dataset("cifar10", tmp_path), "data_batch_1", "refusing")
    assert not marker.exists()


def _stl_case(root: Path, case: str) -> str:
    folder = make_stl(root)
    images, labels = folder / "train_X.bin", folder / "train_y.bin"
    if case == "truncated":
        images.write_bytes(images.read_bytes()[:-1000])
    elif case == "zero-bytes":
        images.write_bytes(b"")
    elif case == "count":
        labels.write_bytes(bytes([1, 2]))
    elif case == "range":
        labels.write_bytes(bytes([1, 11, 3]))
    elif case == "labels-missing":
        labels.unlink()
        return labels.name
    return labels.name if case in ("count", "range") else images.name


STL_CASES = {
    "truncated": "not a multiple", "zero-bytes": "empty file", "count": "2 labels for 3 images",
    "range": "label 11 out of range", "labels-missing": "not found",
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(STL_CASES))
def test_stl10_bad_files(tmp_path, case):
    name = _stl_case(tmp_path, case)
    one_line_error(lambda: load_dataset("stl10", tmp_path), name, STL_CASES[case])


NPZ_CASES = {
    "truncated": "not a valid .npz",
    "magic": "no zip signature",
    "zero-bytes": "no zip signature",
    "count": "3 labels for 6 images",
    "float": "must be uint8",
    "uint16": "must be uint8",
    "rgba": "no channel axis of size 1 or 3",
    "object": "not a valid .npz",  # a pickled object array is refused (allow_pickle=False)
    "empty": "empty",
    "no-images": "no images array",
}


@pytest.mark.parametrize("case", sorted(NPZ_CASES))
def test_npz_bad_files(tmp_path, case):
    path = tmp_path / "bad.npz"
    if case in ("truncated", "magic", "zero-bytes"):
        good = make_npz(tmp_path / "good.npz").read_bytes()
        path.write_bytes({"truncated": good[: len(good) // 2], "magic": b"XX" + good[2:], "zero-bytes": b""}[case])
    else:
        arrays = {
            "count": {"images": np.zeros((6, 4, 4), np.uint8), "labels": np.zeros(3, int)},
            "float": {"images": np.zeros((6, 4, 4), np.float32)},
            "uint16": {"images": np.zeros((6, 4, 4), np.uint16)},
            "rgba": {"images": np.zeros((6, 4, 4, 4), np.uint8)},
            "object": {"images": np.array([np.zeros(3), "x"], dtype=object)},
            "empty": {"images": np.zeros((0, 4, 4), np.uint8)},
            "no-images": {"pixels": np.zeros((6, 4, 4), np.uint8)},
        }[case]
        np.savez(path, **arrays)
    one_line_error(lambda: load_dataset("npz", path), "bad.npz", NPZ_CASES[case])


# ---- image folders: the skip-count-list policy and odd but valid images -----------------------------------------


def test_empty_folder_and_folder_without_images(tmp_path):
    (tmp_path / "empty").mkdir()
    one_line_error(lambda: load_dataset("folder", tmp_path / "empty"), "empty", "no image files")
    junk = tmp_path / "junk"
    (junk / "sub").mkdir(parents=True)
    (junk / "notes.txt").write_text("hello")
    (junk / "data.csv").write_text("1,2,3")
    (junk / "sub" / "model.pt").write_bytes(b"\0" * 10)
    (junk / ".hidden.png").write_bytes(png_bytes())  # hidden files are ignored too
    one_line_error(lambda: load_dataset("folder", junk), "junk", "no image files")


def test_non_image_files_are_ignored(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes())
    (tmp_path / "README.md").write_text("not an image")
    (tmp_path / "labels.csv").write_text("a.png,1")
    data = load_dataset("folder", tmp_path, image_size=8)
    assert data.names == ["a.png"] and data.bad_files == []


BAD_IMAGES = {
    "zero.jpg": b"",
    "zero.png": b"",
    "corrupt.jpg": b"\xff\xd8\xff\xe0" + os.urandom(300),
    "corrupt.png": b"\x89PNG\r\n\x1a\n" + os.urandom(300),
    "text.png": b"I am a text file with an image extension\n",
    "truncated.png": None,  # a real PNG cut in half
    "truncated.jpg": None,
    "bomb.png": bomb_png(),  # 60000 x 60000 claimed: refused at the header, never allocated
}


def _truncated(name: str) -> bytes:
    if name.endswith(".png"):
        buf = io.BytesIO()
        Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
        return buf.getvalue()[: len(buf.getvalue()) // 2]
    return jpeg_bytes((64, 64))[:300]


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_each_undecodable_image_is_skipped_counted_and_listed(tmp_path, name):
    for i in range(3):
        (tmp_path / f"good{i}.png").write_bytes(png_bytes())
    content = BAD_IMAGES[name]
    (tmp_path / name).write_bytes(_truncated(name) if content is None else content)
    with pytest.raises(BadImage):
        decode_image(tmp_path / name, 8)
    data = load_dataset("folder", tmp_path, image_size=8, max_bad_fraction=0.5)
    assert len(data) == 3 and data.bad_files == [str(tmp_path / name)]
    # over the limit (1 of 4 > 1%): an error naming the file and the count
    one_line_error(lambda: load_dataset("folder", tmp_path, image_size=8), name, "1 of 4", "max_bad_fraction")


def test_bad_fraction_threshold_and_warning(tmp_path, caplog):
    for i in range(100):
        (tmp_path / f"img{i:03d}.png").write_bytes(png_bytes(value=(i, i, i)))
    (tmp_path / "img050.png").write_bytes(b"")
    data = load_folder(tmp_path, 8)  # 1 of 100 = 1%: at the default limit, skipped with a warning
    assert len(data) == 99 and [Path(p).name for p in data.bad_files] == ["img050.png"]
    assert "img050.png" in caplog.text and "skipped 1" in caplog.text
    (tmp_path / "img051.png").write_bytes(b"junk")
    one_line_error(lambda: load_folder(tmp_path, 8), "img050.png", "2 of 100", "2.0% > max_bad_fraction 1.0%")
    assert len(load_folder(tmp_path, 8, max_bad_fraction=0.02)) == 98  # the limit is the user's to raise


def test_all_images_bad_is_an_error_even_at_fraction_one(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "b.jpg").write_bytes(b"nope")
    one_line_error(lambda: load_folder(tmp_path, 8, max_bad_fraction=1.0), "a.png", "2 of 2")


def test_odd_but_valid_images_are_converted(tmp_path):
    """Grayscale, RGBA (composited on black), 16-bit (scaled /257), palette, CMYK, tiny: all become RGB S x S."""
    Image.new("L", (10, 10), 77).save(tmp_path / "gray.png")
    Image.new("RGBA", (10, 10), (255, 0, 0, 128)).save(tmp_path / "rgba.png")
    Image.fromarray(np.full((10, 10), 257 * 100, np.uint16)).save(tmp_path / "deep16.png")
    Image.new("LA", (10, 10), (200, 255)).save(tmp_path / "gray_alpha.png")
    Image.new("CMYK", (10, 10), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    Image.new("1", (10, 10), 1).save(tmp_path / "bilevel.png")
    Image.new("RGB", (3, 2), (1, 2, 3)).save(tmp_path / "tiny.png")  # smaller than the 16 px stored size
    Image.new("RGB", (1, 1), (9, 9, 9)).save(tmp_path / "one_pixel.bmp")
    data = load_dataset("folder", tmp_path, image_size=16)
    images = [data.images.image(i) for i in range(len(data))]  # packed: the 3 x 2 image stays 3:2
    assert len(data) == 8 and data.bad_files == [] and all(min(x.shape[1:]) == 16 for x in images)
    centre = {name: images[i][:, 8, 8].tolist() for i, name in enumerate(data.names)}
    assert centre["gray.png"] == [77] * 3 and centre["rgba.png"] == [128, 0, 0] and centre["deep16.png"] == [100] * 3
    assert centre["gray_alpha.png"] == [200] * 3 and centre["bilevel.png"] == [255] * 3
    assert centre["tiny.png"] == [1, 2, 3] and centre["one_pixel.bmp"] == [9, 9, 9]
    assert all(v >= 250 for v in centre["cmyk.jpg"])


def test_huge_flat_image_is_resized_not_rejected(tmp_path):
    Image.new("RGB", (6000, 4000), (10, 200, 30)).save(tmp_path / "huge.png")  # 24 Mpx, 80 kB on disk
    data = load_dataset("folder", tmp_path, image_size=16)  # the aspect ratio is kept: 16 x 24
    assert data.images.shape == (1, 3, 16, 24) and data.images[0, :, 8, 8].tolist() == [10, 200, 30]


def test_streamed_folder_substitutes_a_bad_image(tmp_path):
    for i in range(3):
        (tmp_path / f"good{i}.png").write_bytes(png_bytes(value=(i, i, i)))
    (tmp_path / "good1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(100))  # corrupt, but not zero-byte
    stream = ImageStream(tmp_path, image_size=8, max_bad_fraction=0.5)
    source = make_batch_source(stream, 3, "cpu", shuffle=False, on_bad="substitute")
    batch = next(iter(source))
    assert batch.indices.tolist() == [0, 1, 2] and batch.images.shape[:3] == (3, 3, 8)
    assert batch.images[1, :, 4, 4].tolist() == [2, 2, 2]  # the corrupt image's row: the next image


def test_images_smaller_than_the_crop_are_upsampled_by_the_augmentation():
    # a 2x2 image stored as is, views of 32 px: every op must cope, never index out of range
    aug = Augment(AugmentConfig(blur_prob=0.5), out_size=32)
    g = torch.Generator().manual_seed(0)
    for shape in [(4, 3, 2, 2), (4, 1, 1, 1), (2, 3, 1, 7)]:
        views = aug(torch.randint(0, 256, shape, dtype=torch.uint8), generator=g)
        assert views.shape == (shape[0], 3, 32, 32) and torch.isfinite(views).all()


def test_pretraining_on_images_smaller_than_the_model_input(tmp_path):
    make_npz(tmp_path / "tiny.npz", images=RNG.integers(0, 256, (8, 3, 3, 3), dtype=np.uint8))
    code = main(["pretrain", "--dataset", "npz", "--data", str(tmp_path / "tiny.npz"), "--device", "cpu",
                 "--out", str(tmp_path / "run"), *TINY, "--set", "model.input_size=16", "--set", "train.max_steps=1",
                 "--set", "train.epochs=1"])  # fmt: skip
    assert code == 0


# ---- fuzzing: random bytes as images --------------------------------------------------------------------------

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _mutations(base: bytes):
    return st.lists(st.tuples(st.integers(0, len(base) - 1), st.integers(0, 255)), min_size=1, max_size=6).map(
        lambda edits: bytes(_apply(bytearray(base), edits))
    )


def _apply(buf: bytearray, edits) -> bytearray:
    for pos, value in edits:
        buf[pos] = value
    return buf


REAL_IMAGES = (png_bytes(), jpeg_bytes())


@FUZZ
@given(
    blob=st.one_of(
        st.binary(max_size=400),
        _mutations(png_bytes()),
        _mutations(jpeg_bytes()),
        st.integers(1, 200).map(lambda n: png_bytes()[:n]),
    ),
    suffix=st.sampled_from([".png", ".jpg", ".gif", ".bmp", ".tif", ".webp"]),
)
@example(blob=REAL_IMAGES[0], suffix=".png")
@example(blob=REAL_IMAGES[1], suffix=".jpg")
def test_fuzz_folder_images(tmp_path, blob, suffix):
    """Any bytes under an image name: decoded, or skipped and listed with a one-line reason; never another
    exception. Real images decode."""
    folder = tmp_path / "fuzz"
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    (folder / "good.png").write_bytes(png_bytes())
    (folder / f"x{suffix}").write_bytes(blob)
    try:
        out = decode_image(folder / f"x{suffix}", 8)
    except BadImage as e:
        assert blob not in REAL_IMAGES, f"a real image was refused: {e}"
        reason = str(e)
        assert reason and "\n" not in reason and len(reason) <= 120, reason
        decoded = False
    else:
        assert out.shape[0] == 3 and min(out.shape[1:]) == 8 and out.dtype == np.uint8  # aspect kept
        decoded = True
    data = load_folder(folder, 8, max_bad_fraction=0.5)
    sides = data.images.sizes.min(1).values if hasattr(data.images, "sizes") else [min(data.images.shape[2:])]
    assert all(int(side) == 8 for side in sides)  # every image at the stored side, aspect kept
    listed_bad = [Path(f).name for f in data.bad_files]
    assert (len(data), listed_bad) == ((2, []) if decoded else (1, [f"x{suffix}"]))


# ---- the command line: one line naming the file, exit status 2, no traceback ----------------------------------


def test_cli_subprocess_bad_datasets(tmp_path):
    """A user's view of a few broken datasets, through the real `python -m simclr.cli pretrain`."""
    cases = []
    idx = tmp_path / "idx"
    cases.append((["--dataset", "mnist", "--data", str(idx)], _idx_case(idx, "truncated"), "truncated"))
    stl = tmp_path / "stl"
    cases.append((["--dataset", "stl10", "--data", str(stl)], _stl_case(stl, "count"), "2 labels for 3 images"))
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.jpg", "b.png"):
        (folder / name).write_bytes(b"")
    cases.append((["--dataset", "folder", "--data", str(folder)], "a.jpg", "cannot decode image (zero-byte file)"))
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    for args, name, expect in cases:
        result = subprocess.run(
            [sys.executable, "-m", "simclr.cli", "pretrain", *args, "--out", str(tmp_path / "run"), *TINY],
            capture_output=True, text=True, timeout=180, env=env,
        )  # fmt: skip
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        lines = result.stderr.strip().split("\n")
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert name in lines[0] and expect in lines[0], lines[0]


@pytest.mark.parametrize(
    "dataset, make",
    [
        ("cifar10", lambda root: (_cifar_case(root, "count"), "3 labels for 4 images")),
        ("cifar10", lambda root: (_cifar_case(root, "truncated"), "not a valid CIFAR pickle")),
        ("mnist", lambda root: (_idx_case(root, "magic"), "wrong magic number")),
        ("stl10", lambda root: (_stl_case(root, "truncated"), "not a multiple")),
        ("npz", lambda root: ("bad.npz", "no zip signature") if (root / "bad.npz").write_bytes(b"PK nope") else None),
        ("folder", lambda root: (str(root), "no image files")),
    ],
)
def test_cli_bad_datasets_in_process(tmp_path, capsys, dataset, make):
    root = tmp_path / "data"
    root.mkdir()
    name, expect = make(root)
    path = root / "bad.npz" if dataset == "npz" else root
    code = main(["pretrain", "--dataset", dataset, "--data", str(path), "--out", str(tmp_path / "run"), *TINY])
    err = capsys.readouterr().err
    lines = err.strip().split("\n")
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert name in lines[0] and expect in lines[0], lines[0]
