"""Gradient caching: a contrastive loss over a large batch with the activation memory of a micro-batch.

Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup" (GradCache).
The loss couples every view of the batch, so it cannot be split like a sum of per-example losses; but its
gradient only reaches the network through the projections z, which are small (2N x 128). One step:

    1. z_k = f(x_k) for every micro-batch k, without autograd          (no activations kept)
    2. L = loss(concat_k z_k), backward to the projections only         (g = dL/dz, 2N x D, cached)
    3. for every micro-batch k: z_k = f(x_k) again, with autograd; backward(z_k, g_k)

Step 3 accumulates exactly the parameter gradient of L (the chain rule, summed over micro-batches), so the
result equals the full-batch step up to float summation order, for one extra forward pass without
autograd (a third more compute in theory; +40-60 % CPU time measured for ResNet-18 on CPU). Peak
activation memory is that of one micro-batch; with ``checkpoint=True`` the encoder's stages also run
under :func:`torch.utils.checkpoint.checkpoint`, keeping only stage boundaries.

BatchNorm caveat. In training mode BN normalises each micro-batch with that micro-batch's statistics, so
the forward pass (and hence loss and gradients) differs from the full-batch one whenever the micro-batch
is smaller than the batch: it is no longer the paper's BN over the global batch (v1 section 2.3), closer to
per-device BN. Only models whose outputs do not depend on batch composition (BN in eval mode, GroupNorm,
LayerNorm) give the full-batch result. The running statistics, which every forward pass would update
(twice per micro-batch here), are handled so that a step updates them ONCE, with the statistics of the
whole batch: during pass 1 every BN layer runs with momentum 1 and a forward hook reads each micro-batch's
mean and unbiased variance from the running buffers; they are combined exactly (pooled mean, pooled
variance including the spread between micro-batch means) and applied with the layer's own momentum (or
cumulative average when ``momentum=None``); ``num_batches_tracked`` grows by one. Pass 2 (and checkpoint
recomputation) then runs on a copy of the buffers that is restored afterwards. For the first BN layer, whose
input does not depend on earlier normalisation, this equals a plain full-batch step; deeper layers see
inputs normalised per micro-batch, the caveat above.

With the two views concatenated as in the engine (rows [0, N) view 1, [N, 2N) view 2), micro-batches of
fewer than N rows hold one view of each image only, so positives never share BN statistics (the effect
MoCo's shuffling BN aims at); :func:`grad_cache_two_views` (what the engine runs for ``train.micro_batch``)
regroups the rows so that each micro-batch holds both views of its images, as each accelerator's batch did in
the paper's runs.

Randomness: each micro-batch's RNG state (CPU and its CUDA device) is recorded before pass 1 and restored
for pass 2, so dropout or stochastic depth draw the same masks in both passes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint as _checkpoint

from simclr.distributed import SyncBatchNorm, all_reduce_max

Output = Tensor | Sequence[Tensor | None]


@contextmanager
def activation_checkpointing(model: nn.Module) -> Iterator[None]:
    """Run every encoder stage of ``model`` under activation checkpointing while the block is active.

    Finds the submodules with a ``stages()`` method (:class:`~simclr.models.ResNet`: stem and four block
    groups) and wraps each stage's ``forward`` in ``torch.utils.checkpoint.checkpoint(use_reentrant=False)``:
    only the stage inputs are kept for backward, each stage's activations are recomputed during it.
    Recomputation runs BN layers again (in training mode they update running statistics a second time;
    :func:`grad_cache_step` restores them, a plain step would not). Not meant to be combined with
    ``torch.compile`` (patching forward methods invalidates compiled graphs).
    """
    patched: list[nn.Module] = []
    try:
        for module in model.modules():
            stages = getattr(module, "stages", None)
            if not callable(stages):
                continue
            for stage in stages():
                original = stage.forward

                def forward(*args: Any, _f: Callable = original, **kwargs: Any) -> Any:
                    return _checkpoint(_f, *args, use_reentrant=False, **kwargs)

                stage.forward = forward  # instance attribute: shadows the class method until deleted
                patched.append(stage)
        yield
    finally:
        for stage in patched:
            del stage.forward


def _set_stats(bn: _BatchNorm, mean: Tensor, var: Tensor, count: Tensor) -> None:
    bn.running_mean.copy_(mean)
    bn.running_var.copy_(var)
    bn.num_batches_tracked.copy_(count)


class _RunningStatsOnce:
    """Makes pass 1 update each training-mode BN layer's running statistics once, with full-batch statistics.

    While active: momentum 1 (the running buffers then hold the last micro-batch's mean and unbiased
    variance after each call) and a forward hook accumulating count-weighted sums per layer in float64.
    ``finish()`` restores the momenta and writes ``(1 - m) * old + m * pooled`` (m = 1 / (n + 1) for a
    cumulative-average layer), ``num_batches_tracked + 1``.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
        self.saved: list[tuple[Any, Tensor, Tensor, Tensor]] = []
        self.sums: list[list[Any]] = []
        self.handles: list[Any] = []

    def __enter__(self) -> _RunningStatsOnce:
        for i, bn in enumerate(self.layers):
            self.saved.append(
                (bn.momentum, bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
            )
            self.sums.append([0, 0.0, 0.0, 0.0])  # count, sum n*mean, sum n*mean^2, sum (n-1)*var
            bn.momentum = 1.0
            self.handles.append(bn.register_forward_hook(self._hook(i)))
        return self

    def _hook(self, i: int) -> Callable:
        def hook(bn: _BatchNorm, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            x = inputs[0]
            n = x.numel() // x.shape[1]  # values per channel: batch x spatial positions
            if isinstance(bn, nn.SyncBatchNorm | SyncBatchNorm) and dist.is_available() and dist.is_initialized():
                n *= dist.get_world_size()  # statistics over every rank's (equal) micro-batch
            mean, var = bn.running_mean.double(), bn.running_var.double()  # this micro-batch's statistics
            s = self.sums[i]
            s[0] += n
            s[1] = s[1] + n * mean
            s[2] = s[2] + n * mean * mean
            s[3] = s[3] + (n - 1) * var

        return hook

    def finish(self) -> None:
        for h in self.handles:
            h.remove()
        for bn, (momentum, mean0, var0, count0), (n, s1, s2, s3) in zip(
            self.layers, self.saved, self.sums, strict=True
        ):
            bn.momentum = momentum
            if n < 2:  # the layer did not run (or saw one value): leave it as it was
                _set_stats(bn, mean0, var0, count0)
                continue
            mean = s1 / n
            # pooled unbiased variance: within micro-batches + between their means (sum n_k mu_k^2 - n mu^2)
            var = (s3 + s2 - n * mean * mean) / (n - 1)
            if momentum is None:  # cumulative moving average, as nn.BatchNorm with momentum=None
                f = 1.0 / (count0.double() + 1.0)
            else:
                f = torch.tensor(float(momentum), dtype=torch.float64, device=mean.device)
            _set_stats(bn, (1 - f) * mean0.double() + f * mean, (1 - f) * var0.double() + f * var, count0 + 1)

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is not None:  # an error in pass 1: put everything back as it was
            for h in self.handles:
                h.remove()
            for bn, (momentum, mean0, var0, count0) in zip(self.layers, self.saved, strict=True):
                bn.momentum = momentum
                _set_stats(bn, mean0, var0, count0)


def _rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


@contextmanager
def _replay_rng(state: tuple[Tensor, Tensor | None], device: torch.device) -> Iterator[None]:
    """Run the block from a recorded RNG state, leaving the global RNG as it was before the block."""
    cuda_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], device)
        yield


