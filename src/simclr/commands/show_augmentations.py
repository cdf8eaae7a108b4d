"""``simclr show-augmentations``: a PNG grid of image / view 1 / view 2 for a preset and data."""

from __future__ import annotations

import argparse

from simclr.commands.common import add_config_arguments

NAME = "show-augmentations"
HELP = "PNG grid of image / view 1 / view 2 for a preset and data"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--out", default="augmentations.png")
    p.add_argument("-n", type=int, default=8, help="number of images (rows, >= 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="train")


def run(args: argparse.Namespace) -> int:
    from simclr.preview import show_augmentations_command

    return show_augmentations_command(
        preset=args.preset, config=args.config, data=args.data, dataset=args.dataset, out=args.out, n=args.n,
        overrides=args.overrides, seed=args.seed, split=args.split,
    )  # fmt: skip
