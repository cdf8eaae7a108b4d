"""Names of the official TF1 SimCLR variables and where each one goes in our modules.

TF1 names layers by creation order within a variable scope: the k-th ``tf.layers.conv2d`` under
``base_model`` is ``base_model/conv2d_k`` (``conv2d`` for k = 0) and the k-th batch norm is
``base_model/batch_normalization_k``; convs and BNs are counted separately. The order below follows the
official ``resnet.py`` (SPEC-DETAILS 2): the stem; then, per bottleneck block, the projection shortcut
(first block of a group: 1x1 conv + BN, after a 2x2 average pool for ResNet-D / SK models), the 1x1 conv + BN,
the 3x3 conv + BN or the SK conv (3x3 conv to 2f + BN, 1x1 fuse conv + BN, 1x1 mixing conv), and the last
1x1 conv + BN. ``model_util.py`` gives the heads: ``head_contrastive/nl_j/dense/kernel`` and
``nl_j/batch_normalization/*`` (no beta on the last layer), or ``l_0`` for the linear head, and
``head_supervised/linear_layer/dense/{kernel,bias}``. Conv kernels are HWIO (ours OIHW), dense kernels
[in, out] (ours [out, in]).

Variables are looked up by these names: a missing one, one of another shape, or one left over is an error.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from simclr.errors import SimCLRError
from simclr.models.layers import scaled_channels
from simclr.models.resnet import ARCHS, Bottleneck

# Optimizer slots and bookkeeping that a checkpoint may hold beside the model (never imported).
IGNORED = re.compile(r"(^|/)(Momentum|Adam|Adam_1)$|^global_step$|^beta[12]_power$")
BN_FIELDS = (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"), ("moving_variance", "running_var"))


@dataclass(frozen=True)
class Var:
    """One TF variable: its name, its TF shape, our state-dict key, and how to convert it (conv/dense/none)."""

    tf_name: str
    tf_shape: tuple[int, ...]
    key: str
    kind: str  # "conv": HWIO -> OIHW; "dense": [in, out] -> [out, in]; "vector": as is


@dataclass(frozen=True)
class Arch:
    """What the variables say about the network."""

    depth: int
    width: float
    sk: bool
    head_layers: int  # projection-head layers (0 = none, as in the v1 releases)
    head_mode: str  # "nonlinear" (nl_j), "linear" (l_0) or "none"
    projection_dim: int
    num_classes: int | None  # head_supervised outputs, None without a supervised head

    @property
    def name(self) -> str:
        return f"r{self.depth}_{self.width:g}x_sk{int(self.sk)}"


def _layer(kind: str, index: int) -> str:
    return kind if index == 0 else f"{kind}_{index}"


def encoder_layers(depth: int, width: float, sk: bool) -> Iterator[tuple[str, str, int, int, int]]:
    """(kind "conv"/"bn", our module path, kernel size, in channels, out channels) in TF creation order."""
    block, layers = ARCHS[depth]
    if block is not Bottleneck:
        raise SimCLRError(f"depth {depth}: only the bottleneck ResNets (50, 101, 152, 200) can be imported")
    c64 = scaled_channels(64, width)
    if sk:  # ResNet-D stem: 3x3/2 (32w), 3x3 (32w), 3x3 (64w)
        half = scaled_channels(32, width)  # the official 64w // 2 for integer widths
        for i, (cin, cout) in enumerate(((3, half), (half, half), (half, c64))):
            yield "conv", f"stem.{i}.0", 3, cin, cout
            yield "bn", f"stem.{i}.1", 0, cout, cout
    else:
        yield "conv", "stem.0.0", 7, 3, c64
        yield "bn", "stem.0.1", 0, c64, c64
    cin = c64
    for g, (base, n_blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True), start=1):
        f = scaled_channels(base, width)
        for j in range(n_blocks):
            p = f"block_group{g}.{j}"
            if j == 0:  # projection shortcut, created first
                sc = (f"{p}.shortcut.conv", f"{p}.shortcut.bn") if sk else (f"{p}.shortcut.0", f"{p}.shortcut.1")
                yield "conv", sc[0], 1, cin, 4 * f
                yield "bn", sc[1], 0, 4 * f, 4 * f
            yield "conv", f"{p}.conv1.0", 1, cin, f
            yield "bn", f"{p}.conv1.1", 0, f, f
            if sk:
                mid = max(int(f * 0.0625), 32)
                yield "conv", f"{p}.conv2.streams.0", 3, f, 2 * f
                yield "bn", f"{p}.conv2.streams.1", 0, 2 * f, 2 * f
                yield "conv", f"{p}.conv2.fuse.0", 1, f, mid
                yield "bn", f"{p}.conv2.fuse.1", 0, mid, mid
                yield "conv", f"{p}.conv2.mix", 1, mid, 2 * f
            else:
                yield "conv", f"{p}.conv2.0", 3, f, f
                yield "bn", f"{p}.conv2.1", 0, f, f
            yield "conv", f"{p}.conv3", 1, f, 4 * f
            yield "bn", f"{p}.bn3", 0, 4 * f, 4 * f
            cin = 4 * f


def expected_variables(arch: Arch, scope: str = "", head_scope: str | None = None) -> list[Var]:
    """Every TF variable of ``arch`` with its key in our modules.

    ``base_model`` and ``head_contrastive`` are read under ``scope`` (``"ema_model/"`` for the EMA copy),
    ``head_supervised`` under ``head_scope`` (default ``scope``). Keys: ``encoder.*`` and ``head.*`` of
    :class:`~simclr.models.SimCLRModel`, ``classifier.weight`` / ``classifier.bias`` for the supervised head.
    """
    out: list[Var] = []
    n_conv = n_bn = 0
    for kind, path, k, cin, cout in encoder_layers(arch.depth, arch.width, arch.sk):
        if kind == "conv":
            name = f"{scope}base_model/{_layer('conv2d', n_conv)}/kernel"
            out.append(Var(name, (k, k, cin, cout), f"encoder.{path}.weight", "conv"))
            n_conv += 1
        else:
            base = f"{scope}base_model/{_layer('batch_normalization', n_bn)}"
            out += [Var(f"{base}/{tf}", (cout,), f"encoder.{path}.{ours}", "vector") for tf, ours in BN_FIELDS]
            n_bn += 1
    dim = scaled_channels(512, arch.width) * 4
    for j in range(arch.head_layers):
        last = j == arch.head_layers - 1
        layer = "l_0" if arch.head_mode == "linear" else f"nl_{j}"
        out_dim = arch.projection_dim if last else dim
        out.append(
            Var(f"{scope}head_contrastive/{layer}/dense/kernel", (dim, out_dim), f"head.layers.{j}.0.weight", "dense")
        )
        for tf, ours in BN_FIELDS:
            if not (last and tf == "beta"):  # the last BN has no beta (center=False)
                name = f"{scope}head_contrastive/{layer}/batch_normalization/{tf}"
                out.append(Var(name, (out_dim,), f"head.layers.{j}.1.{ours}", "vector"))
    if arch.num_classes is not None:
        hs = f"{scope if head_scope is None else head_scope}head_supervised/linear_layer/dense"
        out.append(Var(f"{hs}/kernel", (dim, arch.num_classes), "classifier.weight", "dense"))
        out.append(Var(f"{hs}/bias", (arch.num_classes,), "classifier.bias", "vector"))
    return out


def _count_layers(shapes: dict[str, tuple[int, ...]], prefix: str, kind: str) -> int:
    n = 0
    while f"{prefix}{_layer(kind, n)}/{'kernel' if kind == 'conv2d' else 'gamma'}" in shapes:
        n += 1
    return n


def infer_arch(shapes: dict[str, tuple[int, ...]], scope: str = "", head_scope: str | None = None) -> Arch:
    """Depth, width, SK, heads and classes of the network whose variables (name -> TF shape) are ``shapes``.

    ``scope`` / ``head_scope`` as in :func:`expected_variables`.

    Raises :class:`SimCLRError` when the variables are not those of an official SimCLR ResNet.
    """
    base = f"{scope}base_model/"
    stem = shapes.get(f"{base}conv2d/kernel")
    if stem is None:
        if any(n.startswith("_CHECKPOINTABLE_OBJECT_GRAPH") or "/.ATTRIBUTES/" in n for n in shapes):
            raise SimCLRError(
                "a TF2 object-based checkpoint (SavedModel / tf.train.Checkpoint); "
                "only the TF1 name-based checkpoints (simclrv2/..., simclrv1/...) can be imported"
            )
        raise SimCLRError(f"no variable {base}conv2d/kernel: not a SimCLR TF1 checkpoint (or try --ema / no --ema)")
    if len(stem) != 4 or stem[2] != 3:
        raise SimCLRError(f"{base}conv2d/kernel: shape {list(stem)} is not an RGB stem convolution")
    sk = stem[0] == 3
    if sk:
        last_stem = shapes.get(f"{base}conv2d_2/kernel", (0, 0, 0, 0))
        width = last_stem[3] / 64
    else:
        width = stem[3] / 64
    n_conv = _count_layers(shapes, base, "conv2d")
    per_block, extra = (5, 3 + 4) if sk else (3, 1 + 4)
    depths = [d for d, (b, layers) in ARCHS.items() if b is Bottleneck and sum(layers) * per_block + extra == n_conv]
    if not depths:
        raise SimCLRError(
            f"{n_conv} convolutions under {base}: no ResNet-50/101/152/200{' with SK' if sk else ''} has that many"
        )
    hs = f"{scope}head_contrastive/"
    n_nl = sum(1 for j in range(64) if f"{hs}nl_{j}/dense/kernel" in shapes)
    if n_nl:
        mode, layers, last = "nonlinear", n_nl, shapes[f"{hs}nl_{n_nl - 1}/dense/kernel"]
    elif f"{hs}l_0/dense/kernel" in shapes:
        mode, layers, last = "linear", 1, shapes[f"{hs}l_0/dense/kernel"]
    else:
        mode, layers, last = "none", 0, (0, 128)
    sup = shapes.get(f"{scope if head_scope is None else head_scope}head_supervised/linear_layer/dense/kernel")
    num_classes = sup[1] if sup is not None and len(sup) == 2 else None
    return Arch(depths[0], width, sk, layers, mode, int(last[-1]), num_classes)
