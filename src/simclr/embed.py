"""Embeddings of a pretrained encoder for every image of a dataset: ``simclr embed RUN --data D --out FILE``.

Each image goes through the run's evaluation preprocessing (:class:`~simclr.augment.EvalTransform`: centre
crop, resize, normalise) and the network in eval mode; the representation is h (the encoder output, what
linear evaluation uses) or, with ``which="z"``, the projection z (the output of the head the loss saw).

Output, for ``--out emb`` (any ``.npy`` / ``.csv`` / ``.parquet`` suffix is dropped):

- ``emb.npy`` — float32 (N, D), row i is image i, written batch by batch (memory-mapped, so N x D need not
  fit in memory);
- ``emb.csv`` — one row per image: ``index``, ``name`` (the file name relative to the folder for image
  folders, else the index), ``label`` and ``class`` (empty when the data are unlabelled);
- ``emb.parquet`` — when ``pyarrow`` is installed: the same columns plus ``embedding`` (a list of floats).

Image folders are decoded on demand in DataLoader workers (:class:`~simclr.data.folder.FolderStream`), so a
folder larger than memory can be embedded; array datasets are read into memory.
"""

from __future__ import annotations

import csv
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from simclr.data import ImageData, detect_format, load_dataset, open_folder_stream
from simclr.data.folder import FolderStream
from simclr.errors import SimCLRError


def open_images(
    dataset: str,
    path: str | os.PathLike | None,
    split: str = "train",
    image_size: int | None = None,
    download: bool = False,
) -> ImageData | FolderStream:
    """Image folders as a :class:`FolderStream` (decoded on demand), every other format in memory."""
    kind = dataset
    if dataset == "auto" and path is not None:
        kind = detect_format(path)
    if kind == "folder":
        if path is None:
            raise SimCLRError("dataset 'folder' needs a path (--data)")
        return open_folder_stream(path, split, image_size)
    return load_dataset(kind, path, split=split, image_size=image_size, download=download)


def take(data: ImageData | FolderStream, indices: Tensor | list[int]) -> tuple[Tensor, Tensor | None]:
    """uint8 images (n, C, H, W) and labels (n,) or None of the given ``indices``."""
    idx = torch.as_tensor(indices, dtype=torch.int64)
    labels = data.labels[idx] if data.labels is not None else None
    if isinstance(data, FolderStream):
        images = torch.stack([data[int(i)][0] for i in idx]) if len(idx) else torch.empty(0, 3, 1, 1)
        return images, labels
    return data.images[idx], labels


def sample_indices(n: int, k: int, seed: int = 0) -> Tensor:
    """``min(n, k)`` distinct indices of ``range(n)``, seeded, in increasing order."""
    if k >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:k].sort().values


def _batches(data: ImageData | FolderStream, batch_size: int, workers: int):
    """(images uint8, indices) batches in dataset order."""
    if isinstance(data, FolderStream):
        loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=workers)
        for images, _, idx in loader:
            yield images, idx
    else:
        for start in range(0, len(data), batch_size):
            yield data.images[start : start + batch_size], torch.arange(start, min(start + batch_size, len(data)))


def output_base(out: str | os.PathLike) -> Path:
    """``out`` without a ``.npy`` / ``.csv`` / ``.parquet`` suffix."""
    p = Path(out)
    return p.with_suffix("") if p.suffix.lower() in (".npy", ".csv", ".parquet") else p


