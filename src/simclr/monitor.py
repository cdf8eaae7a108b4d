"""The kNN monitor run during pretraining (a monitor, not an evaluation protocol).

Each epoch the encoder embeds a fixed, seeded sample of labelled training images (the bank) and of the test
split; the weighted kNN top-1 of the test sample against the bank is logged as ``knn_monitor_top1``. The
offline protocols (`simclr knn`, `simclr linear-eval`) are in :mod:`simclr.eval` and report with cards.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from simclr.config import Config
from simclr.data import ImageData, load_dataset
from simclr.eval.knn import knn_eval


@torch.no_grad()
def embed(encoder: nn.Module, images: torch.Tensor, transform: nn.Module, batch_size: int = 512) -> torch.Tensor:
    """h for uint8 ``images`` (N, C, H, W) with the evaluation ``transform``: (N, out_dim) float32."""
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        x = transform(images[i : i + batch_size].to(device, non_blocking=True))
        out.append(encoder(x).float())
    encoder.train(was_training)
    return torch.cat(out)


class KnnMonitor:
    """Weighted kNN (k, temperature from the config) of a test sample against a bank of train images."""

    def __init__(self, bank: ImageData, test: ImageData, transform: nn.Module, k: int, temperature: float):
        self.bank, self.test, self.transform = bank, test, transform
        self.k, self.temperature = k, temperature
        self.num_classes = int(max(bank.labels.max(), test.labels.max())) + 1

    @classmethod
    def from_config(cls, cfg: Config, train: ImageData, transform: nn.Module, device) -> KnnMonitor | None:
        """A monitor on seeded samples of ``train`` (if labelled) and the test split; None if unlabelled."""
        m, d = cfg.monitor, cfg.data
        gen = torch.Generator().manual_seed(cfg.train.seed)
        bank = train
        if bank.labels is None:
            try:
                bank = load_dataset(d.dataset, d.path, split="train", image_size=d.image_size)
            except Exception:  # the monitor is optional: an unlabelled dataset simply has none
                bank = None
        try:
            test = load_dataset(d.dataset, d.path, split=d.test_split, image_size=d.image_size)
        except Exception:
            test = None
        if bank is None or test is None or bank.labels is None or test.labels is None:
            print("kNN monitor off: no labelled train and test split for this dataset", file=sys.stderr)
            return None
        bank = _sample(bank, m.knn_train_size, gen)
        test = _sample(test, m.knn_test_size, gen)
        return cls(bank, test, transform.to(device), m.knn_k, m.knn_temperature)

    def evaluate(self, encoder: nn.Module) -> float:
        """kNN top-1 of the current encoder (its train/eval mode is restored)."""
        bank = embed(encoder, self.bank.images, self.transform)
        test = embed(encoder, self.test.images, self.transform)
        dev = bank.device
        top1, _ = knn_eval(
            bank,
            self.bank.labels.to(dev),
            test,
            self.test.labels.to(dev),
            k=min(self.k, len(bank)),
            temperature=self.temperature,
            num_classes=self.num_classes,
        )
        return float(top1)


def _sample(data: ImageData, n: int, gen: torch.Generator) -> ImageData:
    if len(data.images) <= n:
        return data
    idx = torch.randperm(len(data.images), generator=gen)[:n]
    return ImageData(
        images=data.images[idx],
        labels=data.labels[idx] if data.labels is not None else None,
        classes=data.classes,
        names=None,
        source=data.source,
    )
