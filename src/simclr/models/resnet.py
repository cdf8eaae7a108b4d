"""ResNet encoders f(.) of SimCLR (v1 section 2.1) and SimCLRv2 (v2 section 2), created by name.

``create_encoder("resnet50")``, ``create_encoder("r50_2x_sk1")`` (v2 checkpoint names: depth, width
multiplier, Selective Kernels on/off), ``create_encoder("resnet18", width=0.25, cifar_stem=True)``.
The layout follows the authors' code (SPEC section 3, SPEC-DETAILS section 2): ResNet v1 with BN after
every conv, the stride on the 3x3 conv of a bottleneck ("v1.5"), the last BN gamma of every residual
block initialised to zero, and no FC layer: ``forward`` returns the global-average-pooled h.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import Tensor, nn

from simclr.errors import SimCLRError
from simclr.models.layers import (
    AvgPoolShortcut,
    ConvBNReLU,
    ConvShortcut,
    SKConv2d,
    SqueezeExcite,
    batch_norm,
    conv2d,
    make_stem,
    scaled_channels,
)

DEFAULT_SK_RATIO = 0.0625  # the official help text's recommended value; "sk1" in v2 checkpoint names


def _shortcut(in_ch: int, out_ch: int, stride: int, sk: bool, project: bool) -> nn.Module | None:
    """Projection shortcut where ``project`` is set or the shape changes (else the identity): ResNet-D
    (avg pool + 1x1) with SK, else a strided 1x1 conv + BN."""
    if in_ch == out_ch and stride == 1 and not project:
        return None
    return AvgPoolShortcut(in_ch, out_ch, stride) if sk else ConvShortcut(in_ch, out_ch, stride)


class BasicBlock(nn.Module):
    """ResNet-18/34 block: 3x3 (stride) -> BN-ReLU -> 3x3 -> BN (gamma 0) [-> SE] + shortcut -> ReLU."""

    expansion = 1

    def __init__(
        self,
        in_ch: int,
        filters: int,
        stride: int,
        sk_ratio: float = 0.0,
        se_ratio: float = 0.0,
        project_shortcut: bool = False,
    ):
        super().__init__()
        if sk_ratio > 0:
            # Guarded in create_encoder too; the official TF2 code leaves basic blocks' 3x3 convs plain.
            raise ValueError("Selective Kernels are defined for bottleneck blocks only")
        # Created before the main path, as in TF, so ported variables map in module order.
        self.shortcut = _shortcut(in_ch, filters, stride, sk=False, project=project_shortcut)
        self.conv1 = ConvBNReLU(in_ch, filters, 3, stride)
        self.conv2 = conv2d(filters, filters, 3)
        self.bn2 = batch_norm(filters, zero_init=True)  # the block starts as the identity
        self.se = SqueezeExcite(filters, filters, se_ratio) if se_ratio > 0 else None

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        out = self.bn2(self.conv2(self.conv1(x)))
        if self.se is not None:
            out = self.se(out)
        return (out + shortcut).relu_()


class Bottleneck(nn.Module):
    """ResNet-50/101/152/200 block (SPEC-DETAILS 2.1), stride on the 3x3 conv ("v1.5").

    1x1 (f) -> BN-ReLU -> 3x3 (stride) -> BN-ReLU, or an SK conv when ``sk_ratio > 0`` -> 1x1 (4f) ->
    BN (gamma 0) [-> SE] + shortcut -> ReLU. Input (B, in_ch, H, W) -> (B, 4f, H/s, W/s).
    """

    expansion = 4

    def __init__(
        self,
        in_ch: int,
        filters: int,
        stride: int,
        sk_ratio: float = 0.0,
        se_ratio: float = 0.0,
        project_shortcut: bool = False,
    ):
        super().__init__()
        out_ch = filters * self.expansion
        self.shortcut = _shortcut(in_ch, out_ch, stride, sk=sk_ratio > 0, project=project_shortcut)
        self.conv1 = ConvBNReLU(in_ch, filters, 1)
        if sk_ratio > 0:
            self.conv2: nn.Module = SKConv2d(filters, filters, stride, sk_ratio)  # has its own BN-ReLU
        else:
            self.conv2 = ConvBNReLU(filters, filters, 3, stride)
        self.conv3 = conv2d(filters, out_ch, 1)
        self.bn3 = batch_norm(out_ch, zero_init=True)
        self.se = SqueezeExcite(out_ch, filters, se_ratio) if se_ratio > 0 else None

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        out = self.bn3(self.conv3(self.conv2(self.conv1(x))))
        if self.se is not None:
            out = self.se(out)
        return (out + shortcut).relu_()


class ResNet(nn.Module):
    """A ResNet encoder without FC: stem, four block groups (strides 1, 2, 2, 2), global average pool.

    ``first_block_projection``: the first block of every group projects its shortcut, as the official
    code (``use_projection=True``), which differs from projecting only where the shape changes for the
    first group of ResNet-18/34 (its 64 -> 64 channels, stride 1); False rebuilds that older layout.
    Attributes: ``out_dim`` (512w * expansion: 2048w for depth >= 50, 512w for 18/34), ``arch_name``,
    ``width``, ``sk_ratio``, ``se_ratio``, ``cifar_stem``, ``first_block_projection``.
    ``forward_features(x)``: (B, 3, H, W) ->
    (B, out_dim, H/32, W/32), or (B, out_dim, H/8, W/8) with the stride-1 ``cifar_stem``;
    ``forward(x)``: (B, out_dim).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        width: float = 1.0,
        sk_ratio: float = 0.0,
        se_ratio: float = 0.0,
        cifar_stem: bool = False,
        arch_name: str = "resnet",
        first_block_projection: bool = True,
    ):
        super().__init__()
        self.arch_name, self.width, self.sk_ratio = arch_name, float(width), float(sk_ratio)
        self.se_ratio, self.cifar_stem = float(se_ratio), bool(cifar_stem)
        self.first_block_projection = bool(first_block_projection)
        self.stem, in_ch = make_stem(width, sk=sk_ratio > 0, cifar_stem=cifar_stem)
        groups = []
        for i, (base, n_blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            filters = scaled_channels(base, width)
            blocks = []
            for j in range(n_blocks):
                stride = (1 if i == 0 else 2) if j == 0 else 1
                project = j == 0 and self.first_block_projection
                blocks.append(block(in_ch, filters, stride, sk_ratio, se_ratio, project_shortcut=project))
                in_ch = filters * block.expansion
            groups.append(nn.Sequential(*blocks))
        # Names of the TF hub outputs (block_group1..4), so fine-tuning "after block k" reads the same.
        self.block_group1, self.block_group2, self.block_group3, self.block_group4 = groups
        self.out_dim = in_ch

    def stages(self) -> list[nn.Module]:
        """[stem, block_group1, ..., block_group4]: the units frozen by ``fine_tune_after_block``."""
        return [self.stem, self.block_group1, self.block_group2, self.block_group3, self.block_group4]

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) image batch -> (B, out_dim, h, w) last feature map, before pooling."""
        for stage in self.stages():
            x = stage(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> representation h, (B, out_dim): the global average pool of the last map."""
        return self.forward_features(x).mean(dim=(2, 3))


