"""``simclr pipeline``: pretrain -> linear eval -> fine-tune + baseline -> distill -> results table."""

from __future__ import annotations

import argparse
import dataclasses

from simclr.commands.common import add_config_arguments, resolve_config
from simclr.options import add_flags, from_args
from simclr.pipeline import PipelineOptions

NAME = "pipeline"
HELP = "pretrain -> linear eval -> fine-tune + baseline -> distill -> table"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--out", help="pipeline folder (one sub-folder per stage, results.md)")
    add_flags(p, PipelineOptions)


def run(args: argparse.Namespace) -> int:
    from simclr.pipeline import pipeline_command

    options = from_args(PipelineOptions, args)
    return pipeline_command(resolve_config(args), args.out, **dataclasses.asdict(options))
