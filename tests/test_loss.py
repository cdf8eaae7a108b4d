"""NT-Xent against a plain numpy loop, its gradient, dtypes, accuracy and the chunked computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from simclr.errors import SimCLRError
from simclr.loss import contrastive_accuracy, nt_xent, nt_xent_chunked, nt_xent_with_accuracy


def reference_nt_xent(z_a: np.ndarray, z_b: np.ndarray, tau: float, queue: np.ndarray | None = None) -> float:
    """The paper's definition written as a loop, in float64: mean over the 2N views."""
    z = np.concatenate([z_a, z_b]).astype(np.float64)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n2 = len(z)
    extra = [] if queue is None else list(queue.astype(np.float64))
    total = 0.0
    for i in range(n2):
        p = (i + n2 // 2) % n2
        sims = [z[i] @ z[k] / tau for k in range(n2) if k != i] + [z[i] @ q / tau for q in extra]
        top = max(sims)  # shift before exp so tau = 0.01 stays finite
        denom = sum(math.exp(s - top) for s in sims)
        total += -(z[i] @ z[p] / tau - top - math.log(denom))
    return total / n2


def _rand(n: int, d: int, seed: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randn(n, d, generator=g, dtype=dtype)


@pytest.mark.parametrize("n,d", [(1, 3), (4, 8), (9, 16)])
@pytest.mark.parametrize("tau", [0.01, 0.05, 0.1, 0.5, 5.0])
def test_matches_reference(n: int, d: int, tau: float) -> None:
    z_a, z_b = _rand(n, d, seed=n * 100 + d)
    expected = reference_nt_xent(z_a.numpy(), z_b.numpy(), tau)
    assert nt_xent(z_a, z_b, tau).item() == pytest.approx(expected, rel=1e-6, abs=1e-6)
    # float32 inputs: same to float32 rounding of the similarities (amplified by 1/tau)
    got32 = nt_xent(z_a.float(), z_b.float(), tau)
    assert got32.dtype == torch.float32
    assert got32.item() == pytest.approx(expected, rel=1e-5, abs=1e-5 / min(tau, 1.0))


@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_matches_reference_with_queue(tau: float) -> None:
    z_a, z_b = _rand(6, 8, seed=1)
    queue = torch.nn.functional.normalize(torch.randn(11, 8, dtype=torch.float64), dim=1)
    expected = reference_nt_xent(z_a.numpy(), z_b.numpy(), tau, queue.numpy())
    assert nt_xent(z_a, z_b, tau, queue=queue).item() == pytest.approx(expected, rel=1e-6, abs=1e-6)
    # an empty queue is no queue
    assert nt_xent(z_a, z_b, tau, queue=queue[:0]).item() == pytest.approx(
        reference_nt_xent(z_a.numpy(), z_b.numpy(), tau), rel=1e-6
    )


def test_single_pair_without_negatives_is_zero() -> None:
    z_a, z_b = _rand(1, 4, seed=3)
    assert nt_xent(z_a, z_b, 0.5).item() == pytest.approx(0.0, abs=1e-12)


def test_scale_invariant() -> None:
    z_a, z_b = _rand(5, 6, seed=4)
    assert nt_xent(3.0 * z_a, 0.2 * z_b, 0.1).item() == pytest.approx(nt_xent(z_a, z_b, 0.1).item(), rel=1e-10)


@pytest.mark.parametrize("chunk_size", [None, 2])
@pytest.mark.parametrize("with_queue", [False, True])
def test_gradcheck(chunk_size: int | None, with_queue: bool) -> None:
    z_a, z_b = _rand(3, 4, seed=5)
    z_a.requires_grad_(True)
    z_b.requires_grad_(True)
    queue = torch.nn.functional.normalize(torch.randn(4, 4, dtype=torch.float64), dim=1) if with_queue else None

    def fn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return nt_xent(a, b, 0.3, queue=queue, chunk_size=chunk_size)

    assert torch.autograd.gradcheck(fn, (z_a, z_b), eps=1e-6, atol=1e-6)


def test_gradient_matches_softmax_formula() -> None:
    """d loss / d logits = (softmax - onehot(positive)) / 2N, pushed through the normalisation by hand."""
    z_a, z_b = _rand(4, 5, seed=6)
    tau = 0.2
    z = torch.cat([z_a, z_b]).requires_grad_(True)
    nt_xent(z[:4], z[4:], tau).backward()
    u = (z / z.norm(dim=1, keepdim=True)).detach()
    n2 = 8
    grad_u = torch.zeros_like(u)
    for i in range(n2):
        p = (i + 4) % n2
        w = torch.tensor([math.exp(u[i] @ u[k] / tau) if k != i else 0.0 for k in range(n2)], dtype=u.dtype)
        soft = w / w.sum()
        coeff = soft.clone()
        coeff[p] -= 1.0
        for k in range(n2):  # logit_ik = u_i . u_k / tau depends on both rows
            grad_u[i] += coeff[k] * u[k] / (tau * n2)
            grad_u[k] += coeff[k] * u[i] / (tau * n2)
    norms = z.detach().norm(dim=1, keepdim=True)
    grad_z = (grad_u - (grad_u * u).sum(1, keepdim=True) * u) / norms  # Jacobian of z / ||z||
    torch.testing.assert_close(z.grad, grad_z, rtol=1e-9, atol=1e-12)


def test_bf16_inputs_give_float32_loss() -> None:
    z_a, z_b = _rand(8, 16, seed=7, dtype=torch.float32)
    a16, b16 = z_a.bfloat16(), z_b.bfloat16()
    loss = nt_xent(a16, b16, 0.1)
    assert loss.dtype == torch.float32
    expected = nt_xent(a16.float(), b16.float(), 0.1)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        in_autocast = nt_xent(z_a, z_b, 0.1, chunk_size=5)
    assert in_autocast.dtype == torch.float32
    assert in_autocast.item() == pytest.approx(nt_xent(z_a, z_b, 0.1).item(), rel=1e-5)


def test_contrastive_accuracy_hand_made() -> None:
    logits = torch.tensor([[0.1, 0.9, 0.0], [2.0, 1.0, 3.0], [float("-inf"), 0.5, 0.4]])
    assert contrastive_accuracy(logits, torch.tensor([1, 0, 1])).item() == pytest.approx(2 / 3)
    # views: a0=(1,0) a1=(0,1) b0=(1,0) b1~(1,0.1). All rows pick their positive except b1, whose closest
    # other views are a0 and b0 rather than its positive a1.
    z_a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z_b = torch.tensor([[1.0, 0.0], [1.0, 0.1]])
    for chunk in (None, 3):
        _, acc = nt_xent_with_accuracy(z_a, z_b, 0.5, chunk_size=chunk)
        assert acc.item() == pytest.approx(0.75)
    # a queued negative equal to a1 steals a1's top logit from its positive b1
    queue = torch.nn.functional.normalize(torch.tensor([[0.0, 1.0]]), dim=1)
    _, acc = nt_xent_with_accuracy(z_a, z_b, 0.5, queue=queue)
    assert acc.item() == pytest.approx(0.5)  # a1 . q = 1 > a1 . b1 = 0.0995


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 10, 64])
@pytest.mark.parametrize("with_queue", [False, True])
def test_chunked_equals_plain(chunk_size: int, with_queue: bool) -> None:
    g = torch.Generator().manual_seed(chunk_size)
    z_a = torch.randn(5, 12, generator=g)
    z_b = torch.randn(5, 12, generator=g)
    queue = torch.nn.functional.normalize(torch.randn(9, 12, generator=g), dim=1) if with_queue else None
    results = []
    for chunk in (None, chunk_size):
        a = z_a.clone().requires_grad_(True)
        b = z_b.clone().requires_grad_(True)
        loss, acc = nt_xent_with_accuracy(a, b, 0.1, queue=queue, chunk_size=chunk)
        (3.0 * loss).backward()  # a non-unit upstream gradient
        results.append((loss.detach(), acc, a.grad, b.grad))
    (l0, acc0, ga0, gb0), (l1, acc1, ga1, gb1) = results
    torch.testing.assert_close(l1, l0, rtol=1e-6, atol=1e-6)
    assert acc1.item() == pytest.approx(acc0.item())
    torch.testing.assert_close(ga1, ga0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gb1, gb0, rtol=1e-5, atol=1e-6)
    assert nt_xent_chunked(z_a, z_b, 0.1, chunk_size, queue=queue).item() == pytest.approx(l0.item(), abs=1e-6)


def test_invalid_arguments() -> None:
    z_a, z_b = _rand(2, 3, seed=8)
    with pytest.raises(SimCLRError, match="loss.temperature"):
        nt_xent(z_a, z_b, 0.0)
    with pytest.raises(SimCLRError, match="loss.chunk_size"):
        nt_xent(z_a, z_b, 0.5, chunk_size=0)
    with pytest.raises(ValueError, match="z_a and z_b"):
        nt_xent(z_a, z_b[:1], 0.5)
    with pytest.raises(ValueError, match="queue"):
        nt_xent(z_a, z_b, 0.5, queue=torch.zeros(2, 5))
