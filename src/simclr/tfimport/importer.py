"""Import an official SimCLR v1/v2 TensorFlow checkpoint into our modules, and write it as a run folder.

``load_tf_checkpoint(path)`` reads the bundle (:mod:`~simclr.tfimport.bundle`), infers the network from
its variables (:func:`~simclr.tfimport.mapping.infer_arch`), checks that every variable it expects is
there with its shape and that nothing is left over (optimizer slots, ``global_step`` and the other model
copy excepted), and fills a :class:`~simclr.models.SimCLRModel` and the supervised head.

The official models see RGB in [0, 1] without mean/std normalisation and are evaluated on a centre crop
of 87.5 % of the shorter side resized (bicubic) to 224 (SPEC-DETAILS 1.7); the run folder's config says so
(``augment.normalize: false``, ``eval_crop_fraction: 0.875``, ``eval_interpolation: bicubic``, stored
images of 256 px for 224 px views). Our encoders already pad as TensorFlow does (the stem max pool and
the ResNet-D average pool use 'SAME' alignment, :mod:`simclr.models.layers`), so no switch is needed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from simclr.config import Config
from simclr.errors import SimCLRError
from simclr.tfimport.bundle import TensorBundle
from simclr.tfimport.mapping import IGNORED, Arch, Var, expected_variables, infer_arch

INPUT_SIZE = 224  # official evaluation resolution
STORED_SIZE = 256  # stored side: a centre 224 crop of it is 87.5 % of the shorter side
V2_SK_RATIO = 0.0625


def default_from_head_layer(path: str | os.PathLike, arch: Arch) -> int:
    """Projection-head layers under ``head_supervised``: 1 for ``finetuned_1pct`` / ``finetuned_10pct``.

    The v2 paper fine-tunes from the first projection layer with 1 % / 10 % of the labels and from h with
    100 %; pretrained, supervised and distilled checkpoints have the classifier on h.
    """
    if arch.head_layers and re.search(r"finetuned_(1|10)pct", os.fspath(path)):
        return 1
    return 0


def plan_import(
    shapes: dict[str, tuple[int, ...]], ema: bool = False, ignore: tuple[str, ...] = ()
) -> tuple[Arch, list[Var]]:
    """(architecture, variables to read) for a checkpoint whose variables have ``shapes`` (name -> shape).

    Raises :class:`SimCLRError` naming the first variable that is missing, of the wrong shape, or left over.
    """
    scope = "ema_model/" if ema else ""
    head_scope = scope if f"{scope}head_supervised/linear_layer/dense/kernel" in shapes else ""
    arch = infer_arch(shapes, scope, head_scope)
    plan = expected_variables(arch, scope, head_scope)
    for v in plan:
        if v.tf_name not in shapes:
            raise SimCLRError(f"variable {v.tf_name} missing (expected for {arch.name})")
        if tuple(shapes[v.tf_name]) != v.tf_shape:
            raise SimCLRError(
                f"variable {v.tf_name}: shape {list(shapes[v.tf_name])} does not fit {arch.name} "
                f"(expected {list(v.tf_shape)})"
            )
    used = {v.tf_name for v in plan}
    # The model copy not imported: the EMA one, or (with ema) the trained one, whose supervised head is
    # skipped only when the EMA copy has its own.
    if not ema:
        other_copy = re.compile(r"^ema_model/")
    else:
        other_copy = re.compile(
            r"^(head_supervised|base_model|head_contrastive)/" if head_scope else r"^(base_model|head_contrastive)/"
        )
    patterns = [re.compile(p) for p in ignore]
    for name in sorted(shapes):
        if name in used or IGNORED.search(name) or other_copy.search(name) or any(p.search(name) for p in patterns):
            continue
        raise SimCLRError(
            f"variable {name} {list(shapes[name])} cannot be placed in {arch.name} "
            f"(pass --ignore '{re.escape(name)}' to skip it)"
        )
    return arch, plan


def model_config(arch: Arch) -> Config:
    """The run configuration of an imported network: architecture and exact official evaluation settings."""
    cfg = Config(name=f"tf-{arch.name}")
    m = cfg.model
    m.arch, m.width_multiplier, m.sk_ratio = arch.name, float(arch.width), V2_SK_RATIO if arch.sk else 0.0
    m.cifar_stem, m.input_size, m.head_layers, m.projection_dim = (
        False,
        INPUT_SIZE,
        arch.head_layers,
        arch.projection_dim,
    )
    a = cfg.augment
    a.normalize, a.eval_crop_fraction, a.eval_interpolation = False, 0.875, "bicubic"
    cfg.data.dataset, cfg.data.image_size = "folder", STORED_SIZE
    return cfg


def _converted(bundle: TensorBundle, v: Var) -> torch.Tensor:
    t = torch.from_numpy(bundle.read(v.tf_name))
    if v.kind == "conv":  # HWIO -> OIHW
        t = t.permute(3, 2, 0, 1)
    elif v.kind == "dense":  # [in, out] -> [out, in]
        t = t.t()
    return t.float().contiguous()


@dataclass
class TFCheckpoint:
    """An imported checkpoint; modules in eval mode, inputs float (N, 3, H, W) RGB in [0, 1], unnormalised.

    ``encoder``: x -> h (N, 2048w). ``head``: h -> z, the last projection layer's output before L2
    normalisation (None for the v1 releases, which have no projection head). ``classifier``: h -> logits
    through the first ``from_head_layer`` projection layers and ``head_supervised`` (None without one).
    ``model``: the :class:`~simclr.models.SimCLRModel` (encoder + head), ``config`` its run configuration.
    """

    encoder: nn.Module
    head: nn.Module | None
    classifier: nn.Module | None
    model: nn.Module
    linear: nn.Linear | None
    from_head_layer: int
    arch: Arch
    config: Config
    step: int | None
    source: Path
    ema: bool


def load_tf_checkpoint(
    path: str | os.PathLike, ema: bool = False, from_head_layer: int | None = None, ignore: tuple[str, ...] = ()
) -> TFCheckpoint:
    """Read an official SimCLR TF1 checkpoint (prefix, ``.index`` file, or folder with a ``checkpoint`` file).

    ``ema``: the ``ema_model/`` copy of the v2 pretrained checkpoints. ``from_head_layer``: projection layers
    under the supervised head (default :func:`default_from_head_layer`). ``ignore``: regexes of variables
    to skip. Every problem is one :class:`SimCLRError` line naming the file or the variable.
    """
    from simclr.models.build import build_model

    bundle = TensorBundle(path)
    shapes = {n: bundle.shape(n) for n in bundle.names}
    try:
        arch, plan = plan_import(shapes, ema, tuple(ignore))
    except SimCLRError as e:
        raise SimCLRError(f"{bundle.index_path}: {e}") from None
    k = default_from_head_layer(bundle.prefix, arch) if from_head_layer is None else from_head_layer
    if not 0 <= k <= arch.head_layers:
        raise SimCLRError(f"from_head_layer={k}: {bundle.prefix.name} has {arch.head_layers} projection layers")
    cfg = model_config(arch)
    with torch.device("meta"):  # no random init: every tensor comes from the checkpoint
        model = build_model(cfg.model, INPUT_SIZE)
    values = {v.key: _converted(bundle, v) for v in plan}
    state = {}
    for key, ref in model.state_dict().items():  # BN counters and the last BN's fixed beta are not in TF
        state[key] = values.pop(key) if key in values else torch.zeros(ref.shape, dtype=ref.dtype)
    model.load_state_dict(state, strict=True, assign=True)
    model.eval()
    linear = classifier = None
    if arch.num_classes is not None:
        linear = nn.Linear(int(values["classifier.weight"].shape[1]), arch.num_classes)
        linear.load_state_dict({"weight": values.pop("classifier.weight"), "bias": values.pop("classifier.bias")})
        classifier = nn.Sequential(*model.head.layers[:k], linear).eval()
    step = int(bundle.read("global_step")) if "global_step" in bundle else None
    head = model.head if arch.head_layers else None
    return TFCheckpoint(model.encoder, head, classifier, model, linear, k, arch, cfg, step, bundle.prefix, ema)
