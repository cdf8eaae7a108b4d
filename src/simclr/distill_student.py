"""The student of a distillation run (:mod:`simclr.distill`): its architecture, its weights at the start
(scratch or a pretraining run), the labelled subset it may read when ``alpha < 1``, its optimizer and its
checkpoint in the fine-tune format.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from simclr.errors import SimCLRError

if TYPE_CHECKING:
    from simclr.distill import DistillOptions, Teacher


def student_model_config(teacher_model, arch: str | None = None, width: float | None = None):
    """The student's :class:`~simclr.config.ModelConfig`: the teacher's, with another encoder if asked."""
    if arch is None or arch.strip().lower() == teacher_model.arch.lower():
        return dataclasses.replace(teacher_model, width_multiplier=width or teacher_model.width_multiplier)
    return dataclasses.replace(
        teacher_model, arch=arch, width_multiplier=width or 1.0, sk_ratio=0.0, head_hidden_dim=None
    )


def same_network(a, b) -> bool:
    """Two model configs with the same encoder (arch, width, sk_ratio): self-distillation."""
    return (a.arch.lower(), a.width_multiplier, a.sk_ratio) == (b.arch.lower(), b.width_multiplier, b.sk_ratio)


def labelled_indices(teacher: Teacher, train: Any, spec: str | None, seed: int) -> Tensor:
    """The labelled images of the teacher's subset (exact indices from ``label_subset.json`` when present)."""
    from simclr.eval.subsets import load_subset, select_labels, subset_hash

    if spec is not None:
        return select_labels(train.labels, spec, seed, train.names)
    file = teacher.path.parent / "label_subset.json"
    if file.is_file():
        return load_subset(file)[0]
    info = teacher.meta.get("label_subset") or {}
    if "spec" not in info:
        raise SimCLRError(f"{teacher.path}: no label subset recorded; give the labels (--labels) for alpha < 1")
    idx = select_labels(train.labels, info["spec"], int(info.get("seed", 0)), train.names)
    if info.get("hash") and subset_hash(idx) != info["hash"]:
        raise SimCLRError(f"{teacher.path}: the teacher's label subset does not match this train split")
    return idx


def build_student(teacher: Teacher, o: DistillOptions, init: Any | None, saved: dict | None, device):
    """(student FinetuneNet, its Config, head layers kept, init record) for a new or a resumed run."""
    from simclr.config import config_from_dict
    from simclr.eval.finetune import build_finetune_net, default_from_head_layer

    tnet = teacher.net
    if saved is not None:  # the run's own architecture; the weights are loaded by the caller
        scfg, k, init_info = config_from_dict(saved["student_config"]), saved["from_head_layer"], saved["init"]
        model = None
    else:
        asked = student_model_config(tnet.config.model, o.student_arch, o.student_width)
        if init is not None:
            if (o.student_arch or o.student_width) and not same_network(asked, init.config.model):
                raise SimCLRError(f"{init.path}: the requested student differs from this run's encoder")
            if int(init.image_size) != int(tnet.image_size):
                raise SimCLRError(f"{init.path}: image size {init.image_size} != the teacher's {tnet.image_size}")
            asked = init.config.model
        scfg = dataclasses.replace(tnet.config, model=asked)
        k = o.from_head_layer if o.from_head_layer is not None else default_from_head_layer(asked, init is None)
        if init is None and k:
            raise SimCLRError(f"from_head_layer={k}: a student from scratch has no pretrained head layers")
        init_info = None if init is None else {"path": str(init.path), "sha256": init.sha256}
        model = None if init is None else init.model
    torch.manual_seed(o.seed)  # the scratch weights
    student = build_finetune_net(scfg, int(tnet.image_size), tnet.num_classes, k, model).to(device)
    student.mean, student.std, student.classes = tnet.mean, tnet.std, tnet.classes
    return student, scfg, k, init_info


def student_optimizer(student: nn.Module, o: DistillOptions, pre_cfg: Any, scratch: bool, batch: int,
                      steps_per_epoch: int, plain_scale: float):  # fmt: skip
    """(optimizer, peak lr, weight decay, warmup steps).

    Defaults (:mod:`simclr.distill` docstring): SGD at the fine-tuning rates, LARS at the pretraining rate.
    The learning rate of every parameter whose step is proportional to its gradient (all of them with SGD;
    biases, BN and the classifier with LARS, whose other layers are scale-free) is multiplied by
    ``plain_scale``, 1 / :func:`~simclr.distill.gradient_scale`, so that changing tau does not change the
    step: at tau = 0.1 the paper's loss has 10 x cross-entropy's gradient.
    """
    from simclr.config import OptimConfig
    from simclr.optim import build_optimizer, param_groups, scaled_lr

    if o.optimizer not in ("lars", "sgd"):
        raise SimCLRError(f"optimizer {o.optimizer!r}: use lars or sgd")
    p = pre_cfg.optim
    if o.optimizer == "lars":  # the pretraining recipe; warmup the same share of the run
        default_lr, default_wd = scaled_lr(p.base_lr, batch, p.lr_scaling), p.weight_decay
        default_warmup = o.epochs * p.warmup_epochs / max(1, pre_cfg.train.epochs)
    elif scratch:  # the supervised-from-scratch recipe of simclr.eval.finetune
        default_lr, default_wd, default_warmup = 0.025 * math.sqrt(batch), 5e-4, 0.0
    else:  # the fine-tuning recipe (v1 B.5)
        default_lr, default_wd, default_warmup = 0.05 * batch / 256, 0.0, 0.0
    peak_lr = default_lr if o.lr is None else o.lr
    wd = default_wd if o.weight_decay is None else o.weight_decay
    warmup_epochs = default_warmup if o.warmup_epochs is None else o.warmup_epochs
    backbone = [q for m in (student.encoder, student.head_layers) for q in m.parameters()]
    groups = param_groups(backbone, wd)
    # The classifier: no LARS adaptation, no decay (the official "head_supervised").
    groups.append({"params": list(student.classifier.parameters()), "weight_decay": 0.0, "lars_exclude": True})
    for g in groups:
        g["lr_scale"] = plain_scale if o.optimizer == "sgd" or g["lars_exclude"] else 1.0
    cfg = OptimConfig(
        name=o.optimizer,
        base_lr=peak_lr,
        lr_scaling="none",
        weight_decay=wd,
        momentum=p.momentum,
        trust_coefficient=p.trust_coefficient,
        nesterov=o.optimizer == "sgd",
    )
    opt, _ = build_optimizer(groups, cfg, batch)
    return opt, peak_lr, wd, round(warmup_epochs * steps_per_epoch)


def save_student(path: Path, student, scfg, k: int, result, teacher: Teacher, init_info) -> Path:
    """The student in the fine-tuned classifier format, as ``load_classifier`` reads."""
    from simclr.eval.classifier import save_classifier

    student.config = scfg
    return save_classifier(
        path, student, protocol="distill", init="scratch" if init_info is None else "pretrained",
        pretrained_sha256=None if init_info is None else init_info["sha256"], teacher_sha256=teacher.sha256,
        label_subset=teacher.meta.get("label_subset"), metrics={"top1": result["top1"], "top5": result["top5"]},
    )  # fmt: skip


__all__ = [
    "build_student",
    "labelled_indices",
    "same_network",
    "save_student",
    "student_model_config",
    "student_optimizer",
]
