"""Projection head g(.) and the SimCLR model (v1 section 2.1, v2 section 2; SPEC section 4).

The head follows the authors' code (``model_util.py`` / ``tf2/model.py``, SPEC-DETAILS 3.1): every layer
is Linear without bias (init N(0, 0.01^2)) followed by 1-D BN; hidden layers have BN with beta and a ReLU,
the last layer has BN without beta (no centering) and no ReLU. v1 uses ``num_layers=2`` (one hidden
layer; the original v1 code has the same last-layer BN), v2 uses ``num_layers=3``. The v1 paper describes
a plain last Linear with bias instead; ``last_bn=False`` builds that variant.
"""

from __future__ import annotations

from torch import Tensor, nn

from simclr.models.layers import BN_EPS, BN_MOMENTUM


def _linear(in_dim: int, out_dim: int, bias: bool) -> nn.Linear:
    linear = nn.Linear(in_dim, out_dim, bias=bias)
    nn.init.normal_(linear.weight, std=0.01)  # official dense init
    if bias:
        nn.init.zeros_(linear.bias)
    return linear


def batch_norm_1d(dim: int, center: bool = True) -> nn.BatchNorm1d:
    """BatchNorm1d with the official momentum/eps; ``center=False`` keeps gamma only (beta fixed at 0).

    The beta is a frozen zero parameter rather than absent so that ``SyncBatchNorm`` conversion and
    type-based optimizer grouping treat it like any BN; it has ``requires_grad=False`` and stays 0.
    """
    bn = nn.BatchNorm1d(dim, eps=BN_EPS, momentum=BN_MOMENTUM)
    if not center:
        bn.bias.requires_grad_(False)
    return bn


class ProjectionHead(nn.Module):
    """MLP g mapping h (B, in_dim) to z (B, out_dim) with ``num_layers`` linear layers.

    ``num_layers - 1`` hidden layers Linear(no bias) -> BN -> ReLU of width ``hidden_dim`` (default
    ``in_dim``, as in the official code), then Linear(no bias) -> BN without beta (``last_bn=True``, the
    official code) or Linear with bias (``last_bn=False``, the v1 paper's description).
    ``num_layers=0`` is the identity (official mode "none": the loss is applied on h).

    ``forward(h, layers=k)`` returns the output of the first k layers, each taken after its ReLU:
    k = 0 is h itself, k = 1 is the first hidden layer (what SimCLRv2 fine-tunes from), k = num_layers
    (or None, or -1) is z. This is the official ``ft_proj_selector`` indexing [h, out_1, ..., out_L].
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int | None = None,
        out_dim: int = 128,
        num_layers: int = 2,
        last_bn: bool = True,
    ):
        super().__init__()
        if num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers}")
        hidden_dim = hidden_dim or in_dim
        self.in_dim, self.num_layers = in_dim, num_layers
        self.out_dim = out_dim if num_layers > 0 else in_dim
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Sequential(_linear(dim, hidden_dim, False), batch_norm_1d(hidden_dim), nn.ReLU()))
            dim = hidden_dim
        if num_layers > 0:
            if last_bn:
                layers.append(nn.Sequential(_linear(dim, out_dim, False), batch_norm_1d(out_dim, center=False)))
            else:
                layers.append(nn.Sequential(_linear(dim, out_dim, True)))
        self.layers = nn.ModuleList(layers)

    def forward(self, h: Tensor, layers: int | None = None) -> Tensor:
        """(B, in_dim) -> (B, out_dim) projection z, or the k-th layer's output when ``layers=k``."""
        k = self.num_layers if layers is None or layers == -1 else layers
        if not 0 <= k <= self.num_layers:
            raise ValueError(f"layers must be in 0..{self.num_layers} (or -1/None for z), got {layers}")
        for layer in self.layers[:k]:
            h = layer(h)
        return h

    def layer_dim(self, k: int) -> int:
        """Width of ``forward(h, layers=k)``: in_dim for k = 0, hidden_dim for hidden layers, else out_dim."""
        if k == 0:
            return self.in_dim
        return self.layers[k - 1][0].out_features


class SimCLRModel(nn.Module):
    """Encoder f and projection head g: ``forward(x) -> (h, z)`` with h = f(x), z = g(h) (v1 section 2.1)."""

    def __init__(self, encoder: nn.Module, head: ProjectionHead):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, H, W) views -> (h (B, encoder.out_dim), z (B, head.out_dim))."""
        h = self.encoder(x)
        return h, self.head(h)

    def features(self, x: Tensor, head_layers: int = 0) -> Tensor:
        """Representation for evaluation: h (``head_layers=0``) or the output of the first k head layers."""
        return self.head(self.encoder(x), layers=head_layers)
