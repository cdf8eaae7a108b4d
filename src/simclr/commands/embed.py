"""``simclr embed RUN --out FILE``: embeddings (h or z) with names and labels, to .npy + .csv."""

from __future__ import annotations

import argparse

NAME = "embed"
HELP = "write embeddings (h or z) with names and labels to .npy + .csv"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="pretraining run folder or checkpoint")
    p.add_argument("--data", help="dataset path (default: the run's)")
    p.add_argument("--dataset", help="dataset kind (default: the run's)")
    p.add_argument("--split", default="train")
    p.add_argument("--out", required=True, help="output file stem (FILE.npy, FILE.csv)")
    p.add_argument("--which", choices=["h", "z"], default="h", help="representation h or projection z")
    p.add_argument("--batch-size", type=int, default=256, help="images per batch (>= 1)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")


def run(args: argparse.Namespace) -> int:
    from simclr.embed import embed_command

    return embed_command(
        args.run, data=args.data, dataset=args.dataset, out=args.out, which=args.which,
        batch_size=args.batch_size, device=args.device, split=args.split,
    )  # fmt: skip
