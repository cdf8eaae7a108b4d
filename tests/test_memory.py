"""The memory queue (FIFO order, wrap-around, filled rows, resume) and the momentum encoder's EMA."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from simclr.loss import nt_xent
from simclr.memory import MemoryQueue, MomentumEncoder


def _rows(start: int, count: int, dim: int = 3) -> torch.Tensor:
    """Rows (1, id, 0, ...) with id = start, start + 1, ...: the id survives normalisation as x1 / x0."""
    out = torch.zeros(count, dim)
    for i in range(count):
        out[i, 0] = 1.0
        out[i, 1] = float(start + i)
    return out


def _ids(q: torch.Tensor) -> list[int]:
    return [round(v) for v in (q[:, 1] / q[:, 0]).tolist()]


def test_fifo_filled_and_wraparound() -> None:
    mem = MemoryQueue(size=5, dim=3)
    assert mem.negatives().shape == (0, 3)
    mem.enqueue(_rows(0, 2))
    assert int(mem.filled) == 2 and int(mem.ptr) == 2
    assert _ids(mem.negatives()) == [0, 1]
    mem.enqueue(_rows(2, 2))
    assert _ids(mem.negatives()) == [0, 1, 2, 3]
    mem.enqueue(_rows(4, 2))  # 5 is K: rows 4 and 5 go to slots 4 and 0 (the oldest, 0, is dropped)
    assert int(mem.filled) == 5 and int(mem.ptr) == 1
    assert _ids(mem.queue) == [5, 1, 2, 3, 4]
    mem.enqueue(_rows(6, 3))  # K not a multiple of the batch: slots 1, 2, 3
    assert _ids(mem.queue) == [5, 6, 7, 8, 4] and int(mem.ptr) == 4
    mem.enqueue(_rows(9, 7))  # more than K at once: the last K rows, still in ring order
    assert sorted(_ids(mem.queue)) == [11, 12, 13, 14, 15]
    assert int(mem.filled) == 5


def test_rows_are_normalised_and_copied() -> None:
    mem = MemoryQueue(size=4, dim=3)
    mem.enqueue(torch.tensor([[3.0, 0.0, 4.0]]))
    neg = mem.negatives()
    torch.testing.assert_close(neg, torch.tensor([[0.6, 0.0, 0.8]]))
    neg.zero_()  # the caller's copy; the queue is untouched
    assert mem.queue[0, 0] == pytest.approx(0.6)


def test_state_dict_round_trip_resumes() -> None:
    mem = MemoryQueue(size=6, dim=3)
    mem.enqueue(_rows(0, 4))
    mem.enqueue(_rows(4, 4))
    state = copy.deepcopy(mem.state_dict())
    assert set(state) == {"queue", "ptr", "filled"}
    resumed = MemoryQueue(size=6, dim=3)
    resumed.load_state_dict(state)
    for m in (mem, resumed):
        m.enqueue(_rows(8, 3))
    torch.testing.assert_close(resumed.queue, mem.queue)
    assert _ids(resumed.negatives()) == _ids(mem.negatives())
    assert int(resumed.ptr) == int(mem.ptr) == 5

    partial = MemoryQueue(size=6, dim=3)
    partial.enqueue(_rows(0, 2))
    fresh = MemoryQueue(size=6, dim=3)
    fresh.load_state_dict(partial.state_dict())
    assert fresh.negatives().shape == (2, 3)  # only the filled rows after a resume too


def test_queue_feeds_the_loss() -> None:
    mem = MemoryQueue(size=8, dim=4)
    z_a, z_b = torch.randn(3, 4), torch.randn(3, 4)
    assert nt_xent(z_a, z_b, 0.5, queue=mem.negatives()).item() == pytest.approx(nt_xent(z_a, z_b, 0.5).item())
    mem.enqueue(torch.randn(5, 4))
    assert nt_xent(z_a, z_b, 0.5, queue=mem.negatives()).item() > nt_xent(z_a, z_b, 0.5).item()


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2))


def test_momentum_encoder_ema_math() -> None:
    torch.manual_seed(0)
    online = _net()
    ema = MomentumEncoder(online)
    assert all(not p.requires_grad for p in ema.parameters())
    start = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    online.train()(torch.randn(8, 4))  # changes BN running statistics
    m = 0.9
    ema.update(online, momentum=m)
    for name, p in online.named_parameters():
        expected = m * start[name] + (1 - m) * p.detach()
        torch.testing.assert_close(ema.module.get_parameter(name), expected)
    for name, b in online.named_buffers():
        torch.testing.assert_close(ema.module.get_buffer(name), b)  # statistics are copied
    # two updates: theta = m^2 theta_0 + (1 - m^2) theta_online for a fixed online model
    ema.update(online, momentum=m)
    w = online[0].weight.detach()
    torch.testing.assert_close(ema.module[0].weight, m * m * start["0.weight"] + (1 - m * m) * w)


def test_momentum_encoder_forward_has_no_grad_and_unwraps() -> None:
    online = _net()
    wrapper = nn.Module()
    wrapper.module = online  # the shape of DistributedDataParallel
    ema = MomentumEncoder(wrapper)
    out = ema.eval()(torch.randn(3, 4))
    assert out.shape == (3, 2) and not out.requires_grad
    ema.update(wrapper, 0.5)
    loaded = MomentumEncoder(_net())
    loaded.load_state_dict(ema.state_dict())
    torch.testing.assert_close(loaded.module[0].weight, ema.module[0].weight)
