"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (v1 section 2.1, SPEC section 5).

For a batch of N images, each augmented twice, the 2N projections are L2-normalised and every view i is
classified against the other 2N - 1 views, its positive p(i) being the other view of the same image:

    loss_i = -log( exp(sim(z_i, z_p(i)) / tau) / sum_{k != i} exp(sim(z_i, z_k) / tau) )
    loss   = (1 / 2N) * sum_i loss_i                            (the paper's L, what we return and log)

with sim(u, v) = u.v for unit vectors. The official TensorFlow code returns mean(loss over view-1 anchors)
+ mean(loss over view-2 anchors), which is **2x** this value; multiply by 2 to compare with its logs.

Extras beyond v1:

- ``queue`` (K, D): MoCo-style memory of extra negatives (SimCLRv2 section 2, see :mod:`simclr.memory`),
  appended as K more columns of every view's denominator.
- ``gather``: with several ranks, every rank's projections are gathered (with gradient) so each view sees
  all 2N_global - 1 other views; a rank's rows are its own 2 N_local views (see :mod:`simclr.distributed`).
- ``chunk_size``: a blockwise computation (forward and backward) that never holds more than
  ``chunk_size`` rows of the 2N x (2N + K) similarity matrix, for large batches or memories.

The loss is computed in float32 (float64 stays float64) with log-sum-exp, whatever the input dtype or any
enclosing autocast, since bf16 logits at tau = 0.1 lose the differences the loss is made of.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from simclr.distributed import gather_with_grad, is_distributed, rank
from simclr.errors import SimCLRError


def contrastive_accuracy(logits: Tensor, targets: Tensor) -> Tensor:
    """Fraction of rows whose largest logit is at their target column (a 0-d float tensor).

    ``logits`` (R, M) with the self-similarity already masked, ``targets`` (R,) int64. Used on the full
    row (positive against all negatives, queue included); the official code scores only the
    view-1 anchors against the cross-view block ``logits_ab``, which gives somewhat higher numbers.
    """
    return (logits.argmax(dim=1) == targets).float().mean()


def _prepare(z_a: Tensor, z_b: Tensor, gather: bool | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Normalised rows (2n, D), columns (2N, D), positive and self column of each row (2n,)."""
    if z_a.dim() != 2 or z_a.shape != z_b.shape:
        raise ValueError(f"nt_xent: z_a and z_b must both be (N, D), got {tuple(z_a.shape)}, {tuple(z_b.shape)}")
    dtype = torch.promote_types(z_a.dtype, torch.float32)
    z_a = F.normalize(z_a.to(dtype), dim=1)
    z_b = F.normalize(z_b.to(dtype), dim=1)
    n = z_a.shape[0]
    rows = torch.cat([z_a, z_b])  # (2n, D): view a of the n local images, then view b
    if gather is None:
        gather = is_distributed()
    offset = 0
    if gather and is_distributed():
        # One collective for both views: (n, 2D) -> (W n, 2D), rows in rank order.
        both = gather_with_grad(torch.cat([z_a, z_b], dim=1))
        cols = torch.cat([both[:, : z_a.shape[1]], both[:, z_a.shape[1] :]])  # (2N, D)
        offset = rank() * n
    else:
        cols = rows
    big_n = cols.shape[0] // 2
    local = torch.arange(n, device=rows.device) + offset  # global image index of each local image
    self_idx = torch.cat([local, local + big_n])
    pos = torch.cat([local + big_n, local])
    return rows, cols, pos, self_idx


def _plain(rows: Tensor, cols: Tensor, queue: Tensor | None, pos: Tensor, self_idx: Tensor, tau: float):
    if queue is not None:
        cols = torch.cat([cols, queue])  # (2N + K, D)
    logits = rows @ cols.T / tau  # (2n, 2N + K)
    logits = logits.scatter(1, self_idx[:, None], float("-inf"))  # a view is not its own negative
    loss = F.cross_entropy(logits, pos)
    return loss, contrastive_accuracy(logits.detach(), pos)


class _ChunkedNTXent(torch.autograd.Function):
    """NT-Xent computed ``chunk`` rows at a time, forward and backward.

    Forward keeps only the per-row log-sum-exp (2n,). Backward recomputes each block of logits and uses
    d loss / d logits_ij = (softmax_ij - [j = p(i)]) / R, then d rows = G cols / tau, d cols = G^T rows / tau.
    Peak extra memory is chunk x (2N + K) instead of 2n x (2N + K).
    """

    @staticmethod
    def forward(
        ctx: Any,
        rows: Tensor,
        cols: Tensor,
        queue: Tensor | None,
        pos: Tensor,
        self_idx: Tensor,
        tau: float,
        chunk: int,
    ) -> tuple[Tensor, Tensor]:
        keys = cols if queue is None else torch.cat([cols, queue.to(cols.dtype)])
        num_rows = rows.shape[0]
        lse = rows.new_empty(num_rows)
        pos_logit = rows.new_empty(num_rows)
        correct = rows.new_zeros(())
        for s in range(0, num_rows, chunk):
            e = min(s + chunk, num_rows)
            block = _block(rows[s:e], keys, self_idx[s:e], tau)  # (c, 2N + K)
            lse[s:e] = torch.logsumexp(block, dim=1)
            pos_logit[s:e] = block.gather(1, pos[s:e, None])[:, 0]
            correct += (block.argmax(dim=1) == pos[s:e]).sum()
        ctx.save_for_backward(rows, keys, pos, self_idx, lse)
        ctx.tau, ctx.chunk, ctx.num_cols = tau, chunk, cols.shape[0]
        accuracy = correct / num_rows
        ctx.mark_non_differentiable(accuracy)
        return (lse - pos_logit).mean(), accuracy

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor, _grad_acc: Tensor) -> tuple[Tensor | None, ...]:
        rows, keys, pos, self_idx, lse = ctx.saved_tensors
        tau, chunk, num_cols = ctx.tau, ctx.chunk, ctx.num_cols
        num_rows = rows.shape[0]
        scale = grad_loss / (num_rows * tau)
        grad_rows = torch.empty_like(rows) if ctx.needs_input_grad[0] else None
        grad_cols = torch.zeros_like(keys[:num_cols]) if ctx.needs_input_grad[1] else None
        with torch.autocast(rows.device.type, enabled=False):
            for s in range(0, num_rows, chunk):
                e = min(s + chunk, num_rows)
                block = _block(rows[s:e], keys, self_idx[s:e], tau)
                g = torch.exp(block - lse[s:e, None])  # softmax; exactly 0 at the masked self column
                g[torch.arange(e - s, device=g.device), pos[s:e]] -= 1.0
                g *= scale
                if grad_rows is not None:
                    grad_rows[s:e] = g @ keys
                if grad_cols is not None:
                    grad_cols += g[:, :num_cols].T @ rows[s:e]  # queue columns carry no gradient
        return grad_rows, grad_cols, None, None, None, None, None


def _block(rows: Tensor, keys: Tensor, self_idx: Tensor, tau: float) -> Tensor:
    block = rows @ keys.T / tau
    return block.scatter_(1, self_idx[:, None], float("-inf"))


def nt_xent_with_accuracy(
    z_a: Tensor,
    z_b: Tensor,
    temperature: float = 0.5,
    *,
    queue: Tensor | None = None,
    chunk_size: int | None = None,
    gather: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """NT-Xent loss and contrastive accuracy; see :func:`nt_xent` for the arguments.

    Returns ``(loss, accuracy)``, both 0-d float32 tensors; accuracy (no gradient) is the fraction of this
    rank's 2 N_local views whose largest logit (over all other views and the queue) is their positive.
    """
    if temperature <= 0:
        raise SimCLRError(f"loss.temperature: must be > 0, got {temperature}")
    if chunk_size is not None and chunk_size < 1:
        raise SimCLRError(f"loss.chunk_size: must be a positive integer or null, got {chunk_size}")
    with torch.autocast(z_a.device.type, enabled=False):
        rows, cols, pos, self_idx = _prepare(z_a, z_b, gather)
        if queue is not None:
            if queue.dim() != 2 or queue.shape[1] != rows.shape[1]:
                raise ValueError(f"nt_xent: queue must be (K, {rows.shape[1]}), got {tuple(queue.shape)}")
            queue = queue.detach().to(rows.dtype)
            if queue.shape[0] == 0:
                queue = None
        if chunk_size is None:
            return _plain(rows, cols, queue, pos, self_idx, temperature)
        return _ChunkedNTXent.apply(rows, cols, queue, pos, self_idx, float(temperature), int(chunk_size))


def nt_xent(
    z_a: Tensor,
    z_b: Tensor,
    temperature: float = 0.5,
    *,
    queue: Tensor | None = None,
    chunk_size: int | None = None,
    gather: bool | None = None,
) -> Tensor:
    """NT-Xent loss over the 2N views of a batch, averaged over the views (v1 section 2.1, eq. 1).

    Formula, for the 2N L2-normalised projections (z_a[i], z_b[i] are the two views of image i) and the
    K queued negatives q_k:

        loss_i = -log( exp(z_i.z_p(i) / tau) / (sum_{k != i} exp(z_i.z_k / tau) + sum_k exp(z_i.q_k / tau)) )
        loss   = mean_i loss_i

    Args:
        z_a: (N, D) projections of the first view (any float dtype; normalised here).
        z_b: (N, D) projections of the second view; z_b[i] is z_a[i]'s positive.
        temperature: tau; 0.1 for ImageNet, 0.5 for CIFAR-10 (v1 Table 5, B.9).
        queue: (K, D) extra negatives, already normalised, not differentiated (SimCLRv2 memory).
        chunk_size: compute at most this many rows of the similarity matrix at a time (forward and
            backward); None computes it at once. Same result to float rounding.
        gather: None = gather across ranks when torch.distributed has more than one rank. When
            gathering, the returned value is the mean over this rank's 2 N_local views; all-reduce it
            (mean) for the global loss. DDP's gradient average then gives the global batch's gradient.

    Returns:
        0-d float32 tensor (float64 for float64 inputs). The official code logs 2x this value.

    Example:
        >>> z_a, z_b = model(x_a)[1], model(x_b)[1]   # (N, 128) each
        >>> loss = nt_xent(z_a, z_b, temperature=0.5)
        >>> loss.backward()
    """
    return nt_xent_with_accuracy(z_a, z_b, temperature, queue=queue, chunk_size=chunk_size, gather=gather)[0]


def nt_xent_chunked(
    z_a: Tensor,
    z_b: Tensor,
    temperature: float = 0.5,
    chunk_size: int = 1024,
    *,
    queue: Tensor | None = None,
    gather: bool | None = None,
) -> Tensor:
    """:func:`nt_xent` with the memory-bounded blockwise computation (``chunk_size`` rows at a time)."""
    return nt_xent(z_a, z_b, temperature, queue=queue, chunk_size=chunk_size, gather=gather)


__all__ = ["contrastive_accuracy", "nt_xent", "nt_xent_chunked", "nt_xent_with_accuracy"]
