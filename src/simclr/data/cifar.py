"""CIFAR-10 and CIFAR-100, "python version" pickle batches.

Layout: ``cifar-10-batches-py/data_batch_1..5`` (train), ``test_batch``, ``batches.meta``;
``cifar-100-python/train``, ``test``, ``meta``. Each batch is a pickled dict with bytes keys: ``b"data"``
a uint8 array (N, 3072) holding the red, green then blue 32x32 planes row-major, and ``b"labels"``
(CIFAR-10) or ``b"fine_labels"`` (CIFAR-100).

The pickles are loaded with a restricted unpickler that only resolves numpy's array reconstruction
functions and a few plain builtin types, so a tampered file cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simclr.data.base import ImageData, check_labels
from simclr.errors import SimCLRError, file_error

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip

_LAYOUT = {
    # name: (folder, train files, test files, label key, meta file, class-names key, number of classes)
    "cifar10": (
        "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
        b"labels", "batches.meta", b"label_names", 10,
    ),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", "meta", b"fine_label_names", 100),
}  # fmt: skip

# What a CIFAR pickle may reference: numpy array/scalar reconstruction (both the numpy 1.x and 2.x module
# names), codecs.encode (Python 3 writes bytes that way at protocol <= 2) and inert container types.
_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
    ("builtins", "list"),
    ("builtins", "dict"),
    ("builtins", "tuple"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def safe_unpickle(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` (Python 2 or 3 pickles; strings kept as bytes) allowing only numpy arrays."""
    path = Path(path)
    if not path.is_file():
        raise file_error(path, "file not found")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise file_error(path, f"cannot read ({e.strerror or e})") from None
    try:
        # From memory, not the file: a bogus length opcode then fails as truncation instead of a huge read.
        with warnings.catch_warnings():  # numpy warns on odd dtype arguments in damaged files; we raise instead
            warnings.simplefilter("ignore")
            return _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except RecursionError:
        raise file_error(path, "not a valid pickle (nested too deeply)") from None
    except Exception as e:  # pickle raises many types on bad input (ValueError, KeyError, EOFError, ...)
        detail = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise file_error(path, f"not a valid CIFAR pickle ({detail})") from None


def read_cifar_batch(path: str | os.PathLike, label_key: bytes, num_classes: int) -> tuple[np.ndarray, torch.Tensor]:
    """One batch file: images (N, 3, 32, 32) uint8 and labels (N,) int64, both checked."""
    batch = safe_unpickle(path)
    if not isinstance(batch, dict):
        raise file_error(path, f"expected a dict, found {type(batch).__name__}")
    if b"data" not in batch or label_key not in batch:
        keys = ", ".join(sorted(repr(k) for k in batch)[:8])
        raise file_error(path, f"missing key b'data' or {label_key!r} (keys: {keys})")
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise file_error(path, "b'data' is not a uint8 array")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise file_error(path, f"b'data' has shape {data.shape}, expected (N, 3072)")
    try:
        raw_labels = np.asarray(batch[label_key])
    except Exception:
        raise file_error(path, f"{label_key!r} is not a list of integers") from None
    labels = check_labels(raw_labels, data.shape[0], path, num_classes)
    return data.reshape(-1, 3, 32, 32), labels  # R, G, B planes, each row-major 32x32


def _class_names(path: Path, key: bytes, expected: int) -> list[str] | None:
    if not path.is_file():
        return None
    meta = safe_unpickle(path)
    names = meta.get(key) if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != expected:
        raise file_error(path, f"expected {expected} class names under {key!r}")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]


def find_cifar_folder(root: str | os.PathLike, name: str) -> Path:
    """The batches folder of ``name`` given either that folder or its parent."""
    root = Path(root)
    folder, train_files = _LAYOUT[name][0], _LAYOUT[name][1]
    for candidate in (root, root / folder):
        if (candidate / train_files[0]).is_file():
            return candidate
    if not root.exists():
        raise file_error(root, "dataset folder not found")
    raise file_error(root / folder / train_files[0], f"{name} batch file not found")


def load_cifar(root: str | os.PathLike, name: str = "cifar10", split: str = "train") -> ImageData:
    """Read the ``split`` ("train" or "test") of CIFAR-10 / CIFAR-100 under ``root``: (N, 3, 32, 32) uint8."""
    if name not in _LAYOUT:
        raise SimCLRError(f"unknown CIFAR dataset {name!r} (cifar10 or cifar100)")
    if split not in ("train", "test"):
        raise SimCLRError(f"{root}: unknown split {split!r} for {name} (train or test)")
    _, train_files, test_files, label_key, meta, names_key, num_classes = _LAYOUT[name]
    folder = find_cifar_folder(root, name)
    parts = [
        read_cifar_batch(folder / f, label_key, num_classes) for f in (train_files if split == "train" else test_files)
    ]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.cat([p[1] for p in parts])
    classes = _class_names(folder / meta, names_key, num_classes)
    if classes is None and name == "cifar10":
        classes = list(CIFAR10_CLASSES)
    return ImageData(images, labels, classes, None, f"{folder} ({split})")


def is_cifar_folder(root: str | os.PathLike) -> str | None:
    """ "cifar10" / "cifar100" when ``root`` (or its standard sub-folder) holds that dataset, else None."""
    for name in _LAYOUT:
        try:
            find_cifar_folder(root, name)
            return name
        except SimCLRError:
            pass
    return None
