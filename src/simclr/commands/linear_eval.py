"""``simclr linear-eval RUN``: a linear classifier on the frozen representation (fast or paper protocol)."""

from __future__ import annotations

import argparse
import dataclasses

from simclr.commands.common import add_eval_target, eval_target
from simclr.eval.linear import LinearOptions
from simclr.options import add_flags, from_args

NAME = "linear-eval"
HELP = "linear evaluation on frozen features (fast or paper protocol)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_eval_target(p)
    add_flags(p, LinearOptions)


def run(args: argparse.Namespace) -> int:
    from simclr.eval.linear import linear_eval_command

    options = from_args(LinearOptions, args)
    linear_eval_command(args.run, **eval_target(args), **dataclasses.asdict(options))
    return 0
