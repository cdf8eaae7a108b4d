"""Label subsets for semi-supervised fine-tuning (v1 section 7 / B.5, v2 section 3: 1 % and 10 % of labels).

A subset is given by a spec:

- ``"1%"``, ``"10%"``, ``"100%"``: round(p x N) labelled images, class-balanced (per-class counts as equal as
  possible; classes short of images give their share to the others; the remainder goes to classes drawn
  with the seed). On an ImageNet train folder (file names like ``n01440764_10026.JPEG``), ``"1%"`` and
  ``"10%"`` are the official SimCLR lists shipped with the package (:mod:`simclr.imagenet`), and
  ``"1%-balanced"`` / ``"10%-balanced"`` name the seeded draw;
- ``"13-per-class"``: k images of every class (all of a class that has fewer);
- a FILE listing image names one per line, like the official ImageNet ``1percent.txt`` /
  ``10percent.txt`` (``n01440764_10026.JPEG``), matched on the basename of ``ImageData.names``.

Selection is deterministic for a seed. Within a class the images are taken in the order of one seeded
permutation that does not depend on the spec, so with the same seed the 1 % subset is contained in the
10 % subset, as the official lists are.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from simclr.errors import SimCLRError

_PERCENT = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*%\s*(-\s*balanced)?\s*$", re.IGNORECASE)
_IMAGENET_TRAIN_NAME = re.compile(r"n\d{8}_\d+\.JPEG")
_PER_CLASS = re.compile(r"^\s*(\d+)\s*-?\s*per[-_ ]?class\s*$", re.IGNORECASE)


def parse_spec(spec: str) -> tuple[str, float | int | Path]:
    """``("percent", p)``, ``("per_class", k)`` or ``("file", path)`` for a labels spec."""
    m = _PERCENT.match(spec)
    if m:
        p = float(m.group(1))
        if not 0 < p <= 100:
            raise SimCLRError(f"labels {spec!r}: the percentage must be in (0, 100]")
        return "percent", p
    m = _PER_CLASS.match(spec)
    if m:
        k = int(m.group(1))
        if k < 1:
            raise SimCLRError(f"labels {spec!r}: need at least one image per class")
        return "per_class", k
    path = Path(spec).expanduser()
    if path.is_file():
        return "file", path
    raise SimCLRError(f"labels {spec!r}: not a percentage like '1%', a count like '13-per-class', or an existing file")


def _class_quota(counts: np.ndarray, total: int, gen: torch.Generator) -> np.ndarray:
    """Spread ``total`` over classes as evenly as their ``counts`` allow (water-filling).

    Each round gives every class that still has images an equal share; a class that runs out keeps what it
    has and the rest is shared again. The last few images (fewer than the open classes) go to classes drawn
    with ``gen``.
    """
    quota = np.zeros_like(counts)
    remaining = int(min(total, counts.sum()))
    while remaining > 0:
        open_ = np.flatnonzero(quota < counts)
        share = remaining // len(open_)
        if share == 0:
            order = open_[torch.randperm(len(open_), generator=gen).numpy()]
            quota[order[:remaining]] += 1
            break
        for c in open_:
            add = min(share, counts[c] - quota[c])
            quota[c] += add
            remaining -= add
    return quota


def _read_name_list(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise SimCLRError(f"{path}: cannot read the label list ({getattr(e, 'strerror', None) or e})") from None
    names = [line.strip() for line in text.splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise SimCLRError(f"{path}: the label list is empty")
    return names


def _select_from_file(path: Path, names: list[str] | None, labels: Tensor) -> Tensor:
    if names is None:
        raise SimCLRError(f"{path}: a label list needs a dataset with file names (an image folder)")
    # Full relative names win; a basename that several files share cannot identify one of them.
    full = {n: i for i, n in enumerate(names)}
    base: dict[str, int] = {}
    for i, n in enumerate(names):
        b = os.path.basename(n)
        base[b] = -1 if b in base else i
    chosen: list[int] = []
    for lineno, name in enumerate(_read_name_list(path), 1):
        i = full.get(name, base.get(os.path.basename(name)))
        if i is None:
            raise SimCLRError(f"{path}: line {lineno}: image {name!r} is not in the dataset")
        if i < 0:
            raise SimCLRError(f"{path}: line {lineno}: {name!r} matches several images; list the relative path")
        if int(labels[i]) < 0:
            raise SimCLRError(f"{path}: line {lineno}: image {name!r} has no label")
        chosen.append(i)
    return torch.tensor(sorted(set(chosen)), dtype=torch.int64)


def is_imagenet_train(names: list[str] | None) -> bool:
    """Whether the file names are those of the ImageNet train set (``<wnid>_<n>.JPEG``)."""
    if not names:
        return False
    return all(_IMAGENET_TRAIN_NAME.fullmatch(os.path.basename(n)) for n in names)


def _select_official(path: Path, spec: str, names: list[str], labels: Tensor) -> Tensor:
    """Indices of the official list's images; a clear error when the folder lacks some of them."""
    index = {os.path.basename(n): i for i, n in enumerate(names)}
    wanted = _read_name_list(path)
    missing = [n for n in wanted if n not in index]
    if missing:
        pct = spec.strip().rstrip("%")
        raise SimCLRError(
            f"labels {spec!r}: {len(missing)} of the {len(wanted)} images of the official ImageNet list "
            f"({path.name}) are not in this folder (e.g. {missing[0]}); use --labels {pct}%-balanced for a "
            "seeded class-balanced draw"
        )
    chosen = torch.tensor(sorted(index[n] for n in wanted), dtype=torch.int64)
    if bool((labels[chosen] < 0).any()):
        raise SimCLRError(f"labels {spec!r}: some images of the official list have no label")
    return chosen


