"""Distillation (SimCLRv2 stage 3): the loss against a plain reference, alpha mixing, no label read with
alpha = 1, and a tiny end-to-end run from a teacher fine-tuned here on 16 px synthetic images in an .npz file.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from simclr.checkpoint import load_pretrained, save_checkpoint
from simclr.config import Config, ModelConfig, config_to_dict
from simclr.data import load_dataset
from simclr.distill import (
    DistillOptions,
    Teacher,
    distill,
    distill_command,
    distill_loss,
    distill_objective,
    gradient_scale,
)
from simclr.errors import SimCLRError
from simclr.eval.card import REQUIRED_FIELDS
from simclr.eval.finetune import finetune, load_classifier
from simclr.eval.metrics import topk_accuracy
from simclr.models.build import build_model

SIZE, CLASSES = 16, 4


# ---------------------------------------------------------------------------------------------- reference
def reference_distill_loss(student: np.ndarray, teacher: np.ndarray, tau: float) -> float:
    """-1/B sum_x sum_y p_T(y|x) log p_S(y|x), written out one example and one class at a time."""
    total = 0.0
    for s_row, t_row in zip(student.astype(np.float64), teacher.astype(np.float64), strict=True):
        t_exp = [math.exp(v / tau - max(t_row) / tau) for v in t_row]
        p_t = [e / sum(t_exp) for e in t_exp]
        s_max = max(s_row) / tau
        log_z = s_max + math.log(sum(math.exp(v / tau - s_max) for v in s_row))
        total += -sum(p * (v / tau - log_z) for p, v in zip(p_t, s_row, strict=True))
    return total / len(student)


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0, 2.0])
def test_distill_loss_matches_reference(tau):
    g = torch.Generator().manual_seed(int(tau * 10))
    student, teacher = torch.randn(6, 5, generator=g) * 3, torch.randn(6, 5, generator=g) * 3
    expected = reference_distill_loss(student.numpy(), teacher.numpy(), tau)
    assert float(distill_loss(student, teacher, tau)) == pytest.approx(expected, rel=1e-5)
    scaled = distill_loss(student, teacher, tau, scale_by_t2=True)
    assert float(scaled) == pytest.approx(tau**2 * expected, rel=1e-5)


def test_distill_loss_gradient_and_teacher_detached():
    """d L / d s = (p_S - p_T) / (tau B): zero when the student matches the teacher; no teacher gradient."""
    tau = 0.5
    student = torch.randn(4, 3, requires_grad=True)
    teacher = torch.randn(4, 3, requires_grad=True)
    distill_loss(student, teacher, tau).backward()
    expected = (torch.softmax(student / tau, 1) - torch.softmax(teacher / tau, 1)) / (tau * 4)
    assert torch.allclose(student.grad, expected.detach(), atol=1e-6)
    assert teacher.grad is None
    same = teacher.detach().clone().requires_grad_(True)
    distill_loss(same, teacher, tau).backward()
    assert same.grad.abs().max() < 1e-6


def test_gradient_scale_relative_to_cross_entropy():
    """Paper loss: gradient (p_S - p_T) / tau; with tau^2: tau (p_S - p_T); cross-entropy: p - y."""
    s, t = torch.randn(3, 5, requires_grad=True), torch.randn(3, 5)
    target = torch.softmax(t, 1)  # at tau = 1, distillation is cross-entropy with soft targets
    for tau, t2 in ((0.1, False), (0.1, True), (2.0, False)):
        s.grad = None
        distill_loss(s, t * tau, tau, scale_by_t2=t2).backward()  # same p_T at every tau
        ce_grad = (torch.softmax(s / tau, 1) - target) / 3
        assert torch.allclose(s.grad, ce_grad * gradient_scale(tau, t2), atol=1e-6)


def test_distill_loss_rejects_bad_input():
    with pytest.raises(ValueError, match="equal shape"):
        distill_loss(torch.zeros(2, 3), torch.zeros(2, 4), 1.0)
    with pytest.raises(ValueError, match="temperature"):
        distill_loss(torch.zeros(2, 3), torch.zeros(2, 3), 0.0)


def test_alpha_mixes_labelled_ce_and_distillation():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    s_lab, y = torch.randn(3, 4, generator=g), torch.tensor([0, 3, 1])
    tau = 0.7
    dist = reference_distill_loss(s.numpy(), t.numpy(), tau)
    ce = float(
        np.mean([-(row[k] - np.log(np.exp(row).sum())) for row, k in zip(s_lab.numpy(), y.numpy(), strict=True)])
    )
    for alpha in (0.0, 0.1, 0.5, 1.0):
        got = distill_objective(s, t, tau, alpha, s_lab, y)
        assert float(got) == pytest.approx((1 - alpha) * ce + alpha * dist, rel=1e-5)
    assert float(distill_objective(s, t, tau, 1.0)) == pytest.approx(dist, rel=1e-5)  # labels not needed
    with pytest.raises(ValueError, match="alpha < 1"):
        distill_objective(s, t, tau, 0.5)
    with pytest.raises(ValueError, match="alpha"):
        distill_objective(s, t, tau, 1.5)


# ---------------------------------------------------------------------------------------------- tiny runs
def tiny_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class c has mean brightness 40 + 50 c plus noise (grayscale 16 px)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % CLASSES
    images = 40 + 50 * labels[:, None, None] + rng.normal(0, 20, (n, SIZE, SIZE))
    return images.clip(0, 255).astype(np.uint8), labels.astype(np.int64)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny pretraining checkpoint and a teacher fine-tuned from it on 25 % of the labels (npz data)."""
    root = tmp_path_factory.mktemp("distill")
    (x, y), (xt, yt) = tiny_arrays(64, 0), tiny_arrays(32, 1)
    npz = root / "tiny.npz"
    np.savez(npz, images=x, labels=y, test_images=xt, test_labels=yt)
    cfg = Config()
    cfg.data.dataset, cfg.data.path = "npz", str(npz)
    cfg.model = ModelConfig(arch="resnet18", width_multiplier=0.125, head_layers=3, projection_dim=16)
    cfg.train.batch_size, cfg.train.epochs, cfg.optim.warmup_epochs = 16, 10, 1.0
    torch.manual_seed(0)
    model = build_model(cfg.model, SIZE)
    run = root / "pretrain"
    save_checkpoint(
        {"kind": "pretrain", "config": config_to_dict(cfg), "model": model.state_dict(), "image_size": SIZE,
         "data_stats": {"mean": [0.4], "std": [0.25]}},
        run / "checkpoints" / "last.pt",
    )  # fmt: skip
    train, test = load_dataset("npz", npz), load_dataset("npz", npz, split="test")
    finetune(load_pretrained(run), train, test, labels="25%", epochs=2, batch_size=8, out_dir=root / "ft")
    return root


