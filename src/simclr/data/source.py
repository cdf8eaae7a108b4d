"""The batch source the training engine iterates over: seeded epoch order, rank shards, mid-epoch resume.

Order. Epoch ``e`` visits the images in ``torch.randperm(N)`` drawn from a CPU ``torch.Generator`` seeded
with ``(seed, e)``, so every rank computes the same permutation without communicating and a resumed run
recomputes it exactly. Global batch ``k`` is ``perm[k*B : (k+1)*B]`` with B the GLOBAL batch size.

Sharding. Rank ``r`` of ``W`` takes the contiguous slice ``[r*B/W, (r+1)*B/W)`` of each global batch, so
concatenating the ranks' shards in rank order (what ``all_gather`` does) gives back the global batch.

In memory (:class:`TensorBatchSource`, the airbench-style path): the whole uint8 tensor (or the packed
images of a folder, :class:`~simclr.data.packed.PackedImages`) is moved to the device once and each batch is
cut there, no DataLoader. Streamed (:class:`simclr.data.stream.ImageStreamSource`, for indexed folders and
tar shards too large for memory): threads decode the same order and shards, double-buffered into pinned
memory.

Each iteration yields a :class:`Batch` on the device, with b = B / W rows; ``indices`` index the dataset.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from simclr.data.base import ImageData
from simclr.data.packed import PackedImages
from simclr.errors import SimCLRError

if TYPE_CHECKING:
    from simclr.data.stream import ImageStream


class Batch(NamedTuple):
    """One rank's batch. Unpack the fields you need: ``images, labels, indices, *_ = batch``.

    ``images`` is a uint8 canvas (b, C, Hc, Wc): image ``i`` fills ``images[i, :, :H_i, :W_i]`` (top left
    aligned, zeros elsewhere) with ``(H_i, W_i) = sizes[i]``; ``sizes`` is None when every image fills the
    canvas (in-memory data, square folders). ``valid`` is None unless the source flags undecodable images
    (``on_bad="flag"``): then False marks rows that hold no image (black, at the canvas size).
    """

    images: Tensor  # uint8 (b, C, Hc, Wc), on the source's device
    labels: Tensor | None  # int64 (b,)
    indices: Tensor  # int64 (b,): dataset indices
    sizes: Tensor | None = None  # int64 (b, 2): each image's (H, W) inside the canvas
    valid: Tensor | None = None  # bool (b,): False for a flagged, undecodable image


def epoch_permutation(n: int, seed: int, epoch: int, shuffle: bool = True) -> Tensor:
    """The order of the ``n`` images in ``epoch``: int64 (n,), identical on every rank and every device."""
    if not shuffle:
        return torch.arange(n)
    g = torch.Generator()
    # One 63-bit seed per (seed, epoch) pair; the odd multiplier keeps nearby pairs far apart.
    g.manual_seed((seed * 0x9E3779B97F4A7C15 + epoch) % (1 << 63))
    return torch.randperm(n, generator=g)


class EpochBatches:
    """Which dataset indices each rank sees in each batch of an epoch (shared by every source).

    ``batch_size`` is the global batch; ``len(self)`` the number of batches per epoch, equal on all ranks.
    ``subset`` (dataset indices) restricts the epoch to those images (a labelled subset, a sample).
    With ``drop_last=False`` the last, smaller global batch is split as evenly as possible across ranks.
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, drop_last: bool, seed: int,
                 rank: int, world_size: int, subset: Tensor | None = None) -> None:  # fmt: skip
        if batch_size <= 0:
            raise SimCLRError(f"batch_size must be positive, got {batch_size}")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise SimCLRError(f"rank {rank} is not in 0..{world_size - 1}")
        if batch_size % world_size:
            raise SimCLRError(f"global batch_size {batch_size} is not divisible by world_size {world_size}")
        self.subset = torch.as_tensor(subset, dtype=torch.int64) if subset is not None else None
        n = len(self.subset) if self.subset is not None else n
        self.n, self.batch_size, self.shuffle, self.drop_last = n, batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.per_rank = batch_size // world_size
        self.epoch, self.start_batch = 0, 0

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch (its permutation) and the batch to start from (to resume mid-epoch)."""
        if not 0 <= start_batch <= len(self):
            raise SimCLRError(f"start_batch {start_batch} is not in 0..{len(self)} (batches per epoch)")
        self.epoch, self.start_batch = epoch, start_batch

    def shards(self, start_batch: int | None = None) -> Iterator[Tensor]:
        """This rank's indices for batches ``start_batch..len-1`` of the current epoch, int64 on the CPU."""
        start = self.start_batch if start_batch is None else start_batch
        perm = epoch_permutation(self.n, self.seed, self.epoch, self.shuffle)
        if self.subset is not None:  # positions in the subset -> dataset indices
            perm = self.subset[perm]
        for k in range(start, len(self)):
            batch = perm[k * self.batch_size : (k + 1) * self.batch_size]
            if len(batch) == self.batch_size:
                yield batch[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]
            else:
                yield batch.tensor_split(self.world_size)[self.rank]


