"""Streamed batches from an indexed image folder or tar shards: threads decode, double-buffered, pinned.

:class:`ImageStream` is the dataset: an :class:`~simclr.data.index.ImageIndex` plus the decoding rules of
:mod:`simclr.data.decode` (shorter side resized to ``image_size``, aspect kept). :class:`ImageStreamSource`
is its batch source, with :class:`~simclr.data.source.EpochBatches`' order: an exact global shuffle per
epoch, per-rank shards, mid-epoch resume. Each batch is a :class:`~simclr.data.source.Batch` whose images
are a uint8 canvas (b, 3, Hc, Wc) with every image at the top left and ``sizes`` its (H, W).

Reading. A thread pool reads (one ``pread`` per tar member) and decodes the batch's images (PIL and
libjpeg-turbo release the GIL), then pastes them into the canvas. With prefetching on, a producer thread
works on batch k+1 while batch k is consumed, in two slots (double buffering): the slot of batch k is given
back when batch k+1 is asked for. On CUDA the canvas is in pinned memory and is copied to the device on a
side stream (the consumer's stream waits on an event), and JPEGs can be decoded on the GPU instead
(``decode="auto"`` or ``"gpu"``, :func:`~simclr.data.decode.decode_batch_cuda`).

Bad files. A batch's shape cannot change, so an image that fails to decode is either replaced by the next
decodable image of the dataset (``on_bad="substitute"``, for pretraining, with a warning, as
:class:`~simclr.data.folder.FolderStream` does) or kept as a black row marked ``valid=False``
(``on_bad="flag"``, for embedding and prediction). Zero-byte files are dropped when the stream opens.
Either way each bad file is counted once, and more than ``max_bad_fraction`` of the dataset is an error.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from simclr.data.decode import DEFAULT_MAX_ASPECT, choose_decoder, cpu_count, decode_batch_cuda, decode_image_bytes
from simclr.data.folder import DEFAULT_IMAGE_SIZE, BadImage
from simclr.data.index import ImageIndex, open_index
from simclr.data.source import Batch, BatchSource, EpochBatches
from simclr.errors import SimCLRError, file_error

log = logging.getLogger(__name__)

ON_BAD = ("substitute", "flag")


class ImageStream:
    """An image folder or tar shards, decoded on demand to stored side ``image_size`` (aspect kept).

    ``labels`` int64 (N,) or None, ``classes``, ``names`` (relative paths or ``shard:member``), ``source``
    and ``bad_files`` (grows as bad files are met) mirror :class:`~simclr.data.base.ImageData`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        image_size: int | None = None,
        max_bad_fraction: float = 0.01,
        *,
        max_aspect: float | None = DEFAULT_MAX_ASPECT,
        backend: str = "auto",
        index: ImageIndex | None = None,
    ) -> None:
        index = index if index is not None else open_index(path)
        self.total = len(index)
        self.image_size = image_size or DEFAULT_IMAGE_SIZE
        self.max_aspect, self.backend, self.max_bad_fraction = max_aspect, backend, max_bad_fraction
        self.source = os.fspath(path)
        self.bad_files: list[str] = []
        self._bad: dict[int, str] = {}  # dataset index -> reason, met while decoding
        self._lock = threading.Lock()
        empty = np.flatnonzero(index.size == 0)
        if len(empty):
            self.bad_files = [index.location(int(i)) for i in empty]
            self._check(self.bad_files[0], "zero-byte file")
            index = index.select(np.flatnonzero(index.size > 0))
        self.index = index
        self.labels = torch.from_numpy(index.labels) if index.labels is not None else None
        self.classes, self.names = index.classes, index.names

    def __len__(self) -> int:
        return len(self.index)

    def _check(self, first: str, why: str) -> None:
        bad = len(self.bad_files)
        if bad > self.max_bad_fraction * self.total or bad == self.total:
            raise SimCLRError(
                f"{first}: cannot decode image ({why}); {bad} of {self.total} images in {self.source} are bad "
                f"(more than max_bad_fraction {self.max_bad_fraction:.1%})"
            )

    def read(self, i: int) -> bytes:
        """The encoded bytes of image ``i``; raises :class:`BadImage` when they cannot be read."""
        try:
            return self.index.read(i)
        except OSError as e:
            raise BadImage(f"cannot read ({e.strerror or e})") from None

    def decode(self, i: int) -> np.ndarray:
        """Image ``i`` as uint8 (H, W, 3) with min(H, W) = ``image_size``; raises :class:`BadImage`."""
        return decode_image_bytes(self.read(i), self.image_size, self.max_aspect, self.backend)

    def is_bad(self, i: int) -> bool:
        """Whether image ``i`` already failed to decode."""
        return i in self._bad

    def note_bad(self, i: int, why: str) -> None:
        """Count image ``i`` as bad (once), warn, and fail past ``max_bad_fraction``."""
        with self._lock:
            if i in self._bad:
                return
            self._bad[i] = why
            self.bad_files.append(self.index.location(i))
            log.warning("%s: cannot decode image (%s)", self.index.location(i), why)
            self._check(self.index.location(i), why)


