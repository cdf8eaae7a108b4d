"""Class predictions of a classifier run: ``simclr predict RUN --data PATH --out FILE.csv``.

RUN is a folder holding ``finetuned.pt`` (``simclr finetune`` / ``distill`` output, or an imported
fine-tuned, supervised or pretrained-with-linear-head TF checkpoint) or that file. Every image of the data
goes through the classifier's evaluation preprocessing; the CSV has one row per image: ``index``, ``name``,
``label`` (when the data are labelled), then ``top1`` .. ``topK`` class names, the matching indices and
softmax probabilities. ImageNet synset ids are shown with their WordNet names.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import torch

from simclr.errors import SimCLRError
from simclr.files import atomic_path, folder_lock


def predict(
    run: str | os.PathLike,
    data: str,
    out: str | os.PathLike,
    dataset: str | None = None,
    split: str | None = None,
    top_k: int = 5,
    batch_size: int = 128,
    device: str = "auto",
) -> dict:
    """Write the top-``top_k`` predictions for every image of ``data`` to ``out``; returns a summary
    (``n``, and ``top1`` / ``topk`` accuracy in percent when the images are labelled with the model's classes).
    """
    from simclr.data import detect_format
    from simclr.data.access import batches, open_images
    from simclr.data.stream import ImageStream
    from simclr.eval.finetune import load_classifier
    from simclr.imagenet import class_names
    from simclr.runtime import progress, resolve_device

    if top_k < 1:
        raise SimCLRError(f"--top-k: must be >= 1, got {top_k}")
    if batch_size < 1:
        raise SimCLRError(f"--batch-size: must be >= 1, got {batch_size}")
    dev = resolve_device(device)
    path = Path(run)
    net = load_classifier(path / "finetuned.pt" if path.is_dir() else path, dev)
    cfg = net.config
    side = cfg.data.image_size or net.image_size
    if (
        split is None
        and dataset in (None, "auto", "folder")
        and Path(data).is_dir()
        and detect_format(data) == "folder"
    ):
        images = ImageStream(Path(data).expanduser(), side)  # the folder given, not one of its splits
    else:
        images = open_images(dataset or "auto", data, split or "test", side)
    if len(images) == 0:
        raise SimCLRError(f"{images.source}: no images")
    k = min(top_k, net.num_classes)
    names = class_names(net.classes, net.num_classes) or [str(i) for i in range(net.num_classes)]
    # Accuracy only when every class folder of the data is one of the model's classes (e.g. ImageNet wnids).
    label_map = None
    if images.labels is not None and images.classes is not None and net.classes is not None:
        if set(images.classes) <= set(net.classes):
            label_map = torch.tensor([list(net.classes).index(c) for c in images.classes])
    same = label_map is not None
    transform = net.eval_transform().to(dev)
    out = Path(out)
    correct = torch.zeros(2, dtype=torch.int64)
    skipped = 0
    with (
        folder_lock(out.parent, "predictions", name=f".{out.name}.lock"),
        atomic_path(out, "predictions") as tmp,
        open(tmp, "w", newline="") as f,
        torch.inference_mode(),
    ):
        w = csv.writer(f)
        w.writerow(
            ["index", "name", "label"]
            + [f"top{i + 1}" for i in range(k)]
            + [f"top{i + 1}_index" for i in range(k)]
            + [f"top{i + 1}_prob" for i in range(k)]
        )
        source = batches(images, batch_size, dev, on_bad="flag", threads=cfg.data.workers or None)
        for batch in progress(source, total=len(source), desc="predict"):
            ok = batch.valid.cpu() if batch.valid is not None else torch.ones(len(batch.indices), dtype=torch.bool)
            idx = batch.indices.cpu()[ok]  # undecodable images get no row (and are counted below)
            skipped += int((~ok).sum())
            if len(idx) == 0:
                continue
            x = batch.images[ok.to(dev)]
            sizes = None if batch.sizes is None else batch.sizes[ok.to(dev)]
            probs = net(transform(x) if sizes is None else transform(x, sizes)).float().softmax(dim=1).cpu()
            p, top = probs.topk(k, dim=1)
            labels = images.labels[idx] if images.labels is not None else None
            if same:
                labels = label_map[labels]
                hit = top == labels[:, None]
                correct += torch.stack([hit[:, 0].sum(), hit.any(dim=1).sum()])
            for row, i in enumerate(idx.tolist()):
                name = images.names[i] if images.names is not None else str(i)
                label = "" if labels is None else int(labels[row])  # the model's class index when mapped
                w.writerow(
                    [i, name, label]
                    + [names[j] for j in top[row].tolist()]
                    + top[row].tolist()
                    + [f"{v:.6f}" for v in p[row].tolist()]
                )
    n = len(images) - skipped
    summary: dict = {"n": n, "skipped": skipped, "out": str(out)}
    if same and n:
        summary["top1"], summary[f"top{k}"] = (100.0 * float(c) / n for c in correct)
    return summary


def predict_command(
    run: str,
    data: str,
    out: str,
    dataset: str | None = None,
    split: str | None = None,
    top_k: int = 5,
    batch_size: int = 128,
    device: str = "auto",
) -> int:
    """``simclr predict``: write the CSV and print one line (with accuracy when the data are labelled)."""
    s = predict(run, data, out, dataset, split, top_k, batch_size, device)
    acc = "".join(f"  {key} {s[key]:.2f} %" for key in s if key.startswith("top"))
    skipped = f" ({s['skipped']} undecodable, left out)" if s["skipped"] else ""
    print(f"simclr predict: {s['n']} images{skipped}{acc} -> {s['out']}")
    return 0
