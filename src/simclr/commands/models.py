"""``simclr models``: the encoder zoo, parameters and GFLOPs against the SimCLRv2 paper."""

from __future__ import annotations

import argparse

NAME = "models"
HELP = "the encoder zoo: parameters and GFLOPs against the SimCLRv2 paper"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resolution", type=int, default=224, help="input side for the GFLOPs column")
    p.add_argument("--no-flops", action="store_true", help="skip the GFLOPs column (faster)")


def run(args: argparse.Namespace) -> int:
    from simclr.errors import SimCLRError
    from simclr.models.zoo import format_model_table, model_table

    if args.resolution < 1:
        raise SimCLRError(f"--resolution: must be >= 1, got {args.resolution}")
    print(format_model_table(model_table(resolution=args.resolution, flops=not args.no_flops)))
    return 0
