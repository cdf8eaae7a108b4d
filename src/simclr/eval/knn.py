"""Weighted k-nearest-neighbour evaluation of frozen features (InstDisc, Wu et al. 2018; solo-learn).

Not a protocol of the SimCLR papers, but the common cheap check of a representation (SPEC section 8):
cosine similarity between L2-normalised features, the k = 200 nearest train features vote for their class
with weight exp(sim / temperature), temperature 0.1, and the class with the largest summed weight wins.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from simclr.config import KNN_K, KNN_TEMPERATURE
from simclr.eval.metrics import topk_correct
from simclr.files import folder_lock
from simclr.options import option, validate


def knn_scores(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    num_classes: int | None = None,
    chunk_size: int = 256,
) -> Tensor:
    """Class scores (M, C) of each test row: sum over its k nearest train rows of exp(sim / temperature).

    train_feats (N, D), train_labels (N,) int64, test_feats (M, D). Similarities are computed for
    ``chunk_size`` test rows at a time (fewer for a huge bank), so memory is O(chunk_size x N), not O(M x N).
    """
    if train_feats.shape[0] != train_labels.shape[0]:
        raise ValueError(f"{train_feats.shape[0]} train features for {train_labels.shape[0]} labels")
    if num_classes is None:
        num_classes = int(train_labels.max()) + 1
    device = train_feats.device
    bank = F.normalize(train_feats.float(), dim=1)  # (N, D)
    bank_labels = train_labels.to(device)
    k = min(k, bank.shape[0])
    # Cap the (chunk, N) similarity block at 2^26 floats (256 MiB), whatever the bank size.
    chunk_size = max(1, min(chunk_size, (1 << 26) // max(1, bank.shape[0])))
    out = []
    for start in range(0, test_feats.shape[0], chunk_size):
        q = F.normalize(test_feats[start : start + chunk_size].to(device).float(), dim=1)  # (m, D)
        sim, idx = (q @ bank.T).topk(k, dim=1)  # (m, k) cosine similarities of the neighbours
        weights = (sim / temperature).exp()
        scores = torch.zeros(q.shape[0], num_classes, device=device)
        scores.scatter_add_(1, bank_labels[idx], weights)  # votes per class
        out.append(scores)
    return torch.cat(out) if out else torch.zeros(0, num_classes, device=device)


def knn_eval(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    num_classes: int | None = None,
    chunk_size: int = 256,
) -> tuple[float, float]:
    """Weighted kNN top-1 and top-5 accuracy (percent) of ``test_feats`` against the ``train_feats`` bank.

    Shapes as in :func:`knn_scores`; ``test_labels`` (M,). ``num_classes`` defaults to the largest label
    seen + 1. Top-5 is top-min(5, num_classes).
    """
    if num_classes is None:
        num_classes = int(max(int(train_labels.max()), int(test_labels.max()))) + 1
    correct = torch.zeros(2, dtype=torch.int64)
    for start in range(0, test_feats.shape[0], chunk_size * 16):
        stop = start + chunk_size * 16
        scores = knn_scores(train_feats, train_labels, test_feats[start:stop], k, temperature, num_classes, chunk_size)
        correct += topk_correct(scores, test_labels[start:stop].to(scores.device), (1, 5)).cpu()
    n = max(1, test_feats.shape[0])
    return 100.0 * float(correct[0]) / n, 100.0 * float(correct[1]) / n


@dataclass
class KnnOptions:
    """Settings of ``simclr knn`` (the defaults are the protocol's: k 200, temperature 0.1)."""

    k: int = option(KNN_K, "neighbours that vote", ge=1)
    temperature: float = option(KNN_TEMPERATURE, "vote weight exp(similarity / temperature)", gt=0)
    batch_size: int = option(512, "images per feature-extraction batch", ge=1)
    from_head_layer: int = option(0, "features after this many projection-head layers (0 = h)", ge=0)
    seed: int = option(0, ge=0, lt=2**63)


def knn_command(
    run: str,
    data: str | None = None,
    dataset: str | None = None,
    out: str | None = None,
    device: str = "auto",
    **options: Any,
) -> dict:
    """``simclr knn RUN``: embed the train and test splits with the frozen encoder, report weighted kNN.

    ``options`` are :class:`KnnOptions` fields (checked before any work). Features are h
    (``from_head_layer=0``) after the evaluation preprocessing; writes ``metrics.json`` to ``out`` (default
    ``RUN/eval/knn`` for the run's own data and default settings, else ``RUN/eval/knn-<hash>``) and returns
    the result dict (top1, top5 in percent, card).
    """
    from simclr.checkpoint import load_pretrained
    from simclr.eval.card import evaluation_card, write_metrics
    from simclr.eval.features import (
        Representation,
        eval_transform_for,
        evaluation_dir,
        evaluation_identity,
        extract_features,
        load_eval_data,
    )
    from simclr.runtime import resolve_device

    o = validate(KnnOptions(**options))
    t0 = time.perf_counter()
    dev = resolve_device(device)
    torch.manual_seed(o.seed)
    pre = load_pretrained(run, dev)
    evaluated, default = evaluation_identity(pre.config, o, dataset, data)
    out_dir = evaluation_dir(run, "knn", evaluated, default, out)
    train, test, name = load_eval_data(pre.config, dataset, data)
    net = Representation(pre.model, o.from_head_layer)
    transform = eval_transform_for(pre.config, pre.image_size, pre.mean, pre.std)
    train_feats = extract_features(net, train, transform, o.batch_size, dev, desc="kNN bank")
    test_feats = extract_features(net, test, transform, o.batch_size, dev, desc="kNN test")
    num_classes = int(max(int(train.labels.max()), int(test.labels.max()))) + 1
    top1, top5 = knn_eval(
        train_feats, train.labels.to(dev), test_feats, test.labels.to(dev), o.k, o.temperature, num_classes
    )
    result = {
        "protocol": "knn",
        "top1": top1,
        "top5": top5,
        "k": min(o.k, len(train_feats)),
        "temperature": o.temperature,
        "from_head_layer": o.from_head_layer,
        "num_classes": num_classes,
        "n_train": len(train_feats),
        "n_test": len(test_feats),
    }
    result["card"] = evaluation_card(
        "knn", name, "test", 1.0, None, o.seed, None, o.batch_size, pre.sha256, dev, time.perf_counter() - t0,
        checkpoint=str(pre.path), train_source=train.source, test_source=test.source, evaluated=evaluated,
    )  # fmt: skip
    with folder_lock(out_dir, "evaluation folder"):
        path = write_metrics(out_dir, result)
    result["out_dir"] = str(out_dir)
    print(f"knn (k={result['k']}, T={o.temperature}): top-1 {top1:.2f} %  top-5 {top5:.2f} %  -> {path}")
    return result