def _concat(outputs: list[Output]) -> Output:
    """Per-micro-batch outputs -> full-batch output of the same structure (None entries stay None)."""
    first = outputs[0]
    if isinstance(first, Tensor):
        return torch.cat(outputs)  # type: ignore[arg-type]
    return tuple(None if first[i] is None else torch.cat([o[i] for o in outputs]) for i in range(len(first)))


def _leaves(full: Output) -> Output:
    """Detached copies of the full-batch outputs that collect dL/d(output) (float tensors only)."""

    def leaf(t: Tensor | None) -> Tensor | None:
        if t is None or not t.is_floating_point():
            return t
        return t.detach().requires_grad_(True)

    if isinstance(full, Tensor):
        return leaf(full)
    return tuple(leaf(t) for t in full)


def _as_list(out: Output) -> list[Tensor | None]:
    return [out] if isinstance(out, Tensor) else list(out)


def grad_cache_step(
    model: nn.Module,
    views: Tensor,
    loss_fn: Callable[[Output], Tensor],
    micro_batch: int,
    *,
    checkpoint: bool = False,
    skip_nonfinite: bool | Callable[[Tensor], bool] = True,
) -> Tensor:
    """One gradient-cached forward/backward (GradCache, Gao et al. 2021); returns the loss, detached.

    Args:
        model: maps a batch of views (b, ...) to a tensor or a tuple of tensors / None, e.g.
            :class:`~simclr.models.SimCLRModel` -> ``(h, z)`` or the engine's module -> ``(h, z, logits)``.
        views: the full batch (2N, 3, S, S), split into chunks of ``micro_batch`` rows (the last may be
            smaller). Any autocast active around the call applies to both forward passes.
        loss_fn: called ONCE with the full-batch output (same structure as ``model``'s, rows in ``views``
            order) and returns the scalar loss, e.g. ``lambda out: nt_xent(*out[1].chunk(2), 0.5)``.
            It may record values (accuracy, the projections) for logging; they carry no graph to the model.
        micro_batch: rows per forward pass; ``>= len(views)`` is a plain step done in two passes.
        checkpoint: also checkpoint the encoder's stages in the second pass (see
            :func:`activation_checkpointing`), for micro-batches that do not fit otherwise.
        skip_nonfinite: when the loss is NaN/inf, return it without any backward (parameter gradients
            untouched), as the engine skips such steps; this reads the loss on the host (one sync). Under
            torch.distributed the test is whether ANY rank's loss is non-finite (one all-reduce), so that all
            ranks skip together (a rank that skipped alone would leave the others waiting in DDP's gradient
            all-reduce). A callable ``skip(loss) -> bool`` replaces the test; it must agree across ranks too.

    Parameter gradients are accumulated into ``.grad`` (zero them before, as for ``loss.backward()``).
    BatchNorm running statistics are updated once per call with full-batch statistics (see the module
    docstring for this and for the micro-batch BN caveat). Under ``DistributedDataParallel`` the gradient
    all-reduce runs once, with the last micro-batch (``no_sync`` for the others).
    """
    if micro_batch < 1:
        raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
    chunks = views.split(micro_batch)
    device = views.device

    # Pass 1: projections of every micro-batch, no graph kept; BN running statistics updated once.
    rng_states, outputs = [], []
    with torch.no_grad(), _RunningStatsOnce(model) as bn_once:
        for chunk in chunks:
            rng_states.append(_rng_state(device))
            outputs.append(model(chunk))
        bn_once.finish()

    # The loss over the full batch, differentiated with respect to the projections only.
    reps = _leaves(_concat(outputs))
    del outputs
    loss = loss_fn(reps)
    if callable(skip_nonfinite):
        skip = skip_nonfinite(loss)
    else:
        skip = skip_nonfinite and bool(all_reduce_max((~torch.isfinite(loss.detach())).float()))
    if skip:
        return loss.detach()
    loss.backward()
    cached = [None if (t is None or t.grad is None) else t.grad.split(micro_batch) for t in _as_list(reps)]
    if all(g is None for g in cached):
        return loss.detach()  # the loss does not depend on the model's outputs

    # Pass 2: each micro-batch again, with a graph, backpropagating its slice of the cached gradient.
    buffers = [b for bn in bn_once.layers for b in (bn.running_mean, bn.running_var, bn.num_batches_tracked)]
    kept = [b.clone() for b in buffers]
    no_sync = getattr(model, "no_sync", None)
    for k, chunk in enumerate(chunks):
        sync = nullcontext() if (no_sync is None or k == len(chunks) - 1) else no_sync()
        ckpt = activation_checkpointing(model) if checkpoint else nullcontext()
        with sync, ckpt, _replay_rng(rng_states[k], device):
            out = _as_list(model(chunk))
            pairs = [(o, g[k]) for o, g in zip(out, cached, strict=True) if g is not None and o is not None]
            torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
    if buffers:
        torch._foreach_copy_(buffers, kept)
    return loss.detach()


