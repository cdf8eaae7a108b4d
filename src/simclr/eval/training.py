"""The epoch loop that fine-tuning and distillation share: batches, scheduled lr, backward, evaluation.

:func:`run_epochs` runs ``epochs`` passes over a batch source; the caller gives the loss of one batch
(``step_loss``), the learning rate of a step (``lr_of``) and how to evaluate (``evaluate``). Each epoch's
record is ``{"epoch", "loss"}`` plus ``"top1"`` / ``"top5"`` after every ``eval_every`` epochs and after
the last; a non-finite epoch loss stops with one line. ``after_epoch`` runs after each record (a
checkpoint of a resumable run).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from simclr.data.source import Batch, BatchSource
from simclr.errors import SimCLRError
from simclr.runtime import progress


def run_epochs(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    source: BatchSource,
    step_loss: Callable[[Batch, int], Tensor],
    lr_of: Callable[[int], float],
    evaluate: Callable[[], tuple[float, float]],
    *,
    epochs: int,
    eval_every: int = 1,
    desc: str = "train",
    what: str = "training",
    first_epoch: int = 0,
    step: int = 0,
    history: list[dict[str, Any]] | None = None,
    after_epoch: Callable[[int, int, list[dict[str, Any]]], None] | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """Epochs ``first_epoch .. epochs - 1`` over ``source``; returns ``(history, steps done)``.

    ``step_loss(batch, step)`` returns the batch's loss (the caller makes the views and runs the forward
    pass); ``lr_of(step)`` the learning rate, scaled by each parameter group's ``lr_scale`` (default 1).
    ``source.set_epoch(epoch)`` is called before each epoch, so the order of every epoch is the source's.
    """
    history = list(history or [])
    bar = progress(range(first_epoch, epochs), total=epochs - first_epoch, desc=desc)
    for epoch in bar:
        model.train()
        source.set_epoch(epoch)
        loss_sum = None
        batches = 0
        for batch in source:
            for group in optimizer.param_groups:
                group["lr"] = lr_of(step) * group.get("lr_scale", 1.0)
            loss = step_loss(batch, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
            batches += 1
            step += 1
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": float(loss_sum) / max(1, batches) if batches else 0.0}
        if not math.isfinite(record["loss"]):
            raise SimCLRError(f"{what} diverged at epoch {epoch + 1} (loss {record['loss']}); lower --lr")
        if (epoch + 1) % max(1, eval_every) == 0 or epoch + 1 == epochs:
            record["top1"], record["top5"] = evaluate()
            bar.set_postfix(loss=f"{record['loss']:.3f}", top1=f"{record['top1']:.2f}")
        history.append(record)
        if after_epoch is not None:
            after_epoch(epoch, step, history)
    return history, step


__all__ = ["run_epochs"]
