"""Evaluation cards: what was measured, on what, with which weights and on which machine.

Every protocol writes ``metrics.json`` = its results plus a ``card`` (protocol, dataset, split, label
fraction and subset hash, seed, epochs, batch size, checkpoint SHA-256, device, hardware, library and torch
versions, wall-clock time), so a number can be traced back to exactly what produced it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

# What a results table shows of a card (the pipeline's results.json, the report's card tables).
SUMMARY_FIELDS = (
    "protocol",
    "dataset",
    "split",
    "label_fraction",
    "subset_hash",
    "seed",
    "epochs",
    "batch_size",
    "checkpoint_sha256",
    "device",
    "wall_clock_s",
    "date_utc",
)
# Every card has these: the summary's fields (date last) and where and with what it ran.
REQUIRED_FIELDS = (*SUMMARY_FIELDS[:-1], "hardware", "library_version", "torch_version", "date_utc")


def cpu_model() -> str:
    """The CPU's marketing name (from /proc/cpuinfo on Linux), or what ``platform`` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def hardware_info(device: str | torch.device) -> dict[str, Any]:
    """CPU model, GPU name (when the device is CUDA), thread count and host platform."""
    dev = torch.device(device)
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    if dev.type == "cuda" and torch.cuda.is_available():
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        info["gpu"] = torch.cuda.get_device_name(index)
        info["cuda"] = torch.version.cuda
    else:
        info["gpu"] = None
    return info


def evaluation_card(
    protocol: str,
    dataset: str,
    split: str,
    label_fraction: float | None,
    subset_hash: str | None,
    seed: int,
    epochs: int | None,
    batch_size: int | None,
    checkpoint_sha256: str | None,
    device: str | torch.device,
    wall_clock_s: float,
    **extra: Any,
) -> dict[str, Any]:
    """The card stored beside every result (all fields of :data:`REQUIRED_FIELDS`, then ``extra``).

    ``label_fraction`` is the share of the train split whose labels were used (1.0 for linear eval and
    kNN); ``subset_hash`` is :func:`simclr.eval.subsets.subset_hash` of the labelled indices (None when all
    labels are used); ``checkpoint_sha256`` is None for a model trained from scratch.
    """
    from simclr import __version__

    card: dict[str, Any] = {
        "protocol": protocol,
        "dataset": dataset,
        "split": split,
        "label_fraction": label_fraction,
        "subset_hash": subset_hash,
        "seed": seed,
        "epochs": epochs,
        "batch_size": batch_size,
        "checkpoint_sha256": checkpoint_sha256,
        "device": str(device),
        "wall_clock_s": round(float(wall_clock_s), 3),
        "hardware": hardware_info(device),
        "library_version": __version__,
        "torch_version": torch.__version__,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    card.update(extra)
    return card


def _plain(value: Any) -> Any:
    """JSON-safe copy: tensors and numpy scalars become numbers, tuples lists, NaN/inf strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _plain(value.tolist())
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON via a temporary file and ``os.replace``: never half a file."""
    from simclr.files import write_text

    return write_text(path, json.dumps(_plain(obj), indent=2) + "\n")


def write_metrics(out_dir: str | os.PathLike, result: dict[str, Any]) -> Path:
    """Write ``result`` (which carries its ``card``) to ``out_dir/metrics.json`` atomically."""
    if "card" not in result:
        raise ValueError("a result written to metrics.json must carry its evaluation card")
    return write_json_atomic(Path(out_dir) / "metrics.json", result)
