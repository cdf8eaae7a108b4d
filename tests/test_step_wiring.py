"""The pretraining step's wiring, observed from outside a real run (``simclr.engine.pretrain`` on tiny data).

Each test compares what the step did with what the configuration and the papers say it must do, computed
here independently: the schedule's learning rate and the LARS update written plainly, the gradient of
2 x NT-Xent at the configured temperature with the queue's negatives, the two views, the EMA rule of the
momentum encoder, the queue's contents, resume, and the online probe's stop-gradient. What a step did is
seen through :class:`step_probe.StepProbe` (public torch hooks only), the run's ``metrics.jsonl`` and its
checkpoint. Each test also checks that its reference would tell a wrong step from the right one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from simclr.checkpoint import load_checkpoint
from simclr.config import Config
from simclr.engine import pretrain
from simclr.loss import nt_xent
from step_probe import StepProbe, StepRecord, tiny_config, write_id_images

# Values unlike every default and preset, so that a step that ignores one of them is seen.
TAU = 0.2
BASE_LR = 1.0  # linear scaling: peak lr 1.0 x 8 / 256
WEIGHT_DECAY = 1e-2
MOMENTUM = 0.8
ETA = 0.002
EMA = 0.9
QUEUE = 24  # 1.5 steps of 2B = 16 keys: the ring wraps
SIZE = 20  # model.input_size: views are upsampled from the stored 16 px
WIRING = [
    f"loss.temperature={TAU}",
    f"optim.base_lr={BASE_LR}",
    "optim.lr_scaling=linear",
    f"optim.weight_decay={WEIGHT_DECAY}",
    f"optim.momentum={MOMENTUM}",
    f"optim.trust_coefficient={ETA}",
    "optim.warmup_epochs=0.5",  # 2 of the 8 steps
    f"loss.memory_size={QUEUE}",
    f"loss.memory_momentum={EMA}",
    f"model.input_size={SIZE}",
    "augment.color_jitter_prob=0",  # crop + flip only, so a view's red channel still names its image
    "augment.grayscale_prob=0",
]


@dataclass
class Run:
    cfg: Config
    steps: list[StepRecord]
    metrics: list[dict]
    ckpt: dict
    dir: Path


def recorded_run(root: Path, *overrides: str, resume: bool = False) -> Run:
    root.mkdir(parents=True, exist_ok=True)
    data = root / "ids.npz"
    if not data.exists():
        write_id_images(data)
    cfg = tiny_config(data, *WIRING, *overrides)
    with StepProbe() as probe:
        pretrain(cfg, root / "run", resume=resume)
    lines = [json.loads(x) for x in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    ckpt = load_checkpoint(root / "run" / "checkpoints" / "last.pt")
    return Run(cfg, probe.steps, [r for r in lines if "loss" in r], ckpt, root / "run")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    """One 8-step run shared by the tests of this file (about 2 s)."""
    result = recorded_run(tmp_path_factory.mktemp("wiring"))
    assert len(result.steps) == 8 and [r["step"] for r in result.metrics] == list(range(1, 9))
    return result


def expected_lr(step: int) -> float:
    """v1 B.1: peak = base x B / 256, linear warmup from 0 over 2 steps, cosine to 0 over the other 6."""
    peak = BASE_LR * 8 / 256
    if step < 2:
        return peak * step / 2
    return peak * 0.5 * (1 + math.cos(math.pi * (step - 2) / 6))


def decayed(name: str, shape: torch.Size) -> bool:
    """Weights of convolutions and linear layers; not BN parameters nor biases (SPEC section 6)."""
    return len(shape) > 1


# ---- learning rate, weight decay, LARS ---------------------------------------------------------------------------


def test_the_optimizer_steps_with_the_scheduled_lr_and_the_configured_weight_decay(run):
    model_shapes = {n: p.shape for n, p in run.steps[0].params_before.items()}
    for k, rec in enumerate(run.steps):
        assert rec.groups, f"step {k}: no optimizer step was taken"
        seen = set()
        for group in rec.groups:
            hp = group.hyper
            assert hp["lr"] == pytest.approx(expected_lr(k), rel=1e-12, abs=1e-15), f"step {k}"
            assert hp["momentum"] == MOMENTUM and hp["eta"] == ETA
            for name in group.names:
                seen.add(name)
                if name.startswith("probe."):  # the online probe: plain momentum, no decay (head_supervised)
                    assert hp["weight_decay"] == 0.0 and hp["lars_exclude"], group.hyper
                elif decayed(name, model_shapes[name]):
                    assert hp["weight_decay"] == WEIGHT_DECAY and not hp["lars_exclude"], name
                else:  # BN and biases: neither decayed nor adapted
                    assert hp["weight_decay"] == 0.0 and hp["lars_exclude"], name
        trainable = {n for n, p in run.steps[0].params_before.items() if n in rec.grads}
        assert trainable <= seen and any(n.startswith("probe.") for n in seen)
    assert [r["lr"] for r in run.metrics] == pytest.approx([expected_lr(k) for k in range(8)], abs=1e-15)


def lars_reference(w, g, v, lr, wd, excluded):
    """SPEC section 6, written out: coupled decay, trust ratio eta ||w|| / ||g'||, lr inside the momentum."""
    trust = 1.0
    if not excluded:
        g = g + wd * w
        w_norm, g_norm = float(w.double().norm()), float(g.double().norm())
        trust = ETA * w_norm / g_norm if w_norm > 0 and g_norm > 0 else 1.0
    v = MOMENTUM * v + lr * trust * g
    return w - v, v