class _HostSlots:
    """Two reusable flat uint8 host buffers (pinned when asked), grown on demand, each with a 'copied' event."""

    def __init__(self, pin: bool) -> None:
        self.pin = pin
        self.buffers: list[Tensor | None] = [None, None]
        self.events: list = [None, None]

    def take(self, slot: int, shape: tuple[int, ...]) -> Tensor:
        """A tensor of ``shape`` over slot ``slot``'s buffer, once the slot's last device copy has finished."""
        if self.events[slot] is not None:
            self.events[slot].synchronize()
            self.events[slot] = None
        n = int(np.prod(shape))
        buf = self.buffers[slot]
        if buf is None or buf.numel() < n:
            buf = self.buffers[slot] = torch.empty(int(n * 1.25), dtype=torch.uint8, pin_memory=self.pin)
        return buf[:n].view(shape)


class ImageStreamSource(BatchSource):
    """Batches of an :class:`ImageStream` read by ``threads`` threads, with batch k+1 read while k is used.

    ``on_bad``: ``substitute`` or ``flag`` (module doc). ``decode``: ``auto`` | ``cpu`` | ``gpu`` (GPU
    decoding needs a CUDA device and torchvision). ``prefetch=False`` reads each batch when asked (the plain
    sequential reader, same content). ``threads`` defaults to the usable CPU cores. The tensors yielded are
    the caller's to keep: only the pinned host buffers are reused, and those never leave this class.
    """

    def __init__(
        self,
        data: ImageStream,
        order: EpochBatches,
        device: torch.device,
        *,
        threads: int | None = None,
        on_bad: str = "substitute",
        decode: str = "auto",
        prefetch: bool = True,
        with_labels: bool = True,
    ) -> None:
        super().__init__(order, device)
        self.with_labels = with_labels
        if on_bad not in ON_BAD:
            raise SimCLRError(f"on_bad must be substitute or flag, got {on_bad!r}")
        self.data, self.on_bad, self.prefetch = data, on_bad, prefetch
        self.decoder = choose_decoder(device, decode)
        self.cuda = device.type == "cuda" and torch.cuda.is_available()
        self.slots = _HostSlots(pin=self.cuda)
        self.pool = ThreadPoolExecutor(threads or cpu_count(), thread_name_prefix="simclr-decode")
        self.copy_stream = torch.cuda.Stream(device) if self.cuda else None

    def close(self) -> None:
        """Stop the decode threads and close the shard files."""
        self.pool.shutdown(wait=True)
        self.data.index.close()

    # ---- one image, one batch ------------------------------------------------------------------------------

    def _image(self, i: int) -> tuple[np.ndarray | None, int]:
        """(uint8 (H, W, 3) or None when flagged, index whose image it is) for dataset index ``i``."""
        n = len(self.data)
        tries = max(1, min(n, 100))
        for k in range(tries):
            j = (i + k) % n
            if self.data.is_bad(j):
                if self.on_bad == "flag":
                    return None, i
                continue
            try:
                return self.data.decode(j), j
            except BadImage as e:
                self.data.note_bad(j, str(e))
                if self.on_bad == "flag":
                    return None, i
        raise file_error(self.data.index.location(i), f"cannot decode this image nor the {tries - 1} after it")

    def _decode_gpu(self, indices: list[int]) -> list[tuple[Tensor | None, int]]:
        """Like :meth:`_image` for a whole batch, JPEGs decoded on the device (uint8 (3, H, W) tensors)."""
        datas: list[bytes] = []
        for i in indices:
            try:
                datas.append(b"" if self.data.is_bad(i) else self.data.read(i))
            except BadImage as e:
                self.data.note_bad(i, str(e))
                datas.append(b"")
        decoded = decode_batch_cuda(datas, self.data.image_size, self.device, self.pool, self.data.max_aspect,
                                    self.data.backend)  # fmt: skip
        out: list[tuple[Tensor | None, int]] = []
        for i, x in zip(indices, decoded, strict=True):
            if isinstance(x, Tensor):
                out.append((x, i))
                continue
            if not self.data.is_bad(i):
                self.data.note_bad(i, str(x))
            image, j = self._image(i)  # the substitute (or the flag), decoded on the CPU
            out.append((None if image is None else torch.tensor(image).permute(2, 0, 1).to(self.device), j))
        return out

    def _load(self, idx: Tensor, slot: int) -> tuple[Batch, object]:
        """Read and decode the images ``idx`` into slot ``slot``; returns the batch on the device and its event."""
        indices = idx.tolist()
        # rows: (uint8 (3, H, W) tensor on the device | uint8 (H, W, 3) array on the host | None, source index)
        rows = self._decode_gpu(indices) if self.decoder == "gpu" else list(self.pool.map(self._image, indices))
        hw = [None if x is None else (tuple(x.shape[1:]) if isinstance(x, Tensor) else x.shape[:2]) for x, _ in rows]
        side = self.data.image_size
        height = max((s[0] for s in hw if s is not None), default=side)
        width = max((s[1] for s in hw if s is not None), default=side)
        labels = self.data.labels[[j for _, j in rows]] if self.with_labels and self.data.labels is not None else None
        valid = torch.tensor([s is not None for s in hw]) if self.on_bad == "flag" else None
        sizes = torch.tensor([s or (height, width) for s in hw], dtype=torch.int64).view(-1, 2)
        if bool((sizes == torch.tensor([height, width])).all()):
            sizes = None
        shape = (len(rows), 3, height, width)
        if self.decoder == "gpu":
            canvas = torch.zeros(shape, dtype=torch.uint8, device=self.device)
            for row, (x, _) in enumerate(rows):
                if x is not None:
                    canvas[row, :, : x.shape[1], : x.shape[2]] = x
        else:
            canvas = self.slots.take(slot, shape) if self.cuda else torch.empty(shape, dtype=torch.uint8)
            host = canvas.numpy()

            def paste(row: int) -> None:  # numpy copies release the GIL
                x = rows[row][0]
                h, w = (0, 0) if x is None else x.shape[:2]
                if x is not None:
                    host[row, :, :h, :w] = x.transpose(2, 0, 1)
                host[row, :, h:] = 0
                host[row, :, :h, w:] = 0

            list(self.pool.map(paste, range(len(rows))))
        tensors = [canvas, labels, idx, sizes, valid]
        event = None
        if self.cuda:
            tensors = [None if t is None else t.to(self.device, non_blocking=True) for t in tensors]
            event = torch.cuda.Event()
            event.record()
            if self.decoder == "cpu":
                self.slots.events[slot] = event
        return Batch(*tensors), event

    # ---- iteration -----------------------------------------------------------------------------------------

    def _deliver(self, batch: Batch, event) -> Batch:
        """Make the consumer's CUDA stream wait for a batch made on the side stream."""
        if event is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(event)
            for t in batch:
                if t is not None:
                    t.record_stream(stream)
        return batch

    def _load_on_side_stream(self, idx: Tensor, slot: int) -> tuple[Batch, object]:
        if self.copy_stream is None:
            return self._load(idx, slot)
        # the producer thread's current device is cuda:0 until set (it is per thread): cuda:LOCAL_RANK here
        with torch.cuda.device(self.device), torch.cuda.stream(self.copy_stream):
            return self._load(idx, slot)

    def iter_from(self, batch_index: int) -> Iterator[Batch]:
        shards = (idx for idx in self.order.shards(batch_index) if len(idx))
        if not self.prefetch:
            for idx in shards:
                yield self._deliver(*self._load_on_side_stream(idx, 0))
            return
        yield from self._prefetched(shards)

    def _prefetched(self, shards: Iterator[Tensor]) -> Iterator[Batch]:
        ready: queue.Queue = queue.Queue()
        free: queue.Queue = queue.Queue()
        for slot in (0, 1):
            free.put(slot)
        stop = threading.Event()

        def produce() -> None:
            try:
                for idx in shards:
                    slot = free.get()
                    if stop.is_set():
                        return
                    ready.put(("batch", slot, self._load_on_side_stream(idx, slot)))
                ready.put(("end", None, None))
            except BaseException as e:  # handed to the consumer, raised there
                ready.put(("error", None, e))

        thread = threading.Thread(target=produce, name="simclr-stream", daemon=True)
        thread.start()
        try:
            while True:
                kind, slot, item = ready.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise item
                yield self._deliver(*item)
                free.put(slot)  # the next batch is asked for: this one's slot may be refilled
        finally:
            stop.set()
            free.put(0)
            free.put(1)
            thread.join()


def open_image_stream(
    path: str | os.PathLike,
    split: str = "train",
    image_size: int | None = None,
    max_bad_fraction: float = 0.01,
    **kwargs,
) -> ImageStream:
    """An image folder or tar shards as an :class:`ImageStream`, with ``load_dataset``'s split rule
    (``path/<split>`` when that folder exists, ``val`` standing in for ``test``)."""
    from simclr.data import _folder_split

    p = Path(path).expanduser()
    target = p if p.is_file() else _folder_split(p, split)
    return ImageStream(target, image_size, max_bad_fraction, **kwargs)


__all__ = ["ON_BAD", "ImageStream", "ImageStreamSource", "open_image_stream"]
