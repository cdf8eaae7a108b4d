"""Building blocks shared by the ResNet encoders: convs with the official init, stems, SK and SE.

Everything here follows the authors' TensorFlow code (google-research/simclr, ``resnet.py`` /
``tf2/resnet.py``) as summarised in SPEC-DETAILS section 2. Modules are created in the same order as the
TensorFlow layers so that a converter can assign ported variables in module order (SPEC-DETAILS 10.4).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# TF batch_norm_decay 0.9 is PyTorch momentum 0.1; BATCH_NORM_EPSILON = 1e-5 (SPEC-DETAILS 2.5).
BN_MOMENTUM = 0.1
BN_EPS = 1e-5

# Std of a unit normal truncated to [-2, 2]; TF's VarianceScaling divides by it so that the truncated
# distribution has the requested variance.
_TRUNC_STD = 0.87962566103423978


def scaled_channels(channels: int, width: float) -> int:
    """Channel count ``channels`` times the width multiplier, as an int of at least 1.

    Integer widths give exact products (the official code computes ``64 * width_multiplier``);
    fractional widths (0.25, 0.5 for CPU demos) round to the nearest int, so doubling the width doubles
    every count exactly whenever ``channels * width`` is an integer.
    """
    return max(1, int(round(channels * width)))


def variance_scaling_(weight: Tensor) -> Tensor:
    """TF ``VarianceScaling()`` init in place: truncated normal, fan-in, scale 1 (SPEC-DETAILS 2.1).

    This is LeCun/He-style fan-in scaling without the ReLU gain of 2; every conv is followed by BN, so the
    constant only changes the very first steps.
    """
    fan_in = weight[0].numel()  # in_channels / groups * kh * kw
    std = math.sqrt(1.0 / fan_in) / _TRUNC_STD
    # Inverse-CDF sampling of N(0, std^2) truncated to +-2 std: one pass, unlike the rejection sampler of
    # nn.init.trunc_normal_, which takes seconds on a 35M-parameter encoder.
    if weight.is_meta:  # shape-only models (parameter/MAC counting): nothing to sample
        return weight
    bound = math.erf(2.0 / math.sqrt(2.0))
    with torch.no_grad():
        weight.uniform_(-bound, bound).erfinv_().mul_(std * math.sqrt(2.0)).clamp_(-2.0 * std, 2.0 * std)
    return weight


def conv2d(in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """Conv with symmetric ``k // 2`` padding, no bias, official init.

    TF pads stride > 1 convs explicitly by ``(k - 1) // 2`` on both sides and uses SAME for stride 1; for
    the odd kernels used here both equal PyTorch ``padding=k // 2``.
    """
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2, bias=bias)
    variance_scaling_(conv.weight)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def batch_norm(channels: int, zero_init: bool = False) -> nn.BatchNorm2d:
    """BatchNorm2d with the official momentum/eps; ``zero_init`` starts gamma at 0 (last BN of a block)."""
    bn = nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)
    if zero_init:
        nn.init.zeros_(bn.weight)
    return bn


class ConvBNReLU(nn.Sequential):
    """conv -> BN -> ReLU (``relu=False`` drops the ReLU), the unit of every ResNet layer."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, relu: bool = True):
        layers: list[nn.Module] = [conv2d(in_ch, out_ch, kernel_size, stride), batch_norm(out_ch)]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class MaxPool2dSame(nn.Module):
    """3x3/2 max pool with TF 'SAME' padding (SPEC-DETAILS 2.1).

    TF pads ``total = max((ceil(H/s) - 1) * s + k - H, 0)`` with the smaller half first, so on even maps
    it pads 0 before and 1 after; PyTorch ``MaxPool2d(padding=1)`` would be shifted by one pixel, which
    matters for ported weights.
    """

    def __init__(self, kernel_size: int = 3, stride: int = 2):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def _pad(self, size: int) -> tuple[int, int]:
        total = max((math.ceil(size / self.stride) - 1) * self.stride + self.kernel_size - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: Tensor) -> Tensor:
        (top, bottom), (left, right) = self._pad(x.shape[-2]), self._pad(x.shape[-1])
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)


