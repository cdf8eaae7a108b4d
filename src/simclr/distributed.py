"""Distributed glue: process-group setup, the differentiable gather of the loss, global BatchNorm.

SimCLR's negatives and BatchNorm statistics are *global* (v1 sections 2.2 and B.1): every view is
contrasted with the 2N - 2 other views of the whole batch, and BN statistics are aggregated over all devices.
Each rank holds a contiguous slice of the global batch (:func:`shard_indices`), computes the loss over its
local rows against the gathered columns, and DistributedDataParallel averages the gradients.

Gradient convention. Every collective whose output enters the loss (the gather of projections, the
statistics of global BN) has a backward that *sums* the incoming gradient over ranks, so that each rank ends
up with d(sum_r L_r)/d(its own inputs). DDP then divides by the world size, giving d(mean_r L_r)/d(theta),
which is exactly the single-process gradient of the mean loss over the global batch (equal shards). This
is the same convention as torch's own ``SyncBatchNorm``, so the two compose.

Launch with ``torchrun --nproc_per_node=G -m simclr ...``; without torchrun everything is a no-op.
"""

from __future__ import annotations

import datetime
import gc
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from simclr.errors import SimCLRError


@dataclass
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, its GPU index and device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    is_main: bool = True


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised."""
    return _initialized() and dist.get_world_size() > 1


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of ranks (1 when not distributed)."""
    return dist.get_world_size() if _initialized() else 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if _initialized() else 0


def is_main() -> bool:
    """True on rank 0: the process that logs, evaluates and writes checkpoints."""
    return rank() == 0


def _auto_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


