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

from simclr.data.access import Data, batches, open_images
from simclr.errors import SimCLRError
from simclr.files import atomic_path, folder_lock


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
    # Streamed folders flag an undecodable image (valid False) instead of substituting the next one: its row
    # is left out, and past data.max_bad_fraction the stream stops with one line.
    source = batches(images, batch_size, dev, on_bad="flag", threads=cfg.data.workers or None)
    kept: list[int] = []
    with atomic_path(npy, "embeddings") as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
        with torch.inference_mode():
            for batch in progress(source, total=len(source), desc=f"embed {which}"):
                ok = batch.valid if batch.valid is not None else torch.ones(len(batch.indices), dtype=torch.bool)
                ok = ok.to(batch.images.device)
                x, sizes = batch.images[ok], None if batch.sizes is None else batch.sizes[ok]
                if len(x):
                    views = transform(x) if sizes is None else transform(x, sizes)
                    h, z = model(views) if which == "z" else (model.encoder(views), None)
                    array[len(kept) : len(kept) + len(views)] = (h if which == "h" else z).float().cpu().numpy()
                kept.extend(batch.indices[ok.to(batch.indices.device)].tolist())
        array.flush()
        del array
        bad = sorted(set(range(n)) - set(kept))
        if bad:  # rows of the undecodable files are dropped, never filled with another image
            print(f"simclr embed: skipped {len(bad)} undecodable image(s), e.g. {_location(images, bad[0])}; "
                  "their rows are left out", file=sys.stderr)  # fmt: skip
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


def _location(images: Data, i: int) -> str:
    index = getattr(images, "index", None)
    return index.location(i) if index is not None else str(i)


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


def _rows(images: Data, kept: list[int]):
    names = images.names
    labels = images.labels.tolist() if images.labels is not None else None
    classes = images.classes
    for i in kept:
        label = labels[i] if labels is not None else None
        cls = classes[label] if classes is not None and label is not None and label < len(classes) else None
        yield i, names[i] if names is not None else str(i), label, cls


def _write_table(base: Path, images: Data, kept: list[int], emb: np.ndarray | None) -> Path:
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


__all__ = ["embed_command", "embed_dataset", "output_base"]
