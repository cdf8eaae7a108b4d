"""Two CPU ranks (gloo) reproduce a single-process step on the global batch: loss, gradients, BN statistics.

Each rank holds half of a global batch of images, runs a tiny conv net (global BatchNorm, DDP) on both views
together, and computes NT-Xent with the gathered projections. After one backward pass the mean of the ranks'
losses, every parameter's (DDP-averaged) gradient and the BN running statistics must equal those of one
process running the same model on the whole batch.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from simclr.distributed import (
    DistInfo,
    all_gather_nograd,
    all_reduce_mean,
    broadcast_object,
    convert_sync_batchnorm,
    gather_with_grad,
    init_distributed,
    is_main,
    rank,
    shard_indices,
    world_size,
)
from simclr.errors import SimCLRError
from simclr.loss import nt_xent

WORLD = 2
N_GLOBAL = 8  # images; 4 per rank, 16 views in all
TAU = 0.2


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 12, bias=False),
        nn.BatchNorm1d(12),
        nn.ReLU(),
        nn.Linear(12, 8),
    )


def _views() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(N_GLOBAL, 3, 6, 6, generator=g), torch.randn(N_GLOBAL, 3, 6, 6, generator=g)


def _bn_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k}


def _single_process() -> dict:
    model = _model()
    x_a, x_b = _views()
    z = model(torch.cat([x_a, x_b]))  # both views in one pass: BN statistics over all 2N views
    z_leaf = z.detach().requires_grad_(True)
    nt_xent(z_leaf[:N_GLOBAL], z_leaf[N_GLOBAL:], TAU).backward()
    loss = nt_xent(z[:N_GLOBAL], z[N_GLOBAL:], TAU)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    return {"loss": loss.detach(), "grads": grads, "bn": _bn_stats(model), "z_grad": z_leaf.grad}


def _global_order(g: torch.Tensor) -> torch.Tensor:
    """[r0 view a, r0 view b, r1 view a, r1 view b] (gathered rows) -> [all view a, all view b]."""
    parts = g.chunk(2 * WORLD)
    return torch.cat(parts[0::2] + parts[1::2])


def _worker(rank_: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank_), WORLD_SIZE=str(WORLD), LOCAL_RANK="0"
    )
    torch.set_num_threads(1)
    info = init_distributed(backend="gloo", timeout_s=60, device="cpu")
    try:
        assert (info.rank, info.world_size, info.is_main) == (rank_, WORLD, rank_ == 0)
        model = convert_sync_batchnorm(_model())
        ddp = nn.parallel.DistributedDataParallel(model)
        x_a, x_b = _views()
        mine = shard_indices(torch.arange(N_GLOBAL))
        n = mine.numel()
        z = ddp(torch.cat([x_a[mine], x_b[mine]]))

        # The gradient reaching this rank's projections, plain and chunked (with a queue: same collectives).
        z_grads = []
        for chunk in (None, 3):
            z_leaf = z.detach().requires_grad_(True)
            nt_xent(z_leaf[:n], z_leaf[n:], TAU, chunk_size=chunk).backward()
            z_grads.append(z_leaf.grad)
        queue = nn.functional.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(2)), dim=1)
        z_leaf = z.detach().requires_grad_(True)
        q_plain = nt_xent(z_leaf[:n], z_leaf[n:], TAU, queue=queue)
        q_chunk = nt_xent(z_leaf[:n], z_leaf[n:], TAU, queue=queue, chunk_size=5)

        loss = nt_xent(z[:n], z[n:], TAU)  # gather=None: automatic with 2 ranks
        loss.backward()
        result = {
            "loss": all_reduce_mean(loss),
            "queue_losses": (all_reduce_mean(q_plain), all_reduce_mean(q_chunk)),
            "grads": {k: p.grad.clone() for k, p in model.named_parameters()},
            "bn": _bn_stats(model),
            "z_grads": [_global_order(all_gather_nograd(g)) for g in z_grads],
            "sync_bn": all(type(m).__name__ == "SyncBatchNorm" for m in model if "BatchNorm" in type(m).__name__),
            "shared": broadcast_object({"from": rank()}),
        }
        del ddp  # a DDP reducer alive at destroy_process_group aborts the process at exit (see cleanup())
        if is_main():
            torch.save(result, out)
    finally:
        from simclr.distributed import cleanup

        cleanup()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_equal_single_process(tmp_path: Path) -> None:
    out = tmp_path / "rank0.pt"
    ctx = mp.start_processes(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + 90
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.terminate()
            pytest.fail("distributed workers did not finish within 90 s")
    got = torch.load(out, weights_only=False)
    ref = _single_process()

    assert got["sync_bn"]
    assert got["shared"] == {"from": 0}
    torch.testing.assert_close(got["loss"], ref["loss"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["queue_losses"][0], got["queue_losses"][1], rtol=1e-6, atol=1e-6)
    assert set(got["grads"]) == set(ref["grads"])
    for name, g in ref["grads"].items():
        torch.testing.assert_close(got["grads"][name], g, rtol=1e-4, atol=1e-5, msg=f"gradient of {name}")
    for name, v in ref["bn"].items():
        torch.testing.assert_close(got["bn"][name], v, rtol=1e-5, atol=1e-6, msg=f"BN buffer {name}")
    # Each rank receives d(sum of the ranks' losses)/dz; the single process's mean loss gives 1/W of it.
    for z_grad in got["z_grads"]:
        torch.testing.assert_close(z_grad / WORLD, ref["z_grad"], rtol=1e-4, atol=1e-6)


def test_single_process_helpers() -> None:
    info = init_distributed(device="cpu")
    assert info == DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_main=True)
    assert (rank(), world_size(), is_main()) == (0, 1, True)
    t = torch.arange(4.0, requires_grad=True)
    assert gather_with_grad(t) is t
    mean = all_reduce_mean(t)
    assert not mean.requires_grad and torch.equal(mean, t.detach())
    assert broadcast_object([1, 2]) == [1, 2]
    model = _model()
    assert convert_sync_batchnorm(model) is model
    assert shard_indices(torch.arange(8), rank=1, world_size=2).tolist() == [4, 5, 6, 7]
    with pytest.raises(SimCLRError, match="train.batch_size"):
        shard_indices(torch.arange(7), rank=0, world_size=2)
