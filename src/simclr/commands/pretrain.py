"""``simclr pretrain``: contrastive pretraining (SimCLR v1/v2), resumable; ``--dry-run`` measures first."""

from __future__ import annotations

import argparse

from simclr.commands.common import add_config_arguments, explicit_overrides, resolve_config
from simclr.errors import SimCLRError

NAME = "pretrain"
HELP = "contrastive pretraining (SimCLR v1/v2)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--out", help="run folder (config.yaml, metrics.jsonl, checkpoints/last.pt)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--dry-run", action="store_true", help="measure a few steps: memory, speed, largest batch")


def run(args: argparse.Namespace) -> int:
    from simclr.config import dump_config, load_config

    if args.resume and not (args.print_config or args.dry_run):
        if not args.out:
            raise SimCLRError("simclr pretrain: --resume needs --out RUN_DIR")
        from simclr.engine import pretrain

        # The run's own config; a preset or config file (with its --set) given here is only checked against it.
        overrides = explicit_overrides(args)
        if args.preset or args.config:
            given, overrides = load_config(preset=args.preset, path=args.config, overrides=overrides), []
        else:
            given = None
        summary = pretrain(given, args.out, resume=True, overrides=overrides)
        return 130 if summary.get("status") == "interrupted" else 0
    cfg = resolve_config(args)
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    if args.dry_run:
        from simclr.dryrun import dry_run

        dry_run(cfg)
        return 0
    if not args.out:
        raise SimCLRError("simclr pretrain: --out RUN_DIR is required")
    from simclr.engine import pretrain

    summary = pretrain(cfg, args.out)
    return 130 if summary.get("status") == "interrupted" else 0