def replay_lars(run: Run, weight_decay: float) -> float:
    """Largest relative difference between each recorded update and the plain LARS rule's, over all steps.

    The schedule's lr, the configured momentum, eta and ``weight_decay``; momentum buffers start at 0.
    """
    momenta: dict[str, torch.Tensor] = {}
    worst = 0.0
    for k, rec in enumerate(run.steps):
        for name, w in rec.params_before.items():
            if name not in rec.grads:  # frozen (the last BN's beta): never stepped
                assert torch.equal(rec.params_after[name], w), name
                continue
            excluded = not decayed(name, w.shape)
            v = momenta.get(name, torch.zeros_like(w))
            new_w, momenta[name] = lars_reference(w, rec.grads[name], v, expected_lr(k), weight_decay, excluded)
            want, got = new_w - w, rec.params_after[name] - w
            error, size = float((got - want).norm()), float(want.norm())
            if error > 0:
                worst = max(worst, error / size if size > 0 else math.inf)
    return worst


def test_the_weights_move_by_lars_with_the_schedule_and_the_weight_decay(run):
    assert replay_lars(run, WEIGHT_DECAY) < 1e-3
    # the reference tells another weight decay, none at all included, from the configured one
    assert replay_lars(run, 0.0) > 0.1 and replay_lars(run, WEIGHT_DECAY / 2) > 0.1


# ---- the loss ------------------------------------------------------------------------------------------------------


def queue_before(run: Run, k: int) -> torch.Tensor | None:
    """The negatives of step k: the last QUEUE normalised keys of the momentum encoder from steps < k."""
    if k == 0:
        return None
    keys = torch.cat([F.normalize(r.keys, dim=1) for r in run.steps[:k]])
    return keys[-QUEUE:]


def loss_gradient(z: torch.Tensor, tau: float, scale: float, queue: torch.Tensor | None) -> torch.Tensor:
    z = z.clone().requires_grad_(True)
    b = z.shape[0] // 2  # rows [0, B) are the first views, [B, 2B) the second
    (scale * nt_xent(z[:b], z[b:], tau, queue=queue)).backward()
    return z.grad


def test_the_step_backpropagates_twice_nt_xent_at_the_configured_temperature(run):
    for k, rec in enumerate(run.steps):
        queue = queue_before(run, k)
        want = loss_gradient(rec.z, TAU, 2.0, queue)
        torch.testing.assert_close(rec.grad_z, want, rtol=1e-4, atol=1e-8, msg=f"step {k}")
        # what a step with another temperature, the paper's scale or no queue would have back-propagated
        scale = want.abs().max()
        assert (loss_gradient(rec.z, 0.5, 2.0, queue) - want).abs().max() > 0.05 * scale
        assert (loss_gradient(rec.z, TAU, 1.0, queue) - want).abs().max() > 0.3 * scale
        if queue is not None:
            assert (loss_gradient(rec.z, TAU, 2.0, None) - want).abs().max() > 1e-3 * scale


def test_the_logged_loss_is_the_papers_nt_xent_and_accuracy_is_the_official_metric(run):
    for k, (rec, line) in enumerate(zip(run.steps, run.metrics, strict=True)):
        b = rec.z.shape[0] // 2
        z_a, z_b = rec.z[:b], rec.z[b:]
        assert line["loss"] == pytest.approx(float(nt_xent(z_a, z_b, TAU, queue=queue_before(run, k))), rel=1e-5)
        sim = F.normalize(z_a, dim=1) @ F.normalize(z_b, dim=1).T
        hits = sum(int(sim[i].argmax()) == i for i in range(b))
        assert line["contrastive_acc"] == pytest.approx(hits / b)


# ---- the views -----------------------------------------------------------------------------------------------------


def image_ids(run: Run, views: torch.Tensor) -> torch.Tensor:
    """The image each view shows, from its red channel (constant 3 + 7 id before normalisation)."""
    red = views[:, 0]
    assert float((red - red.mean((1, 2), keepdim=True)).abs().max()) < 1e-4  # crop + flip keep it constant
    mean, std = run.ckpt["data_stats"]["mean"][0], run.ckpt["data_stats"]["std"][0]
    value = (red.mean((1, 2)) * std + mean) * 255
    ids = (value - 3) / 7
    assert float((ids - ids.round()).abs().max()) < 0.05
    return ids.round().long()