def data(root):
    return load_dataset("npz", root / "tiny.npz"), load_dataset("npz", root / "tiny.npz", split="test")


class Unlabelled:
    """Train images whose labels (and names) raise when read: proves alpha = 1 uses no label."""

    def __init__(self, images: torch.Tensor):
        self.images, self.classes, self.source = images, None, "unlabelled-sentinel"

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labels(self):
        raise AssertionError("distillation with alpha = 1 read a label")

    @property
    def names(self):
        raise AssertionError("distillation with alpha = 1 read the file names")


def test_alpha_one_reads_no_label(teacher_dir):
    train, test = data(teacher_dir)
    opts = DistillOptions(epochs=1, batch_size=16, alpha=1.0)
    res = distill(teacher_dir / "ft", Unlabelled(train.images), test, opts)
    assert res["n_labelled"] == 0 and res["alpha"] == 1.0
    with pytest.raises(AssertionError, match="read a label"):  # the sentinel does fire when labels are used
        distill(teacher_dir / "ft", Unlabelled(train.images), test, DistillOptions(epochs=1, batch_size=16, alpha=0.5))


def test_self_distillation_end_to_end(teacher_dir, tmp_path):
    out = tmp_path / "student"
    res = distill_command(str(teacher_dir / "ft"), out=str(out), device="cpu", epochs=2, batch_size=16)
    assert res["self_distillation"] and res["temperature"] == 0.1 and res["alpha"] == 1.0
    assert res["student"]["init"] == "scratch" and res["student"]["from_head_layer"] == 0
    # SGD at the scratch rate 0.025 sqrt(B); at tau = 0.1 every step is scaled by tau (10 x CE's gradient)
    assert res["optimizer"] == "sgd" and res["lr"] == pytest.approx(0.1) and res["lr_scale_plain"] == pytest.approx(0.1)
    assert [r["epoch"] for r in res["history"]] == [1, 2] and all("top1" in r for r in res["history"])
    assert res["steps"] == 2 * (64 // 16)
    saved = json.loads((out / "metrics.json").read_text())
    for key in REQUIRED_FIELDS:
        assert key in saved["card"], key
    assert saved["card"]["protocol"] == "distill" and saved["card"]["label_fraction"] == 0.25
    assert saved["card"]["checkpoint_sha256"] == Teacher(teacher_dir / "ft").sha256
    # The student is a classifier like any fine-tuned one: load_classifier reads the folder.
    net = load_classifier(out)
    test = data(teacher_dir)[1]
    top1 = topk_accuracy(net(net.eval_transform()(test.images)), test.labels)[0]
    assert top1 == pytest.approx(res["top1"])
    with pytest.raises(SimCLRError, match="--resume"):
        distill_command(str(teacher_dir / "ft"), out=str(out), device="cpu", epochs=2, batch_size=16)


def test_big_to_small_from_pretrained_init_and_labels(teacher_dir, tmp_path):
    train, test = data(teacher_dir)
    small = DistillOptions(student_width=0.0625, epochs=1, batch_size=16, optimizer="lars")
    res = distill(teacher_dir / "ft", train, test, small)
    assert not res["self_distillation"] and res["temperature"] == 1.0 and res["lr_scale_plain"] == 1.0
    assert res["lr"] == pytest.approx(0.3 * 16 / 256)  # LARS: the pretraining rate of the teacher's config
    assert res["student"]["width_multiplier"] == 0.0625
    assert res["student"]["params"] < sum(p.numel() for p in Teacher(teacher_dir / "ft").net.parameters())
    # Pretrained init keeps the v2 head layer; alpha < 1 reads the teacher's 16 labelled images.
    pre = load_pretrained(teacher_dir / "pretrain")
    mixed = DistillOptions(alpha=0.5, epochs=1, batch_size=16, scale_by_t2=True)
    res = distill(teacher_dir / "ft", train, test, mixed, student_init=pre)
    assert res["student"]["from_head_layer"] == 1 and res["n_labelled"] == 16 and res["scale_by_t2"]
    with pytest.raises(SimCLRError, match="from scratch"):
        distill(teacher_dir / "ft", train, test, DistillOptions(from_head_layer=1, epochs=1, batch_size=16))


def test_cached_teacher_equals_recomputed(teacher_dir):
    train, test = data(teacher_dir)
    base = dict(epochs=1, batch_size=16, augment=False, max_unlabeled=48)
    plain = distill(teacher_dir / "ft", train, test, DistillOptions(**base))
    cached = distill(teacher_dir / "ft", train, test, DistillOptions(**base, cache_teacher=True))
    assert cached["teacher_cached"] and plain["n_unlabeled"] == 48
    assert cached["history"][0]["loss"] == pytest.approx(plain["history"][0]["loss"], rel=1e-5)
    with pytest.raises(SimCLRError, match="augmentation off"):
        distill(teacher_dir / "ft", train, test, DistillOptions(epochs=1, cache_teacher=True))


def test_resume_continues_exactly(teacher_dir, tmp_path, monkeypatch):
    import simclr.checkpoint

    train, test = data(teacher_dir)
    opts = DistillOptions(epochs=2, batch_size=16, max_unlabeled=32)
    whole = distill(teacher_dir / "ft", train, test, opts, out_dir=tmp_path / "a")

    real_save = simclr.checkpoint.save_checkpoint

    def save_then_stop(state, path):
        real_save(state, path)
        if state.get("kind") == "distill-state":
            raise KeyboardInterrupt  # killed right after the first epoch's checkpoint

    monkeypatch.setattr(simclr.checkpoint, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        distill(teacher_dir / "ft", train, test, opts, out_dir=tmp_path / "b")
    monkeypatch.setattr(simclr.checkpoint, "save_checkpoint", real_save)
    with pytest.raises(SimCLRError, match="nothing to resume"):
        distill(teacher_dir / "ft", train, test, opts, out_dir=tmp_path / "c", resume=True)
    resumed = distill(teacher_dir / "ft", train, test, opts, out_dir=tmp_path / "b", resume=True)
    assert [r["loss"] for r in resumed["history"]] == pytest.approx([r["loss"] for r in whole["history"]])
    a, b = load_classifier(tmp_path / "a"), load_classifier(tmp_path / "b")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(p.float(), q.float(), atol=1e-6), name


@pytest.mark.slow
def test_student_learns_from_teacher(tmp_path):
    """A scratch student distilled on 512 images (no labels) comes close to its teacher."""
    (x, y), (xt, yt) = tiny_arrays(512, 0), tiny_arrays(256, 1)
    npz = tmp_path / "d.npz"
    np.savez(npz, images=x, labels=y, test_images=xt, test_labels=yt)
    train, test = load_dataset("npz", npz), load_dataset("npz", npz, split="test")
    cfg = Config()
    cfg.model = ModelConfig(arch="resnet18", width_multiplier=0.125, head_layers=2, projection_dim=16)
    teacher = finetune(None, train, test, labels="100%", epochs=5, batch_size=32, config=cfg, out_dir=tmp_path / "t")
    res = distill(tmp_path / "t", train, test, DistillOptions(epochs=10, batch_size=32, optimizer="sgd"))
    assert res["top1"] >= teacher["top1"] - 10, (res["history"], teacher["top1"])
