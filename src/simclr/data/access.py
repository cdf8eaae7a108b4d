"""One way for every stage to get images: in memory or streamed, chosen by size, read as batches.

:func:`open_split` opens a split of a configured dataset: array datasets (Fashion-MNIST, CIFAR, STL-10,
npz) in memory; image folders and tar shards in memory when ``data.in_memory`` says so (or, ``None``, when
their estimated size fits :data:`IN_MEMORY_BUDGET`), else as an :class:`~simclr.data.stream.ImageStream`
decoded batch by batch. Either way a stage reads them through :func:`batches` (a
:class:`~simclr.data.source.BatchSource` of :class:`~simclr.data.source.Batch`), and :func:`take` /
:func:`sample` / :func:`data_stats` cover the few places that want a handful of images at random.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from simclr.data.base import ImageData, channel_stats
from simclr.data.packed import PackedImages
from simclr.data.source import BatchSource, make_batch_source
from simclr.data.stream import ImageStream

Data = ImageData | ImageStream
# Folders larger than this (estimated decoded bytes at the stored side) are streamed when in_memory is None.
IN_MEMORY_BUDGET = int(os.environ.get("SIMCLR_IN_MEMORY_BUDGET", 8 * 2**30))
STREAMED_KINDS = ("folder", "auto")


def _is_image_source(name: str, path: str | os.PathLike | None) -> bool:
    if name == "folder":
        return True
    if name == "auto" and path is not None:
        from simclr.data import detect_format

        p = Path(path).expanduser()
        return (p.is_dir() and detect_format(p) == "folder") or p.suffix == ".tar"
    return False


def open_split(
    name: str,
    path: str | os.PathLike | None,
    split: str,
    image_size: int | None = None,
    *,
    in_memory: bool | None = None,
    download: bool = False,
    max_bad_fraction: float = 0.01,
    on_memory_estimate=None,
) -> Data:
    """``split`` of dataset ``name`` at ``path``: :class:`ImageData` in memory, or a streamed
    :class:`ImageStream` for image folders and tar shards too large for memory (``in_memory``: True, False, or
    None = by the estimate against :data:`IN_MEMORY_BUDGET`). Folders keep each image's aspect ratio,
    shorter side ``image_size`` (default 224)."""
    from simclr.data import load_dataset
    from simclr.data.stream import open_image_stream

    if not _is_image_source(name, path) or in_memory is True:
        return load_dataset(name, path, split=split, image_size=image_size, download=download,
                            max_bad_fraction=max_bad_fraction)  # fmt: skip
    stream = open_image_stream(path, split, image_size, max_bad_fraction)
    if in_memory is None:
        side = stream.image_size
        estimate = len(stream) * 3 * side * side * 4 // 3  # a typical 4:3 photo at the stored side
        if on_memory_estimate is not None:
            on_memory_estimate(estimate)
        if estimate <= IN_MEMORY_BUDGET:
            return load_dataset(name if name != "auto" else "folder", path, split=split, image_size=image_size,
                                max_bad_fraction=max_bad_fraction)  # fmt: skip
    return stream


def open_images(
    dataset: str,
    path: str | os.PathLike | None,
    split: str = "train",
    image_size: int | None = None,
    download: bool = False,
    in_memory: bool | None = False,
) -> Data:
    """A dataset given by kind (``auto``: detected from ``path``) for the read-only commands (embed, predict,
    report): image folders streamed by default, every other format in memory."""
    from simclr.data import detect_format
    from simclr.errors import SimCLRError

    kind = dataset
    if dataset == "auto" and path is not None:
        kind = detect_format(path)
    if kind == "folder" and path is None:
        raise SimCLRError("dataset 'folder' needs a path (--data)")
    return open_split(kind, path, split, image_size, in_memory=in_memory, download=download)


def sample_indices(n: int, k: int, seed: int = 0) -> Tensor:
    """``min(n, k)`` distinct indices of ``range(n)``, seeded, in increasing order."""
    if k >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:k].sort().values


def count(data: Data) -> int:
    """How many images."""
    return len(data)


def stored_side(data: Data) -> int:
    """The side images are stored at: the square side of array data, the shorter side of a folder's."""
    if isinstance(data, ImageStream):
        return data.image_size
    if isinstance(data.images, PackedImages):
        return data.images.side
    return int(data.images.shape[-1])


