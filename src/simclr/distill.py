"""Distillation with unlabeled examples: SimCLRv2 stage 3 (v2 section 2, Eq. 2-3; SPEC 9, SPEC-DETAILS 8).

The fine-tuned network is the teacher, fixed and run in inference mode; its tempered probabilities on the
train images are the targets of a student (the same architecture: self-distillation, or any other:
big-to-small). The objective of one step is

    L = (1 - alpha) x CE(student(x_l), y_l) + alpha x distill_loss(student(x), teacher(x), tau)

with ``alpha = 1`` (the default, as in the paper) using no label at all. Every training view is a random
crop + flip made on the device, and the SAME view goes to the teacher and to the student.

Design choices (the paper's ImageNet recipe is 400 epochs at the pretraining batch, learning rate and
weight decay; the default here is 30 epochs):

- the student is a :class:`~simclr.eval.finetune.FinetuneNet` (encoder + kept head layers + classifier)
  saved as ``finetuned.pt`` in the fine-tune format, so :func:`~simclr.eval.finetune.load_classifier`
  reads it like any classifier; from scratch it has no head layers (v2: "excluding the projection head"),
  from a pretraining run it keeps the v2 default (the first head layer of a 3-layer head);
- optimizer (cosine decay, no warmup): Nesterov SGD at the rates of :mod:`simclr.eval.finetune`, i.e.
  0.05 x B / 256 without weight decay from a pretrained init, 0.025 x sqrt(B) with weight decay 5e-4 from
  scratch; or, with ``optimizer="lars"``, the spec's "same recipe as pretraining": the teacher's
  pretraining ``base_lr`` / ``lr_scaling`` / ``weight_decay`` and warmup share, the classifier excluded
  from LARS adaptation and decay as the official ``head_supervised``;
- the temperature correction: the gradient of the paper's loss w.r.t. the logits is (p_S - p_T) / tau,
  10 x cross-entropy's at tau = 0.1, so the learning rate of every parameter whose step is proportional
  to its gradient (all of them with SGD; BN, biases and the classifier with LARS) is multiplied by tau
  (by 1 / tau with ``scale_by_t2``). Without it, self-distillation at tau = 0.1 and the pretraining rate
  diverged on Fashion-MNIST (loss 800, 10 % top-1);
- batch: the pretraining batch, scaled down so that an epoch has at least 5 steps;
- the unlabeled set is the whole train split, or a fixed seeded subsample of ``max_unlabeled`` images;
- when ``alpha < 1`` each step adds a batch of labelled images (the teacher's label subset) to the same
  forward pass; the cross-entropy is averaged over those, the distillation term over the unlabeled batch.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simclr.config import config_to_dict
from simclr.errors import SimCLRError
from simclr.files import folder_lock
from simclr.options import option, validate

DEFAULT_EPOCHS = 30  # the paper trains 400 epochs on ImageNet; raise it where compute allows
TEMPERATURE_SELF, TEMPERATURE_BIG_TO_SMALL = 0.1, 1.0  # v2 section 2 (little sensitivity in between)


def _views(transform, batch) -> Tensor:
    """The evaluation transform of a batch (each image at its own size when the batch says so)."""
    return transform(batch.images) if batch.sizes is None else transform(batch.images, batch.sizes)


def distill_loss(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float, scale_by_t2: bool = False
) -> Tensor:
    """The distillation loss of SimCLRv2 (v2 Eq. 2), averaged over the batch.

        L = -1/B sum_x sum_y p_T(y | x; tau) log p_S(y | x; tau),   p(y | x; tau) = softmax(logits / tau)_y

    student_logits, teacher_logits: (B, C). Both softmaxes use the same temperature tau; no gradient flows
    into the teacher (its logits are detached). The paper's equation has no tau^2 factor, and neither has
    this default; ``scale_by_t2=True`` multiplies by tau^2, as the official colab does (Hinton et al.'s
    correction for soft-target gradients shrinking as 1 / tau^2 at high temperature). Computed in float32.
    Returns a scalar tensor.

    Example:
        >>> distill_loss(torch.zeros(2, 3), torch.zeros(2, 3), 1.0)  # uniform p_T and p_S: log 3
        tensor(1.0986)
    """
    if student_logits.shape != teacher_logits.shape or student_logits.ndim != 2:
        raise ValueError(
            f"expected student and teacher logits of equal shape (B, C), got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    p_teacher = F.softmax(teacher_logits.detach().float() / temperature, dim=1)  # (B, C)
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)  # (B, C)
    loss = -(p_teacher * log_p_student).sum(dim=1).mean()
    return loss * temperature**2 if scale_by_t2 else loss


def distill_objective(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float,
    alpha: float = 1.0,
    labeled_logits: Tensor | None = None,
    labels: Tensor | None = None,
    scale_by_t2: bool = False,
) -> Tensor:
    """``(1 - alpha) x CE(labeled_logits, labels) + alpha x distill_loss(...)`` (v2 Eq. 3), one scalar.

    student_logits / teacher_logits: (B, C) on the unlabeled batch; labeled_logits: (B_l, C) student logits
    on labelled images with ``labels`` (B_l,), both means over their own batch. With ``alpha = 1`` the labels
    are not used (and may be None); ``alpha`` must lie in [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    loss = alpha * distill_loss(student_logits, teacher_logits, temperature, scale_by_t2)
    if alpha < 1.0:
        if labeled_logits is None or labels is None:
            raise ValueError("alpha < 1 needs labelled logits and their labels")
        loss = loss + (1.0 - alpha) * F.cross_entropy(labeled_logits.float(), labels)
    return loss


@dataclass
class DistillOptions:
    """Settings of :func:`distill` (None = the default of the module docstring)."""

    student_arch: str | None = option(None, "student encoder, e.g. resnet18 (default: the teacher's)", flag="--student")
    student_width: float | None = option(None, "student width multiplier (default: the teacher's)", gt=0)
    from_head_layer: int | None = option(None, "projection-head layers the student keeps (pretrained init)", ge=0)
    temperature: float | None = option(None, "tau (default 0.1 self-distillation, 1.0 big-to-small)", gt=0)
    alpha: float = option(1.0, "L = (1 - alpha) labelled CE + alpha distillation CE; 1 reads no label", ge=0, le=1)
    scale_by_t2: bool = option(False, "multiply the distillation loss by tau^2 (the colab's form)")
    labels: str | None = option(None, "labelled subset when alpha < 1 (default: the teacher's)")
    epochs: int = option(DEFAULT_EPOCHS, "epochs over the unlabeled images", ge=1)
    batch_size: int | None = option(None, "default: the pretraining batch, at least 5 steps per epoch", ge=1)
    optimizer: str = option("sgd", "sgd, or lars: the pretraining recipe", choices=("sgd", "lars"))
    lr: float | None = option(None, "peak learning rate (before the temperature correction)", gt=0)
    weight_decay: float | None = option(None, ge=0)
    warmup_epochs: float | None = option(None, ge=0)
    max_unlabeled: int | None = option(None, "distil on a fixed seeded subset of this many images", ge=1)
    augment: bool = option(True, "crop + flip views (off: the evaluation centre crop)")
    cache_teacher: bool = option(False, "teacher outputs computed once (needs --no-augment)")
    eval_every: int = option(1, "epochs between test evaluations", ge=1)
    seed: int = option(0, ge=0, lt=2**63)


class Teacher:
    """A fine-tuned classifier, frozen in eval mode (``net``), and where it came from (``path``, ``sha256``,
    ``meta``: the checkpoint's plain entries such as ``label_subset`` and ``metrics``)."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu"):
        from simclr.checkpoint import file_sha256, load_checkpoint
        from simclr.eval.finetune import load_classifier

        p = Path(path)
        self.path = p / "finetuned.pt" if p.is_dir() else p
        self.net = load_classifier(self.path, device).requires_grad_(False)
        state = load_checkpoint(self.path)
        self.meta = {k: v for k, v in state.items() if k not in ("encoder", "head", "classifier")}
        self.sha256 = file_sha256(self.path)


def student_model_config(teacher_model, arch: str | None = None, width: float | None = None):
    """The student's :class:`~simclr.config.ModelConfig`: the teacher's, with another encoder if asked."""
    if arch is None or arch.strip().lower() == teacher_model.arch.lower():
        return dataclasses.replace(teacher_model, width_multiplier=width or teacher_model.width_multiplier)
    return dataclasses.replace(
        teacher_model, arch=arch, width_multiplier=width or 1.0, sk_ratio=0.0, head_hidden_dim=None
    )


def _same_network(a, b) -> bool:
    return (a.arch.lower(), a.width_multiplier, a.sk_ratio) == (b.arch.lower(), b.width_multiplier, b.sk_ratio)


def _labelled_indices(teacher: Teacher, train: Any, spec: str | None, seed: int) -> Tensor:
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


def _build_student(teacher: Teacher, o: DistillOptions, init: Any | None, saved: dict | None, device):
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
            if (o.student_arch or o.student_width) and not _same_network(asked, init.config.model):
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


def gradient_scale(temperature: float, scale_by_t2: bool) -> float:
    """How much larger the gradient of :func:`distill_loss` w.r.t. the student logits is than cross-entropy's.

    d L / d s = (p_S - p_T) / tau (times tau^2 with ``scale_by_t2``), against p - y for cross-entropy.
    """
    return temperature if scale_by_t2 else 1.0 / temperature


def _optimizer(student: nn.Module, o: DistillOptions, pre_cfg: Any, scratch: bool, tau: float, batch: int,
               steps_per_epoch: int):  # fmt: skip
    """(optimizer, peak lr, weight decay, warmup steps, lr of the non-LARS parameters / peak lr).

    Defaults (module docstring): SGD at the fine-tuning rates, LARS at the pretraining rate. The learning rate
    of every parameter whose step is proportional to its gradient (all of them with SGD; biases, BN and the
    classifier with LARS, whose other layers are scale-free) is divided by :func:`gradient_scale`, so that
    changing tau does not change the step: at tau = 0.1 the paper's loss has 10 x cross-entropy's gradient.
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
    plain_scale = 1.0 / gradient_scale(tau, o.scale_by_t2)
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
    return opt, peak_lr, wd, round(warmup_epochs * steps_per_epoch), plain_scale


def distill(
    teacher: Teacher | str | Path,
    train: Any,
    test: Any,
    options: DistillOptions | None = None,
    student_init: Any | None = None,
    device: str | torch.device = "cpu",
    out_dir: str | Path | None = None,
    resume: bool = False,
    dataset: str | None = None,
) -> dict[str, Any]:
    """Train a student on the teacher's tempered probabilities (v2 section 2); top-1 / top-5 on ``test``.

    ``teacher``: a :class:`Teacher` or a fine-tune folder / ``finetuned.pt``; ``train`` / ``test``:
    :class:`~simclr.data.ImageData` (``train.labels`` is never read when ``alpha = 1``); ``student_init``:
    a :class:`~simclr.checkpoint.Pretrained` run to start from, None for scratch. With ``out_dir``, writes
    ``checkpoints/last.pt`` after every epoch (``resume=True`` continues from it with the run's own
    options), then ``finetuned.pt`` (the student, fine-tune format) and ``metrics.json`` with the evaluation
    card. Returns the metrics dict (top-1 / top-5 in percent after the last epoch, ``history`` per epoch).
    """
    from simclr.augment import Augment, finetune_augment_config
    from simclr.checkpoint import load_checkpoint, load_state_strict, save_checkpoint
    from simclr.data.access import batches, take
    from simclr.data.source import Batch, epoch_permutation
    from simclr.eval.features import evaluate_classifier, scaled_batch_size
    from simclr.eval.training import run_epochs
    from simclr.optim import lr_at
    from simclr.runtime import autocast, resolve_device

    t0 = time.perf_counter()
    o = validate(dataclasses.replace(options) if options is not None else DistillOptions())
    device = resolve_device(device)
    out = Path(out_dir) if out_dir is not None else None
    state_path = out / "checkpoints" / "last.pt" if out is not None else None
    saved = None
    if resume:
        if state_path is None or not state_path.is_file():
            raise SimCLRError(f"{out}: nothing to resume (no checkpoints/last.pt)")
        saved = load_checkpoint(state_path)
        o = DistillOptions(**saved["options"])  # the run's own settings win
    elif state_path is not None and state_path.exists():
        raise SimCLRError(f"{out}: already holds a distillation run; pass --resume or choose another --out")
    if not 0.0 <= o.alpha <= 1.0:
        raise SimCLRError(f"alpha={o.alpha}: must be in [0, 1] (1 = distillation only)")
    if o.temperature is not None and not o.temperature > 0:
        raise SimCLRError(f"temperature={o.temperature}: must be > 0")
    if not isinstance(teacher, Teacher):
        teacher = Teacher(teacher, device)
    if saved is not None and saved["teacher_sha256"] != teacher.sha256:
        raise SimCLRError(f"{teacher.path}: not the teacher the run in {out} was started with")
    tnet = teacher.net.to(device).eval()
    student, scfg, k, init_info = _build_student(teacher, o, student_init, saved, device)
    smodel = scfg.model
    self_distill = _same_network(smodel, tnet.config.model)
    tau = (
        o.temperature if o.temperature is not None else (TEMPERATURE_SELF if self_distill else TEMPERATURE_BIG_TO_SMALL)
    )

    # ---- data: the unlabeled pool (train split or a fixed subsample), labelled subset when alpha < 1 ----
    n = len(train)
    pool = torch.arange(n)
    if o.max_unlabeled is not None and o.max_unlabeled < n:
        pool = torch.randperm(n, generator=torch.Generator().manual_seed(o.seed))[: o.max_unlabeled].sort().values
    batch = o.batch_size or scaled_batch_size(len(pool), tnet.config.train.batch_size)
    if batch > len(pool):
        raise SimCLRError(f"batch size {batch} exceeds the {len(pool)} unlabeled images")
    # drop_last: train-mode BN wants full batches; the order of epoch e is epoch_permutation(seed, e)
    source = batches(train, batch, device, shuffle=True, drop_last=True, seed=o.seed, subset=pool, with_labels=False)
    total = o.epochs * len(source)
    labelled = None
    if o.alpha < 1:  # the only place labels are read
        labelled = _labelled_indices(teacher, train, o.labels, o.seed)
        batch_l = min(batch, len(labelled))
        chunks_l = len(labelled) // batch_l
    opt, peak_lr, wd, warmup, plain_scale = _optimizer(
        student, o, tnet.config, init_info is None, tau, batch, len(source)
    )

    # ---- views: crop + flip on the device; the same view goes to teacher and student -------------------
    augment = Augment(finetune_augment_config(tnet.config.augment), tnet.image_size, tnet.mean, tnet.std)
    transform = tnet.eval_transform()
    if o.cache_teacher and o.augment:
        raise SimCLRError("cache_teacher needs augmentation off: a cached output is only valid for a fixed view")
    mixed = autocast(device)  # bf16 on CUDA, float32 on CPU (simclr.runtime)
    cache = None
    if o.cache_teacher:
        cache = torch.zeros(n, tnet.num_classes, device=device)
        with torch.no_grad(), mixed:
            for b in batches(train, 512, device, subset=pool, with_labels=False):
                cache[b.indices.to(device)] = tnet(_views(transform, b)).float()
    view_gen = torch.Generator(device=device).manual_seed(o.seed)
    first_epoch, step, history = 0, 0, []
    if saved is not None:
        load_state_strict(student, saved["student"], state_path)
        opt.load_state_dict(saved["optimizer"])
        view_gen.set_state(saved["view_rng"])
        first_epoch, step, history = saved["epoch"], saved["step"], saved["history"]
        del saved

    def views(b) -> Tensor:
        return augment(b.images, view_gen, b.sizes) if o.augment else _views(transform, b)

    def step_loss(b, step: int) -> Tensor:
        with torch.no_grad():
            x = views(b)  # (B, 3, S, S)
            if cache is not None:
                t_logits = cache[b.indices.to(device)]
            else:
                with mixed:
                    t_logits = tnet(x).float()
            y_lab = None
            if labelled is not None:  # this step's labelled chunk; the order is reshuffled every pass
                chunk, rnd = step % chunks_l, step // chunks_l
                order = epoch_permutation(len(labelled), o.seed + 1, rnd)
                lidx = labelled[order[chunk * batch_l : (chunk + 1) * batch_l]]
                images, sizes, y_lab = take(train, lidx)
                on_device = None if sizes is None else sizes.to(device)
                lab_batch = Batch(images.to(device), y_lab.to(device), lidx, on_device)
                x = torch.cat([x, views(lab_batch)])  # (B + B_l, 3, S, S): one forward, shared BN
                y_lab = lab_batch.labels
        with mixed:
            logits = student(x).float()
        return distill_objective(
            logits[:batch], t_logits, tau, o.alpha,
            labeled_logits=logits[batch:] if labelled is not None else None, labels=y_lab, scale_by_t2=o.scale_by_t2,
        )  # fmt: skip

    def save_state(epoch: int, step: int, history: list) -> None:
        if state_path is not None:
            save_checkpoint(
                {
                    "kind": "distill-state", "options": dataclasses.asdict(o), "teacher_sha256": teacher.sha256,
                    "student_config": config_to_dict(scfg), "from_head_layer": k, "init": init_info,
                    "student": student.state_dict(), "optimizer": opt.state_dict(), "view_rng": view_gen.get_state(),
                    "epoch": epoch + 1, "step": step, "history": history,
                },
                state_path,
            )  # fmt: skip

    history, step = run_epochs(
        student, opt, source, step_loss, lambda step: lr_at(step, total, warmup, peak_lr),
        lambda: evaluate_classifier(student, test, None, transform, 512, device, desc=None),
        epochs=o.epochs, eval_every=o.eval_every, desc="distill", what="distillation", first_epoch=first_epoch,
        step=step, history=history, after_epoch=save_state,
    )  # fmt: skip
    if not history or "top1" not in history[-1]:
        raise SimCLRError("distillation ran no epoch (epochs = 0?)")

    # ---- result, student checkpoint (fine-tune format), card -------------------------------------------
    meta = teacher.meta
    t_subset = meta.get("label_subset") or {}
    result: dict[str, Any] = {
        "protocol": "distill",
        "top1": history[-1]["top1"],
        "top5": history[-1]["top5"],
        "best_top1": max(r["top1"] for r in history if "top1" in r),  # information only, not selection
        "teacher": {
            "checkpoint": str(teacher.path),
            "sha256": teacher.sha256,
            "arch": tnet.config.model.arch,
            "width_multiplier": tnet.config.model.width_multiplier,
            "from_head_layer": tnet.from_head_layer,
            "labels": t_subset.get("spec"),
            **{key: (meta.get("metrics") or {}).get(key) for key in ("top1", "top5")},
        },
        "student": {
            "arch": smodel.arch,
            "width_multiplier": smodel.width_multiplier,
            "sk_ratio": smodel.sk_ratio,
            "from_head_layer": k,
            "init": "scratch" if init_info is None else init_info["path"],
            "params": sum(q.numel() for q in student.parameters()),
        },
        "self_distillation": self_distill,
        "temperature": tau,
        "alpha": o.alpha,
        "scale_by_t2": o.scale_by_t2,
        "n_unlabeled": len(pool),
        "n_labelled": 0 if labelled is None else len(labelled),  # labels the student itself read
        "augment": "crop+flip" if o.augment else "centre crop",
        "teacher_cached": cache is not None,
        "optimizer": o.optimizer,
        "lr": peak_lr,
        "lr_scale_plain": plain_scale,  # applied to every parameter LARS does not adapt (all, with SGD)
        "weight_decay": wd,
        "warmup_steps": warmup,
        "epochs": o.epochs,
        "batch_size": batch,
        "steps": total,
        "num_classes": tnet.num_classes,
        "history": history,
    }
    result["card"] = _card(result, teacher, train, test, o, init_info, dataset, device, time.perf_counter() - t0)
    if out is not None:
        result["checkpoint"] = str(_save_student(out / "finetuned.pt", student, scfg, k, result, teacher, init_info))
        from simclr.eval.card import write_metrics

        write_metrics(out, result)
    return result


def _card(result, teacher, train, test, o, init_info, dataset, device, wall) -> dict[str, Any]:
    """The evaluation card: label fraction and subset hash are the teacher's (the labels behind the model)."""
    from simclr.eval.card import evaluation_card

    t_subset = teacher.meta.get("label_subset") or {}
    fraction = t_subset["count"] / len(train) if t_subset.get("count") else None
    return evaluation_card(
        "distill",
        dataset or train.source,
        "test",
        fraction,
        t_subset.get("hash"),
        o.seed,
        o.epochs,
        result["batch_size"],
        teacher.sha256,
        device,
        wall,
        teacher_checkpoint=str(teacher.path),
        student_init=result["student"]["init"],
        student_init_sha256=None if init_info is None else init_info["sha256"],
        alpha=o.alpha,
        temperature=result["temperature"],
        train_source=train.source,
        test_source=test.source,
    )


def _save_student(path: Path, student, scfg, k: int, result, teacher: Teacher, init_info) -> Path:
    """The student in the fine-tuned classifier format (``kind: finetune``), as ``load_classifier`` reads."""
    from simclr.checkpoint import save_checkpoint

    return save_checkpoint(
        {
            "kind": "finetune",
            "protocol": "distill",
            "config": config_to_dict(scfg),
            "encoder": student.encoder.state_dict(),
            "head": student.head_layers.state_dict(),
            "classifier": student.classifier.state_dict(),
            "num_classes": student.num_classes,
            "classes": student.classes,
            "from_head_layer": k,
            "image_size": student.image_size,
            "data_stats": {"mean": list(student.mean), "std": list(student.std)},
            "init": "scratch" if init_info is None else "pretrained",
            "pretrained_sha256": None if init_info is None else init_info["sha256"],
            "teacher_sha256": teacher.sha256,
            "label_subset": teacher.meta.get("label_subset"),
            "metrics": {"top1": result["top1"], "top5": result["top5"]},
        },
        path,
    )


def distill_command(
    teacher: str,
    student: str | None = None,
    student_width: float | None = None,
    student_init: str = "scratch",
    data: str | None = None,
    dataset: str | None = None,
    unlabeled_split: str = "train",
    out: str | None = None,
    device: str = "auto",
    resume: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """``simclr distill --teacher FT_DIR [--student ARCH] [--student-init scratch|RUN]``.

    Reads the teacher's dataset (``data`` / ``dataset`` override it): the ``unlabeled_split`` images (labels
    dropped when ``alpha = 1``) and the test split. ``options`` are :class:`DistillOptions` fields.
    ``out`` defaults to ``FT_DIR/distill-<student>``. Prints one line; returns :func:`distill`'s dict.
    """
    from simclr.checkpoint import load_pretrained
    from simclr.data.access import open_split, without_labels
    from simclr.runtime import resolve_device

    o = validate(DistillOptions(student_arch=student, student_width=student_width, **options))
    dev = resolve_device(device)
    t = Teacher(teacher, dev)
    d = t.net.config.data
    name = dataset or d.dataset
    root = data if data is not None else (d.path if name == d.dataset else None)
    kw = dict(in_memory=d.in_memory, download=d.download, max_bad_fraction=d.max_bad_fraction)
    train = open_split(name, root, unlabeled_split, d.image_size, **kw)
    test = open_split(name, root, d.test_split, d.image_size, **kw)
    if test.labels is None:
        raise SimCLRError(f"{test.source}: the test split has no labels to evaluate with")
    if o.alpha >= 1:  # distillation alone: the train labels are dropped, so nothing can read them
        train = without_labels(train)
    elif unlabeled_split != "train":
        raise SimCLRError("alpha < 1 needs --unlabeled-split train (the split the teacher's labels index)")
    init = None if student_init == "scratch" else load_pretrained(student_init, dev)
    if out is None:
        tag = f"{student or t.net.config.model.arch}-w{student_width or 'same'}" if student or student_width else "self"
        out = str(t.path.parent / f"distill-{re.sub(r'[^A-Za-z0-9.-]+', '_', tag)}")
    with folder_lock(out, "distillation folder"):
        result = distill(t, train, test, o, init, dev, out, resume=resume, dataset=name)
    print(
        f"distill ({'self' if result['self_distillation'] else 'big-to-small'}, {result['student']['arch']} "
        f"x{result['student']['width_multiplier']:g}, tau {result['temperature']:g}, alpha {result['alpha']:g}, "
        f"{result['epochs']} epochs on {result['n_unlabeled']} images): top-1 {result['top1']:.2f} %  "
        f"top-5 {result['top5']:.2f} %  (teacher {result['teacher']['top1']}) -> {Path(out) / 'metrics.json'}"
    )
    return result


__all__ = [
    "DistillOptions",
    "Teacher",
    "distill",
    "distill_command",
    "distill_loss",
    "distill_objective",
    "student_model_config",
]
