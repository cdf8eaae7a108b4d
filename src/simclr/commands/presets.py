"""``simclr presets``: the shipped presets, one line each."""

from __future__ import annotations

import argparse

NAME = "presets"
HELP = "list the shipped presets"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from simclr.config import available_presets, load_config

    for name in available_presets():
        c = load_config(preset=name)
        print(
            f"{name:16s} {c.data.dataset:14s} {c.model.arch} x{c.model.width_multiplier:g} head {c.model.head_layers} "
            f"batch {c.train.batch_size} epochs {c.train.epochs} tau {c.loss.temperature} s {c.augment.color_strength}"
        )
    return 0