def batches(
    data: Data,
    batch_size: int,
    device: torch.device | str,
    *,
    shuffle: bool = False,
    drop_last: bool = False,
    seed: int = 0,
    subset: Tensor | None = None,
    on_bad: str = "substitute",
    rank: int = 0,
    world_size: int = 1,
    threads: int | None = None,
    with_labels: bool = True,
) -> BatchSource:
    """A batch source over ``data`` (or its ``subset`` of indices): in dataset order unless ``shuffle``.

    ``on_bad``: for streamed data, ``substitute`` an undecodable image by the next one (training) or
    ``flag`` it (``Batch.valid``; evaluation rows that must keep their names).
    """
    return make_batch_source(
        data, batch_size, device, shuffle=shuffle, drop_last=drop_last, seed=seed, rank=rank,
        world_size=world_size, subset=subset, on_bad=on_bad, threads=threads, with_labels=with_labels,
    )  # fmt: skip


def take(data: Data, indices: Tensor | list[int]) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``(canvas uint8 (n, C, H, W) on the CPU, sizes (n, 2) or None, labels (n,) or None)`` of ``indices``."""
    idx = torch.as_tensor(indices, dtype=torch.int64)
    labels = data.labels[idx] if data.labels is not None else None
    if isinstance(data, ImageStream):
        batch = next(iter(batches(data, max(len(idx), 1), "cpu", subset=idx)))
        return batch.images, batch.sizes, labels
    if isinstance(data.images, PackedImages):
        images, sizes = data.images.batch(idx)
        return images, sizes, labels
    return data.images.index_select(0, idx), None, labels


def take_square(data: Data, indices: Tensor | list[int]) -> tuple[Tensor, Tensor | None]:
    """``(uint8 (n, C, S, S), labels)``: the centre square of each image at the stored side S (pictures)."""
    images, sizes, labels = take(data, indices)
    if sizes is None:
        return images, labels
    side = int(sizes.min()) if len(sizes) else 0
    squares = torch.empty(len(images), images.shape[1], side, side, dtype=torch.uint8)
    for k, (h, w) in enumerate(sizes.tolist()):
        top, left = (h - side) // 2, (w - side) // 2
        squares[k] = images[k, :, top : top + side, left : left + side]
    return squares, labels


def sample(data: Data, n: int, seed: int = 0) -> ImageData:
    """At most ``n`` images drawn without replacement (seeded, in increasing index order), in memory."""
    total = len(data)
    if n >= total and isinstance(data, ImageData):
        return data
    idx = sample_indices(total, n, seed)
    if isinstance(data, ImageData) and not isinstance(data.images, PackedImages):
        labels = data.labels[idx] if data.labels is not None else None
        names = [data.names[i] for i in idx.tolist()] if data.names is not None else None
        return ImageData(data.images[idx], labels, data.classes, names, data.source)
    images, sizes, labels = take(data, idx)
    arrays = [images[k, :, :h, :w].permute(1, 2, 0).numpy() for k, (h, w) in enumerate(sizes.tolist())]
    names = [data.names[i] for i in idx.tolist()] if data.names is not None else None
    return ImageData(PackedImages.from_arrays(arrays), labels, data.classes, names, data.source)


def without_labels(data: Data) -> Data:
    """The same images with no labels (distillation alone must not be able to read them)."""
    if isinstance(data, ImageData):
        return dataclasses.replace(data, labels=None)
    unlabelled = copy.copy(data)
    unlabelled.labels = None
    return unlabelled


def data_stats(data: Data, max_images: int = 2000) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units, over at most ``max_images`` images (each over its extent)."""
    if isinstance(data, ImageData) and not isinstance(data.images, PackedImages):
        return channel_stats(data.images, max_images)
    part = sample(data, min(max_images, 256)).images  # packed or streamed: whole images, so fewer of them
    pixels = np.concatenate([part.image(i).reshape(part.channels, -1).numpy() for i in range(len(part))], axis=1)
    flat = torch.from_numpy(pixels).unsqueeze(-1).unsqueeze(0)  # (1, C, P, 1): channel_stats' layout
    return channel_stats(flat)


__all__ = [
    "IN_MEMORY_BUDGET", "Data", "batches", "count", "data_stats", "open_images", "open_split", "sample",
    "sample_indices", "stored_side", "take", "take_square", "without_labels",
]  # fmt: skip