def embed_dataset(
    run: str | os.PathLike,
    out: str | os.PathLike,
    data: str | None = None,
    dataset: str | None = None,
    split: str = "train",
    which: str = "h",
    batch_size: int = 256,
    device: str = "auto",
) -> dict[str, Path]:
    """Write the ``which`` (``h`` or ``z``) embeddings of every image of ``split`` to ``out``.npy/.csv.

    ``data`` / ``dataset`` default to the run's ``data.path`` / ``data.dataset``; with only ``data`` given
    the format is detected from the path (``auto``). Returns the paths written, keyed by format.
    """
    from simclr.checkpoint import load_pretrained
    from simclr.eval.features import eval_transform_for, progress, resolve_device
    from simclr.export import resolve_run

    if which not in ("h", "z"):
        raise SimCLRError(f"embed: --which must be h or z, got {which!r}")
    if batch_size < 1:
        raise SimCLRError(f"embed: --batch-size must be positive, got {batch_size}")
    dev = resolve_device(device)
    pre = load_pretrained(resolve_run(run), dev)
    cfg = pre.config
    if data is None and dataset is None:
        dataset, data = cfg.data.dataset, cfg.data.path
    elif dataset is None:
        dataset = "auto"
    # Images are stored at the run's side (folders: data.image_size, else the encoder input side), then the
    # evaluation transform crops and resizes them exactly as for linear evaluation.
    images = open_images(dataset, data, split, cfg.data.image_size or pre.image_size)
    n = len(images)
    if n == 0:
        raise SimCLRError(f"{images.source}: no images to embed")
    transform = eval_transform_for(cfg, pre.image_size, pre.mean, pre.std).to(dev)
    model = pre.model.eval()
    base = output_base(out)
    base.parent.mkdir(parents=True, exist_ok=True)
    dim = pre.model.encoder.out_dim if which == "h" else pre.model.head.out_dim
    npy = base.with_suffix(".npy")
    array = np.lib.format.open_memmap(npy, mode="w+", dtype=np.float32, shape=(n, dim))
    batches = _batches(images, batch_size, cfg.data.workers if n > batch_size else 0)  # no workers for a few
    total = -(-n // batch_size)
    with torch.inference_mode():
        for x, idx in progress(batches, total=total, desc=f"embed {which}", enabled=None):
            views = transform(x.to(dev, non_blocking=True))
            h, z = model(views) if which == "z" else (model.encoder(views), None)
            array[idx.numpy()] = (h if which == "h" else z).float().cpu().numpy()
    array.flush()
    del array
    written = {"npy": npy, "csv": _write_table(base, images, n, None)}
    if importlib.util.find_spec("pyarrow") is not None:
        written["parquet"] = _write_table(base, images, n, np.load(npy, mmap_mode="r"))
    return written


def _rows(images: ImageData | FolderStream, n: int):
    names = images.names
    labels = images.labels.tolist() if images.labels is not None else None
    classes = images.classes
    for i in range(n):
        label = labels[i] if labels is not None else None
        cls = classes[label] if classes is not None and label is not None and label < len(classes) else None
        yield i, names[i] if names is not None else str(i), label, cls


def _write_table(base: Path, images: ImageData | FolderStream, n: int, emb: np.ndarray | None) -> Path:
    """``base.csv`` (metadata only) when ``emb`` is None, else ``base.parquet`` with an embedding column."""
    if emb is None:
        path = base.with_suffix(".csv")
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["index", "name", "label", "class"])
            for i, name, label, cls in _rows(images, n):
                w.writerow([i, name, "" if label is None else label, "" if cls is None else cls])
        return path
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = list(zip(*_rows(images, n), strict=True))
    table = pa.table(
        {
            "index": pa.array(cols[0], pa.int64()),
            "name": pa.array(cols[1], pa.string()),
            "label": pa.array(cols[2], pa.int64()),
            "class": pa.array(cols[3], pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(emb).reshape(-1)), emb.shape[1]),
        }
    )
    path = base.with_suffix(".parquet")
    pq.write_table(table, path)
    return path


def embed_command(
    run: str,
    data: str | None = None,
    dataset: str | None = None,
    out: str | None = None,
    which: str = "h",
    batch_size: int = 256,
    device: str = "auto",
    split: str = "train",
) -> int:
    """``simclr embed RUN [--data D] [--dataset K] --out FILE [--which h|z]``: print what was written."""
    if not out:
        raise SimCLRError("simclr embed: --out FILE is required")
    written = embed_dataset(run, out, data, dataset, split, which, batch_size, device)
    shape = np.load(written["npy"], mmap_mode="r").shape
    print(f"simclr embed: {shape[0]} x {shape[1]} {which} -> {', '.join(str(p) for p in written.values())}")
    return 0


__all__ = ["embed_command", "embed_dataset", "open_images", "output_base", "sample_indices", "take"]
