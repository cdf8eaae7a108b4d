"""``simclr predict RUN --data PATH --out FILE.csv``: class predictions of a run with a classifier."""

from __future__ import annotations

import argparse

NAME = "predict"
HELP = "class predictions of a classifier run, as CSV"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="folder with finetuned.pt (finetune/distill output, imported checkpoint) or the file")
    p.add_argument("--data", required=True, help="images to classify (a folder, or a dataset path)")
    p.add_argument("--dataset", help="dataset kind (default: detected from --data)")
    p.add_argument("--split", help="split of --data (default: the folder itself, or test)")
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--top-k", type=int, default=5, help="classes per image (>= 1)")
    p.add_argument("--batch-size", type=int, default=128, help="images per batch (>= 1)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")


def run(args: argparse.Namespace) -> int:
    from simclr.predict import predict_command

    return predict_command(
        args.run, args.data, args.out, args.dataset, args.split, args.top_k, args.batch_size, args.device
    )
