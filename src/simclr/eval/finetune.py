"""Semi-supervised fine-tuning on a label subset (v1 section 6 / B.5, v2 section 2-3; SPEC 8).

The network fine-tuned is the encoder plus the first ``from_head_layer`` layers of the projection head
(v2: fine-tuning from the first head layer gains ~14 points at 1 % labels), then a new linear classifier
(initialised at zero, as the official ``zero_init_logits_layer``). Everything is trained, BN in train mode;
training augmentation is random crop + flip only; top-1 / top-5 on the test split after every epoch.

Defaults (documented choices; measured on Fashion-MNIST, 600 labels = "1%", ResNet-18 x0.25, 300 steps):

- batch: min(1024, n_labelled // 5), at least min(32, n_labelled): the official 1024 when the subset is
  large, else at least 5 steps per epoch (600 labels -> 120);
- epochs: 60 when at most 5 % of the labels are used, else 30 (the papers' 1 % / 10 % schedules), raised so
  that the run has at least 300 optimizer steps;
- pretrained init, from head layer 1 for a v2 3-layer head (else 0), no weight decay, cosine decay without
  warmup, the classifier excluded from LARS adaptation as in the official code:
  - batch >= 1024 with a v2 head: the v2 recipe, LARS, lr 0.005 x sqrt(B) (0.002 x sqrt(B) for wide or
    SK encoders);
  - otherwise: the v1 recipe, Nesterov momentum SGD, lr 0.05 x B / 256. At batch 120 the LARS recipe
    (lr 0.055) barely moves the encoder in 300 steps: 76.1 % top-1 against 80.0 % for this SGD recipe
    (LARS lr 0.5: 79.2 %; SGD lr 0.05: 80.9 %, lr 0.2: 74.5 %; from head layer 0: 75.2 / 77.4 %);
- ``init=None`` (scratch, the supervised baseline on the same labels): same encoder, no head layers,
  Nesterov SGD, lr 0.025 x sqrt(B) (= 0.1 x B / 256 at B = 256, 0.27 at B = 120), weight decay 5e-4.
  The linear rule 0.1 x B / 256 gives 64 % at batch 120; lr 0.2 / 0.4 / 0.8 gave 77.5 / 78.9 / 78.1 %.
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

from simclr.checkpoint import Pretrained, load_checkpoint
from simclr.config import AugmentConfig, Config, ModelConfig, config_from_dict
from simclr.errors import SimCLRError
from simclr.eval.card import evaluation_card, write_metrics
from simclr.eval.classifier import FinetuneNet, build_finetune_net, load_classifier, save_classifier
from simclr.eval.features import (
    evaluate_classifier,
    scaled_batch_size,
)
from simclr.eval.subsets import save_subset, select_labels, subset_hash
from simclr.files import folder_lock
from simclr.options import option, validate
from simclr.runtime import autocast, resolve_device

MIN_STEPS = 300  # fewest optimizer steps of a default schedule, so that tiny subsets still converge


@dataclass
class FinetuneOptions:
    """Settings of fine-tuning (None = the default recipe of the module docstring)."""

    labels: str = option("10%", "1%, 10% (the official lists on an ImageNet folder; 1%-balanced: a seeded draw), "
                         "100%, N-per-class, or a FILE of image names")  # fmt: skip
    init: str = option(
        "pretrained", "pretrained, or scratch: the supervised baseline", choices=("pretrained", "scratch")
    )
    from_head_layer: int | None = option(None, "projection-head layers kept (default 1 for a v2 head, else 0)", ge=0)
    epochs: int | None = option(None, "default 60 (<= 5 % labels) / 30, at least 300 steps", ge=1)
    batch_size: int | None = option(None, "default min(1024, labelled // 5)", ge=1)
    lr: float | None = option(None, "peak learning rate (default: the recipe's)", gt=0)
    optimizer: str | None = option(
        None, "default: lars for a v2 head at batch >= 1024, else sgd", choices=("lars", "sgd")
    )
    weight_decay: float | None = option(None, "default 0 (5e-4 from scratch)", ge=0)
    eval_every: int = option(1, "epochs between test evaluations", ge=1)
    seed: int = option(0, "label subset, weights of scratch models, views", ge=0, lt=2**63)
    arch: str | None = option(None, "encoder of a scratch model (default: the run's)")
    warmup_epochs: float = option(0.0, "linear warmup before the cosine decay", ge=0)
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy", ge=0, lt=1)
    bn: str = option("train", "BatchNorm statistics: train (batch statistics) or frozen (running ones)",
                     choices=("train", "frozen"))  # fmt: skip
    probe_init: bool = option(False, "start the classifier from a linear probe on the frozen features (LP-FT)")
    backbone_lr_scale: float = option(1.0, "learning rate of encoder + head layers relative to the classifier", ge=0)
    augment: str = option("crop_flip", "training views: crop_flip, flip (whole image), none",
                          choices=("crop_flip", "flip", "none"))  # fmt: skip
    crop_min_scale: float | None = option(None, "smallest crop area fraction (default: the run's, 0.08)", gt=0, le=1)


def default_from_head_layer(model_cfg: ModelConfig, scratch: bool = False) -> int:
    """1 for a v2 3-layer head (v2 section 2), 0 for a v1 2-layer head and for scratch training."""
    return 0 if scratch or model_cfg.head_layers < 3 else 1


def default_epochs(n_labelled: int, n_total: int, batch_size: int) -> int:
    """60 epochs for <= 5 % of the labels, else 30 (v1 B.5, v2), raised to at least MIN_STEPS steps."""
    base = 60 if n_labelled <= 0.05 * n_total else 30
    steps_per_epoch = max(1, n_labelled // batch_size)
    return max(base, math.ceil(MIN_STEPS / steps_per_epoch))


def default_recipe(config: Config, scratch: bool, optimizer: str | None, batch_size: int) -> tuple[str, float, float]:
    """(optimizer, peak lr, weight decay) of the module docstring."""
    m = config.model
    if optimizer is None:
        optimizer = "lars" if not scratch and m.head_layers >= 3 and batch_size >= 1024 else "sgd"
    if optimizer not in ("lars", "sgd"):
        raise SimCLRError(f"optimizer {optimizer!r}: use lars or sgd")
    if scratch:  # LARS from random init: the pretraining rule 0.075 x sqrt(B) (v1 B.1)
        return optimizer, (0.025 if optimizer == "sgd" else 0.075) * math.sqrt(batch_size), 5e-4
    if optimizer == "lars":
        wide = m.width_multiplier > 1 or m.sk_ratio > 0 or re.search(r"_[2-9]x|_sk1", m.arch) is not None
        return optimizer, (0.002 if wide else 0.005) * math.sqrt(batch_size), 0.0
    return optimizer, 0.05 * batch_size / 256, 0.0


def _optimizer(net: FinetuneNet, name: str, lr: float, weight_decay: float, batch_size: int, backbone_scale: float):
    from simclr.config import OptimConfig
    from simclr.optim import build_optimizer, param_groups

    backbone = [p for m in (net.encoder, net.head_layers) for p in m.parameters()]
    groups = param_groups(backbone, weight_decay)
    for group in groups:
        group["lr_scale"] = backbone_scale
    # The classifier is excluded from LARS adaptation and decay, as the official "head_supervised".
    groups.append({"params": list(net.classifier.parameters()), "weight_decay": 0.0, "lars_exclude": True})
    cfg = OptimConfig(
        name=name,
        base_lr=lr,
        lr_scaling="none",
        weight_decay=weight_decay,
        momentum=0.9,
        nesterov=name == "sgd",
        warmup_epochs=0.0,
    )
    opt, peak = build_optimizer(groups, cfg, batch_size)
    return opt, peak


def training_augment(base: AugmentConfig, mode: str, crop_min_scale: float | None) -> AugmentConfig:
    """The views of fine-tuning: ``crop_flip`` (random resized crop + flip), ``flip`` (the whole image,
    flipped half the time) or ``none``; never colour, grayscale or blur (SPEC 8)."""
    from simclr.augment import finetune_augment_config

    cfg = finetune_augment_config(base)
    if crop_min_scale is not None:
        cfg = dataclasses.replace(cfg, crop_scale=(crop_min_scale, max(crop_min_scale, cfg.crop_scale[1])))
    return dataclasses.replace(cfg, crop=mode == "crop_flip", flip=mode != "none")


def probe_classifier(net: FinetuneNet, train: Any, indices: Tensor, transform: nn.Module, device) -> None:
    """LP-FT: set ``net.classifier`` to a logistic regression fitted on the frozen features of the labelled
    images (evaluation views), so fine-tuning starts from the linear probe instead of a zero classifier."""
    from simclr.eval.features import extract_features
    from simclr.eval.linear import fit_linear

    features = nn.Sequential(net.encoder, *net.head_layers)  # net.features as a module (the same layers)
    feats = extract_features(features, train, transform, 512, device, desc=None, subset=indices)
    linear = fit_linear(feats, train.labels[indices].to(device), net.num_classes, std_floor=0.1)
    with torch.no_grad():
        net.classifier.weight.copy_(linear.weight)
        net.classifier.bias.copy_(linear.bias)


@dataclass
class _Plan:
    """The resolved settings of one fine-tuning run."""

    cfg: Config
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    k: int
    indices: Tensor
    n_total: int
    num_classes: int
    batch_size: int
    epochs: int
    optimizer: str
    lr: float
    weight_decay: float


def _plan(o: FinetuneOptions, init: Pretrained | None, train: Any, test: Any, config: Any) -> _Plan:
    """Architecture, label subset and recipe of a run (defaults: the module docstring)."""
    from simclr.data.access import data_stats, stored_side

    if init is None:
        cfg = config if isinstance(config, Config) else Config(model=config or ModelConfig())
        image_size = int(cfg.model.input_size or stored_side(train))
        mean, std = data_stats(train)  # as pretraining does: statistics of the train split
    else:
        cfg, image_size, mean, std = init.config, init.image_size, init.mean, init.std
    if train.labels is None or test.labels is None:
        raise SimCLRError(f"{train.source}: fine-tuning needs labelled train and test splits")
    scratch = init is None
    k = default_from_head_layer(cfg.model, scratch) if o.from_head_layer is None else o.from_head_layer
    indices = select_labels(train.labels, o.labels, o.seed, train.names)
    n = len(indices)
    n_total = int((train.labels >= 0).sum())
    num_classes = int(max(int(train.labels.max()), int(test.labels.max()))) + 1
    batch_size = o.batch_size or scaled_batch_size(n, 1024)
    if batch_size > n:
        raise SimCLRError(f"batch size {batch_size} exceeds the {n} labelled images of {o.labels!r}")
    epochs = o.epochs or default_epochs(n, n_total, batch_size)
    opt_name, default_lr, default_wd = default_recipe(cfg, scratch, o.optimizer, batch_size)
    lr = default_lr if o.lr is None else o.lr
    wd = default_wd if o.weight_decay is None else o.weight_decay
    return _Plan(cfg, image_size, tuple(mean), tuple(std), k, indices, n_total, num_classes, batch_size, epochs,
                 opt_name, lr, wd)  # fmt: skip


def finetune(
    init: Pretrained | None,
    train: Any,
    test: Any,
    options: FinetuneOptions | None = None,
    *,
    device: str | torch.device = "cpu",
    out_dir: str | Path | None = None,
    config: Config | ModelConfig | None = None,
    dataset: str | None = None,
    evaluated: dict[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """Fine-tune ``init`` (or train from scratch when None) on a label subset of ``train``.

    ``train`` / ``test``: :class:`~simclr.data.ImageData`; ``options`` a :class:`FinetuneOptions` (``fields``
    override single fields, e.g. ``labels="1%", epochs=2``; ``init`` is implied by the argument);
    ``config`` gives the architecture when ``init`` is None (a :class:`Config` or its :class:`ModelConfig`).
    Defaults: see the module docstring. Writes ``label_subset.json``, ``finetuned.pt``
    (:func:`load_classifier` reloads it) and ``metrics.json`` to ``out_dir`` when given. Returns top-1 /
    top-5 (percent) of the final epoch on the test split, the per-epoch ``history`` and the evaluation ``card``.
    """
    from simclr.augment import Augment
    from simclr.data.access import batches
    from simclr.eval.training import run_epochs
    from simclr.optim import lr_at

    o = dataclasses.replace(options or FinetuneOptions(), **fields)
    o.init = "scratch" if init is None else "pretrained"
    validate(o)
    t0 = time.perf_counter()
    device = resolve_device(device)
    p = _plan(o, init, train, test, config)

    torch.manual_seed(o.seed)  # the scratch weights
    net = build_finetune_net(p.cfg, p.image_size, p.num_classes, p.k, None if init is None else init.model)
    net = net.to(device)
    net.mean, net.std, net.bn_frozen = p.mean, p.std, o.bn == "frozen"
    transform = net.eval_transform()
    if o.probe_init:
        probe_classifier(net, train, p.indices, transform, device)
    opt, _ = _optimizer(net, p.optimizer, p.lr, p.weight_decay, p.batch_size, o.backbone_lr_scale)
    # Augment / EvalTransform hold no tensors: they run on the device of their input.
    augment = Augment(training_augment(p.cfg.augment, o.augment, o.crop_min_scale), p.image_size, p.mean, p.std)
    source = batches(train, p.batch_size, device, shuffle=True, drop_last=True, seed=o.seed, subset=p.indices)
    total = p.epochs * len(source)  # drop_last: a batch of 1 would break train-mode BN
    warmup = round(o.warmup_epochs * len(source))
    view_gen = torch.Generator(device=device).manual_seed(o.seed)

    def step_loss(batch, step: int) -> Tensor:
        with torch.no_grad():
            x = augment(batch.images, view_gen, batch.sizes)
        with autocast(device):
            logits = net(x)
        return F.cross_entropy(logits.float(), batch.labels, label_smoothing=o.label_smoothing)

    history, _ = run_epochs(
        net, opt, source, step_loss, lambda step: lr_at(step, total, warmup, p.lr),
        lambda: evaluate_classifier(net, test, None, transform, 512, device, desc=None),
        epochs=p.epochs, eval_every=o.eval_every, desc=f"finetune {o.labels}", what="fine-tuning",
    )  # fmt: skip
    result = _result(o, p, history, total)
    result["card"] = evaluation_card(
        "finetune", dataset or train.source, "test", result["label_fraction"], result["subset_hash"], o.seed,
        p.epochs, p.batch_size, None if init is None else init.sha256, device, time.perf_counter() - t0,
        init=o.init, checkpoint=None if init is None else str(init.path), labels=o.labels,
        train_source=train.source, test_source=test.source, evaluated=evaluated,
    )  # fmt: skip
    if out_dir is not None:
        out_dir = Path(out_dir)
        save_subset(out_dir / "label_subset.json", p.indices, o.labels, o.seed, train.labels, source=train.source)
        net.classes = train.classes
        result["checkpoint"] = str(save_classifier(
            out_dir / "finetuned.pt", net, init=o.init, pretrained_sha256=None if init is None else init.sha256,
            label_subset={"spec": o.labels, "seed": o.seed, "hash": result["subset_hash"], "count": len(p.indices)},
            metrics={"top1": result["top1"], "top5": result["top5"]},
        ))  # fmt: skip
        write_metrics(out_dir, result)
    return result


def _result(o: FinetuneOptions, p: _Plan, history: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    n = len(p.indices)
    return {
        "protocol": "finetune",
        "init": o.init,
        "top1": history[-1]["top1"],
        "top5": history[-1]["top5"],
        "best_top1": max(r["top1"] for r in history if "top1" in r),  # for information; not model selection
        "labels": o.labels,
        "n_labelled": n,
        "label_fraction": n / p.n_total,
        "subset_hash": subset_hash(p.indices),
        "from_head_layer": p.k,
        "num_classes": p.num_classes,
        "arch": p.cfg.model.arch,
        "optimizer": p.optimizer,
        "lr": p.lr,
        "weight_decay": p.weight_decay,
        "epochs": p.epochs,
        "batch_size": p.batch_size,
        "steps": steps,
        "recipe": {k: getattr(o, k) for k in RECIPE_FIELDS},
        "history": history,
    }


RECIPE_FIELDS = ("warmup_epochs", "label_smoothing", "bn", "probe_init", "backbone_lr_scale", "augment",
                 "crop_min_scale")  # fmt: skip


def finetune_command(
    run: str | None = None,
    data: str | None = None,
    dataset: str | None = None,
    out: str | None = None,
    device: str = "auto",
    **options: Any,
) -> dict[str, Any]:
    """``simclr finetune RUN --labels 1% [--init scratch]``: fine-tune and write ``metrics.json``.

    ``options`` are :class:`FinetuneOptions` fields (checked before any work). ``init="pretrained"`` needs
    ``run``; ``init="scratch"`` takes the architecture from ``run``'s config when given (``arch`` overrides
    it), else a default config with ``arch``. ``out`` defaults to ``RUN/eval/finetune-<init>-<labels>`` for
    the run's data and default settings, else with ``-<hash>`` appended. Prints one summary line; returns
    :func:`finetune`'s dict.
    """
    from simclr.checkpoint import load_pretrained, resolve_checkpoint
    from simclr.eval.features import evaluation_dir, evaluation_identity, load_eval_data

    o = validate(FinetuneOptions(**options))
    dev = resolve_device(device)
    pre = None
    if o.init == "pretrained":
        if run is None:
            raise SimCLRError("finetune --init pretrained needs a run folder or checkpoint")
        pre = load_pretrained(run, dev)
        cfg = pre.config
    elif run is not None:
        ckpt = resolve_checkpoint(run)
        try:
            cfg = config_from_dict(load_checkpoint(ckpt)["config"])
        except KeyError:
            raise SimCLRError(f"{ckpt}: checkpoint lacks 'config'") from None
    else:
        cfg = Config()
        if dataset:
            cfg.data.dataset = dataset
    if o.arch:
        if pre is not None:
            raise SimCLRError("--arch applies to --init scratch only (a pretrained run fixes the architecture)")
        cfg.model.arch = o.arch
    name_part = Path(o.labels).stem if Path(o.labels).is_file() else o.labels.replace("%", "pct")
    tag = re.sub(r"[^A-Za-z0-9.-]+", "_", name_part).strip("_")
    evaluated, default = evaluation_identity(cfg, o, dataset, data)
    out_dir = evaluation_dir(run, f"finetune-{o.init}-{tag}", evaluated, default, out)
    train, test, name = load_eval_data(cfg, dataset, data)
    with folder_lock(out_dir, "fine-tuning folder"):
        result = finetune(
            pre, train, test, o, device=dev, out_dir=out_dir, config=cfg, dataset=name, evaluated=evaluated
        )
    result["out_dir"] = str(out_dir)
    print(
        f"finetune ({result['init']}, {o.labels}: {result['n_labelled']} labels, from head layer "
        f"{result['from_head_layer']}, {result['optimizer']} lr {result['lr']:.4g}, "
        f"{result['epochs']} epochs): "
        f"top-1 {result['top1']:.2f} %  top-5 {result['top5']:.2f} %  -> {out_dir / 'metrics.json'}"
    )
    return result


__all__ = [  # the classifier names stay importable from here, where they were first
    "FinetuneNet",
    "FinetuneOptions",
    "build_finetune_net",
    "default_epochs",
    "default_from_head_layer",
    "default_recipe",
    "finetune",
    "finetune_command",
    "load_classifier",
    "probe_classifier",
    "save_classifier",
    "training_augment",
]