class BatchSource:
    """Iterate over an epoch's batches: ``for batch in source`` (:class:`Batch`).

    Call ``set_epoch(epoch, start_batch=k)`` before each epoch; ``k > 0`` resumes mid-epoch and yields
    exactly batches ``k, k+1, ...`` of that epoch. The start batch applies to the next iteration only.
    ``len(source)`` is the number of batches in a whole epoch (equal on every rank).
    """

    def __init__(self, order: EpochBatches, device: torch.device) -> None:
        self.order = order
        self.device = device

    def __len__(self) -> int:
        return len(self.order)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's permutation and the batch the next iteration starts from."""
        self.order.set_epoch(epoch, start_batch)

    def __iter__(self) -> Iterator[Batch]:
        start, self.order.start_batch = self.order.start_batch, 0
        return self.iter_from(start)

    def iter_from(self, batch_index: int) -> Iterator[Batch]:
        """The current epoch's batches from ``batch_index`` on."""
        raise NotImplementedError


class TensorBatchSource(BatchSource):
    """Batches cut on the device from an in-memory :class:`ImageData` moved there once."""

    def __init__(self, data: ImageData, order: EpochBatches, device: torch.device, with_labels: bool = True) -> None:
        super().__init__(order, device)
        self.images = data.images.to(device)  # a tensor, or PackedImages (images of several sizes)
        self.labels = data.labels.to(device) if with_labels and data.labels is not None else None

    def iter_from(self, batch_index: int) -> Iterator[Batch]:
        for idx in self.order.shards(batch_index):
            labels = self.labels.index_select(0, idx.to(self.device)) if self.labels is not None else None
            if isinstance(self.images, PackedImages):
                images, sizes = self.images.batch(idx)
                yield Batch(images, labels, idx.to(self.device), sizes)
            else:
                idx = idx.to(self.device, non_blocking=True)
                yield Batch(self.images.index_select(0, idx), labels, idx)


def make_batch_source(
    data: ImageData | ImageStream,
    batch_size: int,
    device: torch.device | str,
    *,
    shuffle: bool = True,
    drop_last: bool = True,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    threads: int | None = None,
    on_bad: str = "substitute",
    decode: str = "auto",
    subset: Tensor | None = None,
    with_labels: bool = True,
) -> BatchSource:
    """The batch source for ``data``: in memory on ``device`` for :class:`ImageData`, streamed otherwise.

    ``data``: :class:`ImageData` or :class:`~simclr.data.stream.ImageStream` (``threads`` decode threads,
    ``on_bad`` substitute | flag,
    ``decode`` auto | cpu | gpu). ``batch_size`` is the global batch over all ranks (must be divisible by
    ``world_size``); each rank gets ``batch_size // world_size`` images per batch. ``subset``: dataset
    indices the epochs go over (all images when None). ``with_labels=False``: batches carry no labels and
    the data's labels are never read.
    """
    from simclr.data.stream import ImageStream, ImageStreamSource  # stream builds on this module

    device = torch.device(device)
    n = len(data)
    order = EpochBatches(n, batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed, rank=rank,
                         world_size=world_size, subset=subset)  # fmt: skip
    if isinstance(data, ImageStream):
        return ImageStreamSource(
            data, order, device, threads=threads, on_bad=on_bad, decode=decode, with_labels=with_labels
        )
    if isinstance(data, ImageData) or hasattr(data, "images"):  # in memory (or an ImageData look-alike)
        return TensorBatchSource(data, order, device, with_labels)
    raise TypeError(f"make_batch_source expects ImageData or ImageStream, got {type(data).__name__}")
