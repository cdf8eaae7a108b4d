"""Gradient caching against the plain full-batch step: losses, gradients, BN running statistics, RNG replay.

Exactness is checked on models whose outputs do not depend on how the batch is split (GroupNorm, or
BatchNorm in eval mode): in training mode BN normalises each micro-batch with its own statistics, which
changes the forward pass itself, so no implementation could match the full-batch numbers there. Float64
keeps the comparison tight; the only difference left is the order in which per-example gradient terms are
summed, so equality is to ~1e-12, not bitwise. The last section runs the training engine's step with
``train.micro_batch`` / ``train.activation_checkpointing`` (float32 there: equality to ~1e-6).
"""

from __future__ import annotations

import copy
import json
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from simclr import step as step_mod
from simclr.checkpoint import load_checkpoint
from simclr.cli import main
from simclr.config import LossConfig, load_config
from simclr.engine import PretrainModule, pretrain, step_objective
from simclr.gradcache import activation_checkpointing, grad_cache_step, grad_cache_two_views, pair_micro_batches, unpair
from simclr.loss import nt_xent
from simclr.models import ProjectionHead, SimCLRModel, create_encoder

CLI_TINY = ["model.width_multiplier=0.125", "model.projection_dim=16", "train.batch_size=16", "train.max_steps=2",
            "monitor.knn=false"]  # fmt: skip


def tiny_resnet(seed: int = 0) -> SimCLRModel:
    torch.manual_seed(seed)
    encoder = create_encoder("resnet18", width=0.125, cifar_stem=True)
    model = SimCLRModel(encoder, ProjectionHead(encoder.out_dim, out_dim=16))
    # zero-initialised last BN gammas would make every block the identity: randomise all BN affine params
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            if m.bias.requires_grad:
                nn.init.uniform_(m.bias, -0.2, 0.2)
    return model.double()


class GroupNormNet(nn.Module):
    """conv -> GroupNorm -> ReLU -> pool -> linear: no dependence on batch composition."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Linear(8, 6)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.norm(self.conv(x))).mean((2, 3))
        return h, self.proj(self.drop(h))


def contrastive(out) -> torch.Tensor:
    z_a, z_b = out[1].chunk(2)  # rows [0, N) are view 1, [N, 2N) view 2
    return 2.0 * nt_xent(z_a, z_b, temperature=0.5)


def plain_step(model: nn.Module, views: torch.Tensor, loss_fn=contrastive) -> torch.Tensor:
    loss = loss_fn(model(views))
    loss.backward()
    return loss.detach()


def grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def views_of(n_images: int, side: int = 8, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2 * n_images, 3, side, side, generator=g, dtype=torch.float64)


def assert_same_step(a: nn.Module, b: nn.Module, loss_a: torch.Tensor, loss_b: torch.Tensor) -> None:
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-12, atol=1e-12)
    ga, gb = grads(a), grads(b)
    assert len(ga) == len(gb) == sum(p.requires_grad for p in a.parameters())
    for x, y in zip(ga, gb, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("micro_batch", [1, 3, 5, 12, 100])
def test_groupnorm_model_matches_plain_step(micro_batch: int) -> None:
    torch.manual_seed(0)
    ref = GroupNormNet().double()
    cached = copy.deepcopy(ref)
    views = views_of(6)
    loss_ref = plain_step(ref, views)
    loss = grad_cache_step(cached, views, contrastive, micro_batch)
    assert not loss.requires_grad
    assert_same_step(ref, cached, loss_ref, loss)


@pytest.mark.parametrize("checkpoint", [False, True])
def test_resnet_with_eval_bn_matches_plain_step(checkpoint: bool) -> None:
    ref = tiny_resnet().eval()  # BN from running statistics: the same for any split of the batch
    cached = copy.deepcopy(ref)
    views = views_of(5)
    loss_ref = plain_step(ref, views)
    loss = grad_cache_step(cached, views, contrastive, micro_batch=4, checkpoint=checkpoint)
    assert_same_step(ref, cached, loss_ref, loss)


def test_tuple_output_with_none_and_a_probe_on_detached_features() -> None:
    """The engine's module returns (h, z, logits) with logits = probe(h.detach()), or None for logits."""

    class WithProbe(nn.Module):
        def __init__(self, probe: bool) -> None:
            super().__init__()
            self.net = GroupNormNet()
            self.probe = nn.Linear(8, 3) if probe else None

        def forward(self, x):
            h, z = self.net(x)
            return h, z, (self.probe(h.detach()) if self.probe is not None else None)

    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])

    def loss_fn(out):
        h, z, logits = out
        total = contrastive((h, z))
        return total if logits is None else total + F.cross_entropy(logits, labels)

    for probe in (True, False):
        torch.manual_seed(0)
        ref = WithProbe(probe).double()
        cached = copy.deepcopy(ref)
        views = views_of(6)
        assert_same_step(ref, cached, plain_step(ref, views, loss_fn), grad_cache_step(cached, views, loss_fn, 5))


def bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_train_mode_bn_with_one_micro_batch_equals_plain_step() -> None:
    ref = tiny_resnet().train()
    cached = copy.deepcopy(ref)
    views = views_of(6)
    loss_ref = plain_step(ref, views)
    loss = grad_cache_step(cached, views, contrastive, micro_batch=len(views))
    assert_same_step(ref, cached, loss_ref, loss)
    for a, b in zip(bn_layers(ref), bn_layers(cached), strict=True):
        torch.testing.assert_close(a.running_mean, b.running_mean, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(a.running_var, b.running_var, rtol=1e-10, atol=1e-12)
        assert b.num_batches_tracked.item() == 1
        assert b.momentum == a.momentum  # restored


@pytest.mark.parametrize("momentum", [0.1, None])
def test_train_mode_bn_running_stats_updated_once_with_full_batch_statistics(momentum) -> None:
    ref = tiny_resnet().train()
    for bn in bn_layers(ref):
        bn.momentum = momentum
        bn.num_batches_tracked.fill_(3)  # a cumulative average then weighs the new batch by 1/4
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    cached = copy.deepcopy(ref)
    views = views_of(6)
    plain_step(ref, views)
    grad_cache_step(cached, views, contrastive, micro_batch=5)  # micro-batches of 5, 5 and 2 views
    first_ref, first = bn_layers(ref)[0], bn_layers(cached)[0]
    # The stem BN sees the same input either way: its statistics are exactly the full batch's.
    torch.testing.assert_close(first.running_mean, first_ref.running_mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(first.running_var, first_ref.running_var, rtol=1e-10, atol=1e-12)
    for a, b in zip(bn_layers(ref), bn_layers(cached), strict=True):
        assert b.num_batches_tracked.item() == a.num_batches_tracked.item() == 4  # one update, not 3 or 6
        assert b.momentum == momentum
        assert torch.isfinite(b.running_var).all() and (b.running_var > 0).all()
    # Deeper layers see inputs normalised per micro-batch (the documented caveat): close, not equal.
    last_ref, last = bn_layers(ref)[-2], bn_layers(cached)[-2]
    assert not torch.equal(last.running_mean, last_ref.running_mean)
    torch.testing.assert_close(last.running_mean, last_ref.running_mean, rtol=0.5, atol=0.5)


def test_dropout_masks_are_replayed_in_the_second_pass() -> None:
    """Pass 2 must see the masks pass 1 drew; the reference draws them micro-batch by micro-batch too."""
    torch.manual_seed(0)
    ref = GroupNormNet(dropout=0.5).double()
    cached = copy.deepcopy(ref)
    views = views_of(6)
    torch.manual_seed(123)
    loss_ref = contrastive(tuple(torch.cat(t) for t in zip(*[ref(c) for c in views.split(4)], strict=True)))
    loss_ref.backward()
    after_ref = torch.get_rng_state()
    torch.manual_seed(123)
    loss = grad_cache_step(cached, views, contrastive, micro_batch=4)
    assert torch.equal(torch.get_rng_state(), after_ref)  # the RNG advanced as by one forward pass
    assert_same_step(ref, cached, loss_ref.detach(), loss)


def test_nonfinite_loss_skips_the_backward() -> None:
    torch.manual_seed(0)
    model = GroupNormNet().double()
    loss = grad_cache_step(model, views_of(3), lambda out: out[1].sum() * float("nan"), micro_batch=2)
    assert torch.isnan(loss)
    assert all(p.grad is None for p in model.parameters())


def test_activation_checkpointing_gives_the_same_gradients_and_unpatches() -> None:
    ref = tiny_resnet().eval()
    ckpt = copy.deepcopy(ref)
    views = views_of(3)
    loss_ref = plain_step(ref, views)
    with activation_checkpointing(ckpt):
        assert all("forward" in vars(stage) for stage in ckpt.encoder.stages())
        loss = plain_step(ckpt, views)
    assert all("forward" not in vars(stage) for stage in ckpt.encoder.stages())
    assert_same_step(ref, ckpt, loss_ref, loss)


def test_invalid_micro_batch() -> None:
    with pytest.raises(ValueError, match="micro_batch"):
        grad_cache_step(GroupNormNet(), torch.zeros(4, 3, 4, 4), contrastive, 0)


# ---- the training engine's step with train.micro_batch / train.activation_checkpointing ----------------------


def test_pairing_puts_both_views_of_each_image_in_one_micro_batch() -> None:
    views = torch.arange(12.0)[:, None]  # rows [0, 6) view 1, [6, 12) view 2 of images 0..5
    paired = pair_micro_batches(views, 2)
    assert paired[:, 0].tolist() == [0, 1, 6, 7, 2, 3, 8, 9, 4, 5, 10, 11]
    assert torch.equal(unpair(paired, 2), views)
    assert torch.equal(pair_micro_batches(views, 6), views)  # one micro-batch: the engine's own order
    with pytest.raises(ValueError, match="micro_batch=4"):
        pair_micro_batches(views, 4)


@pytest.mark.parametrize("checkpoint", [False, True])
def test_engine_step_with_half_batch_micro_batches_matches_the_plain_step(checkpoint: bool) -> None:
    """The engine's module and objective (NT-Xent with queued negatives + online probe), BN in eval mode."""
    ref = PretrainModule(tiny_resnet(), num_classes=3).double().eval()
    cached = copy.deepcopy(ref)
    views = views_of(8)
    labels = torch.arange(8) % 3
    negatives = F.normalize(torch.randn(20, 16, generator=torch.Generator().manual_seed(2)), dim=1)
    logged_ref, logged = {}, {}
    loss_ref = step_objective(ref(views), labels, negatives, LossConfig(), logged_ref)
    loss_ref.backward()
    objective = partial(step_objective, labels=labels, negatives=negatives, loss_cfg=LossConfig(), logged=logged)
    loss = grad_cache_two_views(cached, views, objective, micro_batch=4, checkpoint=checkpoint)
    torch.testing.assert_close(loss, loss_ref.detach(), rtol=1e-6, atol=1e-6)
    for key in ("loss", "z_a", "z_b", "probe_correct"):
        torch.testing.assert_close(logged[key], logged_ref[key], rtol=1e-6, atol=1e-6)
    ga, gb = grads(ref), grads(cached)
    assert len(ga) == len(gb) == sum(p.requires_grad for p in ref.parameters())  # the probe's included
    for x, y in zip(ga, gb, strict=True):
        torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-6)


def tiny_run(tmp_path, *overrides: str, name: str = "run") -> tuple[dict, dict]:
    """Two steps of the real engine on 32 tiny grey images; returns the checkpoint and the last log line."""
    npz = tmp_path / "tiny.npz"
    if not npz.exists():
        rng = np.random.default_rng(0)
        labels = np.arange(32) % 4
        images = (40 + 50 * labels[:, None, None] + rng.normal(0, 20, (32, 8, 8))).clip(0, 255).astype(np.uint8)
        np.savez(npz, images=images, labels=labels)
    cfg = load_config(
        preset="fashion-mnist",
        overrides=[
            "data.dataset=npz", f"data.path={npz}", "model.width_multiplier=0.125", "model.projection_dim=16",
            "train.device=cpu", "train.batch_size=8", "train.max_steps=2", "monitor.knn=false",
            "optim.warmup_epochs=0", "optim.schedule=constant", *overrides,
        ],
    )  # fmt: skip
    summary = pretrain(cfg, tmp_path / name)
    assert summary["status"] == "stopped_at_max_steps"
    last = json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[-1])
    return load_checkpoint(tmp_path / name / "checkpoints" / "last.pt"), last


