"""The `simclr` command: the list of sub-commands (:mod:`simclr.commands`) and the one error path.

A :class:`~simclr.errors.SimCLRError` is printed as one line, ``error: <file or key>: <problem>``, with exit
status 2. Ctrl-C during pretraining saves a checkpoint first (exit status 130).
"""

from __future__ import annotations

import argparse
import os
import sys

from simclr import __version__
from simclr.errors import SimCLRError


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per module of :data:`simclr.commands.COMMANDS`."""
    from simclr.commands import COMMANDS

    parser = argparse.ArgumentParser(
        prog="simclr", description="SimCLR / SimCLRv2: pretrain, evaluate, fine-tune, distill."
    )
    parser.add_argument("--version", action="version", version=f"simclr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(command.NAME, help=command.HELP, description=command.HELP)
        command.add_arguments(p)
        p.set_defaults(handler=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)  # a flag's parser may raise SimCLRError (e.g. --fractions 0%)
        if args.command is None:
            parser.print_help()
            return 0
        code = args.handler(args) or 0
    except SimCLRError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
