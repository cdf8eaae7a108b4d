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
import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from simclr.data import ImageData, detect_format, load_dataset, open_folder_stream
from simclr.data.folder import FolderStream
from simclr.errors import SimCLRError
from simclr.files import atomic_path, folder_lock


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


class _Strict(torch.utils.data.Dataset):
    """A :class:`FolderStream` that never substitutes: ``(image or zeros, decoded ok, index)`` per file."""

    def __init__(self, stream: FolderStream) -> None:
        self.stream = stream

    def __len__(self) -> int:
        return len(self.stream)

    def __getitem__(self, i: int) -> tuple[Tensor, bool, int]:
        from simclr.data.folder import BadImage, decode_image

        size = self.stream.image_size
        try:
            return torch.from_numpy(decode_image(self.stream.files[i], size)), True, i
        except BadImage:
            return torch.zeros(3, size, size, dtype=torch.uint8), False, i


def _batches(data: ImageData | FolderStream, batch_size: int, workers: int):
    """(images uint8, decoded ok (bool), indices) batches in dataset order; rows that failed are not ok."""
    if isinstance(data, FolderStream):
        loader = torch.utils.data.DataLoader(_Strict(data), batch_size=batch_size, shuffle=False, num_workers=workers)
        yield from loader
    else:
        for start in range(0, len(data), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(data)))
            yield data.images[start : start + batch_size], torch.ones(len(idx), dtype=torch.bool), idx


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
    from simclr.eval.features import eval_transform_for
    from simclr.export import resolve_run
    from simclr.runtime import resolve_device

    if which not in ("h", "z"):
        raise SimCLRError(f"embed: --which must be h or z, got {which!r}")
    if batch_size < 1:
        raise SimCLRError(f"--batch-size: must be >= 1, got {batch_size}")
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
    base = output_base(out)
    dim = pre.model.encoder.out_dim if which == "h" else pre.model.head.out_dim
    with folder_lock(base.parent, "embedding output", name=f".{base.name}.lock"):
        return _write_embeddings(pre.model.eval(), images, transform, base, dim, which, batch_size, cfg, dev)


def _write_embeddings(model, images, transform, base: Path, dim: int, which: str, batch_size: int, cfg, dev):
    """Embed every decodable image in order; all files appear at once, or none (a failure leaves nothing)."""
    from simclr.runtime import progress

    n = len(images)
    npy = base.with_suffix(".npy")
    batches = _batches(images, batch_size, cfg.data.workers if n > batch_size else 0)  # no workers for a few
    kept: list[int] = []
    with atomic_path(npy, "embeddings") as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
        with torch.inference_mode():
            for x, ok, idx in progress(batches, total=-(-n // batch_size), desc=f"embed {which}", enabled=None):
                views = transform(x[ok].to(dev, non_blocking=True))
                if len(views):
                    h, z = model(views) if which == "z" else (model.encoder(views), None)
                    array[len(kept) : len(kept) + len(views)] = (h if which == "h" else z).float().cpu().numpy()
                kept.extend(idx[ok].tolist())
        array.flush()
        del array
        bad = sorted(set(range(n)) - set(kept))
        _check_skipped(images, bad, n, cfg.data.max_bad_fraction)
        if bad:  # rows of the undecodable files are dropped, never filled with another image
            _truncate_rows(tmp, len(kept), dim)
    written = {"npy": npy}
    try:
        written["csv"] = _write_table(base, images, kept, None)
        if importlib.util.find_spec("pyarrow") is not None:
            written["parquet"] = _write_table(base, images, kept, np.load(npy, mmap_mode="r"))
    except BaseException:  # all outputs or none: an embedding without its table would be unreadable
        for path in written.values():
            path.unlink(missing_ok=True)
        raise
    return written


def _check_skipped(images, bad: list[int], n: int, max_bad_fraction: float) -> None:
    if not bad:
        return
    first = images.files[bad[0]] if isinstance(images, FolderStream) else bad[0]
    if len(bad) == n or len(bad) / n > max_bad_fraction:
        raise SimCLRError(
            f"{first}: cannot decode image; {len(bad)} of {n} images are bad "
            f"(> data.max_bad_fraction {max_bad_fraction:.1%}); nothing written"
        )
    print(f"simclr embed: skipped {len(bad)} undecodable image(s), e.g. {first}; their rows are left out",
          file=sys.stderr)  # fmt: skip


def _truncate_rows(path: Path, rows: int, dim: int) -> None:
    """Rewrite the .npy at ``path`` keeping its first ``rows`` rows (chunked copy, bounded memory)."""
    src = np.load(path, mmap_mode="r")
    short = path.with_name(path.name + ".short")
    dst = np.lib.format.open_memmap(short, mode="w+", dtype=np.float32, shape=(rows, dim))
    for start in range(0, rows, 65536):
        stop = min(start + 65536, rows)
        dst[start:stop] = src[start:stop]
    dst.flush()
    del dst, src
    os.replace(short, path)


def _rows(images: ImageData | FolderStream, kept: list[int]):
    names = images.names
    labels = images.labels.tolist() if images.labels is not None else None
    classes = images.classes
    for i in kept:
        label = labels[i] if labels is not None else None
        cls = classes[label] if classes is not None and label is not None and label < len(classes) else None
        yield i, names[i] if names is not None else str(i), label, cls


def _write_table(base: Path, images: ImageData | FolderStream, kept: list[int], emb: np.ndarray | None) -> Path:
    """``base.csv`` (metadata only) when ``emb`` is None, else ``base.parquet`` with an embedding column.

    Row r describes the dataset image ``kept[r]`` (its ``index`` column), the image of embedding row r.
    """
    if emb is None:
        path = base.with_suffix(".csv")
        with atomic_path(path, "embedding table") as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["index", "name", "label", "class"])
            for i, name, label, cls in _rows(images, kept):
                w.writerow([i, name, "" if label is None else label, "" if cls is None else cls])
        return path
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = list(zip(*_rows(images, kept), strict=True))
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
    with atomic_path(path, "embedding table") as tmp:
        pq.write_table(table, tmp)
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