# depth -> (block, blocks per group); SPEC-DETAILS 2.1.
ARCHS: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
    200: (Bottleneck, (3, 24, 36, 3)),
}

# The 13 released SimCLRv2 models (SPEC-DETAILS 10.1).
V2_NAMES = (
    "r50_1x_sk0 r50_1x_sk1 r50_2x_sk0 r50_2x_sk1 r101_1x_sk0 r101_1x_sk1 r101_2x_sk0 r101_2x_sk1 "
    "r152_1x_sk0 r152_1x_sk1 r152_2x_sk0 r152_2x_sk1 r152_3x_sk1"
).split()

# timm-style registry: name pattern -> builder(match, width, sk_ratio) -> (depth, width, sk_ratio).
_V2_PATTERN = r"r(?P<depth>\d+)_(?P<width>\d+(?:\.\d+)?)x_sk(?P<sk>[01])"
_Resolver = Callable[[re.Match, "float | None", "float | None"], tuple[int, float, float]]


def _resolve_resnet(m: re.Match, width: float | None, sk_ratio: float | None) -> tuple[int, float, float]:
    return int(m["depth"]), 1.0 if width is None else width, 0.0 if sk_ratio is None else sk_ratio


def _resolve_v2(m: re.Match, width: float | None, sk_ratio: float | None) -> tuple[int, float, float]:
    name = m.group(0)
    name_width, name_sk = float(m["width"]), m["sk"] == "1"
    # The config defaults (width 1, sk_ratio 0) defer to the name; any other disagreeing value is an error.
    if width is not None and width not in (1.0, name_width):
        raise SimCLRError(f"model.arch: {name} has width {name_width:g}x but width_multiplier={width:g}")
    if sk_ratio is None or (name_sk and sk_ratio == 0):
        sk_ratio = DEFAULT_SK_RATIO if name_sk else 0.0
    elif not name_sk and sk_ratio > 0:
        raise SimCLRError(f"model.arch: {name} has no Selective Kernels (sk0) but sk_ratio={sk_ratio:g}")
    return int(m["depth"]), name_width, sk_ratio


