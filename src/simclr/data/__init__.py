"""Data readers: every format becomes uint8 images (N, C, H, W) and int64 labels (N,) or None.

``access.open_split`` is what the stages call: ``load_dataset(name, path, split)`` (in memory) or, for
image folders and tar shards too large for memory, ``stream.ImageStream`` (``index``, ``decode``). The
readers per format live in ``idx`` (MNIST, Fashion-MNIST), ``cifar``, ``stl10``, ``folder`` (image folders,
kept at their aspect ratio, ``packed``) and ``npz``; ``download`` fetches known datasets; ``source`` turns
data into the batches every stage iterates.

Default locations: Fashion-MNIST is looked for in ``/usr/share/datasets/fashion-mnist`` (the Debian
package). Otherwise, and for every other known dataset, a missing ``path`` means the download cache
``$SIMCLR_DATA/<name>`` (default ``~/.cache/simclr/datasets/<name>``), which ``download=True`` fills.
"""

from __future__ import annotations

import os
from pathlib import Path

from simclr.data.base import KNOWN_STATS, ImageData, channel_stats, dataset_stats, resize_square
from simclr.data.cifar import is_cifar_folder, load_cifar
from simclr.data.download import DATASETS, download_dataset
from simclr.data.folder import DEFAULT_IMAGE_SIZE, load_folder
from simclr.data.idx import FASHION_CLASSES, MNIST_CLASSES, has_idx_files, load_idx
from simclr.data.npz import load_npz
from simclr.data.source import BatchSource, make_batch_source
from simclr.data.stl10 import is_stl_folder, load_stl10
from simclr.errors import SimCLRError, file_error

DATASET_NAMES = ("fashion-mnist", "mnist", "cifar10", "cifar100", "stl10", "folder", "npz", "auto")
SYSTEM_PATHS = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}
_DOWNLOADABLE = frozenset(DATASETS)


def cache_dir() -> Path:
    """Where downloads go when no path is given: ``$SIMCLR_DATA`` or ``~/.cache/simclr/datasets``."""
    if os.environ.get("SIMCLR_DATA"):
        return Path(os.environ["SIMCLR_DATA"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "simclr" / "datasets"


def detect_format(path: str | os.PathLike) -> str:
    """Guess what ``path`` holds: npz, mnist / fashion-mnist (IDX), cifar10, cifar100, stl10 or folder."""
    p = Path(path)
    if not p.exists():
        raise file_error(p, "not found")
    if p.is_file():
        if p.suffix.lower() == ".npz":
            return "npz"
        raise file_error(p, "cannot tell the dataset format of this file (expected a .npz or a folder)")
    if has_idx_files(p):
        return "fashion-mnist" if "fashion" in os.fspath(p.resolve()).lower() else "mnist"
    cifar = is_cifar_folder(p)
    if cifar:
        return cifar
    if is_stl_folder(p):
        return "stl10"
    return "folder"


def _present(name: str, root: Path) -> bool:
    if name in ("mnist", "fashion-mnist"):
        return has_idx_files(root)
    if name in ("cifar10", "cifar100"):
        return is_cifar_folder(root) == name
    if name == "stl10":
        return is_stl_folder(root)
    return root.exists()


def _resolve_path(name: str, path: str | os.PathLike | None, download: bool) -> Path:
    """The folder or file to read, downloading into it first when asked and needed."""
    if path is None:
        if name in ("folder", "npz", "auto"):
            raise SimCLRError(f"dataset {name!r} needs a path (data.path / --data)")
        system = SYSTEM_PATHS.get(name)
        root = system if system is not None and _present(name, system) else cache_dir() / name
    else:
        root = Path(path).expanduser()
    if name in _DOWNLOADABLE and not _present(name, root):
        if download:
            download_dataset(name, root)
        elif path is None:
            raise SimCLRError(f"{name}: not found at {root}; pass a path (data.path / --data) or download=True")
    return root


def _folder_split(root: Path, split: str) -> Path:
    """``root/<split>`` when it exists (``val`` stands in for ``test``); ``root`` itself for ``train``."""
    for candidate in [split] + (["val"] if split == "test" else []):
        if (root / candidate).is_dir():
            return root / candidate
    if split == "train":
        return root
    raise file_error(root / split, f"no {split!r} split folder in this image folder")


def load_dataset(
    name: str,
    path: str | os.PathLike | None = None,
    split: str = "train",
    image_size: int | None = None,
    download: bool = False,
    max_bad_fraction: float = 0.01,
) -> ImageData:
    """Read ``split`` of dataset ``name`` into memory: uint8 images (N, C, H, W), int64 labels (N,) or None.

    ``name``: fashion-mnist, mnist, cifar10, cifar100, stl10, folder, npz or auto (guessed from ``path``).
    ``split``: train or test; stl10 also unlabeled and train+unlabeled (no labels); image folders read
    ``path/<split>`` when it exists. ``image_size``: side of the stored square images; folders default to
    224, array datasets keep their native size unless given (shorter side resized, then centre-cropped).
    ``download``: fetch a known dataset from its official address when it is not found at ``path``.
    ``max_bad_fraction``: share of undecodable images an image folder may skip before it is an error.
    """
    if name not in DATASET_NAMES:
        raise SimCLRError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    if image_size is not None and image_size <= 0:
        raise SimCLRError(f"image_size must be positive, got {image_size}")
    root = _resolve_path(name, path, download)
    if name == "auto":
        name = detect_format(root)
    if name in ("fashion-mnist", "mnist"):
        data = load_idx(root, split, FASHION_CLASSES if name == "fashion-mnist" else MNIST_CLASSES)
    elif name in ("cifar10", "cifar100"):
        data = load_cifar(root, name, split)
    elif name == "stl10":
        data = load_stl10(root, split)
    elif name == "npz":
        data = load_npz(root, split)
    else:
        return load_folder(_folder_split(root, split), image_size, max_bad_fraction)
    if image_size is not None:
        data.images = resize_square(data.images, image_size)
    return data


__all__ = [
    "DATASET_NAMES",
    "DEFAULT_IMAGE_SIZE",
    "KNOWN_STATS",
    "BatchSource",
    "ImageData",
    "cache_dir",
    "channel_stats",
    "dataset_stats",
    "detect_format",
    "download_dataset",
    "load_cifar",
    "load_dataset",
    "load_folder",
    "load_idx",
    "load_npz",
    "load_stl10",
    "make_batch_source",
]
