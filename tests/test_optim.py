"""LARS against a plain numpy reference, param groups, learning-rate scaling and schedule, the builder."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from simclr.config import OptimConfig
from simclr.errors import SimCLRError
from simclr.optim import LARS, build_optimizer, lars_update, lr_at, param_groups, scaled_lr, schedule_steps


def reference_lars(w, g, v, lr, momentum, wd, eta, excluded):
    """SPEC section 6, one parameter, float64 numpy; returns the new (w, v)."""
    w, g, v = (np.asarray(x, dtype=np.float64) for x in (w, g, v))
    trust = 1.0
    if not excluded:
        g = g + wd * w
        wn, gn = np.sqrt((w * w).sum()), np.sqrt((g * g).sum())
        if wn > 0 and gn > 0:
            trust = eta * wn / gn
    v = momentum * v + lr * trust * g
    return w - v, v


def _problem(seed: int):
    g = torch.Generator().manual_seed(seed)
    shapes = [(4, 3, 3, 3), (16, 8), (8,), (8,), (5, 5), (3,)]
    params = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    params[4].zero_()  # ||w|| = 0: trust falls back to 1
    excluded = [False, False, True, True, False, True]
    return params, excluded


@pytest.mark.parametrize("foreach", [True, False])
def test_lars_update_matches_reference(foreach: bool) -> None:
    params, excluded = _problem(0)
    momenta = [torch.zeros_like(p) for p in params]
    ref_w = [p.numpy().copy() for p in params]
    ref_v = [np.zeros_like(w) for w in ref_w]
    gen = torch.Generator().manual_seed(1)
    lr, momentum, wd, eta = 0.7, 0.9, 1e-3, 0.001
    for step in range(5):
        grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
        if step == 2:
            grads[1].zero_()  # ||g'|| > 0 through weight decay
        lars_update(params, grads, momenta, lr, momentum, wd, eta, excluded, foreach=foreach)
        for i in range(len(params)):
            ref_w[i], ref_v[i] = reference_lars(
                ref_w[i], grads[i].numpy(), ref_v[i], lr, momentum, wd, eta, excluded[i]
            )
    for p, w, m, v in zip(params, ref_w, momenta, ref_v, strict=True):
        np.testing.assert_allclose(p.numpy(), w, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(m.numpy(), v, rtol=1e-12, atol=1e-14)


def test_lars_foreach_equals_plain_float32_and_zero_norms() -> None:
    gen = torch.Generator().manual_seed(2)
    shapes = [(32, 16), (16,), (7, 3), (2, 2)]
    base = [torch.randn(s, generator=gen) for s in shapes]
    base[3].zero_()
    excluded = [False, True, False, False]
    runs = []
    for foreach in (True, False):
        params = [p.clone() for p in base]
        momenta = [torch.zeros_like(p) for p in params]
        for step in range(4):
            g = torch.Generator().manual_seed(10 + step)
            grads = [torch.randn(s, generator=g) for s in shapes]
            grads[2].zero_()  # wd = 0 below, so ||g'|| = 0 and the update is exactly 0 for this one
            grads[3].zero_()  # both norms 0
            lars_update(params, grads, momenta, 0.5, 0.9, 0.0, 0.001, excluded, foreach=foreach)
        runs.append(params)
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(runs[0][2], base[2], rtol=0, atol=0)
    assert torch.isfinite(runs[0][3]).all() and (runs[0][3] == 0).all()


def test_lars_trust_ratio_value() -> None:
    w = torch.tensor([3.0, 4.0])  # ||w|| = 5
    g = torch.tensor([0.0, 2.0])  # ||g|| = 2, wd = 0
    v = torch.zeros(2)
    lars_update([w], [g], [v], lr=1.0, momentum=0.9, weight_decay=0.0, eta=0.1, exclude_flags=[False])
    # trust = 0.1 * 5 / 2 = 0.25; v = 0.25 * g
    torch.testing.assert_close(v, torch.tensor([0.0, 0.5]))
    torch.testing.assert_close(w, torch.tensor([3.0, 3.5]))


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 5))


def test_param_groups_split() -> None:
    model = _tiny_model()
    groups = param_groups(model, weight_decay=1e-4)
    decayed = {id(p) for p in groups[0]["params"]}
    excluded = {id(p) for p in groups[1]["params"]}
    assert decayed == {id(model[0].weight), id(model[3].weight)}
    assert excluded == {id(model[1].weight), id(model[1].bias), id(model[3].bias)}
    assert groups[0]["weight_decay"] == 1e-4 and groups[0]["lars_exclude"] is False
    assert groups[1]["weight_decay"] == 0.0 and groups[1]["lars_exclude"] is True
    model[3].bias.requires_grad_(False)
    assert id(model[3].bias) not in {id(p) for g in param_groups(model, 0.0) for p in g["params"]}


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(6, 3, 4, 4, generator=g)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


def test_lars_optimizer_matches_update_and_resumes() -> None:
    model = _tiny_model()
    opt = LARS(param_groups(model, 1e-3), lr=0.2, momentum=0.9, eta=0.01)
    # one step by hand with the reference
    x = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    model(x).pow(2).mean().backward()
    expected = {}
    for group in opt.param_groups:
        for p in group["params"]:
            w, _ = reference_lars(
                p.detach().numpy(),
                p.grad.numpy(),
                np.zeros(p.shape),
                0.2,
                0.9,
                group["weight_decay"],
                0.01,
                group["lars_exclude"],
            )
            expected[id(p)] = w
    opt.step()
    for p in model.parameters():
        np.testing.assert_allclose(p.detach().numpy(), expected[id(p)], rtol=1e-5, atol=1e-6)

    # resume: a copy restored from state dicts continues identically
    _train(model, opt, 2, seed=1)
    model2 = _tiny_model()
    model2.load_state_dict(model.state_dict())
    opt2 = LARS(param_groups(model2, 1e-3), lr=0.2, momentum=0.9, eta=0.01)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # as if read from disk: no shared buffers
    _train(model, opt, 2, seed=2)
    _train(model2, opt2, 2, seed=2)
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_scaled_lr() -> None:
    assert scaled_lr(0.3, 4096, "linear") == pytest.approx(4.8)
    assert scaled_lr(0.075, 4096, "sqrt") == pytest.approx(4.8)
    assert scaled_lr(0.1, 4096, "sqrt") == pytest.approx(6.4)
    assert scaled_lr(0.3, 512, "none") == 0.3
    with pytest.raises(SimCLRError, match="optim.lr_scaling"):
        scaled_lr(0.3, 256, "cubic")


def test_lr_schedule_values() -> None:
    total, warmup, peak = 1000, 100, 2.0
    assert lr_at(0, total, warmup, peak) == 0.0
    assert lr_at(50, total, warmup, peak) == pytest.approx(1.0)
    assert lr_at(warmup, total, warmup, peak) == pytest.approx(peak)
    assert lr_at(warmup + (total - warmup) // 2, total, warmup, peak) == pytest.approx(peak / 2)
    assert lr_at(total, total, warmup, peak) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(total + 10, total, warmup, peak) == pytest.approx(0.0, abs=1e-12)
    step = warmup + 300
    expected = peak * 0.5 * (1 + math.cos(math.pi * 300 / 900))
    assert lr_at(step, total, warmup, peak) == pytest.approx(expected)
    assert lr_at(0, total, 0, peak) == pytest.approx(peak)  # no warmup
    assert lr_at(500, total, warmup, peak, schedule="constant") == peak
    values = [lr_at(s, total, warmup, peak) for s in range(total + 1)]
    assert max(values) == pytest.approx(peak)
    with pytest.raises(SimCLRError, match="optim.schedule"):
        lr_at(500, total, warmup, peak, schedule="step")


def test_schedule_steps_official_example() -> None:
    # SPEC-DETAILS 5.2: ImageNet, BS 4096, 100 epochs, 10 warmup epochs
    assert schedule_steps(1_281_167, 100, 4096, 10) == (31_279, 3_127)


@pytest.mark.parametrize("name,cls", [("lars", LARS), ("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)])
def test_build_optimizer(name: str, cls: type) -> None:
    model = _tiny_model()
    cfg = OptimConfig(name=name, base_lr=0.3, lr_scaling="linear", weight_decay=1e-4, nesterov=name == "sgd")
    opt, peak = build_optimizer(model, cfg, batch_size=512)
    assert isinstance(opt, cls)
    assert peak == pytest.approx(0.6)
    assert all(g["lr"] == pytest.approx(0.6) for g in opt.param_groups)
    by_exclusion = {g["lars_exclude"]: g for g in opt.param_groups}
    assert by_exclusion[False]["weight_decay"] == 1e-4
    assert by_exclusion[True]["weight_decay"] == 0.0
    if name == "lars":
        assert by_exclusion[False]["eta"] == cfg.trust_coefficient
    if name == "sgd":
        assert by_exclusion[False]["nesterov"] is True
    _train(model, opt, 1, seed=0)  # it runs


def test_build_optimizer_from_params_and_errors() -> None:
    model = _tiny_model()
    opt, _ = build_optimizer(list(model.parameters()), OptimConfig(), batch_size=256)
    assert len(opt.param_groups) == 2
    opt, _ = build_optimizer([{"params": list(model.parameters())}], OptimConfig(weight_decay=0.5), 256)
    assert opt.param_groups[0]["weight_decay"] == 0.5 and opt.param_groups[0]["lars_exclude"] is False
    with pytest.raises(SimCLRError, match="optim.name"):
        build_optimizer(model, OptimConfig(name="rmsprop"), 256)