class AvgPoolShortcut(nn.Module):
    """ResNet-D projection shortcut: 2x2 average pool (stride s) -> 1x1 conv -> BN (SPEC-DETAILS 2.3).

    Used with SK (v2). Stride 2 pads 0 before / 1 after and pools VALID (a plain 2x2/2 average on even
    maps); stride 1 is a 2x2 'SAME' pool that, as in TF, averages only the cells inside the map.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = conv2d(in_ch, out_ch, 1)
        self.bn = batch_norm(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        padded = F.pad(x, (0, 1, 0, 1))
        x_pool = F.avg_pool2d(padded, 2, self.stride)
        if self.stride == 1:
            # Divide by the number of real (non-padded) cells in each window, not by 4.
            ones = F.pad(torch.ones_like(x[:1, :1]), (0, 1, 0, 1))
            x_pool = x_pool / F.avg_pool2d(ones, 2, 1)
        return self.bn(self.conv(x_pool))


class ConvShortcut(nn.Sequential):
    """Standard projection shortcut: 1x1 conv with stride s -> BN (no ReLU)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__(conv2d(in_ch, out_ch, 1, stride), batch_norm(out_ch))


class SKConv2d(nn.Module):
    """Selective-kernel conv of SimCLRv2 (v2 section 2; SPEC-DETAILS 2.4), replacing a bottleneck's 3x3.

    One 3x3 conv (stride s) makes ``2 * channels`` maps -> BN -> ReLU, split into two streams of
    ``channels`` (both 3x3: the official code has no dilated/5x5 branch, unlike SKNet). The fusion path
    global-average-pools stream1 + stream2, reduces with a 1x1 conv to ``max(int(channels * sk_ratio), 32)``
    -> BN -> ReLU, expands with a 1x1 conv to ``2 * channels``, and a softmax across the two streams gives
    per-channel mixing weights. Output: the weighted sum, (B, channels, H/s, W/s); no BN follows it.
    """

    def __init__(self, in_ch: int, channels: int, stride: int, sk_ratio: float, min_dim: int = 32):
        super().__init__()
        self.channels = channels
        mid = max(int(channels * sk_ratio), min_dim)
        self.streams = ConvBNReLU(in_ch, 2 * channels, 3, stride)
        self.fuse = ConvBNReLU(channels, mid, 1)  # input: the pooled sum of the two streams
        self.mix = conv2d(mid, 2 * channels, 1)

    def forward_with_attention(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(out, attention)``; ``attention`` is (B, 2, channels), summing to 1 over dim 1."""
        b = x.shape[0]
        streams = self.streams(x)
        streams = streams.view(b, 2, self.channels, *streams.shape[-2:])  # (B, 2, C, H, W)
        pooled = streams.sum(dim=1).mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        logits = self.mix(self.fuse(pooled)).view(b, 2, self.channels)  # (B, 2, C)
        attention = logits.softmax(dim=1)
        out = (streams * attention[..., None, None]).sum(dim=1)
        return out, attention

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_attention(x)[0]


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation gate (official ``se_ratio``, off in all releases; SPEC-DETAILS 2.4).

    Global average pool -> 1x1 conv to ``max(1, int(filters * se_ratio))`` (with bias) -> ReLU -> 1x1 conv
    back to ``channels`` (with bias) -> sigmoid, multiplied into the input. ``filters`` is the block's
    base width f (not 4f), as in the official code.
    """

    def __init__(self, channels: int, filters: int, se_ratio: float):
        super().__init__()
        mid = max(1, int(filters * se_ratio))
        self.reduce = conv2d(channels, mid, 1, bias=True)
        self.expand = conv2d(mid, channels, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(s))))


def make_stem(width: float, sk: bool, cifar_stem: bool) -> tuple[nn.Sequential, int]:
    """The stem and its output channels (SPEC-DETAILS 2.2).

    - CIFAR (v1 appendix B.9): 3x3/1 conv (64w) -> BN-ReLU, no max pool; replaces either ImageNet stem.
    - ImageNet: 7x7/2 conv (64w) -> BN-ReLU -> 3x3/2 max pool (output stride 4).
    - ImageNet with SK (ResNet-D): 3x3/2 (32w) -> 3x3 (32w) -> 3x3 (64w), each BN-ReLU, then max pool.
    """
    out_ch = scaled_channels(64, width)
    if cifar_stem:
        return nn.Sequential(ConvBNReLU(3, out_ch, 3, 1)), out_ch
    if sk:
        half = scaled_channels(32, width)
        layers = [ConvBNReLU(3, half, 3, 2), ConvBNReLU(half, half, 3, 1), ConvBNReLU(half, out_ch, 3, 1)]
    else:
        layers = [ConvBNReLU(3, out_ch, 7, 2)]
    return nn.Sequential(*layers, MaxPool2dSame(3, 2)), out_ch