def test_two_views_of_each_image_differ_and_show_the_same_image(run):
    differ = 0
    for epoch in range(2):
        seen = []
        for rec in run.steps[4 * epoch : 4 * epoch + 4]:
            b = rec.views.shape[0] // 2
            assert rec.views.shape == (16, 3, SIZE, SIZE)  # model.input_size
            ids = image_ids(run, rec.views)
            assert torch.equal(ids[:b], ids[b:])  # row i and row B + i: two views of one image
            seen += ids[:b].tolist()
            differ += sum(not torch.allclose(rec.views[i], rec.views[b + i], atol=1e-3) for i in range(b))
        assert sorted(seen) == list(range(32)), f"epoch {epoch}: every image once"
    assert differ >= 60, f"only {differ} of 64 pairs of views differ"  # independent crops and flips


# ---- momentum encoder and queue (v2 memory) -----------------------------------------------------------------------


def test_the_momentum_encoder_moves_by_the_ema_rule(run):
    ema = run.steps[0].params_before  # the copy starts as the online model
    for k, rec in enumerate(run.steps):
        assert rec.keys is not None, f"step {k}: the momentum encoder made no keys"
        for name, theta in rec.ema_params.items():
            want = EMA * ema[name] + (1 - EMA) * rec.params_after[name]
            torch.testing.assert_close(theta, want, rtol=1e-5, atol=1e-7, msg=f"step {k}: {name}")
        for name, buf in rec.ema_buffers.items():  # BN statistics are copied, not averaged
            assert torch.equal(buf, rec.buffers_after[name]), name
        ema = rec.ema_params
    # neither a copy of the online model nor frozen at its start: the rule is really exercised
    last = run.steps[-1]
    moved = [n for n in last.ema_params if not torch.equal(last.ema_params[n], run.steps[0].params_before[n])]
    lagging = [n for n in last.ema_params if not torch.allclose(last.ema_params[n], last.params_after[n])]
    assert len(moved) > 10 and len(lagging) > 10


def test_the_queue_holds_the_momentum_encoders_normalised_keys(run):
    saved = run.ckpt["memory"]
    written = torch.cat([F.normalize(r.keys, dim=1) for r in run.steps])  # (8 x 16, D) in enqueue order
    ring = torch.zeros(QUEUE, written.shape[1])
    for i, row in enumerate(written):
        ring[i % QUEUE] = row
    torch.testing.assert_close(saved["queue"], ring, rtol=1e-5, atol=1e-6)
    assert int(saved["ptr"]) == len(written) % QUEUE and int(saved["filled"]) == QUEUE
    final = {k.removeprefix("module."): v for k, v in run.ckpt["momentum_model"].items()}
    for name, theta in run.steps[-1].ema_params.items():
        assert torch.equal(final[name], theta), name


# ---- resume -------------------------------------------------------------------------------------------------------


def test_resume_restores_the_momentum_encoder_and_the_queue(run, tmp_path):
    first = recorded_run(tmp_path, "train.max_steps=3")
    stopped = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    resumed = recorded_run(tmp_path, resume=True)
    assert len(first.steps) == 3 and len(resumed.steps) == 5
    step = resumed.steps[0]
    # the first resumed step's negatives are the saved queue, its keys come from the saved momentum encoder
    saved_queue = stopped["memory"]["queue"][: int(stopped["memory"]["filled"])]
    want = loss_gradient(step.z, TAU, 2.0, saved_queue)
    torch.testing.assert_close(step.grad_z, want, rtol=1e-4, atol=1e-8)
    saved_ema = {k.removeprefix("module."): v for k, v in stopped["momentum_model"].items()}
    for name, theta in step.ema_params.items():
        torch.testing.assert_close(theta, EMA * saved_ema[name] + (1 - EMA) * step.params_after[name])
    # and the stitched run ends where the uninterrupted one did
    for part in ("momentum_model", "memory", "model"):
        for key, value in run.ckpt[part].items():
            torch.testing.assert_close(resumed.ckpt[part][key], value, rtol=1e-5, atol=1e-6, msg=f"{part}.{key}")


# ---- the online probe ----------------------------------------------------------------------------------------------


def test_the_online_probe_trains_on_stop_gradient_h(tmp_path):
    """The encoder's gradient (so its weights) are those of the run without the probe and its labels."""
    with_probe = recorded_run(tmp_path / "probe", "train.max_steps=3", "loss.memory_size=0")
    without = recorded_run(tmp_path / "none", "train.max_steps=3", "loss.memory_size=0", "monitor.online_probe=false")
    assert "online_probe_acc" in with_probe.metrics[-1] and "online_probe_acc" not in without.metrics[-1]
    probe_grads = [g for rec in with_probe.steps for n, g in rec.grads.items() if n.startswith("probe.")]
    assert probe_grads and max(float(g.abs().max()) for g in probe_grads) > 0  # the probe did learn
    for a, b in zip(with_probe.steps, without.steps, strict=True):
        torch.testing.assert_close(a.grad_h, b.grad_h, rtol=0, atol=0)
        for name in b.grads:
            torch.testing.assert_close(a.grads[name], b.grads[name], rtol=0, atol=0, msg=name)
    for key, value in without.ckpt["model"].items():
        assert torch.equal(with_probe.ckpt["model"][key], value), key
