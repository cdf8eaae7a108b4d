"""``simclr finetune RUN --labels 1%``: semi-supervised fine-tuning, or the supervised baseline from scratch."""

from __future__ import annotations

import argparse
import dataclasses

from simclr.commands.common import add_eval_target, eval_target
from simclr.eval.finetune import FinetuneOptions
from simclr.options import add_flags, from_args

NAME = "finetune"
HELP = "semi-supervised fine-tuning on a label subset"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_eval_target(p)
    add_flags(p, FinetuneOptions)


def run(args: argparse.Namespace) -> int:
    from simclr.eval.finetune import finetune_command

    finetune_command(args.run, **eval_target(args), **dataclasses.asdict(from_args(FinetuneOptions, args)))
    return 0
