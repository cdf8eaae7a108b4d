"""``simclr knn RUN``: weighted k-nearest-neighbour accuracy of the frozen representation."""

from __future__ import annotations

import argparse
import dataclasses

from simclr.commands.common import add_eval_target, eval_target
from simclr.eval.knn import KnnOptions
from simclr.options import add_flags, from_args

NAME = "knn"
HELP = "weighted kNN evaluation on frozen features"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_eval_target(p)
    add_flags(p, KnnOptions)


def run(args: argparse.Namespace) -> int:
    from simclr.eval.knn import knn_command

    knn_command(args.run, **eval_target(args), **dataclasses.asdict(from_args(KnnOptions, args)))
    return 0
