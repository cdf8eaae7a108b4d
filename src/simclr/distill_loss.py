"""The distillation objective of SimCLRv2 (v2 section 2, Eq. 2-3): pure functions of the logits.

:func:`distill_loss` is the cross-entropy between the teacher's and the student's tempered probabilities,
:func:`distill_objective` mixes it with the labelled cross-entropy (weight ``alpha``), and
:func:`gradient_scale` says how much larger its gradient is than cross-entropy's (the learning-rate
correction of :mod:`simclr.distill`).
"""

from __future__ import annotations

import torch  # noqa: F401  (the docstring example)
import torch.nn.functional as F
from torch import Tensor


def distill_loss(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float, scale_by_t2: bool = False
) -> Tensor:
    """The distillation loss of SimCLRv2 (v2 Eq. 2), averaged over the batch.

        L = -1/B sum_x sum_y p_T(y | x; tau) log p_S(y | x; tau),   p(y | x; tau) = softmax(logits / tau)_y

    student_logits, teacher_logits: (B, C). Both softmaxes use the same temperature tau; no gradient flows
    into the teacher (its logits are detached). The paper's equation has no tau^2 factor, and neither has
    this default; ``scale_by_t2=True`` multiplies by tau^2, as the official colab does (Hinton et al.'s
    correction for soft-target gradients shrinking as 1 / tau^2 at high temperature). Computed in float32.
    Returns a scalar tensor.

    Example:
        >>> distill_loss(torch.zeros(2, 3), torch.zeros(2, 3), 1.0)  # uniform p_T and p_S: log 3
        tensor(1.0986)
    """
    if student_logits.shape != teacher_logits.shape or student_logits.ndim != 2:
        raise ValueError(
            f"expected student and teacher logits of equal shape (B, C), got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    p_teacher = F.softmax(teacher_logits.detach().float() / temperature, dim=1)  # (B, C)
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)  # (B, C)
    loss = -(p_teacher * log_p_student).sum(dim=1).mean()
    return loss * temperature**2 if scale_by_t2 else loss


def distill_objective(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float,
    alpha: float = 1.0,
    labeled_logits: Tensor | None = None,
    labels: Tensor | None = None,
    scale_by_t2: bool = False,
) -> Tensor:
    """``(1 - alpha) x CE(labeled_logits, labels) + alpha x distill_loss(...)`` (v2 Eq. 3), one scalar.

    student_logits / teacher_logits: (B, C) on the unlabeled batch; labeled_logits: (B_l, C) student logits
    on labelled images with ``labels`` (B_l,), both means over their own batch. With ``alpha = 1`` the labels
    are not used (and may be None); ``alpha`` must lie in [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    loss = alpha * distill_loss(student_logits, teacher_logits, temperature, scale_by_t2)
    if alpha < 1.0:
        if labeled_logits is None or labels is None:
            raise ValueError("alpha < 1 needs labelled logits and their labels")
        loss = loss + (1.0 - alpha) * F.cross_entropy(labeled_logits.float(), labels)
    return loss


def gradient_scale(temperature: float, scale_by_t2: bool) -> float:
    """How much larger the gradient of :func:`distill_loss` w.r.t. the student logits is than cross-entropy's.

    d L / d s = (p_S - p_T) / tau (times tau^2 with ``scale_by_t2``), against p - y for cross-entropy.
    """
    return temperature if scale_by_t2 else 1.0 / temperature


__all__ = ["distill_loss", "distill_objective", "gradient_scale"]
