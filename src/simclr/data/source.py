"""The batch source the training engine iterates over: seeded epoch order, rank shards, mid-epoch resume.

Order. Epoch ``e`` visits the images in ``torch.randperm(N)`` drawn from a CPU ``torch.Generator`` seeded
with ``(seed, e)``, so every rank computes the same permutation without communicating and a resumed run
recomputes it exactly. Global batch ``k`` is ``perm[k*B : (k+1)*B]`` with B the GLOBAL batch size.

Sharding. Rank ``r`` of ``W`` takes the contiguous slice ``[r*B/W, (r+1)*B/W)`` of each global batch, so
concatenating the ranks' shards in rank order (what ``all_gather`` does) gives back the global batch.

In memory (:class:`TensorBatchSource`, the airbench-style path): the whole uint8 tensor is moved to the
device once and each batch is an ``index_select`` there, no DataLoader. Streamed
(:class:`StreamBatchSource`, for :class:`~simclr.data.folder.FolderStream`): a DataLoader whose batch
sampler is the same order and sharding, decoding in worker processes, pinned memory and non-blocking copies
on CUDA.

Each iteration yields a :class:`Batch` on the device, with b = B / W rows; ``indices`` index the dataset.
The streamed source for indexed folders and tar shards, whose images keep their aspect ratio, is
:class:`simclr.data.stream.ImageStreamSource`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from simclr.data.base import ImageData
from simclr.data.folder import FolderStream
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
    """Which dataset indices each rank sees in each batch of an epoch (shared by both sources).

    ``batch_size`` is the global batch; ``len(self)`` the number of batches per epoch, equal on all ranks.
    With ``drop_last=False`` the last, smaller global batch is split as evenly as possible across ranks.
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, drop_last: bool, seed: int,
                 rank: int, world_size: int) -> None:  # fmt: skip
        if batch_size <= 0:
            raise SimCLRError(f"batch_size must be positive, got {batch_size}")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise SimCLRError(f"rank {rank} is not in 0..{world_size - 1}")
        if batch_size % world_size:
            raise SimCLRError(f"global batch_size {batch_size} is not divisible by world_size {world_size}")
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

    def __init__(self, data: ImageData, order: EpochBatches, device: torch.device) -> None:
        super().__init__(order, device)
        self.images = data.images.to(device)
        self.labels = data.labels.to(device) if data.labels is not None else None

    def iter_from(self, batch_index: int) -> Iterator[Batch]:
        for idx in self.order.shards(batch_index):
            idx = idx.to(self.device, non_blocking=True)
            labels = self.labels.index_select(0, idx) if self.labels is not None else None
            yield Batch(self.images.index_select(0, idx), labels, idx)


class _ShardSampler(Sampler[list[int]]):
    """A DataLoader batch sampler reading the current epoch and start batch from an :class:`EpochBatches`."""

    def __init__(self, order: EpochBatches) -> None:
        self.order = order
        self.start = 0

    def __len__(self) -> int:
        return len(self.order) - self.start

    def __iter__(self) -> Iterator[list[int]]:
        for idx in self.order.shards(self.start):
            if len(idx):  # a rank can get nothing of a tiny last batch (drop_last=False); collate can't
                yield idx.tolist()


class StreamBatchSource(BatchSource):
    """Batches decoded by DataLoader workers from a :class:`FolderStream`, then copied to the device."""

    def __init__(self, data: FolderStream, order: EpochBatches, device: torch.device, workers: int) -> None:
        super().__init__(order, device)
        self.has_labels = data.labels is not None
        self.sampler = _ShardSampler(order)
        cuda = device.type == "cuda"
        self.loader = DataLoader(
            data, batch_sampler=self.sampler, num_workers=workers, pin_memory=cuda,
            persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
        )  # fmt: skip

    def iter_from(self, batch_index: int) -> Iterator[Batch]:
        self.sampler.start = batch_index
        for images, labels, idx in self.loader:
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True) if self.has_labels else None
            yield Batch(images, labels, idx.to(self.device, non_blocking=True))


def make_batch_source(
    data: ImageData | FolderStream | ImageStream,
    batch_size: int,
    device: torch.device | str,
    *,
    shuffle: bool = True,
    drop_last: bool = True,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 2,
    threads: int | None = None,
    on_bad: str = "substitute",
    decode: str = "auto",
) -> BatchSource:
    """The batch source for ``data``: in memory on ``device`` for :class:`ImageData`, streamed otherwise.

    ``data``: :class:`ImageData`, :class:`FolderStream` (DataLoader with ``workers`` processes) or
    :class:`~simclr.data.stream.ImageStream` (``threads`` decode threads, ``on_bad`` substitute | flag,
    ``decode`` auto | cpu | gpu). ``batch_size`` is the global batch over all ranks (must be divisible by
    ``world_size``); each rank gets ``batch_size // world_size`` images per batch.
    """
    from simclr.data.stream import ImageStream, ImageStreamSource  # stream builds on this module

    device = torch.device(device)
    n = len(data)
    order = EpochBatches(n, batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed, rank=rank,
                         world_size=world_size)  # fmt: skip
    if isinstance(data, ImageStream):
        return ImageStreamSource(data, order, device, threads=threads, on_bad=on_bad, decode=decode)
    if isinstance(data, FolderStream):
        return StreamBatchSource(data, order, device, workers)
    if isinstance(data, ImageData):
        return TensorBatchSource(data, order, device)
    raise TypeError(f"make_batch_source expects ImageData, FolderStream or ImageStream, got {type(data).__name__}")
