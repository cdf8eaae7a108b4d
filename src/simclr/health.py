"""Representation health (Wang & Isola 2020; RankMe, Garrido et al. 2023): small pure functions.

On embeddings of two augmented views of the same images: alignment E ||f(x) - f(x')||^2 and uniformity
log E exp(-2 ||f(x) - f(y)||^2) of the L2-normalised embeddings, the standard deviation of every dimension
(collapse shows as near-zero stds) and the effective rank (exp of the entropy of the normalised singular
values). :func:`interpret` says in one line what the numbers mean. The report draws them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def alignment(u: Tensor, v: Tensor) -> float:
    """Mean squared distance between the L2-normalised embeddings of two views, rows paired: (N, D) each.

    0 when both views of every image map to the same point; at most 4 (Wang & Isola 2020, alpha = 2).
    """
    u, v = F.normalize(u.double(), dim=1), F.normalize(v.double(), dim=1)
    return float((u - v).pow(2).sum(1).mean())


def uniformity(u: Tensor, t: float = 2.0) -> float:
    """log of the mean of exp(-t ||u_i - u_j||^2) over distinct pairs of L2-normalised rows of u (N, D).

    0 when all embeddings coincide; about -4 (t = 2) when they are spread over a high-dimensional sphere.
    """
    u = F.normalize(u.double(), dim=1)
    sq = torch.pdist(u).pow(2)  # (N (N - 1) / 2,) squared distances of distinct pairs
    return float(torch.logsumexp(-t * sq, 0) - math.log(sq.numel()))


def dimension_std(u: Tensor) -> Tensor:
    """Standard deviation of each dimension of the L2-normalised rows of u (N, D) over the N images: (D,)."""
    return F.normalize(u.double(), dim=1).std(0)


def effective_rank(u: Tensor) -> float:
    """exp(entropy) of the normalised singular values of the centred, L2-normalised rows of u (N, D).

    The effective rank of Roy & Vetterli (2007), which RankMe (Garrido et al. 2023) tracks for
    self-supervised embeddings (here of the centred embeddings): D when every direction carries the same
    variance, 1 when a single one carries it all.
    """
    x = F.normalize(u.double(), dim=1)
    s = torch.linalg.svdvals(x - x.mean(0))
    p = s / s.sum().clamp_min(1e-12)
    return float(torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()))


def health_summary(v1: Tensor, v2: Tensor) -> dict[str, Any]:
    """Alignment, uniformity, per-dimension std and effective rank of embeddings of two views (N, D)."""
    both = torch.cat([v1, v2])
    std = dimension_std(both)
    d = std.numel()
    return {
        "dim": d,
        "alignment": alignment(v1, v2),
        "uniformity": uniformity(both),
        "std": std.float(),
        "near_zero": int((std < 0.1 / math.sqrt(d)).sum()),  # a tenth of a uniform spread's 1 / sqrt(D)
        "total_variance": float(std.pow(2).sum()),  # 1 - ||mean||^2, in [0, 1]
        "effective_rank": effective_rank(both),
    }


def interpret(name: str, s: dict[str, Any]) -> str:
    """One line saying what the numbers of :func:`health_summary` mean for representation ``name``."""
    facts = (
        f"{name}: alignment {s['alignment']:.3f} (0 = the two views coincide), uniformity {s['uniformity']:.2f} "
        f"(0 = all images coincide, about -4 = spread over the sphere), effective rank {s['effective_rank']:.1f} "
        f"of {s['dim']}, {s['near_zero']} of {s['dim']} dimensions with near-zero std"
    )
    if s["total_variance"] < 0.01:
        verdict = "complete collapse: every image gets almost the same embedding"
    elif s["near_zero"] > s["dim"] // 2:
        verdict = "dimensional collapse: most dimensions carry no variation"
    elif s["uniformity"] > -0.5:
        verdict = "the embeddings crowd into a small region of the sphere (early training, or a collapse under way)"
    elif s["near_zero"] > 0:
        dead = " (channels that a ReLU keeps at zero are common in h)" if name == "h" else ""
        verdict = f"a few dimensions are unused{dead}, the others vary"
    else:
        verdict = "no sign of collapse"
    return f"{facts}: {verdict}."


__all__ = ["alignment", "dimension_std", "effective_rank", "health_summary", "interpret", "uniformity"]
