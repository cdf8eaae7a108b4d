"""One SimCLR training step (v1 section 2, Algorithm 1; v2 section 2), the same function everywhere.

The engine, the benchmark and the dry run all run :func:`train_step` on the parts :func:`build_parts` makes:

    parts = build_parts(cfg, image_size, num_classes, device, steps_per_epoch=len(source))
    stats = train_step(parts, images, labels, step)      # images: uint8 (B, C, H, W), one rank's batch

A step: the scheduled learning rate -> two views of every image, made on the device (rows [0, B) view 1,
[B, 2B) view 2, so BatchNorm sees both, as the paper's global BN) -> forward -> 2 x NT-Xent at the
configured temperature (the official code's scale; the logged ``loss`` is the paper's mean over the 2N
views), with the memory queue's negatives (v2) and the online probe's cross-entropy on stop-gradient h ->
backward (or gradient caching, ``train.micro_batch``) -> a non-finite loss or gradient skips the step
and restores BatchNorm's running statistics -> optimizer step -> momentum encoder update and enqueue of
its normalised keys.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simclr.augment import Augment
from simclr.channels_last import to_channels_last
from simclr.config import Config, micro_batch_images
from simclr.distributed import convert_sync_batchnorm
from simclr.gradcache import grad_cache_two_views, pair_micro_batches, unpair
from simclr.loss import nt_xent
from simclr.memory import MemoryQueue, MomentumEncoder
from simclr.models.build import build_model
from simclr.optim import build_optimizer, lr_at, param_groups
from simclr.runtime import autocast as runtime_autocast


class PretrainModule(nn.Module):
    """Encoder + projection head, plus the online linear probe on stop-gradient h (TF2 default)."""

    def __init__(self, model: nn.Module, num_classes: int | None):
        super().__init__()
        self.model = model
        self.probe = nn.Linear(model.encoder.out_dim, num_classes) if num_classes else None

    def forward(self, x: Tensor):
        h, z = self.model(x)
        logits = self.probe(h.detach()) if self.probe is not None else None
        return h, z, logits


@dataclass
class TrainParts:
    """Everything a step changes or reads: the module, optimizer, augmentation, memory, schedule, policy."""

    cfg: Config
    device: torch.device
    module: PretrainModule  # what the checkpoint saves (BN layers may be SyncBatchNorm under torchrun)
    train_module: nn.Module  # module, or its DistributedDataParallel / torch.compile wrapper: runs forward
    optimizer: torch.optim.Optimizer
    peak_lr: float
    total_steps: int
    warmup_steps: int
    augment: Augment
    generator: torch.Generator  # the augmentation's random stream (one per rank)
    autocast: AbstractContextManager
    channels_last: bool
    micro_batch: int | None  # images per forward pass with gradient caching; None: the plain step
    checkpointing: bool  # encoder stages under activation checkpointing (with micro_batch)
    momentum_model: MomentumEncoder | None = None
    queue: MemoryQueue | None = None
    bare: bool = False  # the benchmark's ceiling: no finite checks, no BN snapshot, no statistics
    bn_stats: list[Tensor] = field(default_factory=list)  # BN running statistics (all module buffers)
    bn_good: list[Tensor] = field(default_factory=list)  # their copy after the last applied step

    @property
    def model(self) -> nn.Module:
        """The SimCLR model (encoder + projection head) inside the module."""
        return self.module.model


@dataclass
class StepStats:
    """What one step reports; tensors are detached and stay on the device (read them once per log line)."""

    loss: Tensor  # the paper's NT-Xent, mean over the 2N views
    contrastive_acc: Tensor  # share of view-1 anchors whose nearest view 2 is their own positive
    probe_correct: Tensor | None  # online probe hits over both views
    probe_count: int
    applied: bool  # False: skipped (non-finite loss or gradient); nothing but the counters changed
    lr: float


class _NoClock:
    def mark(self, phase: str) -> None:
        pass


def build_parts(
    cfg: Config,
    image_size: int,
    num_classes: int | None,
    device: torch.device,
    *,
    steps_per_epoch: int,
    mean: tuple[float, ...] = (0.5, 0.5, 0.5),
    std: tuple[float, ...] = (0.5, 0.5, 0.5),
    rank: int = 0,
    world_size: int = 1,
    bare: bool = False,
    compile: bool | None = None,
    channels_last: bool | None = None,
    micro_batch: int | None | str = "config",
    checkpointing: bool | None = None,
    on_nchw: Callable[[list[str]], None] | None = None,
) -> TrainParts:
    """The trainable parts of a run of ``cfg`` (seeded with ``train.seed``: the same initial weights).

    ``steps_per_epoch`` sets the schedule (``train.epochs`` x it, warmup ``optim.warmup_epochs`` x it).
    Under torchrun (``world_size`` > 1) BatchNorm becomes global (``train.global_bn``) and the module is
    wrapped in DistributedDataParallel. ``bare``: no online probe, no memory, no checks (the benchmark's
    ceiling). ``compile``, ``channels_last``, ``micro_batch``, ``checkpointing`` default to the config's.
    ``on_nchw`` is told which convolutions stay NCHW because this torch build crashes on them.
    """
    t = cfg.train
    torch.manual_seed(t.seed)
    model = build_model(cfg.model, image_size)
    probe_classes = num_classes if cfg.monitor.online_probe and not bare else None
    module = PretrainModule(model, probe_classes).to(device)
    channels_last = t.channels_last is not False if channels_last is None else channels_last  # None = on
    if channels_last:
        kept = to_channels_last(module, (2, 3, image_size, image_size), device)
        if kept and on_nchw is not None:
            on_nchw(kept)
    # The online probe is trained by the same optimizer but, as `head_supervised` in the official code,
    # without LARS adaptation or weight decay.
    groups = param_groups(module.model, cfg.optim.weight_decay)
    if module.probe is not None:
        groups.append({"params": list(module.probe.parameters()), "weight_decay": 0.0, "lars_exclude": True})
    optimizer, peak_lr = build_optimizer(groups, cfg.optim, t.batch_size)
    momentum_model = queue = None
    if cfg.loss.memory_size > 0 and not bare:
        momentum_model = MomentumEncoder(model)
        queue = MemoryQueue(cfg.loss.memory_size, cfg.model.projection_dim).to(device)
    augment = Augment(cfg.augment, image_size, mean=mean, std=std).to(device)
    generator = torch.Generator(device=device)
    generator.manual_seed(t.seed * 1000 + rank)  # each rank draws different views
    checkpointing = t.activation_checkpointing if checkpointing is None else checkpointing
    if micro_batch == "config":
        micro_batch = micro_batch_images(t, world_size)
    if checkpointing and micro_batch is None:
        micro_batch = t.batch_size // world_size  # checkpointing alone: one micro-batch of the whole batch
    train_module: nn.Module = module
    if world_size > 1:
        if t.global_bn:
            train_module = convert_sync_batchnorm(train_module)  # in place: `module` has them too
        train_module = nn.parallel.DistributedDataParallel(
            train_module, device_ids=[device.index] if device.type == "cuda" else None
        )
    if t.compile if compile is None else compile:
        train_module = torch.compile(train_module)
    train_module.train()
    # The forward pass updates BN running statistics before the loss is known to be finite: a copy of them
    # after the last applied step is what a skipped step restores.
    bn_stats = [] if bare else list(module.buffers())
    return TrainParts(
        cfg=cfg, device=device, module=module, train_module=train_module, optimizer=optimizer, peak_lr=peak_lr,
        total_steps=t.epochs * steps_per_epoch, warmup_steps=round(cfg.optim.warmup_epochs * steps_per_epoch),
        augment=augment, generator=generator, autocast=runtime_autocast(device, t.precision),
        channels_last=channels_last, micro_batch=micro_batch, checkpointing=checkpointing,
        momentum_model=momentum_model, queue=queue,
        bare=bare, bn_stats=bn_stats, bn_good=[b.detach().clone() for b in bn_stats],
    )  # fmt: skip


def make_views(parts: TrainParts, images: Tensor, sizes: Tensor | None = None) -> Tensor:
    """Two views of every image, (2B, 3, S, S): rows [0, B) view 1, [B, 2B) view 2 (v1 section 3)."""
    with torch.no_grad():
        v1, v2 = parts.augment.two_views(images, parts.generator, sizes)
        views = torch.cat([v1, v2])  # BN statistics over both views, as in the paper
        if parts.channels_last:
            views = views.contiguous(memory_format=torch.channels_last)
    return views


def train_step(
    parts: TrainParts,
    images: Tensor,
    labels: Tensor | None,
    step: int,
    sizes: Tensor | None = None,
    agree: Callable[[Tensor], bool] | None = None,
    clock: Any = None,
) -> StepStats:
    """One optimizer step on uint8 ``images`` (B, C, H, W) (``sizes`` (B, 2) for images of several sizes).

    ``step`` is the number of steps done (it sets the scheduled learning rate). ``agree(total) -> skip``
    decides whether to skip the step on a non-finite loss; under torchrun the engine makes every rank agree
    (default: this rank's loss alone). ``clock.mark(phase)`` times the phases (the benchmark).
    """
    clock = clock or _NoClock()
    views = make_views(parts, images, sizes)
    clock.mark("augment")
    return train_on_views(parts, views, labels, step, agree, clock)


def train_on_views(
    parts: TrainParts,
    views: Tensor,
    labels: Tensor | None,
    step: int,
    agree: Callable[[Tensor], bool] | None = None,
    clock: Any = None,
) -> StepStats:
    """:func:`train_step` from ready views (2B, 3, S, S) (the benchmark's ceiling and PIL baseline)."""
    clock = clock or _NoClock()
    cfg, optimizer = parts.cfg, parts.optimizer
    lr = lr_at(step, parts.total_steps, parts.warmup_steps, parts.peak_lr, cfg.optim.schedule)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    optimizer.zero_grad(set_to_none=True)
    logged: dict = {}
    negatives = parts.queue.negatives() if parts.queue is not None else None
    # The loss over the whole batch; detached values for the logs go into `logged`.
    objective = partial(step_objective, labels=labels, negatives=negatives, loss_cfg=cfg.loss, logged=logged)
    agree = agree or _local_skip
    if parts.micro_batch is None:
        with parts.autocast:
            out = parts.train_module(views)
        clock.mark("forward")
        total = objective(out)
        skip = False if parts.bare else agree(total)
        clock.mark("loss")
    else:  # gradient caching: forward and backward here, the loss still over the whole batch
        decided: dict[str, bool] = {}

        def skip_nonfinite(total: Tensor) -> bool:
            decided["skip"] = agree(total)
            return decided["skip"]

        with parts.autocast:
            total = grad_cache_two_views(
                parts.train_module, views, objective, parts.micro_batch,
                checkpoint=parts.checkpointing, skip_nonfinite=None if parts.bare else skip_nonfinite,
            )  # fmt: skip
        skip = decided.get("skip", False)
        clock.mark("grad_cache")
    applied = not skip and _backward_and_step(parts, total, views, clock)
    stats = StepStats(
        loss=logged["loss"],
        contrastive_acc=logged["loss"].new_zeros(())
        if parts.bare
        else contrastive_accuracy(logged["z_a"], logged["z_b"]),
        probe_correct=logged.get("probe_correct"),
        probe_count=logged.get("probe_count", 0),
        applied=applied,
        lr=lr,
    )
    if not parts.bare:  # a skipped step leaves no trace, BN statistics included
        if applied:
            torch._foreach_copy_(parts.bn_good, parts.bn_stats)
        else:
            torch._foreach_copy_(parts.bn_stats, parts.bn_good)
    clock.mark("other")
    return stats


def _local_skip(total: Tensor) -> bool:
    return not bool(torch.isfinite(total.detach()))


def _backward_and_step(parts: TrainParts, total: Tensor, views: Tensor, clock: Any) -> bool:
    """Backward (plain step), the gradient check, the optimizer step and the memory; False if skipped."""
    if parts.micro_batch is None:
        total.backward()
        clock.mark("backward")
    if not parts.bare:
        # One fused norm over all gradients: non-finite if any element is (a single host sync). Under DDP the
        # gradients are the all-reduced ones, the same on every rank, and so is this decision.
        grads = [p.grad for p in parts.module.parameters() if p.grad is not None]
        grads_ok = bool(torch.stack(torch._foreach_norm(grads)).isfinite().all())
        clock.mark("grad_check")
        if not grads_ok:
            return False
    parts.optimizer.step()
    clock.mark("optimizer")
    if parts.momentum_model is not None:
        parts.momentum_model.update(parts.model, parts.cfg.loss.memory_momentum)
        micro = parts.micro_batch
        with torch.no_grad(), parts.autocast:
            if micro is None:
                _, z_m = parts.momentum_model(views)
            else:  # in the online step's micro-batches (memory, BN statistics)
                chunks = pair_micro_batches(views, micro).split(2 * micro)
                z_m = unpair(torch.cat([parts.momentum_model(c)[1] for c in chunks]), micro)
        parts.queue.enqueue(F.normalize(z_m.float(), dim=1))
        clock.mark("momentum")
    return True


def step_objective(out, labels, negatives, loss_cfg, logged: dict) -> Tensor:
    """The step's loss from the whole batch's ``(h, z, logits)``, rows [view 1; view 2] (2B rows).

    2 x NT-Xent (the official code's scale, see the module docstring; gathered across ranks, with the
    memory queue's ``negatives`` (K, D) when given) plus the online probe's cross-entropy on ``labels`` (B,).
    Float32 with autocast off, also when a gradient-cached step calls it inside its autocast. Detached values
    for logging go into ``logged``: ``loss`` (the paper's NT-Xent), ``z_a`` and ``z_b`` (B, D), and
    ``probe_correct`` / ``probe_count`` when the probe runs.
    """
    _, z, logits = out
    with torch.autocast(z.device.type, enabled=False):
        z_a, z_b = z.float().chunk(2)
        loss = nt_xent(z_a, z_b, loss_cfg.temperature, queue=negatives, chunk_size=loss_cfg.chunk_size)
        total = 2.0 * loss
        logged.update(loss=loss.detach(), z_a=z_a.detach(), z_b=z_b.detach())
        if logits is not None and labels is not None:
            targets = torch.cat([labels, labels])
            total = total + F.cross_entropy(logits.float(), targets)
            logged["probe_correct"] = (logits.detach().argmax(1) == targets).float().sum()
            logged["probe_count"] = targets.numel()
    return total


def contrastive_accuracy(z_a: Tensor, z_b: Tensor) -> Tensor:
    """Fraction of view-a anchors whose most similar view-b row is their own positive (official metric)."""
    with torch.no_grad():
        sim = F.normalize(z_a, dim=1) @ F.normalize(z_b, dim=1).T
        return (sim.argmax(1) == torch.arange(len(z_a), device=z_a.device)).float().mean()


__all__ = [
    "PretrainModule",
    "StepStats",
    "TrainParts",
    "build_parts",
    "contrastive_accuracy",
    "make_views",
    "step_objective",
    "train_on_views",
    "train_step",
]
