"""STL-10 binary files (``stl10_binary/``).

``train_X.bin`` (5,000 images), ``test_X.bin`` (8,000) and ``unlabeled_X.bin`` (100,000) are raw uint8
records of 3 x 96 x 96 bytes: the red, green and blue planes, each stored column-major (Fortran order, as
written by MATLAB). Reading a record as (3, 96, 96) therefore gives (channel, column, row), and the last two
axes are swapped to get (C, H, W). ``train_y.bin`` / ``test_y.bin`` hold one byte per image, labels 1..10,
returned as 0..9.

Files are memory-mapped, never read whole: ``unlabeled`` (2.8 GB) is returned as a zero-copy transposed
view of a copy-on-write map, so pages are read on demand. ``train+unlabeled`` has to be one tensor and is
materialised (about 2.9 GB). Splits with the unlabeled images carry no labels.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from simclr.data.base import ImageData, check_labels
from simclr.errors import SimCLRError, file_error

SIDE = 96
RECORD = 3 * SIDE * SIDE
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
SPLITS = ("train", "test", "unlabeled", "train+unlabeled")


def read_stl_images(path: str | os.PathLike, copy: bool = True) -> Tensor:
    """Images of one ``*_X.bin`` file as uint8 (N, 3, 96, 96); ``copy=False`` keeps a memory-mapped view."""
    path = Path(path)
    if not path.is_file():
        raise file_error(path, "file not found")
    size = path.stat().st_size
    if size == 0:
        raise file_error(path, "empty file")
    if size % RECORD:
        raise file_error(path, f"size {size} is not a multiple of the {RECORD}-byte image record (truncated?)")
    try:
        # mode "c": copy-on-write, so the array is writable for torch yet the file is never modified
        mapped = np.memmap(path, dtype=np.uint8, mode="c", shape=(size // RECORD, 3, SIDE, SIDE))
    except (OSError, ValueError) as e:
        raise file_error(path, f"cannot map file ({e})") from None
    images = torch.from_numpy(mapped).transpose(2, 3)  # (N, C, col, row) -> (N, C, H, W)
    return images.contiguous() if copy else images


def read_stl_labels(path: str | os.PathLike, n_images: int) -> Tensor:
    """Labels of a ``*_y.bin`` file, 1..10 on disk, returned as int64 0..9 (checked against ``n_images``)."""
    path = Path(path)
    if not path.is_file():
        raise file_error(path, "file not found")
    raw = np.fromfile(path, dtype=np.uint8)
    if len(raw) and (raw.min() < 1 or raw.max() > 10):
        bad = int(raw.min()) if raw.min() < 1 else int(raw.max())
        raise file_error(path, f"label {bad} out of range (STL-10 labels are 1..10)")
    return check_labels(raw.astype(np.int64) - 1, n_images, path, 10)


def find_stl_folder(root: str | os.PathLike) -> Path:
    """``root`` itself or ``root/stl10_binary``, whichever holds the STL-10 files."""
    root = Path(root)
    for candidate in (root, root / "stl10_binary"):
        if any((candidate / f).is_file() for f in ("train_X.bin", "test_X.bin", "unlabeled_X.bin")):
            return candidate
    if not root.exists():
        raise file_error(root, "dataset folder not found")
    raise file_error(root / "stl10_binary" / "train_X.bin", "STL-10 file not found")


def _class_names(folder: Path) -> list[str]:
    path = folder / "class_names.txt"
    if path.is_file():
        names = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
        if len(names) == 10:
            return names
    return list(STL10_CLASSES)


def load_stl10(root: str | os.PathLike, split: str = "train") -> ImageData:
    """Read an STL-10 ``split`` (train, test, unlabeled, train+unlabeled) under ``root``: (N, 3, 96, 96)."""
    if split not in SPLITS:
        raise SimCLRError(f"{root}: unknown split {split!r} for stl10 ({', '.join(SPLITS)})")
    folder = find_stl_folder(root)
    classes = _class_names(folder)
    source = f"{folder} ({split})"
    if split in ("train", "test"):
        images = read_stl_images(folder / f"{split}_X.bin")
        labels = read_stl_labels(folder / f"{split}_y.bin", len(images))
        return ImageData(images, labels, classes, None, source)
    unlabeled = read_stl_images(folder / "unlabeled_X.bin", copy=False)
    if split == "unlabeled":
        return ImageData(unlabeled, None, classes, None, source)
    train = read_stl_images(folder / "train_X.bin", copy=False)
    return ImageData(torch.cat([train, unlabeled]), None, classes, None, source)


def is_stl_folder(root: str | os.PathLike) -> bool:
    """Whether ``root`` (or ``root/stl10_binary``) holds STL-10 binary files."""
    try:
        find_stl_folder(root)
        return True
    except SimCLRError:
        return False
