"""``simclr report RUN``: an HTML page of plots (training curves, embeddings, retrieval, health, results)."""

from __future__ import annotations

import argparse

NAME = "report"
HELP = "HTML report with plots: training curves, embeddings, retrieval, health"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="pretraining run folder or pipeline folder")
    p.add_argument("--out", help="report folder (default: RUN/report)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--max-images", type=int, default=1000, help="test images embedded for the plots (>= 1)")


def run(args: argparse.Namespace) -> int:
    from simclr.errors import SimCLRError
    from simclr.report import report_command

    if args.max_images < 1:
        raise SimCLRError(f"--max-images: must be >= 1, got {args.max_images}")
    return report_command(args.run, out=args.out, device=args.device, max_images=args.max_images)
