"""A ``.npz`` archive of uint8 images.

Keys: ``images`` uint8, shaped (N, H, W) (grayscale), (N, H, W, C) or (N, C, H, W) with C = 1 or 3;
optional ``labels`` (N,) integers; optional ``classes`` (K,) strings, label = index. For ``split="test"`` the
keys ``test_images`` / ``test_labels`` are read instead. Loaded with ``allow_pickle=False``.

Layout policy for 4-D arrays: channels-last (N, H, W, C) when the last axis is 1 or 3, otherwise
channels-first (N, C, H, W) when axis 1 is 1 or 3; when both are (e.g. (N, 3, 3, 3)) channels-last wins,
the layout numpy/PIL code writes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from simclr.data.base import ImageData, check_labels
from simclr.errors import SimCLRError, file_error


def to_nchw(images: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """Bring a uint8 image array to (N, C, H, W) following the module's layout policy."""
    if images.dtype != np.uint8:
        raise file_error(path, f"images must be uint8, got {images.dtype} (convert with .astype(np.uint8))")
    if images.ndim == 3:
        return images[:, None]
    if images.ndim == 4:
        if images.shape[3] in (1, 3):
            return images.transpose(0, 3, 1, 2)
        if images.shape[1] in (1, 3):
            return images
        raise file_error(path, f"images {images.shape}: no channel axis of size 1 or 3 (at axis 1 or 3)")
    raise file_error(path, f"images must be (N, H, W) or 4-D, got shape {images.shape}")


def load_npz(path: str | os.PathLike, split: str = "train") -> ImageData:
    """Read ``images`` (and ``labels``, ``classes``) from an ``.npz`` file: uint8 (N, C, H, W)."""
    path = Path(path)
    if split not in ("train", "test"):
        raise SimCLRError(f"{path}: unknown split {split!r} for an npz file (train or test)")
    if not path.is_file():
        raise file_error(path, "file not found")
    prefix = "" if split == "train" else "test_"
    with open(path, "rb") as f:
        signature = f.read(4)
    if signature not in (b"PK\x03\x04", b"PK\x05\x06"):  # npz = zip; anything else would go to pickle
        raise file_error(path, "not an .npz archive (no zip signature)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.keys())
            if f"{prefix}images" not in keys:
                raise file_error(path, f"no {prefix}images array (keys: {', '.join(keys[:10]) or 'none'})")
            images = archive[f"{prefix}images"]
            labels = archive[f"{prefix}labels"] if f"{prefix}labels" in keys else None
            classes = archive["classes"] if "classes" in keys else None
    except SimCLRError:
        raise
    except Exception as e:  # zipfile / numpy raise BadZipFile, ValueError, OSError, EOFError, zlib.error, ...
        detail = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise file_error(path, f"not a valid .npz archive ({detail})") from None
    images = np.ascontiguousarray(to_nchw(images, path))
    if images.shape[0] == 0:
        raise file_error(path, f"{prefix}images is empty")
    class_names = None
    if classes is not None:
        if classes.ndim != 1 or classes.dtype.kind not in "US":
            raise file_error(path, "classes must be a vector of strings")
        class_names = [str(c) for c in classes.tolist()]
    label_tensor = None
    if labels is not None:
        label_tensor = check_labels(labels, len(images), path, len(class_names) if class_names else None)
    return ImageData(torch.from_numpy(images), label_tensor, class_names, None, f"{path} ({split})")
