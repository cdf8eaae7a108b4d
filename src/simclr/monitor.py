"""The kNN monitor run during pretraining (a monitor, not an evaluation protocol).

Each epoch the encoder embeds a fixed, seeded sample of labelled training images (the bank) and of the test
split; the weighted kNN top-1 of the test sample against the bank is logged as ``knn_monitor_top1``. The
offline protocols (`simclr knn`, `simclr linear-eval`) are in :mod:`simclr.eval` and report with cards.
"""

from __future__ import annotations

import sys

from torch import nn

from simclr.config import Config
from simclr.data.access import Data, open_split, sample
from simclr.eval.features import extract_features
from simclr.eval.knn import knn_eval


class KnnMonitor:
    """Weighted kNN (k, temperature from the config) of a test sample against a bank of train images."""

    def __init__(self, bank: Data, test: Data, transform: nn.Module, k: int, temperature: float):
        self.bank, self.test, self.transform = bank, test, transform
        self.k, self.temperature = k, temperature
        self.num_classes = int(max(bank.labels.max(), test.labels.max())) + 1

    @classmethod
    def from_config(cls, cfg: Config, train: Data, transform: nn.Module, device) -> KnnMonitor | None:
        """A monitor on seeded samples of ``train`` (if labelled) and the test split; None if unlabelled.

        The samples are decoded once and kept in memory (``monitor.knn_train_size`` / ``knn_test_size``
        images), also when the training data are streamed.
        """
        m, d = cfg.monitor, cfg.data
        bank = train

        def split(name: str) -> Data | None:
            try:
                return open_split(d.dataset, d.path, name, d.image_size, in_memory=d.in_memory)
            except Exception:  # the monitor is optional: an unlabelled dataset simply has none
                return None

        if bank.labels is None:
            bank = split("train")
        test = split(d.test_split)
        if bank is None or test is None or bank.labels is None or test.labels is None:
            print("kNN monitor off: no labelled train and test split for this dataset", file=sys.stderr)
            return None
        bank = sample(bank, m.knn_train_size, seed=cfg.train.seed)
        test = sample(test, m.knn_test_size, seed=cfg.train.seed + 1)
        return cls(bank, test, transform.to(device), m.knn_k, m.knn_temperature)

    def evaluate(self, encoder: nn.Module) -> float:
        """kNN top-1 of the current encoder (its train/eval mode is restored)."""
        device = next(encoder.parameters()).device
        bank = extract_features(encoder, self.bank, self.transform, 512, device, desc=None)
        test = extract_features(encoder, self.test, self.transform, 512, device, desc=None)
        top1, _ = knn_eval(
            bank,
            self.bank.labels.to(device),
            test,
            self.test.labels.to(device),
            k=min(self.k, len(bank)),
            temperature=self.temperature,
            num_classes=self.num_classes,
        )
        return float(top1)
