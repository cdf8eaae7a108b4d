"""IDX files: MNIST and Fashion-MNIST, gzipped or not.

An IDX file is a 4-byte magic number ``00 00 <dtype> <ndim>``, ``ndim`` big-endian uint32 dimensions, then
the values in row-major order. Images are ``idx3`` (N, 28, 28) uint8, labels ``idx1`` (N,) uint8. Files are
read whole and decoded with ``np.frombuffer`` (Fashion-MNIST train, 47 MB, reads in well under a second).

Split files: ``train-images-idx3-ubyte[.gz]`` / ``train-labels-idx1-ubyte[.gz]`` and ``t10k-...`` for
the test split, looked up in the given folder, then in ``raw/`` and the torchvision layout
``{FashionMNIST,MNIST}/raw/``. The original MNIST spelling ``train-images.idx3-ubyte`` is accepted too.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from simclr.data.base import ImageData, check_labels, find_file, read_file
from simclr.errors import SimCLRError, file_error

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
MNIST_CLASSES = [str(d) for d in range(10)]

# IDX type code -> big-endian numpy dtype
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_PREFIX = {"train": "train", "test": "t10k"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Decode one IDX file (optionally gzipped) into an array of its stored shape and native-endian dtype."""
    raw = read_file(path)
    if len(raw) < 4:
        raise file_error(path, f"too short for an IDX file ({len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES or raw[3] == 0:
        raise file_error(path, f"wrong magic number 0x{raw[:4].hex()} (not an IDX file)")
    dtype, ndim = np.dtype(_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise file_error(path, f"truncated header: {ndim} dimensions need {header} bytes, file has {len(raw)}")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=object)) * dtype.itemsize  # Python ints: no overflow on bogus headers
    found = len(raw) - header
    if found < expected:
        raise file_error(path, f"truncated: header {shape} needs {expected} data bytes, file has {found}")
    if found > expected:
        raise file_error(path, f"{found - expected} unexpected bytes after the {shape} data")
    values = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    # single bytes have no byte order: return the (read-only) view instead of copying 47 MB
    return values if dtype.itemsize == 1 else values.astype(dtype.newbyteorder("="))


def read_idx_pair(
    images_path: str | os.PathLike,
    labels_path: str | os.PathLike | None,
    classes: list[str] | None = None,
    source: str | None = None,
) -> ImageData:
    """Read an IDX image file (N, H, W) uint8 and optional label file (N,) into :class:`ImageData`."""
    images = read_idx(images_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise file_error(images_path, f"expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
    labels = None
    if labels_path is not None:
        raw_labels = read_idx(labels_path)
        if raw_labels.dtype != np.uint8:
            raise file_error(labels_path, f"expected uint8 labels, got {raw_labels.dtype}")
        labels = check_labels(raw_labels, len(images), labels_path, len(classes) if classes else None)
    # frombuffer arrays are read-only; copy once so the tensor owns writable memory
    tensor = torch.from_numpy(images.copy()).unsqueeze(1)  # (N, H, W) -> (N, 1, H, W)
    return ImageData(tensor, labels, classes, None, source or os.fspath(images_path))


def _candidates(root: Path) -> list[Path]:
    return [root, root / "raw", root / "FashionMNIST" / "raw", root / "MNIST" / "raw"]


def find_idx_files(root: str | os.PathLike, split: str) -> tuple[Path, Path | None]:
    """Locate the image and label files of ``split`` ("train" or "test") under ``root``."""
    root = Path(root)
    if split not in _PREFIX:
        raise SimCLRError(f"{root}: unknown split {split!r} for an IDX dataset (train or test)")
    if not root.is_dir():
        raise file_error(root, "dataset folder not found")
    p = _PREFIX[split]
    for folder in _candidates(root):
        names = [f"{p}-images-idx3-ubyte", f"{p}-images.idx3-ubyte"]
        images = find_file(folder, [n + s for n in names for s in (".gz", "")])
        if images is not None:
            labels = find_file(folder, [n.replace("images", "labels").replace("idx3", "idx1") + s
                                        for n in names for s in (".gz", "")])  # fmt: skip
            if labels is None:
                raise file_error(folder / f"{p}-labels-idx1-ubyte.gz", "label file not found")
            return images, labels
    raise file_error(root / f"{p}-images-idx3-ubyte.gz", "IDX image file not found (also looked in raw/)")


def has_idx_files(root: str | os.PathLike) -> bool:
    """Whether ``root`` looks like an MNIST-style IDX folder (used by ``load_dataset("auto", ...)``)."""
    root = Path(root)
    return root.is_dir() and any(
        f.is_file() and "idx3-ubyte" in f.name
        for folder in _candidates(root)
        if folder.is_dir()
        for f in folder.iterdir()
    )


def load_idx(root: str | os.PathLike, split: str = "train", classes: list[str] | None = None) -> ImageData:
    """Read the ``split`` of an MNIST-style IDX dataset in folder ``root``; images (N, 1, 28, 28) uint8."""
    images, labels = find_idx_files(root, split)
    return read_idx_pair(images, labels, classes, source=f"{os.fspath(root)} ({split})")
