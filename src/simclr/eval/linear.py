"""Linear evaluation: a linear classifier on the frozen representation h (v1 section 4 / B.6, SPEC 8).

Two modes:

- ``fast`` (default): h is extracted once for every image with the evaluation preprocessing (centre crop),
  then a linear classifier is trained on the cached, standardised features (Adam, cosine schedule, 100
  epochs of minibatches; seconds on a CPU once the features exist). Not the paper's protocol, but a close,
  cheap proxy: the encoder is never run twice.
- ``paper``: the official protocol. Random crop + flip on the fly, the encoder in inference mode (BN on
  running statistics), SGD with Nesterov momentum 0.9, batch 4096 (scaled down on small datasets),
  lr 0.1 x B / 256, cosine decay without warmup, 90 epochs, no weight decay, classifier initialised at
  zero; centre crop at test time.

In both modes the encoder is frozen (eval mode, ``requires_grad=False``) and checked bit-identical after.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simclr.checkpoint import Pretrained
from simclr.errors import SimCLRError
from simclr.eval.card import evaluation_card, write_metrics
from simclr.eval.features import (
    Representation,
    eval_transform_for,
    extract_features,
    freeze,
    scaled_batch_size,
)
from simclr.eval.metrics import topk_accuracy
from simclr.files import folder_lock
from simclr.options import option, validate
from simclr.runtime import progress, resolve_device

FAST_EPOCHS, FAST_BATCH, FAST_LR = 100, 1024, 1e-3
PAPER_EPOCHS, PAPER_BATCH, PAPER_BASE_LR = 90, 4096, 0.1  # lr = 0.1 x B / 256 (v1 B.6)


@dataclass
class LinearOptions:
    """Settings of linear evaluation (None = the mode's default, see the module docstring)."""

    mode: str = option("fast", "fast: cached features; paper: the official protocol", choices=("fast", "paper"))
    epochs: int | None = option(None, f"default {FAST_EPOCHS} (fast) / {PAPER_EPOCHS} (paper)", ge=1)
    batch_size: int | None = option(None, f"default {FAST_BATCH} (fast) / {PAPER_BATCH} scaled to the data", ge=1)
    from_head_layer: int = option(0, "probe the output of this many projection-head layers (0 = h)", ge=0)
    seed: int = option(0, ge=0, lt=2**63)
    baselines: bool = option(False, "also probe the random-init encoder and the raw pixels (fast mode)")


def fit_linear(
    feats: Tensor,
    labels: Tensor,
    num_classes: int,
    epochs: int = FAST_EPOCHS,
    batch_size: int = FAST_BATCH,
    lr: float = FAST_LR,
    weight_decay: float = 0.0,
    seed: int = 0,
    std_floor: float = 0.0,
) -> nn.Linear:
    """Multinomial logistic regression on cached features; returns ``nn.Linear`` acting on the raw features.

    feats: (N, D) float; labels: (N,) int64. Features are standardised per dimension (mean 0, std 1 over
    the train set) so one learning rate suits every encoder; the standardisation is folded into the
    returned layer (W' = W / sd, b' = b - W' mu), which therefore maps raw features to logits (N, C).
    Adam with a cosine schedule over ``epochs`` passes of shuffled minibatches; no weight decay by
    default, as in the paper's linear evaluation. ``std_floor`` (a fraction of the median std, e.g. 0.1) floors
    each dimension's std, which keeps the folded weights moderate where features barely vary.
    """
    device = feats.device
    mu = feats.mean(0)
    sd = feats.std(0)
    sd = sd.clamp_min(max(1e-5, std_floor * float(sd.median())))  # dead (constant) dimensions stay 0
    z = (feats - mu) / sd
    y = labels.to(device)
    n, dim = z.shape
    batch_size = min(batch_size, n)
    gen = torch.Generator().manual_seed(seed)
    linear = nn.Linear(dim, num_classes).to(device)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    opt = torch.optim.Adam(linear.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen).to(device)
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(linear(z[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    with torch.no_grad():  # fold the standardisation into the layer
        w = linear.weight / sd
        linear.bias -= w @ mu
        linear.weight.copy_(w)
    return linear.requires_grad_(False)


def _paper_train(
    net: nn.Module,
    augment: nn.Module,
    train: Any,
    test_feats: Tensor,
    test_labels: Tensor,
    classifier: nn.Linear,
    epochs: int,
    batch_size: int,
    peak_lr: float,
    seed: int,
    device: torch.device,
) -> list[dict[str, float]]:
    """The official loop: fresh crop + flip views each step, frozen ``net`` -> h, SGD on the classifier."""
    from simclr.data.access import batches
    from simclr.optim import lr_at

    opt = torch.optim.SGD(classifier.parameters(), lr=peak_lr, momentum=0.9, nesterov=True, weight_decay=0.0)
    source = batches(train, batch_size, device, shuffle=True, drop_last=True, seed=seed)  # as the official input
    total = epochs * len(source)
    view_gen = torch.Generator(device=device).manual_seed(seed)
    history, step = [], 0
    for epoch in progress(range(epochs), total=epochs, desc="linear (paper)"):
        source.set_epoch(epoch)
        loss_sum = 0.0
        for batch in source:
            with torch.no_grad():
                h = net(augment(batch.images, view_gen, batch.sizes))
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, 0, peak_lr)
            loss = F.cross_entropy(classifier(h), batch.labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach())
            step += 1
        with torch.no_grad():  # the test features are fixed (frozen encoder): evaluating is one matmul
            top1, top5 = topk_accuracy(classifier(test_feats), test_labels)
        history.append({"epoch": epoch + 1, "loss": loss_sum / max(1, len(source)), "top1": top1, "top5": top5})
    return history


def _fit_classifier(mode: str, pretrained: Pretrained, net: nn.Module, transform: nn.Module, train: Any,
                    test_feats: Tensor, test_labels: Tensor, num_classes: int, epochs: int | None,
                    batch_size: int | None, seed: int, device, feature_batch_size: int, t0: float):  # fmt: skip
    """The classifier of ``mode`` trained on the frozen ``net``: (classifier, train features (fast) or None,
    epochs, batch size, settings, per-epoch history (paper), seconds from ``t0`` until training began)."""
    if mode == "fast":
        epochs = FAST_EPOCHS if epochs is None else epochs
        batch_size = batch_size or min(FAST_BATCH, len(train))
        train_feats = extract_features(net, train, transform, feature_batch_size, device, desc="train features")
        t_feat = time.perf_counter() - t0
        classifier = fit_linear(
            train_feats, train.labels.to(device), num_classes, epochs, batch_size, FAST_LR, seed=seed
        )
        settings = {"optimizer": "adam", "lr": FAST_LR, "features": "cached, standardised"}
        history: list[dict[str, float]] = []
    else:
        from simclr.augment import Augment, finetune_augment_config

        epochs = PAPER_EPOCHS if epochs is None else epochs
        batch_size = batch_size or scaled_batch_size(len(train), PAPER_BATCH, min_steps_per_epoch=10)
        peak_lr = PAPER_BASE_LR * batch_size / 256
        cfg = pretrained.config.augment
        augment = Augment(finetune_augment_config(cfg), pretrained.image_size, pretrained.mean, pretrained.std)
        t_feat = time.perf_counter() - t0
        torch.manual_seed(seed)
        classifier = nn.Linear(test_feats.shape[1], num_classes).to(device)
        nn.init.zeros_(classifier.weight)  # official zero_init_logits_layer
        nn.init.zeros_(classifier.bias)
        history = _paper_train(
            net, augment, train, test_feats, test_labels, classifier, epochs, batch_size, peak_lr, seed, device
        )
        train_feats = None
        settings = {
            "optimizer": "sgd-nesterov",
            "momentum": 0.9,
            "lr": peak_lr,
            "features": "crop+flip views",
        }
    return classifier, train_feats, epochs, batch_size, settings, history, t_feat


def linear_eval(
    pretrained: Pretrained,
    train: Any,
    test: Any,
    mode: str = "fast",
    epochs: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    from_head_layer: int = 0,
    dataset: str | None = None,
    out_dir: str | Path | None = None,
    feature_batch_size: int = 512,
    evaluated: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Linear evaluation of ``pretrained`` on ``train`` / ``test`` (:class:`~simclr.data.ImageData`).

    ``mode``: ``fast`` (cached features, defaults 100 epochs, batch 1024, Adam lr 1e-3) or ``paper``
    (defaults 90 epochs, batch min(4096, N // 10), SGD Nesterov lr 0.1 x B / 256); ``from_head_layer``
    k > 0 probes the k-th projection-head layer instead of h. Returns a dict with ``top1``, ``top5``
    (percent, test split), ``train_top1``, the settings used and an evaluation ``card``; written to
    ``out_dir/metrics.json`` when ``out_dir`` is given. Raises if the encoder's weights changed.
    """
    validate(LinearOptions(mode, epochs, batch_size, from_head_layer, seed))
    if train.labels is None or test.labels is None:
        raise SimCLRError(f"{train.source}: linear evaluation needs labelled train and test splits")
    t0 = time.perf_counter()
    device = resolve_device(device)
    model = pretrained.model.to(device)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    modes = (model.training, [p.requires_grad for p in model.parameters()])
    freeze(model)
    net = Representation(model, from_head_layer)
    transform = eval_transform_for(pretrained.config, pretrained.image_size, pretrained.mean, pretrained.std)
    num_classes = int(max(int(train.labels.max()), int(test.labels.max()))) + 1
    try:
        test_feats = extract_features(net, test, transform, feature_batch_size, device, desc="test features")
        test_labels = test.labels.to(device)
        classifier, train_feats, epochs, batch_size, settings, history, t_feat = _fit_classifier(
            mode, pretrained, net, transform, train, test_feats, test_labels, num_classes, epochs, batch_size, seed,
            device, feature_batch_size, t0,
        )  # fmt: skip
        with torch.no_grad():
            top1, top5 = topk_accuracy(classifier(test_feats), test_labels)
            train_top1 = (
                topk_accuracy(classifier(train_feats), train.labels.to(device), (1,))[0]
                if train_feats is not None
                else None
            )
        after = model.state_dict()
        changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
        if changed:
            raise RuntimeError(f"linear_eval modified the frozen network ({changed[0]}); this is a bug")
    finally:
        model.train(modes[0])
        for p, flag in zip(model.parameters(), modes[1], strict=True):
            p.requires_grad_(flag)
    wall = time.perf_counter() - t0
    result: dict[str, Any] = {
        "protocol": f"linear-eval-{mode}",
        "mode": mode,
        "top1": top1,
        "top5": top5,
        "train_top1": train_top1,
        "num_classes": num_classes,
        "feature_dim": int(test_feats.shape[1]),
        "from_head_layer": from_head_layer,
        "n_train": len(train),
        "n_test": len(test),
        "epochs": epochs,
        "batch_size": batch_size,
        "weight_decay": 0.0,
        **settings,
        "encoder_frozen_verified": True,
        "feature_time_s": round(t_feat, 3),
        "history": history,
    }
    result["card"] = evaluation_card(
        f"linear-eval-{mode}",
        dataset or train.source,
        "test",
        1.0,
        None,
        seed,
        epochs,
        batch_size,
        pretrained.sha256,
        device,
        wall,
        checkpoint=str(pretrained.path),
        train_source=train.source,
        test_source=test.source,
        evaluated=evaluated,
    )
    if out_dir is not None:
        write_metrics(out_dir, result)
    return result


@torch.no_grad()
def _calibrate_batchnorm(model: nn.Module, data: Any, transform: nn.Module, device, seed: int) -> None:
    """Set BN running statistics to the data's (cumulative average over ~10k images); weights untouched.

    A random network's BN layers hold the initial statistics (mean 0, var 1), which in eval mode leave its
    activations unnormalised; calibrating them is what makes "random encoder" a fair baseline.
    """
    from simclr.data.access import batches, sample
    from simclr.eval.features import _as_data, transform_batch

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average
    model.train()
    for batch in batches(sample(_as_data(data), 10240, seed), 512, device):
        model(transform_batch(transform, batch))
    model.eval()


def fast_baselines(
    pretrained: Pretrained, train: Any, test: Any, seed: int = 0, device: str | torch.device = "cpu"
) -> dict[str, dict[str, float]]:
    """The references a fast linear eval is read against, with the same probe and preprocessing.

    ``random_encoder``: the same architecture at its random initialisation (seeded), frozen, with its BN
    statistics calibrated on the training images;
    ``raw_pixels``: a logistic regression on the stored pixels themselves (centre crop and normalisation
    of the evaluation preprocessing, but at the stored side: a run whose ``model.input_size`` upsamples
    the images would otherwise give the pixel probe more, redundant dimensions and a weaker figure).
    Returns top-1/top-5 (%).
    """
    from simclr.checkpoint import Pretrained as _P
    from simclr.data.access import stored_side
    from simclr.models.build import build_model

    device = resolve_device(device)
    torch.manual_seed(seed)
    random_model = build_model(pretrained.config.model, pretrained.image_size)
    random_pre = _P(
        random_model, pretrained.config, pretrained.image_size, pretrained.mean, pretrained.std, pretrained.path, {}
    )
    random_pre._sha = "random-init"
    transform = eval_transform_for(pretrained.config, pretrained.image_size, pretrained.mean, pretrained.std)
    _calibrate_batchnorm(random_model.to(device), train, transform, device, seed)
    rnd = linear_eval(random_pre, train, test, mode="fast", seed=seed, device=device)
    flat = nn.Flatten()
    num_classes = int(max(int(train.labels.max()), int(test.labels.max()))) + 1
    side = stored_side(train)
    raw_transform = eval_transform_for(pretrained.config, side, pretrained.mean, pretrained.std)
    tr = extract_features(flat, train, raw_transform, 1024, device, desc="raw train")
    te = extract_features(flat, test, raw_transform, 1024, device, desc="raw test")
    clf = fit_linear(tr, train.labels.to(device), num_classes, seed=seed)
    with torch.no_grad():
        raw = topk_accuracy(clf(te), test.labels.to(device))
    return {
        "random_encoder": {"top1": rnd["top1"], "top5": rnd["top5"]},
        "raw_pixels": {"top1": raw[0], "top5": raw[1]},
    }


def linear_eval_command(
    run: str,
    data: str | None = None,
    dataset: str | None = None,
    out: str | None = None,
    device: str = "auto",
    **options: Any,
) -> dict[str, Any]:
    """``simclr linear-eval RUN``: load the run's checkpoint and data, evaluate, write ``metrics.json``.

    ``options`` are :class:`LinearOptions` fields (checked before any work). ``data`` / ``dataset`` default
    to the run's; ``out`` defaults to ``RUN/eval/linear-<mode>`` for the run's own data and default
    settings, ``RUN/eval/linear-<mode>-<hash>`` otherwise (:func:`~simclr.eval.features.evaluation_dir`).
    ``baselines`` (fast mode) also probes the randomly initialised encoder and the raw pixels
    (:func:`fast_baselines`) and stores them under ``result["baselines"]``.
    Prints one summary line and returns the result dict of :func:`linear_eval`.
    """
    from simclr.checkpoint import load_pretrained
    from simclr.eval.features import evaluation_dir, evaluation_identity, load_eval_data

    o = validate(LinearOptions(**options))
    dev = resolve_device(device)
    torch.manual_seed(o.seed)
    pre = load_pretrained(run, dev)
    train, test, name = load_eval_data(pre.config, dataset, data)
    evaluated, default = evaluation_identity(pre.config, o, dataset, data)
    out_dir = evaluation_dir(run, f"linear-{o.mode}", evaluated, default, out)
    with folder_lock(out_dir, "evaluation folder"):
        result = linear_eval(
            pre, train, test, mode=o.mode, epochs=o.epochs, batch_size=o.batch_size, seed=o.seed, device=dev,
            from_head_layer=o.from_head_layer, dataset=name, evaluated=evaluated,
        )  # fmt: skip
        if o.baselines:
            result["baselines"] = fast_baselines(pre, train, test, seed=o.seed, device=dev)
        write_metrics(out_dir, result)
    result["out_dir"] = str(out_dir)
    print(
        f"linear eval ({o.mode}, {result['epochs']} epochs, batch {result['batch_size']}): "
        f"top-1 {result['top1']:.2f} %  top-5 {result['top5']:.2f} %  "
        f"({result['card']['wall_clock_s']:.0f} s) -> {out_dir / 'metrics.json'}"
    )
    for key, label in (("random_encoder", "random-init encoder"), ("raw_pixels", "raw pixels")):
        if key in result.get("baselines", {}):
            b = result["baselines"][key]
            print(f"  baseline, {label:19s}: top-1 {b['top1']:.2f} %  top-5 {b['top5']:.2f} %")
    return result
