"""Shared plumbing of the evaluation protocols: frozen features, evaluation data, devices, progress.

Features are extracted once with the evaluation preprocessing (centre crop, SPEC 2.4) under
``torch.inference_mode`` with the network in eval mode (BN uses its running statistics), in batches, so
a protocol that trains on cached features never runs the encoder twice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from simclr.config import Config
from simclr.errors import SimCLRError
from simclr.eval.metrics import topk_correct
from simclr.runtime import autocast, progress


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode (BN on running statistics, as official linear eval) and no gradients, in place."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class Representation(nn.Module):
    """x -> h (``from_head_layer=0``) or the output of the first k projection-head layers (v2 section 2).

    Wraps a :class:`~simclr.models.SimCLRModel` (not a copy: its weights are shared).
    """

    def __init__(self, model: nn.Module, from_head_layer: int = 0):
        super().__init__()
        layers = model.head.num_layers
        if not 0 <= from_head_layer <= layers:
            raise SimCLRError(f"--from-head-layer: the projection head has {layers} layers, got {from_head_layer}")
        self.model, self.from_head_layer = model, from_head_layer
        self.train(model.training)  # a new wrapper must not flip the wrapped model's mode when restored

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) views -> (B, D) features."""
        h = self.model.encoder(x)
        return self.model.head(h, layers=self.from_head_layer) if self.from_head_layer else h


def eval_transform_for(config: Config, image_size: int, mean, std) -> nn.Module:
    """The evaluation preprocessing of a run: centre crop (``augment.eval_crop_fraction``) + normalise."""
    from simclr.augment import EvalTransform

    a = config.augment
    return EvalTransform(
        image_size, a.eval_crop_fraction, tuple(mean), tuple(std), normalize=a.normalize,
        interpolation=a.eval_interpolation,
    )  # fmt: skip


def _as_data(images: Any, labels: Tensor | None = None) -> Any:
    """A uint8 tensor (N, C, H, W) as :class:`~simclr.data.ImageData`; ImageData / ImageStream as they are."""
    from simclr.data import ImageData

    if isinstance(images, Tensor):
        return ImageData(images, labels, None, None, "tensor")
    return images


def transform_batch(transform: Callable[..., Tensor], batch: Any) -> Tensor:
    """``transform(images)``, with each image's size when the batch holds images of several sizes."""
    return transform(batch.images) if batch.sizes is None else transform(batch.images, batch.sizes)


def extract_features(
    net: nn.Module,
    images: Any,
    transform: Callable[..., Tensor],
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    desc: str | None = "features",
    subset: Tensor | None = None,
) -> Tensor:
    """Features (N, D) float32 on ``device`` of ``images`` after ``transform``, in dataset order (or of the
    ``subset`` of indices, in its order).

    ``images``: a uint8 tensor (N, C, H, W), :class:`~simclr.data.ImageData` (images of one size or packed)
    or a streamed :class:`~simclr.data.stream.ImageStream` (read in batches, each image at its own size).
    ``net`` (e.g. an encoder or a :class:`Representation`) is already on ``device``; it runs in eval mode
    under ``torch.inference_mode`` (bf16 autocast on CUDA) and its previous mode is restored afterwards.
    """
    from simclr.data.access import batches

    device = torch.device(device)
    data = _as_data(images)
    was_training = net.training
    net.eval()
    out: list[Tensor] = []
    source = batches(data, batch_size, device, subset=subset)
    try:
        with torch.inference_mode(), autocast(device):
            for batch in progress(source, total=len(source), desc=desc, enabled=desc is not None):
                out.append(net(transform_batch(transform, batch)).float())
    finally:
        net.train(was_training)
    if not out:
        raise SimCLRError("extract_features: no images")
    # Clone out of inference mode so callers may use the features in autograd (a linear classifier).
    return torch.cat(out).clone()


@torch.no_grad()
def evaluate_classifier(
    net: nn.Module,
    images: Any,
    labels: Tensor | None,
    transform: Callable[..., Tensor],
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    desc: str | None = "test",
) -> tuple[float, float]:
    """Top-1 / top-5 (percent) of ``net`` (views -> logits) on ``images`` (as :func:`extract_features`) with
    ``transform``; ``labels`` (N,) for a tensor of images, else the data's own labels.

    The network is put in eval mode for the pass and its mode restored; ``desc=None`` hides the progress bar.
    """
    from simclr.data.access import batches

    device = torch.device(device)
    data = _as_data(images, labels)
    was_training = net.training
    net.eval()
    correct = torch.zeros(2, dtype=torch.int64, device=device)
    source = batches(data, batch_size, device)
    try:
        for batch in progress(source, total=len(source), desc=desc, enabled=desc is not None):
            with autocast(device):
                logits = net(transform_batch(transform, batch))
            correct += topk_correct(logits.float(), batch.labels.to(device), (1, 5))
    finally:
        net.train(was_training)
    n = max(1, len(data))
    top1, top5 = (100.0 * float(c) / n for c in correct.cpu())
    return top1, top5


