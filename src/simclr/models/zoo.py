"""The model zoo table behind ``simclr models``: parameters and multiply-adds of every named encoder.

Models are built on the ``meta`` device, so even R152-3x+SK (795M parameters) costs no memory or time.
The paper column is SimCLRv2 Table 1 (encoder alone, millions). The paper counts TensorFlow variables,
which include the BatchNorm moving mean and variance: counted that way, all 13 rows round to the
paper's integers exactly, while trainable parameters alone give e.g. 232.25M for R152-2x (paper 233).
"""

from __future__ import annotations

import torch
from torch import nn

from simclr.models.resnet import V2_NAMES, create_encoder

# SimCLRv2 Table 1 (= README), encoder alone, millions of parameters (SPEC-DETAILS 11.2).
PAPER_PARAMS_M: dict[str, float] = {
    "r50_1x_sk0": 24,
    "r50_1x_sk1": 35,
    "r50_2x_sk0": 94,
    "r50_2x_sk1": 140,
    "r101_1x_sk0": 43,
    "r101_1x_sk1": 65,
    "r101_2x_sk0": 170,
    "r101_2x_sk1": 257,
    "r152_1x_sk0": 58,
    "r152_1x_sk1": 89,
    "r152_2x_sk0": 233,
    "r152_2x_sk1": 354,
    "r152_3x_sk1": 795,
}

TABLE_NAMES = ("resnet18", "resnet34", *V2_NAMES)


def count_params(module: nn.Module) -> tuple[int, int]:
    """``(params, tf_variables)``: all parameters, and the same plus BN moving mean/variance (TF's count).

    Frozen parameters (the head's fixed-zero BN beta) are included; ``num_batches_tracked`` is not.
    """
    params = sum(p.numel() for p in module.parameters())
    stats = sum(b.numel() for name, b in module.named_buffers() if name.endswith(("running_mean", "running_var")))
    return params, params + stats


def count_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of all Conv2d and Linear layers for one forward pass of a batch of ``input_shape``.

    Counted with forward hooks on a ``meta``-device copy of the input (no compute is done; ``module``
    must live on the meta device or be cheap to run). Conv: output elements x (in/groups) x kh x kw;
    Linear: output elements x in_features. BN, pooling, additions and the SK softmax are not counted,
    as is usual for the "FLOPs" quoted in ResNet papers (which are multiply-adds).
    """
    total = 0

    def hook(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            per_out = mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
        else:
            per_out = mod.in_features
        total += output.numel() * per_out

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    device = next(module.parameters()).device
    was_training = module.training
    try:
        module.eval()  # BN in inference mode: no batch statistics needed, any batch size works
        with torch.no_grad():
            module(torch.zeros(input_shape, device=device))
    finally:
        module.train(was_training)
        for h in handles:
            h.remove()
    return total


def model_table(resolution: int = 224, names: tuple[str, ...] = TABLE_NAMES, flops: bool = True) -> list[dict]:
    """One row per encoder: parameters (encoder alone, no FC), the paper's figure, and GMACs.

    Row keys: ``name``, ``out_dim``, ``params_m`` (parameters, millions), ``tf_params_m`` (plus BN moving
    statistics, as the paper counts), ``paper_params_m`` (None where the paper has no row),
    ``rel_diff`` ((tf_params_m - paper) / paper, or None), ``gmacs`` (multiply-adds in billions for one
    ``resolution`` px image with the ImageNet stem; ResNet papers call these "FLOPs"; None when
    ``flops=False``, which skips the meta-device forward passes).
    """
    rows = []
    for name in names:
        with torch.device("meta"):
            encoder = create_encoder(name)
        params, tf_vars = count_params(encoder)
        paper = PAPER_PARAMS_M.get(name)
        rows.append(
            {
                "name": name,
                "out_dim": encoder.out_dim,
                "params_m": params / 1e6,
                "tf_params_m": tf_vars / 1e6,
                "paper_params_m": paper,
                "rel_diff": None if paper is None else (tf_vars / 1e6 - paper) / paper,
                "gmacs": count_macs(encoder, (1, 3, resolution, resolution)) / 1e9 if flops else None,
            }
        )
    return rows


def format_model_table(rows: list[dict], resolution: int = 224) -> str:
    """Plain-text table of :func:`model_table` rows for the ``simclr models`` command."""
    header = f"{'name':<13} {'h dim':>6} {'params M':>9} {'TF vars M':>10} {'paper M':>8} {'diff':>7} {'GMACs':>7}"
    lines = [header, "-" * len(header)]
    for r in rows:
        paper = "-" if r["paper_params_m"] is None else f"{r['paper_params_m']:g}"
        diff = "-" if r["rel_diff"] is None else f"{100 * r['rel_diff']:+.1f}%"
        gmacs = "-" if r["gmacs"] is None else f"{r['gmacs']:.2f}"
        lines.append(
            f"{r['name']:<13} {r['out_dim']:>6} {r['params_m']:>9.2f} {r['tf_params_m']:>10.2f} "
            f"{paper:>8} {diff:>7} {gmacs:>7}"
        )
    lines.append(
        f"params: encoder alone (no FC). TF vars: params + BN moving mean/variance, what SimCLRv2 Table 1 "
        f"counts. GMACs: multiply-adds at {resolution} px (papers call these FLOPs; FLOPs = 2 x MACs)."
    )
    return "\n".join(lines)
