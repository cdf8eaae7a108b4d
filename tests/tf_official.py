"""The variables of the official TF1 SimCLR checkpoints, written plainly from resnet.py / model_util.py.

An independent statement of the layout for the tests (the importer has its own): tf.layers names the
k-th conv of a scope ``conv2d_k`` and the k-th batch norm ``batch_normalization_k``, counted separately,
in creation order: stem; per bottleneck, the projection shortcut (first block of a group), conv1, the 3x3
or the SK convs (3x3 to 2f, fuse 1x1 to mid, mixing 1x1 to 2f, with a BN after the first two), conv3.
"""

from __future__ import annotations

import numpy as np

BLOCKS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


def official_shapes(
    depth: int,
    width: float,
    sk: bool,
    head_layers: int = 3,
    num_classes: int | None = 1000,
    scope: str = "",
    proj_dim: int = 128,
) -> dict[str, tuple[int, ...]]:
    """name -> TF shape of every model variable (no optimizer slots), in creation order."""
    convs: list[tuple[int, int, int, int]] = []
    bns: list[int] = []

    def c(k, cin, cout):
        convs.append((k, k, int(cin), int(cout)))

    def bn(ch):
        bns.append(int(ch))

    w = width
    if sk:
        c(3, 3, 32 * w), bn(32 * w), c(3, 32 * w, 32 * w), bn(32 * w), c(3, 32 * w, 64 * w), bn(64 * w)
    else:
        c(7, 3, 64 * w), bn(64 * w)
    cin = 64 * w
    for g, n in enumerate(BLOCKS[depth]):
        f = 64 * 2**g * w
        for j in range(n):
            if j == 0:
                c(1, cin, 4 * f), bn(4 * f)
            c(1, cin, f), bn(f)
            if sk:
                mid = max(int(f * 0.0625), 32)
                c(3, f, 2 * f), bn(2 * f), c(1, f, mid), bn(mid), c(1, mid, 2 * f)
            else:
                c(3, f, f), bn(f)
            c(1, f, 4 * f), bn(4 * f)
            cin = 4 * f
    out: dict[str, tuple[int, ...]] = {}
    for i, shape in enumerate(convs):
        out[f"{scope}base_model/conv2d{'' if i == 0 else f'_{i}'}/kernel"] = shape
    for i, ch in enumerate(bns):
        for v in ("gamma", "beta", "moving_mean", "moving_variance"):
            out[f"{scope}base_model/batch_normalization{'' if i == 0 else f'_{i}'}/{v}"] = (ch,)
    d = int(cin)
    for j in range(head_layers):
        last = j == head_layers - 1
        dim = proj_dim if last else d
        out[f"{scope}head_contrastive/nl_{j}/dense/kernel"] = (d, dim)
        for v in ("gamma", "beta", "moving_mean", "moving_variance"):
            if not (last and v == "beta"):
                out[f"{scope}head_contrastive/nl_{j}/batch_normalization/{v}"] = (dim,)
    if num_classes:
        out["head_supervised/linear_layer/dense/kernel"] = (d, num_classes)
        out["head_supervised/linear_layer/dense/bias"] = (num_classes,)
    return out


def random_values(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    """Float32 values: kernels ~ N(0, 1/fan_in), BN statistics away from the identity (variance in [0.5, 2])."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        if name.endswith("kernel"):
            fan_in = int(np.prod(shape[:-1]))
            v = rng.standard_normal(shape) / np.sqrt(fan_in)
        elif name.endswith("moving_variance"):
            v = rng.uniform(0.5, 2.0, shape)
        elif name.endswith("gamma"):
            v = rng.uniform(0.5, 1.5, shape)
        else:
            v = 0.2 * rng.standard_normal(shape)
        out[name] = v.astype(np.float32)
    return out
