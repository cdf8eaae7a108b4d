"""``simclr bench``: pretraining speed and memory against the bare step and a PIL DataLoader pipeline."""

from __future__ import annotations

import argparse

NAME = "bench"
HELP = "measure pretraining speed and memory (vs the bare step and a PIL pipeline)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from simclr.bench import add_bench_arguments

    add_bench_arguments(p)


def run(args: argparse.Namespace) -> int:
    from simclr.bench import bench_from_args

    return bench_from_args(args)
