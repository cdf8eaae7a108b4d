"""Images of different sizes held in memory: one flat uint8 buffer, per-image offsets and (H, W).

Image folders keep each image's aspect ratio (shorter side resized to the stored side), so their images do
not fit one (N, C, H, W) tensor. :class:`PackedImages` stores them without padding and cuts a batch into a
canvas (b, C, max H, max W), image ``i`` top-left aligned in its own ``sizes[i]`` (the contract of
:class:`~simclr.data.source.Batch`), which the augmentation and the evaluation transform read.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


class PackedImages:
    """uint8 images ``(C, H_i, W_i)``: image i is ``buffer[offsets[i] : offsets[i] + C H_i W_i]``."""

    def __init__(self, buffer: Tensor, offsets: Tensor, sizes: Tensor, channels: int = 3) -> None:
        self.buffer, self.offsets, self.sizes, self.channels = buffer, offsets, sizes, channels

    @classmethod
    def from_arrays(cls, arrays: Sequence[np.ndarray]) -> PackedImages:
        """Pack uint8 arrays ``(H, W, C)`` (all with the same C)."""
        channels = arrays[0].shape[2] if arrays else 3
        sizes = torch.tensor([a.shape[:2] for a in arrays], dtype=torch.int64).view(-1, 2)
        counts = sizes[:, 0] * sizes[:, 1] * channels
        offsets = torch.zeros(len(arrays), dtype=torch.int64)
        offsets[1:] = counts.cumsum(0)[:-1]
        buffer = torch.empty(int(counts.sum()), dtype=torch.uint8)
        for a, start, n in zip(arrays, offsets.tolist(), counts.tolist(), strict=True):
            buffer[start : start + n] = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)).reshape(-1))
        return cls(buffer, offsets, sizes, channels)

    def __len__(self) -> int:
        return int(self.offsets.shape[0])

    @property
    def side(self) -> int:
        """The smallest image side (the stored side of a folder)."""
        return int(self.sizes.min()) if len(self) else 0

    @property
    def nbytes(self) -> int:
        return int(self.buffer.numel())

    def to(self, device: torch.device | str) -> PackedImages:
        """The same images with their buffer on ``device`` (offsets and sizes stay on the CPU)."""
        return PackedImages(self.buffer.to(device), self.offsets, self.sizes, self.channels)

    def image(self, i: int) -> Tensor:
        """Image ``i`` as a view ``(C, H, W)``."""
        h, w = self.sizes[i].tolist()
        start = int(self.offsets[i])
        return self.buffer[start : start + self.channels * h * w].view(self.channels, h, w)

    def batch(self, idx: Tensor | Sequence[int]) -> tuple[Tensor, Tensor]:
        """``(canvas uint8 (b, C, Hc, Wc), sizes int64 (b, 2))`` of images ``idx``, on the buffer's device."""
        rows = torch.as_tensor(idx, dtype=torch.int64).cpu()
        sizes = self.sizes.index_select(0, rows)
        hc, wc = (int(v) for v in sizes.max(0).values) if len(rows) else (0, 0)
        canvas = torch.zeros(len(rows), self.channels, hc, wc, dtype=torch.uint8, device=self.buffer.device)
        for k, i in enumerate(rows.tolist()):
            img = self.image(i)
            canvas[k, :, : img.shape[1], : img.shape[2]] = img
        return canvas, sizes.to(self.buffer.device)


__all__ = ["PackedImages"]
