"""``simclr distill --teacher FT_DIR``: open the teacher's dataset, run :func:`simclr.distill.distill` in its
output folder and print one line (re-exported as ``simclr.distill.distill_command``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from simclr.errors import SimCLRError
from simclr.files import folder_lock
from simclr.options import validate


def distill_command(
    teacher: str,
    student: str | None = None,
    student_width: float | None = None,
    student_init: str = "scratch",
    data: str | None = None,
    dataset: str | None = None,
    unlabeled_split: str = "train",
    out: str | None = None,
    device: str = "auto",
    resume: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """``simclr distill --teacher FT_DIR [--student ARCH] [--student-init scratch|RUN]``.

    Reads the teacher's dataset (``data`` / ``dataset`` override it): the ``unlabeled_split`` images (labels
    dropped when ``alpha = 1``) and the test split. ``options`` are :class:`~simclr.distill.DistillOptions`
    fields. ``out`` defaults to ``FT_DIR/distill-<student>``. Prints one line; returns
    :func:`~simclr.distill.distill`'s dict.
    """
    from simclr.checkpoint import load_pretrained
    from simclr.data.access import open_split, without_labels
    from simclr.distill import DistillOptions, Teacher, distill  # here: simclr.distill re-exports this module
    from simclr.runtime import resolve_device

    o = validate(DistillOptions(student_arch=student, student_width=student_width, **options))
    dev = resolve_device(device)
    t = Teacher(teacher, dev)
    d = t.net.config.data
    name = dataset or d.dataset
    root = data if data is not None else (d.path if name == d.dataset else None)
    kw = dict(in_memory=d.in_memory, download=d.download, max_bad_fraction=d.max_bad_fraction)
    train = open_split(name, root, unlabeled_split, d.image_size, **kw)
    test = open_split(name, root, d.test_split, d.image_size, **kw)
    if test.labels is None:
        raise SimCLRError(f"{test.source}: the test split has no labels to evaluate with")
    if o.alpha >= 1:  # distillation alone: the train labels are dropped, so nothing can read them
        train = without_labels(train)
    elif unlabeled_split != "train":
        raise SimCLRError("alpha < 1 needs --unlabeled-split train (the split the teacher's labels index)")
    init = None if student_init == "scratch" else load_pretrained(student_init, dev)
    if out is None:
        tag = f"{student or t.net.config.model.arch}-w{student_width or 'same'}" if student or student_width else "self"
        out = str(t.path.parent / f"distill-{re.sub(r'[^A-Za-z0-9.-]+', '_', tag)}")
    with folder_lock(out, "distillation folder"):
        result = distill(t, train, test, o, init, dev, out, resume=resume, dataset=name)
    print(
        f"distill ({'self' if result['self_distillation'] else 'big-to-small'}, {result['student']['arch']} "
        f"x{result['student']['width_multiplier']:g}, tau {result['temperature']:g}, alpha {result['alpha']:g}, "
        f"{result['epochs']} epochs on {result['n_unlabeled']} images): top-1 {result['top1']:.2f} %  "
        f"top-5 {result['top5']:.2f} %  (teacher {result['teacher']['top1']}) -> {Path(out) / 'metrics.json'}"
    )
    return result


__all__ = ["distill_command"]
