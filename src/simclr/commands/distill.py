"""``simclr distill --teacher FT_DIR``: a fine-tuned teacher's probabilities taught to a student (v2 stage 3)."""

from __future__ import annotations

import argparse
import dataclasses

from simclr.distill import DistillOptions
from simclr.options import add_flags, from_args

NAME = "distill"
HELP = "distil a fine-tuned teacher into a student on unlabeled images (v2)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True, help="fine-tune output folder (or its finetuned.pt)")
    p.add_argument("--student-init", default="scratch", help="scratch, or a pretraining RUN to start from")
    p.add_argument("--unlabeled-split", default="train", help="split of unlabeled images (stl10: unlabeled)")
    p.add_argument("--data", help="dataset path (default: the teacher's)")
    p.add_argument("--dataset", help="dataset kind (default: the teacher's)")
    p.add_argument("--out", help="output folder (default: TEACHER/distill-<student>)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    add_flags(p, DistillOptions)


def run(args: argparse.Namespace) -> int:
    from simclr.distill import distill_command

    o = dataclasses.asdict(from_args(DistillOptions, args))
    student, width = o.pop("student_arch"), o.pop("student_width")
    distill_command(
        args.teacher, student=student, student_width=width, student_init=args.student_init, data=args.data,
        dataset=args.dataset, unlabeled_split=args.unlabeled_split, out=args.out, device=args.device,
        resume=args.resume, **o,
    )  # fmt: skip
    return 0