def eval_source(config: Config, dataset: str | None = None, path: str | None = None) -> tuple[str, str | None]:
    """(dataset name, path) an evaluation reads: the given ones, else the run's (its path only for its kind)."""
    d = config.data
    name = dataset or d.dataset
    return name, path if path is not None else (d.path if dataset in (None, d.dataset) else None)


def evaluation_identity(config: Config, options: Any, dataset: str | None, path: str | None) -> tuple[dict, dict]:
    """(evaluated, default) for :func:`evaluation_dir`: the data source and the options, against the run's own
    data source and the options' defaults (``options`` is a dataclass; its ``mode`` / ``labels`` / ``init``
    fields, when present, are part of the protocol's name and kept in the default)."""
    import dataclasses

    name, root = eval_source(config, dataset, path)
    evaluated = {"dataset": name, "data": root, **dataclasses.asdict(options)}
    keep = {k: getattr(options, k) for k in ("mode", "labels", "init") if hasattr(options, k)}
    default = {"dataset": config.data.dataset, "data": config.data.path}
    default.update(dataclasses.asdict(type(options)(**keep)))
    return evaluated, default


def load_eval_data(config: Config, dataset: str | None = None, path: str | None = None) -> tuple[Any, Any, str]:
    """(train, test, dataset name): the labelled train split and the test split a run is evaluated on.

    ``dataset`` / ``path`` default to the run's ``data.dataset`` / ``data.path`` (a different path with the
    run's dataset kind is allowed). Evaluation always uses the labelled ``train`` split, even when
    pretraining used unlabelled images (STL-10 ``unlabeled``).
    """
    from simclr.data.access import open_split

    d = config.data
    name, root = eval_source(config, dataset, path)
    kw = dict(in_memory=d.in_memory, download=d.download, max_bad_fraction=d.max_bad_fraction)
    train = open_split(name, root, "train", d.image_size, **kw)
    test = open_split(name, root, d.test_split, d.image_size, **kw)
    for split, data in (("train", train), (d.test_split, test)):
        if data.labels is None:
            raise SimCLRError(f"{data.source}: the {split} split has no labels to evaluate with")
    return train, test, name


def default_out_dir(run: str | Path | None, protocol: str) -> Path:
    """``RUN/eval/<protocol>`` for a run folder; beside the run of a ``RUN/checkpoints/x.pt`` file."""
    if run is None:
        return Path("runs") / "eval" / protocol
    p = Path(run)
    if p.is_dir():
        return p / "eval" / protocol
    parent = p.parent.parent if p.parent.name == "checkpoints" else p.parent
    return parent / "eval" / protocol


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))  # tuples -> lists, paths -> str: comparable with JSON


def evaluation_dir(
    run: str | Path | None,
    protocol: str,
    evaluated: dict[str, Any],
    default: dict[str, Any],
    out: str | Path | None = None,
) -> Path:
    """Where an evaluation writes ``metrics.json``, keyed by what it evaluated.

    ``evaluated`` names the evaluation (dataset, data path, split, protocol settings); ``default`` is what
    the protocol evaluates when given nothing. The default evaluation goes to ``RUN/eval/<protocol>``, any
    other to ``RUN/eval/<protocol>-<8 hex digits of evaluated>``; ``out`` is used as given. A folder whose
    ``metrics.json`` records a different evaluation is refused (one line), never overwritten.
    """
    evaluated, default = _plain(evaluated), _plain(default)
    if out is not None:
        folder = Path(out)
    elif evaluated == default:
        folder = default_out_dir(run, protocol)
    else:
        digest = hashlib.sha256(json.dumps(evaluated, sort_keys=True).encode()).hexdigest()[:8]
        folder = default_out_dir(run, f"{protocol}-{digest}")
    metrics = folder / "metrics.json"
    if metrics.is_file():
        try:
            before = json.loads(metrics.read_text()).get("card", {}).get("evaluated")
        except (ValueError, AttributeError):
            before = None
        if before is not None and before != evaluated:
            diff = [f"{k}: {before.get(k)!r} there, {v!r} now" for k, v in evaluated.items() if before.get(k) != v]
            raise SimCLRError(f"{metrics}: holds another evaluation ({'; '.join(diff[:3])}); choose another --out")
    return folder


def scaled_batch_size(n: int, nominal: int, min_steps_per_epoch: int = 5, floor: int = 32) -> int:
    """The paper's batch size scaled down to a small dataset of ``n`` examples.

    ``min(nominal, max(n // min_steps_per_epoch, min(floor, n)))``: the nominal batch (4096 for linear
    eval, 1024 for fine-tuning) when the data allow it, else small enough for ``min_steps_per_epoch``
    optimizer steps per epoch, but not below ``floor`` (BatchNorm needs a few images per batch).
    """
    if n < 1:
        raise SimCLRError("no training examples")
    return max(1, min(nominal, max(n // min_steps_per_epoch, min(floor, n))))
