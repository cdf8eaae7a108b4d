"""``simclr export RUN``: the encoder as safetensors + JSON (and ONNX)."""

from __future__ import annotations

import argparse

NAME = "export"
HELP = "encoder as safetensors + JSON (and ONNX with --onnx)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="pretraining run folder or checkpoint")
    p.add_argument("--out", help="export folder (default: RUN/export)")
    p.add_argument("--onnx", action="store_true", help="also write encoder.onnx (needs the onnx package)")


def run(args: argparse.Namespace) -> int:
    from simclr.export import export_command

    return export_command(args.run, out=args.out, onnx=args.onnx)
