"""Where and how code runs, decided once for every stage: the device, the precision policy, progress output.

- :func:`resolve_device`: ``auto`` is the rank's CUDA device when there is one, else the CPU; a device that
  does not exist here is one line, not a torch traceback.
- :func:`autocast`: bf16 autocast on CUDA (``precision="auto"`` or ``"bf16"``), float32 elsewhere; every
  stage that runs the network (pretraining, evaluation, fine-tuning, distillation) uses it, and the maths
  that must stay float32 (the loss, the augmentation) switches it off locally.
- :func:`progress`: a tqdm bar with rate and ETA on a terminal, a plain line every 30 seconds otherwise (so
  a long stage in a log file is never silent for minutes).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any

import torch

from simclr.errors import SimCLRError

PRECISIONS = ("auto", "bf16", "fp32")


def resolve_device(name: str | torch.device, dist: Any | None = None) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; under torchrun with several ranks, the rank's device.

    ``dist`` is a :class:`~simclr.distributed.DistInfo` (or None). An unknown name or an unavailable CUDA
    device is a :class:`SimCLRError`.
    """
    if dist is not None and dist.world_size > 1:
        return dist.device
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise SimCLRError(f"device {name!r}: unknown; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SimCLRError(f"device {name}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SimCLRError(f"device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise SimCLRError(f"device {name}: only cpu and cuda devices are supported")
    return dev


def use_bf16(precision: str, device: torch.device) -> bool:
    """The precision policy: bf16 autocast for ``bf16``, and for ``auto`` on CUDA; float32 otherwise."""
    if precision not in PRECISIONS:
        raise SimCLRError(f"precision {precision!r}: use {', '.join(PRECISIONS)}")
    return precision == "bf16" or (precision == "auto" and torch.device(device).type == "cuda")


def autocast(device: torch.device, precision: str = "auto"):
    """A context manager for the forward passes of a stage under :func:`use_bf16`'s policy."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16(precision, device) else nullcontext()


def set_kernel_flags(device: torch.device, deterministic: bool = False) -> None:
    """The process's kernel choices for training on ``device``: cuDNN autotuning (off in deterministic mode)
    and TF32 for convolutions only (matmul TF32 would also reach NT-Xent's logits: 10 mantissa bits, about
    1e-2 logit error at tau 0.1, and every later stage of the process). Deterministic mode also asks torch
    for deterministic algorithms and, on CUDA, a fixed cuBLAS workspace."""
    import os

    if deterministic:
        if torch.device(device).type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.allow_tf32 = True


class _LineBar:
    """tqdm's counters and ETA, written as a full line per update (log files have no carriage returns)."""

    def __new__(cls, *args: Any, **kwargs: Any):
        from tqdm import tqdm

        class LineTqdm(tqdm):
            def display(self, msg: str | None = None, pos: int | None = None) -> bool:
                self.fp.write((msg or self.__str__()).strip() + "\n")
                self.fp.flush()
                return True

        return LineTqdm(*args, **kwargs)


def progress(
    iterable: Iterable | None = None,
    total: int | None = None,
    desc: str | None = None,
    unit: str = "it",
    initial: int = 0,
    enabled: bool | None = True,
    interval: float = 30.0,
):
    """A progress bar on stderr: tqdm on a terminal; otherwise a line every ``interval`` seconds, the first
    after ``interval`` seconds (a short loop prints nothing).

    ``enabled=False`` (e.g. ranks other than 0) shows nothing; None counts as True. Use as tqdm (iterate,
    ``update``, ``set_postfix``, ``write``, ``close``).
    """
    from tqdm import tqdm

    common = dict(total=total, desc=desc, unit=unit, initial=initial, disable=enabled is False, file=sys.stderr)
    if sys.stderr.isatty():
        return tqdm(iterable, dynamic_ncols=True, mininterval=1.0, leave=False, **common)
    return _LineBar(iterable, mininterval=interval, maxinterval=interval, delay=interval, leave=True, **common)


__all__ = ["PRECISIONS", "autocast", "progress", "resolve_device", "set_kernel_flags", "use_bf16"]