def select_labels(labels: Tensor, spec: str, seed: int = 0, names: list[str] | None = None) -> Tensor:
    """Indices (sorted int64) of the images whose labels fine-tuning may use.

    labels: int64 (N,), negative = unlabelled (never selected). ``spec`` as in the module docstring;
    ``names`` (N,) file names, needed for a FILE spec. Same ``seed`` -> identical indices.
    """
    if labels is None:
        raise SimCLRError("labels: the dataset has no labels to select from")
    labels = labels.detach().to("cpu", torch.int64)
    kind, value = parse_spec(spec)
    if kind == "file":
        return _select_from_file(value, names, labels)  # type: ignore[arg-type]
    if kind == "percent" and not spec.strip().lower().endswith("balanced") and is_imagenet_train(names):
        from simclr.imagenet import official_subset

        official = official_subset(float(value))
        if official is not None:
            return _select_official(official, spec, names, labels)  # type: ignore[arg-type]
    valid = labels >= 0
    n_labelled = int(valid.sum())
    if n_labelled == 0:
        raise SimCLRError("labels: the dataset has no labelled images")
    if kind == "percent" and value == 100:
        return torch.nonzero(valid).flatten()
    num_classes = int(labels.max()) + 1
    members = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
    counts = np.array([len(m) for m in members], dtype=np.int64)
    # One generator for the within-class orders (drawn for every class, whatever the spec) and another
    # for the remainder: the image order of a class does not depend on the spec, so subsets nest.
    order_gen = torch.Generator().manual_seed(seed)
    orders = [m[torch.randperm(len(m), generator=order_gen)] for m in members]
    quota_gen = torch.Generator().manual_seed(seed + 0x5EED)
    if kind == "percent":
        total = max(1, int(np.floor(value / 100.0 * n_labelled + 0.5)))
        quota = _class_quota(counts, total, quota_gen)
    else:
        quota = np.minimum(counts, int(value))
    chosen = torch.cat([o[: int(q)] for o, q in zip(orders, quota, strict=True)])
    return chosen.sort().values


def subset_hash(indices: Tensor | np.ndarray | list[int]) -> str:
    """First 16 hex digits of the SHA-256 of the sorted indices as little-endian int64 bytes."""
    arr = np.sort(np.asarray(torch.as_tensor(indices).cpu(), dtype="<i8"))
    return hashlib.sha256(arr.tobytes()).hexdigest()[:16]


def per_class_counts(labels: Tensor, indices: Tensor, num_classes: int | None = None) -> list[int]:
    """How many selected images each class has (for the subset file and sanity checks)."""
    sel = labels.detach().cpu()[indices.cpu()]
    n = num_classes if num_classes is not None else int(labels.max()) + 1
    return torch.bincount(sel[sel >= 0], minlength=n).tolist()


def save_subset(
    path: str | os.PathLike, indices: Tensor, spec: str, seed: int, labels: Tensor | None = None, **extra: Any
) -> Path:
    """Write the subset as JSON (spec, seed, count, hash, per-class counts, indices) atomically."""
    from simclr.eval.card import write_json_atomic

    idx = indices.detach().cpu().sort().values
    record: dict[str, Any] = {"spec": spec, "seed": seed, "count": len(idx), "hash": subset_hash(idx)}
    if labels is not None:
        record["per_class"] = per_class_counts(labels, idx)
    record.update(extra)
    record["indices"] = idx.tolist()
    return write_json_atomic(path, record)


def load_subset(path: str | os.PathLike) -> tuple[Tensor, dict[str, Any]]:
    """Read a subset written by :func:`save_subset`; the stored hash is checked against the indices."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
        idx = torch.tensor(record["indices"], dtype=torch.int64)
    except FileNotFoundError:
        raise SimCLRError(f"{path}: subset file not found") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SimCLRError(f"{path}: not a label subset file ({e})") from None
    if "hash" in record and record["hash"] != subset_hash(idx):
        raise SimCLRError(f"{path}: indices do not match the stored hash {record['hash']} (file edited?)")
    return idx, record