ENCODERS: dict[str, _Resolver] = {
    r"resnet(?P<depth>\d+)": _resolve_resnet,
    _V2_PATTERN: _resolve_v2,
}


def list_encoders() -> list[str]:
    """Every concrete name ``create_encoder`` accepts (``r{depth}_{w}x_sk{0|1}`` also takes other w)."""
    return [f"resnet{d}" for d in ARCHS] + V2_NAMES


def create_encoder(
    name: str,
    width: float | None = None,
    sk_ratio: float | None = None,
    cifar_stem: bool = False,
    se_ratio: float = 0.0,
    first_block_projection: bool = True,
) -> ResNet:
    """Build a ResNet encoder by name (timm-style registry); returns a :class:`ResNet` with ``out_dim``.

    Names: ``resnet{18,34,50,101,152,200}`` (width and ``sk_ratio`` from the keywords, default 1 and 0) and
    the SimCLRv2 names ``r{depth}_{w}x_sk{0|1}`` (e.g. ``r152_3x_sk1``), where ``sk1`` means
    ``sk_ratio = 0.0625`` unless a positive ``sk_ratio`` is given. With a v2 name, ``width=1`` and
    ``sk_ratio=0`` (the config defaults) defer to the name; other values that disagree raise.
    Selective Kernels need bottleneck blocks (depth >= 50); see :class:`~simclr.models.layers.SKConv2d`.
    ``first_block_projection`` (default True, the official layout): see :class:`ResNet`; it changes only
    ResNet-18/34.

    Raises :class:`SimCLRError` for unknown names and invalid widths or ratios.
    """
    key = name.strip().lower()
    for pattern, resolve in ENCODERS.items():
        m = re.fullmatch(pattern, key)
        if m is not None:
            depth, width, sk_ratio = resolve(m, width, sk_ratio)
            break
    else:
        raise SimCLRError(
            f"model.arch: unknown encoder {name!r}; valid names: {', '.join(list_encoders())} "
            "(or r{depth}_{width}x_sk{0|1} with another width)"
        )
    if depth not in ARCHS:
        raise SimCLRError(f"model.arch: {name!r} has depth {depth}; valid depths: {sorted(ARCHS)}")
    if not width > 0:
        raise SimCLRError(f"model.width_multiplier: must be > 0, got {width}")
    if sk_ratio < 0 or se_ratio < 0:
        raise SimCLRError(f"model.sk_ratio: ratios must be >= 0, got sk_ratio={sk_ratio}, se_ratio={se_ratio}")
    block, layers = ARCHS[depth]
    if sk_ratio > 0 and block is BasicBlock:
        # The official TF2 code silently keeps plain 3x3 convs in basic blocks (only the ResNet-D stem and
        # shortcuts change); refusing is clearer than an "SK" model without selective kernels.
        raise SimCLRError(
            f"model.sk_ratio: Selective Kernels need bottleneck blocks (depth >= 50), not {name!r}; "
            "use sk_ratio=0 or a ResNet-50/101/152"
        )
    return ResNet(
        block,
        layers,
        width,
        sk_ratio,
        se_ratio,
        bool(cifar_stem),
        arch_name=key,
        first_block_projection=bool(first_block_projection),
    )


def encoder_spec(encoder: ResNet) -> dict:
    """The keywords that rebuild ``encoder`` with :func:`create_encoder` (saved in exported encoders)."""
    return {
        "name": encoder.arch_name,
        "width": encoder.width,
        "sk_ratio": encoder.sk_ratio,
        "cifar_stem": encoder.cifar_stem,
        "se_ratio": encoder.se_ratio,
        "first_block_projection": encoder.first_block_projection,
    }


def encoder_from_spec(spec: dict) -> ResNet:
    """Rebuild an encoder from :func:`encoder_spec` keywords. A spec saved before
    ``first_block_projection`` existed describes the older layout (shortcuts projected only where the
    shape changes), so a missing key means False."""
    return create_encoder(**{"first_block_projection": False, **spec})