def pair_micro_batches(views: Tensor, micro_batch: int) -> Tensor:
    """Rows [v1; v2] (2N, ...) -> [v1_0; v2_0; v1_1; v2_1; ...]: micro-batches of both views of ``micro_batch`` images.

    ``v1_k`` are rows [k m, (k + 1) m) of view 1 (m = ``micro_batch``, which must divide N), so chunk k of
    ``.split(2 * m)`` is the 2m views of images [k m, (k + 1) m), view 1 first. Inverse: :func:`unpair`.
    """
    n = len(views) // 2
    if micro_batch < 1 or 2 * n != len(views) or n % micro_batch:
        raise ValueError(f"micro_batch={micro_batch} must divide the {n} images of {len(views)} views")
    out = views.unflatten(0, (2, n // micro_batch, micro_batch)).transpose(0, 1).flatten(0, 2)  # (k, 2, m, ...)
    if views.dim() == 4 and not views.is_contiguous() and views.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)  # the reshaping copy would drop the format
    return out


def unpair(rows: Tensor, micro_batch: int) -> Tensor:
    """The inverse of :func:`pair_micro_batches`: rows back in [v1; v2] order."""
    return rows.unflatten(0, (-1, 2, micro_batch)).transpose(0, 1).flatten(0, 2)  # (2, k, m, ...)


def grad_cache_two_views(
    model: nn.Module,
    views: Tensor,
    loss_fn: Callable[[Output], Tensor],
    micro_batch: int,
    *,
    checkpoint: bool = False,
    skip_nonfinite: bool | Callable[[Tensor], bool] = True,
) -> Tensor:
    """:func:`grad_cache_step` with micro-batches of ``micro_batch`` IMAGES, each with both its views.

    ``views``: (2N, ...) with rows [0, N) view 1 and [N, 2N) view 2 of the same N images (the engine's
    layout); ``micro_batch`` must divide N. Each forward pass sees the 2m views of m images
    (:func:`pair_micro_batches`), so an image's two views share the micro-batch's BatchNorm statistics;
    ``loss_fn`` still receives the full-batch output in ``views`` order. With ``micro_batch == N`` this is
    one micro-batch of the whole batch (with ``checkpoint=True``: activation checkpointing alone).
    Returns the loss, detached; gradients accumulate into ``.grad`` as with :func:`grad_cache_step`.
    """
    paired = pair_micro_batches(views, micro_batch)

    def loss_in_views_order(out: Output) -> Tensor:
        if isinstance(out, Tensor):
            return loss_fn(unpair(out, micro_batch))
        return loss_fn(tuple(None if t is None else unpair(t, micro_batch) for t in out))

    return grad_cache_step(
        model, paired, loss_in_views_order, 2 * micro_batch, checkpoint=checkpoint, skip_nonfinite=skip_nonfinite
    )


__all__ = ["activation_checkpointing", "grad_cache_step", "grad_cache_two_views", "pair_micro_batches", "unpair"]
