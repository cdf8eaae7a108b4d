"""The SimCLRv2 memory of negatives: a momentum encoder and a FIFO queue of its projections (SPEC section 7).

SimCLRv2 (section 2, "memory network") follows MoCo: an exponential moving average (EMA, decay 0.999) of
the encoder + projection head produces projections that are queued (64K for ImageNet) and used as extra
negatives in NT-Xent. The official code does not include it; the mechanics here are MoCo's:

    with torch.no_grad():
        ema.update(model, momentum=0.999)            # theta_k = m theta_k + (1 - m) theta_q
        _, k_a = ema(x_a); _, k_b = ema(x_b)          # keys of both views, (N_local, D) each
    loss = nt_xent(z_a, z_b, tau, queue=memory.negatives())   # queue as it was before this batch
    memory.enqueue(torch.cat([k_a, k_b]))            # gathered from every rank, oldest rows replaced
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simclr.distributed import all_gather_nograd


class MemoryQueue(nn.Module):
    """Ring buffer of the K most recent normalised projections (K, D), oldest overwritten first.

    Buffers (saved in ``state_dict``, so a resumed run continues with the same negatives):
    ``queue`` (K, D), ``ptr`` (the next row to write) and ``filled`` (rows written so far, at most K). Until
    the buffer is full only the filled rows are used, so early steps never see the zero initial rows.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"MemoryQueue: size and dim must be positive, got {size}, {dim}")
        self.size, self.dim = size, dim
        self.register_buffer("queue", torch.zeros(size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        # Host mirrors, so that enqueue/negatives never wait on the device to learn the sizes.
        self._ptr = 0
        self._filled = 0

    @torch.no_grad()
    def enqueue(self, z: Tensor) -> None:
        """Append ``z`` (B, D) (from every rank when distributed, in rank order), normalised, FIFO.

        Rows wrap around the end of the buffer; if more than K rows arrive at once only the last K are kept.
        """
        z = F.normalize(all_gather_nograd(z.detach()).to(self.queue.dtype), dim=1)
        if z.shape[0] > self.size:
            z = z[-self.size :]
        b = z.shape[0]
        idx = (torch.arange(b, device=z.device) + self._ptr) % self.size
        self.queue.index_copy_(0, idx.to(self.queue.device), z.to(self.queue.device))
        self._ptr = (self._ptr + b) % self.size
        self._filled = min(self._filled + b, self.size)
        self.ptr.fill_(self._ptr)
        self.filled.fill_(self._filled)

    def negatives(self) -> Tensor:
        """The filled rows (min(written, K), D), as a copy: later enqueues cannot alter a pending backward."""
        return self.queue[: self._filled].clone()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._ptr = int(self.ptr)
        self._filled = int(self.filled)

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}, filled={self._filled}"


def _unwrap(model: nn.Module) -> nn.Module:
    # DistributedDataParallel / torch.compile wrappers hold the real module.
    for attr in ("module", "_orig_mod"):
        if isinstance(getattr(model, attr, None), nn.Module):
            model = getattr(model, attr)
    return model


class MomentumEncoder(nn.Module):
    """An EMA copy of a module (encoder + head), never differentiated (MoCo, SimCLRv2 memory).

    ``update(online, m)``: theta_ema = m theta_ema + (1 - m) theta_online for every parameter, using one
    multi-tensor lerp; buffers (BN running statistics) are copied, as they are statistics, not weights.
    ``forward`` runs the copy under ``torch.no_grad()``. It is an ``nn.Module``, so it is saved with the
    model's checkpoint.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.module = copy.deepcopy(_unwrap(model))
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, online_model: nn.Module, momentum: float) -> None:
        """theta_ema <- momentum * theta_ema + (1 - momentum) * theta_online (0.999 in SimCLRv2)."""
        online = _unwrap(online_model)
        ema_p = list(self.module.parameters())
        src_p = [p.detach() for p in online.parameters()]
        if len(ema_p) != len(src_p):
            raise ValueError("MomentumEncoder.update: the online model's parameters do not match the copy")
        if ema_p:
            torch._foreach_lerp_(ema_p, src_p, 1.0 - momentum)
        for b_ema, b in zip(self.module.buffers(), online.buffers(), strict=True):
            b_ema.copy_(b)

    @torch.no_grad()
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


__all__ = ["MemoryQueue", "MomentumEncoder"]
