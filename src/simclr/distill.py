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

The student's parts (architecture, initial weights, optimizer, checkpoint) are built in
:mod:`simclr.distill_student`; the ``simclr distill`` command is :mod:`simclr.distill_command`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from simclr.config import config_to_dict
from simclr.distill_command import distill_command
from simclr.distill_loss import distill_loss, distill_objective, gradient_scale
from simclr.distill_student import (
    build_student,
    labelled_indices,
    same_network,
    save_student,
    student_model_config,
    student_optimizer,
)
from simclr.errors import SimCLRError
from simclr.eval.features import transform_batch
from simclr.options import option, validate

DEFAULT_EPOCHS = 30  # the paper trains 400 epochs on ImageNet; raise it where compute allows
TEMPERATURE_SELF, TEMPERATURE_BIG_TO_SMALL = 0.1, 1.0  # v2 section 2 (little sensitivity in between)


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


class _DistillRun:
    """The parts of one distillation run: teacher, student, unlabeled pool and batches, optimizer, views.

    Built in the order a run needs them (the student's scratch weights from ``o.seed``, then the pool's
    subsample, ...); with ``saved`` (``checkpoints/last.pt``), the student, optimizer, view generator and
    counters continue where that run stopped. :meth:`step_loss` is the loss of one step.
    """

    def __init__(self, teacher: Teacher, train: Any, o: DistillOptions, student_init: Any | None,
                 saved: dict | None, device: torch.device, state_path: Path | None):  # fmt: skip
        from simclr.augment import Augment, finetune_augment_config
        from simclr.checkpoint import load_state_strict
        from simclr.data.access import batches
        from simclr.eval.features import scaled_batch_size
        from simclr.runtime import autocast

        self.o, self.teacher, self.train, self.device, self.state_path = o, teacher, train, device, state_path
        self.tnet = tnet = teacher.net.to(device).eval()
        self.student, self.scfg, self.k, self.init_info = build_student(teacher, o, student_init, saved, device)
        self.self_distill = same_network(self.scfg.model, tnet.config.model)
        self.tau = (
            o.temperature if o.temperature is not None
            else (TEMPERATURE_SELF if self.self_distill else TEMPERATURE_BIG_TO_SMALL)
        )  # fmt: skip

        # ---- data: the unlabeled pool (train split or a fixed subsample), labelled subset when alpha < 1 ----
        n = len(train)
        pool = torch.arange(n)
        if o.max_unlabeled is not None and o.max_unlabeled < n:
            pool = torch.randperm(n, generator=torch.Generator().manual_seed(o.seed))[: o.max_unlabeled].sort().values
        self.pool = pool
        self.batch = batch = o.batch_size or scaled_batch_size(len(pool), tnet.config.train.batch_size)
        if batch > len(pool):
            raise SimCLRError(f"batch size {batch} exceeds the {len(pool)} unlabeled images")
        # drop_last: train-mode BN wants full batches; the order of epoch e is epoch_permutation(seed, e)
        self.source = batches(
            train, batch, device, shuffle=True, drop_last=True, seed=o.seed, subset=pool, with_labels=False
        )
        self.total = o.epochs * len(self.source)
        self.labelled = None
        if o.alpha < 1:  # the only place labels are read
            self.labelled = labelled_indices(teacher, train, o.labels, o.seed)
            self.batch_l = min(batch, len(self.labelled))
            self.chunks_l = len(self.labelled) // self.batch_l
        self.plain_scale = 1.0 / gradient_scale(self.tau, o.scale_by_t2)
        self.optimizer, self.peak_lr, self.wd, self.warmup = student_optimizer(
            self.student, o, tnet.config, self.init_info is None, batch, len(self.source), self.plain_scale
        )

        # ---- views: crop + flip on the device; the same view goes to teacher and student -------------------
        self.augment = Augment(finetune_augment_config(tnet.config.augment), tnet.image_size, tnet.mean, tnet.std)
        self.transform = tnet.eval_transform()
        if o.cache_teacher and o.augment:
            raise SimCLRError("cache_teacher needs augmentation off: a cached output is only valid for a fixed view")
        self.mixed = autocast(device)  # bf16 on CUDA, float32 on CPU (simclr.runtime)
        self.cache = self._teacher_outputs() if o.cache_teacher else None
        self.view_gen = torch.Generator(device=device).manual_seed(o.seed)
        self.first_epoch, self.step, self.history = 0, 0, []
        if saved is not None:
            load_state_strict(self.student, saved["student"], state_path)
            self.optimizer.load_state_dict(saved["optimizer"])
            self.view_gen.set_state(saved["view_rng"])
            self.first_epoch, self.step, self.history = saved["epoch"], saved["step"], saved["history"]

    def _teacher_outputs(self) -> Tensor:
        """(N, C) teacher logits of every pool image's evaluation view (``cache_teacher``; zeros elsewhere)."""
        from simclr.data.access import batches

        tnet, device = self.tnet, self.device
        cache = torch.zeros(len(self.train), tnet.num_classes, device=device)
        with torch.no_grad(), self.mixed:
            for b in batches(self.train, 512, device, subset=self.pool, with_labels=False):
                cache[b.indices.to(device)] = tnet(transform_batch(self.transform, b)).float()
        return cache

    def lr_of(self, step: int) -> float:
        """The scheduled learning rate of ``step`` (before each group's ``lr_scale``)."""
        from simclr.optim import lr_at

        return lr_at(step, self.total, self.warmup, self.peak_lr)

    def views(self, b) -> Tensor:
        """The batch's crop + flip views (or its evaluation views with augmentation off)."""
        return self.augment(b.images, self.view_gen, b.sizes) if self.o.augment else transform_batch(self.transform, b)

    def _labelled_batch(self, step: int):
        """This step's labelled chunk as a Batch on the device; the order is reshuffled every pass."""
        from simclr.data.access import take
        from simclr.data.source import Batch, epoch_permutation

        chunk, rnd = step % self.chunks_l, step // self.chunks_l
        order = epoch_permutation(len(self.labelled), self.o.seed + 1, rnd)
        lidx = self.labelled[order[chunk * self.batch_l : (chunk + 1) * self.batch_l]]
        images, sizes, y_lab = take(self.train, lidx)
        on_device = None if sizes is None else sizes.to(self.device)
        return Batch(images.to(self.device), y_lab.to(self.device), lidx, on_device)

    def step_loss(self, b, step: int) -> Tensor:
        """The objective (v2 Eq. 3) of one unlabeled batch ``b``, with a labelled chunk when alpha < 1."""
        with torch.no_grad():
            x = self.views(b)  # (B, 3, S, S)
            if self.cache is not None:
                t_logits = self.cache[b.indices.to(self.device)]
            else:
                with self.mixed:
                    t_logits = self.tnet(x).float()
            y_lab = None
            if self.labelled is not None:
                lab_batch = self._labelled_batch(step)
                x = torch.cat([x, self.views(lab_batch)])  # (B + B_l, 3, S, S): one forward, shared BN
                y_lab = lab_batch.labels
        with self.mixed:
            logits = self.student(x).float()
        return distill_objective(
            logits[: self.batch], t_logits, self.tau, self.o.alpha,
            labeled_logits=logits[self.batch :] if self.labelled is not None else None, labels=y_lab,
            scale_by_t2=self.o.scale_by_t2,
        )  # fmt: skip

    def save_state(self, epoch: int, step: int, history: list) -> None:
        """``checkpoints/last.pt`` after an epoch: what ``resume=True`` needs to continue exactly."""
        from simclr.checkpoint import save_checkpoint

        if self.state_path is not None:
            save_checkpoint(
                {
                    "kind": "distill-state", "options": dataclasses.asdict(self.o),
                    "teacher_sha256": self.teacher.sha256, "student_config": config_to_dict(self.scfg),
                    "from_head_layer": self.k, "init": self.init_info, "student": self.student.state_dict(),
                    "optimizer": self.optimizer.state_dict(), "view_rng": self.view_gen.get_state(),
                    "epoch": epoch + 1, "step": step, "history": history,
                },
                self.state_path,
            )  # fmt: skip

    def result(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        """The metrics dict of the finished run (without its card)."""
        o, tnet, smodel, meta, init_info = self.o, self.tnet, self.scfg.model, self.teacher.meta, self.init_info
        t_subset = meta.get("label_subset") or {}
        return {
            "protocol": "distill",
            "top1": history[-1]["top1"],
            "top5": history[-1]["top5"],
            "best_top1": max(r["top1"] for r in history if "top1" in r),  # information only, not selection
            "teacher": {
                "checkpoint": str(self.teacher.path),
                "sha256": self.teacher.sha256,
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
                "from_head_layer": self.k,
                "init": "scratch" if init_info is None else init_info["path"],
                "params": sum(q.numel() for q in self.student.parameters()),
            },
            "self_distillation": self.self_distill,
            "temperature": self.tau,
            "alpha": o.alpha,
            "scale_by_t2": o.scale_by_t2,
            "n_unlabeled": len(self.pool),
            "n_labelled": 0 if self.labelled is None else len(self.labelled),  # labels the student itself read
            "augment": "crop+flip" if o.augment else "centre crop",
            "teacher_cached": self.cache is not None,
            "optimizer": o.optimizer,
            "lr": self.peak_lr,
            "lr_scale_plain": self.plain_scale,  # applied to every parameter LARS does not adapt (all, with SGD)
            "weight_decay": self.wd,
            "warmup_steps": self.warmup,
            "epochs": o.epochs,
            "batch_size": self.batch,
            "steps": self.total,
            "num_classes": tnet.num_classes,
            "history": history,
        }


def _resume_state(o: DistillOptions, out: Path | None, state_path: Path | None, resume: bool):
    """(options, saved state or None): a resumed run's own options and ``checkpoints/last.pt``, checked."""
    from simclr.checkpoint import load_checkpoint

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
    return o, saved


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
    from simclr.eval.card import write_metrics
    from simclr.eval.features import evaluate_classifier
    from simclr.eval.training import run_epochs
    from simclr.runtime import resolve_device

    t0 = time.perf_counter()
    o = validate(dataclasses.replace(options) if options is not None else DistillOptions())
    device = resolve_device(device)
    out = Path(out_dir) if out_dir is not None else None
    state_path = out / "checkpoints" / "last.pt" if out is not None else None
    o, saved = _resume_state(o, out, state_path, resume)
    if not isinstance(teacher, Teacher):
        teacher = Teacher(teacher, device)
    if saved is not None and saved["teacher_sha256"] != teacher.sha256:
        raise SimCLRError(f"{teacher.path}: not the teacher the run in {out} was started with")
    run = _DistillRun(teacher, train, o, student_init, saved, device, state_path)
    del saved
    student = run.student
    history, _ = run_epochs(
        student, run.optimizer, run.source, run.step_loss, run.lr_of,
        lambda: evaluate_classifier(student, test, None, run.transform, 512, device, desc=None),
        epochs=o.epochs, eval_every=o.eval_every, desc="distill", what="distillation", first_epoch=run.first_epoch,
        step=run.step, history=run.history, after_epoch=run.save_state,
    )  # fmt: skip
    if not history or "top1" not in history[-1]:
        raise SimCLRError("distillation ran no epoch (epochs = 0?)")

    # ---- result, student checkpoint (fine-tune format), card -------------------------------------------
    result = run.result(history)
    result["card"] = _card(result, teacher, train, test, o, run.init_info, dataset, device, time.perf_counter() - t0)
    if out is not None:
        path = save_student(out / "finetuned.pt", student, run.scfg, run.k, result, teacher, run.init_info)
        result["checkpoint"] = str(path)
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


__all__ = [
    "DistillOptions",
    "Teacher",
    "distill",
    "distill_command",
    "distill_loss",
    "distill_objective",
    "gradient_scale",
    "student_model_config",
]
