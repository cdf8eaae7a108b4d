"""Optimizers and the learning-rate schedule of SimCLR (v1 section B.1, SPEC section 6).

- :func:`lars_update` / :class:`LARS`: LARS in the official "classic momentum" form, the learning rate
  inside the momentum buffer, coupled weight decay, no epsilon.
- :func:`param_groups`: BatchNorm parameters and biases (every parameter with ndim <= 1) are excluded from
  weight decay and from the LARS trust ratio, as the official code does by variable name.
- :func:`scaled_lr`, :func:`lr_at`, :func:`schedule_steps`: lr = base x B/256 (or base x sqrt(B)), linear
  warmup from 0, then cosine decay to 0, updated every step.
- :func:`build_optimizer`: lars | sgd | adamw from an :class:`~simclr.config.OptimConfig`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from simclr.config import OptimConfig
from simclr.errors import SimCLRError


def _lars_update_plain(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momenta: Sequence[Tensor],
    lr: float,
    momentum: float,
    weight_decay: float,
    eta: float,
    exclude_flags: Sequence[bool],
) -> None:
    """Per-tensor LARS step: the readable form, and the reference for the multi-tensor one."""
    for w, g, v, excluded in zip(params, grads, momenta, exclude_flags, strict=True):
        trust = 1.0
        if not excluded:
            g = g + weight_decay * w
            w_norm, g_norm = torch.linalg.vector_norm(w), torch.linalg.vector_norm(g)
            trust = torch.where((w_norm > 0) & (g_norm > 0), eta * w_norm / g_norm, torch.ones_like(w_norm))
        v.mul_(momentum).add_(g * (lr * trust))
        w.sub_(v)


def _lars_update_foreach(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momenta: Sequence[Tensor],
    lr: float,
    momentum: float,
    weight_decay: float,
    eta: float,
    exclude_flags: Sequence[bool],
) -> None:
    """Multi-tensor LARS step: one kernel per op over all tensors of a device and dtype, no host sync."""
    buckets: dict[tuple, list[int]] = defaultdict(list)
    for i, (w, excluded) in enumerate(zip(params, exclude_flags, strict=True)):
        buckets[(w.device, w.dtype, bool(excluded))].append(i)
    for (_, _, excluded), idx in buckets.items():
        w = [params[i] for i in idx]
        g = [grads[i] for i in idx]
        v = [momenta[i] for i in idx]
        if excluded:  # plain heavy-ball SGD: v = m v + lr g
            torch._foreach_mul_(v, momentum)
            torch._foreach_add_(v, g, alpha=lr)
        else:
            # g' = g + wd w (new tensors: the caller's .grad stays untouched)
            g = torch._foreach_add(g, w, alpha=weight_decay)
            w_norm = torch.stack(torch._foreach_norm(w))
            g_norm = torch.stack(torch._foreach_norm(g))
            trust = torch.where((w_norm > 0) & (g_norm > 0), eta * w_norm / g_norm, torch.ones_like(w_norm))
            step = torch._foreach_mul(g, list((lr * trust).unbind()))  # lr * trust_i * g'_i
            torch._foreach_mul_(v, momentum)
            torch._foreach_add_(v, step)
        torch._foreach_sub_(w, v)


@torch.no_grad()
def lars_update(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momenta: Sequence[Tensor],
    lr: float,
    momentum: float,
    weight_decay: float,
    eta: float,
    exclude_flags: Sequence[bool],
    *,
    foreach: bool = True,
) -> None:
    """One LARS step, in place on ``params`` and ``momenta`` (SPEC section 6, "classic momentum").

    For each parameter w with gradient g and momentum buffer v:

        g' = g + wd * w                                    (skipped for excluded parameters)
        trust = eta * ||w|| / ||g'||                       (1 if either norm is 0, 1 for excluded)
        v = momentum * v + lr * trust * g'
        w = w - v

    Args:
        params, grads, momenta: equal-length sequences of tensors of matching shapes.
        lr: the scheduled learning rate (it sits inside the momentum buffer, as in the official code).
        momentum: heavy-ball momentum, 0.9.
        weight_decay: coupled L2 coefficient, 1e-6 (v1) or 1e-4 (v2).
        eta: trust coefficient, 0.001.
        exclude_flags: per parameter, True for BN parameters and biases (no decay, no adaptation).
        foreach: use the multi-tensor ``torch._foreach_*`` kernels (default); False runs the per-tensor
            loop, the reference the tests compare against.
    """
    fn = _lars_update_foreach if foreach else _lars_update_plain
    fn(params, grads, momenta, lr, momentum, weight_decay, eta, exclude_flags)


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017) as used by SimCLR; see :func:`lars_update`.

    Param-group options: ``lr``, ``momentum`` (0.9), ``weight_decay``, ``eta`` (0.001), ``lars_exclude``
    (True: no weight decay and no trust ratio, i.e. BN parameters and biases; see :func:`param_groups`),
    ``foreach``. The momentum buffers live in ``state[p]["momentum_buffer"]``, so ``state_dict`` /
    ``load_state_dict`` resume exactly.

    Example:
        >>> opt = LARS(param_groups(model, weight_decay=1e-6), lr=4.8)
        >>> loss.backward(); opt.step(); opt.zero_grad()
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
        lars_exclude: bool = False,
        foreach: bool = True,
    ) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0 or eta <= 0:
            raise ValueError(f"LARS: invalid lr={lr}, momentum={momentum}, weight_decay={weight_decay}, eta={eta}")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            eta=eta,
            lars_exclude=lars_exclude,
            foreach=foreach,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Apply one update to every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, momenta = [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LARS does not support sparse gradients")
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params.append(p)
                grads.append(p.grad)
                momenta.append(state["momentum_buffer"])
            if not params:
                continue
            lars_update(
                params,
                grads,
                momenta,
                lr=group["lr"],
                momentum=group["momentum"],
                weight_decay=group["weight_decay"],
                eta=group["eta"],
                exclude_flags=[group["lars_exclude"]] * len(params),
                foreach=group["foreach"],
            )
        return loss


def param_groups(model_or_params: nn.Module | Iterable[Tensor], weight_decay: float) -> list[dict[str, Any]]:
    """Split parameters into a decayed/adapted group and a BN-and-bias group (ndim <= 1).

    Returns ``[{"params": weights, "weight_decay": weight_decay, "lars_exclude": False},
    {"params": bn_and_biases, "weight_decay": 0.0, "lars_exclude": True}]`` (empty groups left out;
    frozen parameters skipped). BN gammas/betas and biases are all 1-d, which is how they are found
    without relying on names (the official code matches "batch_normalization" and "bias").
    """
    params = model_or_params.parameters() if isinstance(model_or_params, nn.Module) else model_or_params
    decay, no_decay = [], []
    for p in params:
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lars_exclude": False},
        {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
    ]
    return [g for g in groups if g["params"]]


def scaled_lr(base_lr: float, batch_size: int, scaling: str = "linear") -> float:
    """Peak learning rate from the global batch size B (v1 section B.1).

    ``linear``: base x B / 256 (0.3 x 4096/256 = 4.8); ``sqrt``: base x sqrt(B) (0.075 x sqrt(4096) = 4.8;
    v2 uses 0.1 x sqrt(B)); ``none``: base.
    """
    if scaling == "linear":
        return base_lr * batch_size / 256
    if scaling == "sqrt":
        return base_lr * math.sqrt(batch_size)
    if scaling == "none":
        return base_lr
    raise SimCLRError(f"optim.lr_scaling: unknown scaling {scaling!r}; use linear, sqrt or none")


def schedule_steps(num_examples: int, epochs: float, batch_size: int, warmup_epochs: float) -> tuple[int, int]:
    """(total_steps, warmup_steps) with the official formulas (SPEC-DETAILS 5.2).

    total = floor(N x epochs / B) + 1, warmup = round(floor(warmup_epochs x N / B)).
    """
    total = int(num_examples * epochs // batch_size) + 1
    warmup = int(round(warmup_epochs * num_examples // batch_size))
    return total, warmup


def lr_at(step: int, total_steps: int, warmup_steps: int, peak_lr: float, schedule: str = "cosine") -> float:
    """Learning rate at optimizer step ``step`` (0-based): linear warmup, then cosine decay to 0.

        lr = peak x step / warmup                                          for step < warmup
        lr = peak x (1 + cos(pi x (step - warmup) / (total - warmup))) / 2 after (cosine)
        lr = peak                                                          after (constant)

    Starts at exactly 0, reaches ``peak_lr`` at ``warmup_steps`` and 0 at ``total_steps`` (v1 B.1).
    """
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    if schedule == "constant":
        return peak_lr
    if schedule != "cosine":
        raise SimCLRError(f"optim.schedule: unknown schedule {schedule!r}; use cosine or constant")
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max((step - warmup_steps) / decay_steps, 0.0), 1.0)
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(
    model_or_params: nn.Module | Iterable[Any], cfg: OptimConfig, batch_size: int
) -> tuple[torch.optim.Optimizer, float]:
    """The optimizer named by ``cfg.name`` and its peak learning rate (``scaled_lr`` of the batch size).

    ``lars``: :class:`LARS` (momentum, eta = ``trust_coefficient``); ``sgd``: momentum SGD, Nesterov if
    ``cfg.nesterov``; ``adamw``: decoupled weight decay. For all, BN parameters and biases get no weight
    decay (and, for LARS, no adaptation). A list of param-group dicts is used as given, with
    ``weight_decay`` and ``lars_exclude`` filled in where missing. The learning rate starts at the peak;
    set ``group["lr"] = lr_at(...)`` every step.
    """
    peak = scaled_lr(cfg.base_lr, batch_size, cfg.lr_scaling)
    if isinstance(model_or_params, nn.Module):
        groups = param_groups(model_or_params, cfg.weight_decay)
    else:
        items = list(model_or_params)
        if items and isinstance(items[0], dict):
            groups = [{"weight_decay": cfg.weight_decay, "lars_exclude": False, **g} for g in items]
        else:
            groups = param_groups(items, cfg.weight_decay)
    if cfg.name == "lars":
        opt: torch.optim.Optimizer = LARS(groups, lr=peak, momentum=cfg.momentum, eta=cfg.trust_coefficient)
    elif cfg.name == "sgd":
        opt = torch.optim.SGD(groups, lr=peak, momentum=cfg.momentum, nesterov=cfg.nesterov)
    elif cfg.name == "adamw":
        opt = torch.optim.AdamW(groups, lr=peak)
    else:
        raise SimCLRError(f"optim.name: unknown optimizer {cfg.name!r}; use lars, sgd or adamw")
    return opt, peak


__all__ = ["LARS", "build_optimizer", "lars_update", "lr_at", "param_groups", "scaled_lr", "schedule_steps"]
