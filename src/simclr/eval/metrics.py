"""Top-k accuracy, the metric every protocol reports (v1 section 4, Tables 6-7: top-1 and top-5).

Accuracies are percentages in [0, 100]. With fewer than five classes, "top-5" is top-min(5, num_classes)
(always 100 % for two classes), so the key stays ``top5`` for every dataset.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def topk_correct(logits: Tensor, targets: Tensor, ks: Sequence[int] = (1, 5)) -> Tensor:
    """Number of rows whose target is among the ``min(k, C)`` largest logits, for each k.

    logits: (N, C) scores; targets: (N,) int64 in [0, C). Returns int64 (len(ks),) counts, on the logits'
    device, so batches can be summed without a host sync per batch.
    """
    if logits.ndim != 2 or targets.ndim != 1 or logits.shape[0] != targets.shape[0]:
        raise ValueError(f"expected logits (N, C) and targets (N,), got {tuple(logits.shape)}, {tuple(targets.shape)}")
    num_classes = logits.shape[1]
    k_max = min(max(ks), num_classes)
    top = logits.topk(k_max, dim=1).indices  # (N, k_max), best first
    hit = top.eq(targets.to(top.device).unsqueeze(1))  # (N, k_max): at most one True per row
    cum = hit.cumsum(dim=1)  # cum[:, j] = target within the best j + 1
    return torch.stack([cum[:, min(k, num_classes) - 1].sum() for k in ks])


def topk_accuracy(logits: Tensor, targets: Tensor, ks: Sequence[int] = (1, 5)) -> tuple[float, ...]:
    """Top-k accuracies in percent for each k in ``ks`` (k capped at the number of classes).

    logits: (N, C); targets: (N,). ``topk_accuracy(logits, y)`` returns ``(top1, top5)``.
    """
    n = targets.shape[0]
    if n == 0:
        raise ValueError("topk_accuracy of an empty batch")
    return tuple(100.0 * float(c) / n for c in topk_correct(logits, targets, ks).cpu())
