"""``simclr import-tf CKPT --out RUN``: an official SimCLR v1/v2 TensorFlow checkpoint as a run folder."""

from __future__ import annotations

import argparse

NAME = "import-tf"
HELP = "import an official SimCLR v1/v2 TensorFlow checkpoint as a run folder"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("ckpt", help="checkpoint prefix (.../model.ckpt-250228) or folder with a 'checkpoint' file")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--ema", action="store_true", help="import the ema_model/ copy (v2 pretrained checkpoints)")
    p.add_argument("--from-head-layer", type=int, help="projection layers under the classifier (default: by folder)")
    p.add_argument("--ignore", action="append", default=[], metavar="REGEX", help="skip matching variables")
    p.add_argument("--data", help="dataset path to record in the run's config (e.g. an ImageNet folder)")
    p.add_argument("--dataset", help="dataset kind to record (default: folder)")


def run(args: argparse.Namespace) -> int:
    from simclr.tfimport.run import import_tf_command

    return import_tf_command(args.ckpt, args.out, args.ema, args.from_head_layer, args.ignore, args.data, args.dataset)
