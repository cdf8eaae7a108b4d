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

import copy
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simclr.checkpoint import Pretrained, load_checkpoint, load_state_strict, save_checkpoint
from simclr.config import Config, ModelConfig, config_from_dict, config_to_dict
from simclr.errors import SimCLRError
from simclr.eval.card import evaluation_card, write_metrics
from simclr.eval.features import (
    eval_transform_for,
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


class FinetuneNet(nn.Module):
    """Encoder + first k projection-head layers + linear classifier: views (B, 3, S, S) -> logits (B, C).

    ``head_layers`` holds the kept layers, so ``head_layers`` applied to h equals ``model.head(h, layers=k)``
    of the pretrained SimCLRModel. Metadata for reuse as a teacher: ``image_size``, ``mean``, ``std``,
    ``eval_crop_fraction``, ``config`` (see :meth:`eval_transform`).
    """

    def __init__(self, encoder: nn.Module, head_layers: list[nn.Module], num_classes: int, feature_dim: int):
        super().__init__()
        self.encoder = encoder
        self.head_layers = nn.ModuleList(head_layers)
        self.classifier = nn.Linear(feature_dim, num_classes)
        nn.init.zeros_(self.classifier.weight)  # official zero_init_logits_layer
        nn.init.zeros_(self.classifier.bias)
        self.num_classes = num_classes
        self.from_head_layer = len(head_layers)
        self.image_size: int | None = None
        self.mean: tuple[float, ...] = (0.5, 0.5, 0.5)
        self.std: tuple[float, ...] = (0.5, 0.5, 0.5)
        self.config: Config | None = None
        self.classes: list[str] | None = None

    def features(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, D): h after the kept head layers."""
        h = self.encoder(x)
        for layer in self.head_layers:
            h = layer(h)
        return h

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) normalised views -> (B, num_classes) logits."""
        return self.classifier(self.features(x))

    def eval_transform(self) -> nn.Module:
        """The evaluation preprocessing this network expects (uint8 images -> normalised views)."""
        if self.image_size is None or self.config is None:
            raise RuntimeError("FinetuneNet has no preprocessing metadata (set by finetune / load_classifier)")
        return eval_transform_for(self.config, self.image_size, self.mean, self.std)


def build_finetune_net(
    config: Config, image_size: int, num_classes: int, from_head_layer: int, model: nn.Module | None = None
) -> FinetuneNet:
    """A :class:`FinetuneNet` from a pretrained SimCLRModel ``model`` (copied) or a new one of ``config``."""
    from simclr.models.build import build_model

    model = copy.deepcopy(model) if model is not None else build_model(config.model, image_size)
    head = model.head
    if not 0 <= from_head_layer <= head.num_layers:
        raise SimCLRError(f"from_head_layer={from_head_layer}: the projection head has {head.num_layers} layers")
    layers = list(head.layers[:from_head_layer])
    net = FinetuneNet(model.encoder, layers, num_classes, head.layer_dim(from_head_layer))
    net.image_size, net.config = image_size, config
    return net


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


def _optimizer(net: FinetuneNet, name: str, lr: float, weight_decay: float, batch_size: int):
    from simclr.config import OptimConfig
    from simclr.optim import build_optimizer, param_groups

    backbone = [p for m in (net.encoder, net.head_layers) for p in m.parameters()]
    groups = param_groups(backbone, weight_decay)
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


def finetune(
    init: Pretrained | None,
    train: Any,
    test: Any,
    labels_spec: str = "10%",
    from_head_layer: int | None = None,
    optimizer: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    out_dir: str | Path | None = None,
    config: Config | ModelConfig | None = None,
    weight_decay: float | None = None,
    eval_every: int = 1,
    dataset: str | None = None,
    evaluated: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``init`` (or train from scratch when None) on the ``labels_spec`` subset of ``train``.

    ``train`` / ``test``: :class:`~simclr.data.ImageData`; ``labels_spec`` as in
    :func:`~simclr.eval.subsets.select_labels`; ``config`` gives the architecture when ``init`` is None
    (a :class:`Config` or just its :class:`ModelConfig`). Defaults: see the module docstring.
    Writes ``label_subset.json``, ``finetuned.pt`` (:func:`load_classifier` reloads it) and
    ``metrics.json`` to ``out_dir`` when given. Returns top-1 / top-5 (percent) of the final epoch on the
    test split, the per-epoch ``history`` and the evaluation ``card``.
    """
    from simclr.augment import Augment, finetune_augment_config
    from simclr.data.access import batches, data_stats, stored_side
    from simclr.eval.training import run_epochs
    from simclr.optim import lr_at

    check_options = FinetuneOptions(labels_spec, "scratch" if init is None else "pretrained", from_head_layer, epochs,
                                    batch_size, lr, optimizer, weight_decay, eval_every, seed)  # fmt: skip
    validate(check_options)
    t0 = time.perf_counter()
    device = resolve_device(device)
    scratch = init is None
    if scratch:
        cfg = config if isinstance(config, Config) else Config(model=config or ModelConfig())
        image_size = int(cfg.model.input_size or stored_side(train))
        mean, std = data_stats(train)  # as pretraining does: statistics of the train split
    else:
        cfg, image_size, mean, std = init.config, init.image_size, init.mean, init.std
    if train.labels is None or test.labels is None:
        raise SimCLRError(f"{train.source}: fine-tuning needs labelled train and test splits")
    k = default_from_head_layer(cfg.model, scratch) if from_head_layer is None else from_head_layer

    indices = select_labels(train.labels, labels_spec, seed, train.names)
    n = len(indices)
    n_total = int((train.labels >= 0).sum())
    num_classes = int(max(int(train.labels.max()), int(test.labels.max()))) + 1
    batch_size = batch_size or scaled_batch_size(n, 1024)
    if batch_size > n:
        raise SimCLRError(f"batch size {batch_size} exceeds the {n} labelled images of {labels_spec!r}")
    epochs = epochs or default_epochs(n, n_total, batch_size)
    opt_name, default_lr, default_wd = default_recipe(cfg, scratch, optimizer, batch_size)
    peak_lr = default_lr if lr is None else lr
    wd = default_wd if weight_decay is None else weight_decay

    torch.manual_seed(seed)  # the scratch weights
    net = build_finetune_net(cfg, image_size, num_classes, k, None if scratch else init.model).to(device)
    net.mean, net.std = tuple(mean), tuple(std)
    opt, _ = _optimizer(net, opt_name, peak_lr, wd, batch_size)
    # Augment / EvalTransform hold no tensors: they run on the device of their input.
    augment = Augment(finetune_augment_config(cfg.augment), image_size, tuple(mean), tuple(std))
    transform = net.eval_transform()
    source = batches(train, batch_size, device, shuffle=True, drop_last=True, seed=seed, subset=indices)
    total = epochs * len(source)  # drop_last: a batch of 1 would break train-mode BN
    view_gen = torch.Generator(device=device).manual_seed(seed)

    def step_loss(batch, step: int) -> Tensor:
        with torch.no_grad():
            x = augment(batch.images, view_gen, batch.sizes)
        with autocast(device):
            logits = net(x)
        return F.cross_entropy(logits.float(), batch.labels)

    history, _ = run_epochs(
        net, opt, source, step_loss, lambda step: lr_at(step, total, 0, peak_lr),
        lambda: evaluate_classifier(net, test, None, transform, 512, device, desc=None),
        epochs=epochs, eval_every=eval_every, desc=f"finetune {labels_spec}", what="fine-tuning",
    )  # fmt: skip

    wall = time.perf_counter() - t0
    shash = subset_hash(indices)
    label_fraction = n / n_total
    result: dict[str, Any] = {
        "protocol": "finetune",
        "init": "scratch" if scratch else "pretrained",
        "top1": history[-1]["top1"],
        "top5": history[-1]["top5"],
        "best_top1": max(r["top1"] for r in history if "top1" in r),  # for information; not model selection
        "labels": labels_spec,
        "n_labelled": n,
        "label_fraction": label_fraction,
        "subset_hash": shash,
        "from_head_layer": k,
        "num_classes": num_classes,
        "arch": cfg.model.arch,
        "optimizer": opt_name,
        "lr": peak_lr,
        "weight_decay": wd,
        "epochs": epochs,
        "batch_size": batch_size,
        "steps": total,
        "history": history,
    }
    result["card"] = evaluation_card(
        "finetune",
        dataset or train.source,
        "test",
        label_fraction,
        shash,
        seed,
        epochs,
        batch_size,
        None if scratch else init.sha256,
        device,
        wall,
        init="scratch" if scratch else "pretrained",
        checkpoint=None if scratch else str(init.path),
        labels=labels_spec,
        train_source=train.source,
        test_source=test.source,
        evaluated=evaluated,
    )
    if out_dir is not None:
        out_dir = Path(out_dir)
        save_subset(out_dir / "label_subset.json", indices, labels_spec, seed, train.labels, source=train.source)
        save_checkpoint(
            {
                "kind": "finetune",
                "config": config_to_dict(cfg),
                "encoder": net.encoder.state_dict(),
                "head": net.head_layers.state_dict(),
                "classifier": net.classifier.state_dict(),
                "num_classes": num_classes,
                "classes": train.classes,
                "from_head_layer": k,
                "image_size": image_size,
                "data_stats": {"mean": list(mean), "std": list(std)},
                "init": result["init"],
                "pretrained_sha256": None if scratch else init.sha256,
                "label_subset": {"spec": labels_spec, "seed": seed, "hash": shash, "count": n},
                "metrics": {"top1": result["top1"], "top5": result["top5"]},
            },
            out_dir / "finetuned.pt",
        )
        result["checkpoint"] = str(out_dir / "finetuned.pt")
        write_metrics(out_dir, result)
    return result


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> FinetuneNet:
    """Reload a fine-tuned network saved by :func:`finetune` (e.g. the distillation teacher), in eval mode.

    Returns a :class:`FinetuneNet` mapping normalised views (B, 3, S, S) to logits (B, C); its
    :meth:`~FinetuneNet.eval_transform` turns uint8 images into such views (``image_size``, ``mean``,
    ``std`` and ``config.augment.eval_crop_fraction`` are attributes too).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "finetuned.pt"
    state = load_checkpoint(path)
    if state.get("kind") != "finetune":
        raise SimCLRError(f"{path}: not a fine-tuned classifier (kind {state.get('kind')!r})")
    try:
        cfg = config_from_dict(state["config"])
        net = build_finetune_net(
            cfg, int(state["image_size"]), int(state["num_classes"]), int(state["from_head_layer"])
        )
    except KeyError as e:
        raise SimCLRError(f"{path}: fine-tune checkpoint lacks {e}") from None
    load_state_strict(net.encoder, state["encoder"], path)
    load_state_strict(net.head_layers, state["head"], path)
    load_state_strict(net.classifier, state["classifier"], path)
    stats = state.get("data_stats", {})
    net.mean = tuple(stats.get("mean", net.mean))
    net.std = tuple(stats.get("std", net.std))
    net.classes = state.get("classes")
    return net.to(device).eval()


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
            pre, train, test, o.labels, o.from_head_layer, o.optimizer, o.epochs, o.batch_size, o.lr, o.seed, dev,
            out_dir, config=cfg, weight_decay=o.weight_decay, eval_every=o.eval_every, dataset=name,
            evaluated=evaluated,
        )  # fmt: skip
    result["out_dir"] = str(out_dir)
    print(
        f"finetune ({result['init']}, {o.labels}: {result['n_labelled']} labels, from head layer "
        f"{result['from_head_layer']}, {result['optimizer']} lr {result['lr']:.4g}, "
        f"{result['epochs']} epochs): "
        f"top-1 {result['top1']:.2f} %  top-5 {result['top5']:.2f} %  -> {out_dir / 'metrics.json'}"
    )
    return result
