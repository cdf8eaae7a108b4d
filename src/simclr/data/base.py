"""What every reader shares: the :class:`ImageData` contract, checked file access, and image statistics.

Readers return uint8 images ``(N, C, H, W)`` (C = 1 or 3) and int64 labels ``(N,)`` or None. Every problem
with a file becomes one :class:`~simclr.errors.SimCLRError` line ``<file>: <problem>``; the helpers here are
where numpy / gzip / OS exceptions are turned into that line, so readers never leak a raw traceback.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from simclr.errors import file_error

# Per-channel mean / std of pixel values in [0, 1] over the train split, for normalisation.
KNOWN_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
}


@dataclass
class ImageData:
    """A dataset held in memory: the contract between readers and everything downstream.

    ``images`` uint8 (N, C, H, W), or for image folders whose images differ in size a
    :class:`~simclr.data.packed.PackedImages` (each image at its own size, shorter side the stored side);
    ``labels`` int64 (N,) or None; ``classes[label]`` is the class name;
    ``names`` are file names relative to the folder (image folders only); ``source`` says where the data
    came from; ``bad_files`` lists images that were skipped because they could not be decoded.
    """

    images: Tensor  # or PackedImages
    labels: Tensor | None
    classes: list[str] | None
    names: list[str] | None
    source: str
    bad_files: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


def read_file(path: str | os.PathLike) -> bytes:
    """All bytes of ``path``, transparently gunzipped when the file starts with the gzip magic number."""
    path = Path(path)
    if not path.is_file():
        raise file_error(path, "file not found" if not path.exists() else "not a regular file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise file_error(path, f"cannot read ({e.strerror or e})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise file_error(path, f"corrupt or truncated gzip data ({e})") from None
    return raw


def find_file(folder: Path, names: list[str]) -> Path | None:
    """The first of ``names`` that exists in ``folder`` (callers list plain and ``.gz`` variants)."""
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def check_labels(labels: np.ndarray, n_images: int, path: str | os.PathLike, num_classes: int | None) -> Tensor:
    """Check a label vector against its images and return it as int64 ``(N,)``.

    Raises SimCLRError naming ``path`` when the count differs from ``n_images``, a label is negative, or a
    label is ``>= num_classes`` (when the class count is known).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise file_error(path, f"labels must be a vector, got shape {tuple(labels.shape)}")
    if labels.dtype.kind not in "iub":
        raise file_error(path, f"labels must be integers, got dtype {labels.dtype}")
    if len(labels) != n_images:
        raise file_error(path, f"{len(labels)} labels for {n_images} images")
    out = torch.from_numpy(labels.astype(np.int64, copy=True))
    if len(out):
        lo, hi = int(out.min()), int(out.max())
        if lo < 0 or (num_classes is not None and hi >= num_classes):
            bad = lo if lo < 0 else hi
            limit = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
            raise file_error(path, f"label {bad} out of range (expected {limit})")
    return out


def channel_stats(images: Tensor, max_images: int = 10_000) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images ``(N, C, H, W)``, in [0, 1] units.

    At most ``max_images`` evenly spaced images are used, so the cost is bounded for large (or memory-mapped)
    datasets. Sums are taken in float64, chunk by chunk, so no float copy of the whole sample is made.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"channel_stats expects a non-empty (N, C, H, W) tensor, got {tuple(images.shape)}")
    n, c = images.shape[:2]
    idx = torch.linspace(0, n - 1, min(n, max_images)).round().long().unique()
    total = torch.zeros(c, dtype=torch.int64)
    total_sq = torch.zeros(c, dtype=torch.int64)
    count = 0
    for chunk in idx.split(1024):
        # exact integer sums (int32 squares fit 255^2; torch.sum accumulates integers in int64)
        x = images.index_select(0, chunk.to(images.device)).to("cpu", torch.int32)
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total.double() / (255.0 * count)
    std = (total_sq.double() / (255.0**2 * count) - mean * mean).clamp_min(0).sqrt()
    return tuple(round(float(m), 4) for m in mean), tuple(round(max(float(s), 1e-3), 4) for s in std)


def dataset_stats(name: str, data: ImageData | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation constants: published values for known datasets, else ``channel_stats(data.images)``."""
    if name in KNOWN_STATS:
        return KNOWN_STATS[name]
    if data is None:
        raise ValueError(f"no known statistics for dataset {name!r}; pass the loaded data to compute them")
    return channel_stats(data.images)


def resize_square(images: Tensor, size: int, chunk: int = 512) -> Tensor:
    """Resize uint8 ``(N, C, H, W)`` so the shorter side is ``size``, then centre-crop to ``size x size``.

    The same storage policy as image folders, applied to array datasets when ``image_size`` is given.
    Antialiased bilinear, done in chunks so memory stays bounded; returns a new uint8 tensor.
    """
    n, c, h, w = images.shape
    if h == size and w == size:
        return images
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    out = torch.empty((n, c, size, size), dtype=torch.uint8)
    for start in range(0, n, chunk):
        x = images[start : start + chunk].float()
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + chunk] = x[:, :, top : top + size, left : left + size].round().clamp(0, 255).byte()
    return out