def init_distributed(backend: str | None = None, timeout_s: float = 1800, device: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's environment, or run as a single process.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT`` through the
    ``env://`` rendezvous). The backend defaults to NCCL on GPU and gloo on CPU; on GPU the process's
    CUDA device is set to ``cuda:LOCAL_RANK`` so that collectives and ``.cuda()`` use the right card.
    A group that is already initialised is reused.
    """
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _auto_device(device, local_rank)
    if dev.type == "cuda":
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise SimCLRError(
                f"device {dev}: this machine has {count} CUDA device(s) for local rank {local_rank}; launch at "
                f"most {count} processes per node (torchrun --nproc_per_node={count}) or pass --device cpu"
            )
        torch.cuda.set_device(dev)
    if env_world > 1 and not _initialized():
        if "MASTER_ADDR" not in os.environ:
            raise SimCLRError("WORLD_SIZE > 1 but MASTER_ADDR is not set: launch with torchrun")
        backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=int(os.environ["RANK"]),
            world_size=env_world,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    r = rank()
    return DistInfo(rank=r, world_size=world_size(), local_rank=local_rank, device=dev, is_main=r == 0)


def cleanup() -> None:
    """Leave the process group (safe to call when none was created).

    Drop every ``DistributedDataParallel`` wrapper first (the caller's own references included): a DDP reducer
    that outlives the gloo group aborts the process at interpreter exit ("terminate called without an active
    exception", about one run in three with torch 2.13), which torchrun reports as a failed rank after a
    finished run. The garbage collection here frees wrappers held only in reference cycles. No barrier: a rank
    leaving on an error must not wait for ranks stuck in a collective.
    """
    if _initialized():
        gc.collect()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as seen by rank ``src``, on every rank (picklable objects; no-op when not distributed)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(t: Tensor) -> Tensor:
    """Mean of ``t`` over ranks, as a new detached tensor (for logging; no gradient)."""
    out = t.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= dist.get_world_size()
    return out


def all_reduce_max(t: Tensor) -> Tensor:
    """Element-wise maximum of ``t`` over ranks, as a new detached tensor (a copy when not distributed).

    For decisions that every rank must take alike (stop after a signal, skip a non-finite step): each rank
    passes what it saw as 0/1 flags (or a signal number), and all get the same answer, a logical OR. Every
    rank must call it at the same point of its loop.
    """
    out = t.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def all_gather_nograd(t: Tensor) -> Tensor:
    """Concatenation over ranks along dim 0 of equally-shaped ``t`` (rank order), without gradient."""
    if not is_distributed():
        return t.detach()
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.detach().contiguous())
    return torch.cat(parts)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward sums the gathered gradient over ranks and keeps this rank's slice.

    Rank r's loss L_r uses every rank's rows as columns, so d(sum_r' L_r')/d z_r = sum_r' dL_r'/d z_r: the
    sum over ranks of the gradient each rank computed for slice r. DDP's 1/W average then turns this into
    the gradient of the global mean loss (see the module docstring).
    """

    @staticmethod
    def forward(ctx: Any, t: Tensor) -> Tensor:
        ctx.rank = dist.get_rank()
        ctx.n = t.shape[0]
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather_with_grad(t: Tensor) -> Tensor:
    """All ranks' ``t`` (N_local, ...) concatenated in rank order (W * N_local, ...), with gradient.

    Every rank must pass the same shape. Identity when not distributed. See :class:`_GatherWithGrad` for
    why the backward sums over ranks.
    """
    if not is_distributed():
        return t
    return _GatherWithGrad.apply(t)


class _AllReduceSumWithGrad(torch.autograd.Function):
    """all_reduce(SUM) whose backward is again all_reduce(SUM) (every rank's loss uses the sum)."""

    @staticmethod
    def forward(ctx: Any, t: Tensor) -> Tensor:
        out = t.contiguous().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def shard_indices(indices: Tensor, rank: int | None = None, world_size: int | None = None) -> Tensor:
    """This rank's contiguous slice of a global batch of ``indices`` (B,) -> (B / W,).

    Contiguous slices in rank order are what :func:`gather_with_grad` reassembles, so the gathered
    projections are in the global batch's order (the loss offsets positives by rank * N_local).
    """
    r = (dist.get_rank() if _initialized() else 0) if rank is None else rank
    w = (dist.get_world_size() if _initialized() else 1) if world_size is None else world_size
    if indices.shape[0] % w:
        raise SimCLRError(f"train.batch_size: {indices.shape[0]} is not divisible by the {w} processes")
    n = indices.shape[0] // w
    return indices[r * n : (r + 1) * n]


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Global BatchNorm (statistics over every rank's batch) that also runs on CPU with gloo.

    On CUDA this runs torch's ``SyncBatchNorm`` computation (fused kernels, one all_gather). torch refuses
    other devices (and DDP refuses its class on CPU), so elsewhere the statistics come from plain ops and
    a differentiable all-reduce: mean = sum_r S_r / n, var = sum_r sum (x - mean)^2 / n over the n
    elements per channel of all ranks (biased, used to normalise); the running variance gets the unbiased
    n / (n - 1) correction, as torch does. With equal shards this equals full-batch BN (v1 section B.1).
    Outside training, or with one rank, it is ordinary BatchNorm.
    """

    process_group = None  # the whole world; read by torch's SyncBatchNorm.forward on CUDA

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def _check_non_zero_input_channels(self, input: Tensor) -> None:
        if input.size(1) == 0:
            raise ValueError("SyncBatchNorm number of input channels should be non-zero")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and is_distributed()):
            return super().forward(input)
        if input.device.type != "cpu":
            return nn.SyncBatchNorm.forward(self, input)  # type: ignore[arg-type]
        self._check_input_dim(input)
        factor = self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if factor is None:  # cumulative moving average, as in torch's BatchNorm
                factor = 1.0 / float(self.num_batches_tracked)
        dims = [d for d in range(input.dim()) if d != 1]
        shape = [1, -1] + [1] * (input.dim() - 2)
        count = input.new_full((1,), input.numel() // input.shape[1])
        # One collective for the per-channel sums and the element count (C + 1,).
        sums = _AllReduceSumWithGrad.apply(torch.cat([input.sum(dims), count]))
        n = sums[-1].detach()
        mean = sums[:-1] / n
        xc = input - mean.view(shape)
        # Two passes (mean, then centred squares) rather than E[x^2] - E[x]^2: no cancellation.
        var = _AllReduceSumWithGrad.apply((xc * xc).sum(dims)) / n
        if self.track_running_stats and factor is not None:
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
                unbiased = var.detach() * (n / (n - 1).clamp(min=1))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        out = xc * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer by :class:`SyncBatchNorm` (global statistics); identity for 1 rank.

    Call before wrapping in DistributedDataParallel. Weights and running statistics are carried over.
    """
    if not is_distributed():
        return model
    return _convert(model)


def _convert(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        # torch's own SyncBatchNorm too: ours runs the same computation on CUDA and also works on CPU.
        out = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
        if hasattr(module, "qconfig"):
            out.qconfig = module.qconfig
    for name, child in module.named_children():
        out.add_module(name, _convert(child))
    return out


__all__ = [
    "DistInfo",
    "SyncBatchNorm",
    "all_gather_nograd",
    "all_reduce_max",
    "all_reduce_mean",
    "barrier",
    "broadcast_object",
    "cleanup",
    "convert_sync_batchnorm",
    "gather_with_grad",
    "init_distributed",
    "is_distributed",
    "is_main",
    "rank",
    "shard_indices",
    "world_size",
]