@pytest.mark.parametrize("memory_size", [0, 24])
def test_engine_with_one_micro_batch_of_the_whole_batch_equals_the_plain_run(tmp_path, memory_size: int) -> None:
    """train.micro_batch = the batch (BN in training mode): same loss, same weights after two steps."""
    queue = f"loss.memory_size={memory_size}"
    plain, log_plain = tiny_run(tmp_path, queue, name="plain")
    assert plain["run_state"]["step"] == 2
    cached, log = tiny_run(tmp_path, queue, "train.micro_batch=8", name="cached")
    assert log["loss"] == pytest.approx(log_plain["loss"], rel=1e-6)
    assert log["online_probe_acc"] == log_plain["online_probe_acc"]
    for key, value in plain["module"].items():
        torch.testing.assert_close(cached["module"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    if memory_size:
        torch.testing.assert_close(cached["memory"]["queue"], plain["memory"]["queue"], rtol=1e-5, atol=1e-6)
    assert log["lr"] > 0 and plain["optimizer"]["state"]  # the two steps did update the weights


def test_pretrain_command_with_micro_batches_and_checkpointing(tmp_path, capsys) -> None:
    """`simclr pretrain --set train.micro_batch=... --set train.activation_checkpointing=true` runs to the end,
    with the memory queue (the momentum encoder then also runs micro-batch by micro-batch)."""
    npz = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(npz, images=rng.integers(0, 256, (32, 8, 8, 3), dtype=np.uint8), labels=np.arange(32) % 4)
    code = main(
        ["pretrain", "--dataset", "npz", "--data", str(npz), "--device", "cpu", "--out", str(tmp_path / "run"),
         *[a for kv in CLI_TINY for a in ("--set", kv)], "--set", "train.micro_batch=4",
         "--set", "train.activation_checkpointing=true", "--set", "loss.memory_size=32"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "stopped_at_max_steps" and summary["steps"] == 2
    assert "model" in load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")


@pytest.mark.parametrize(
    ("override", "expect"),
    [
        (["train.micro_batch=5"], ["train.micro_batch", "does not divide the per-rank batch of 16"]),
        (["train.micro_batch=32"], ["train.micro_batch", "does not divide"]),
        (["train.micro_batch=0"], ["train.micro_batch", ">= 1"]),
        (["train.activation_checkpointing=true", "train.compile=true"], ["train.activation_checkpointing"]),
    ],
)
def test_bad_micro_batch_is_a_one_line_error(tmp_path, capsys, override, expect) -> None:
    sets = [a for kv in [*CLI_TINY, *override] for a in ("--set", kv)]
    code = main(["pretrain", "--dataset", "npz", "--data", str(tmp_path / "none.npz"), "--out", str(tmp_path / "r"),
                 "--device", "cpu", *sets])  # fmt: skip
    err = capsys.readouterr().err.strip("\n")
    assert code == 2 and "\n" not in err and err.startswith("error: "), err
    assert all(text in err for text in expect), err


@pytest.mark.parametrize("mode", ["loss", "grad"])
def test_engine_skips_a_non_finite_gradient_cached_step(tmp_path, monkeypatch, mode: str) -> None:
    """The plain step's skip rule holds: a NaN loss (no backward at all) or a NaN gradient skips step 2."""
    real, calls = step_mod.nt_xent, []

    def nt_xent_nan_once(z_a, z_b, *args, **kwargs):
        loss = real(z_a, z_b, *args, **kwargs)
        calls.append(1)
        if len(calls) != 2:
            return loss
        # "grad": value + 0, but d sqrt(|x|)/dx at x = 0 is NaN: a finite loss with a NaN gradient
        return loss * float("nan") if mode == "loss" else loss + (z_a - z_a.detach()).abs().sqrt().sum()

    monkeypatch.setattr(step_mod, "nt_xent", nt_xent_nan_once)
    state, _ = tiny_run(tmp_path, "train.micro_batch=4", "train.max_steps=3")
    assert state["run_state"]["skipped_steps"] == 1 and state["run_state"]["step"] == 3
    assert all(torch.isfinite(v).all() for v in state["module"].values() if v.is_floating_point())
