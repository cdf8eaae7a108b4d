"""The fine-tuned classifier: encoder + kept projection-head layers + linear layer, and its one file format.

:class:`FinetuneNet` is what fine-tuning trains and distillation trains as a student; :func:`save_classifier`
writes it (``kind: finetune``: weights, config, preprocessing, label subset, metrics) and
:func:`load_classifier` reads it back for evaluation, prediction or as a distillation teacher.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from simclr.checkpoint import load_checkpoint, load_state_strict, save_checkpoint
from simclr.config import Config, config_from_dict, config_to_dict
from simclr.errors import SimCLRError
from simclr.eval.features import eval_transform_for


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
        self.bn_frozen = False  # True: BatchNorm layers stay in eval mode (running statistics) while training

    def train(self, mode: bool = True) -> FinetuneNet:
        super().train(mode)
        if mode and self.bn_frozen:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

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


def save_classifier(path: str | Path, net: FinetuneNet, **meta: Any) -> Path:
    """Write ``net`` in the classifier format :func:`load_classifier` reads; ``meta`` adds plain entries
    (``init``, ``pretrained_sha256``, ``label_subset``, ``metrics``, ``teacher_sha256``, ...)."""
    if net.config is None or net.image_size is None:
        raise RuntimeError("save_classifier: the network has no config / image_size (set by build_finetune_net)")
    state = {
        "kind": "finetune",
        "config": config_to_dict(net.config),
        "encoder": net.encoder.state_dict(),
        "head": net.head_layers.state_dict(),
        "classifier": net.classifier.state_dict(),
        "num_classes": net.num_classes,
        "classes": net.classes,
        "from_head_layer": net.from_head_layer,
        "image_size": net.image_size,
        "data_stats": {"mean": list(net.mean), "std": list(net.std)},
    }
    save_checkpoint({**state, **meta}, Path(path))
    return Path(path)


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


__all__ = ["FinetuneNet", "build_finetune_net", "load_classifier", "save_classifier"]
