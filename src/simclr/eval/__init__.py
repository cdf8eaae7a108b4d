"""Evaluation protocols of SimCLR / SimCLRv2 (SPEC section 8), each writing ``metrics.json`` with a card.

- :func:`linear_eval` — linear classifier on the frozen representation (``fast`` on cached features, or
  the ``paper`` protocol), :mod:`simclr.eval.linear`;
- :func:`knn_eval` — weighted kNN on L2-normalised features, :mod:`simclr.eval.knn`;
- :func:`finetune` — semi-supervised fine-tuning on a label subset, or the supervised baseline from
  scratch, and :func:`load_classifier` to reuse the result (distillation teacher),
  :mod:`simclr.eval.finetune`;
- :func:`select_labels` / :func:`subset_hash` — class-balanced, seeded label subsets,
  :mod:`simclr.eval.subsets`;
- :func:`topk_accuracy` (:mod:`simclr.eval.metrics`) and :func:`evaluation_card` (:mod:`simclr.eval.card`).

The ``*_command`` functions are what the CLI calls: they load a run and its data, run a protocol, print one
line and write ``metrics.json``. Names are imported lazily so that ``import simclr.eval.knn`` (used by the
pretraining monitor) stays light.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "linear_eval": "simclr.eval.linear",
    "fit_linear": "simclr.eval.linear",
    "linear_eval_command": "simclr.eval.linear",
    "knn_eval": "simclr.eval.knn",
    "knn_scores": "simclr.eval.knn",
    "knn_command": "simclr.eval.knn",
    "finetune": "simclr.eval.finetune",
    "finetune_command": "simclr.eval.finetune",
    "load_classifier": "simclr.eval.finetune",
    "FinetuneNet": "simclr.eval.finetune",
    "select_labels": "simclr.eval.subsets",
    "subset_hash": "simclr.eval.subsets",
    "save_subset": "simclr.eval.subsets",
    "load_subset": "simclr.eval.subsets",
    "topk_accuracy": "simclr.eval.metrics",
    "evaluation_card": "simclr.eval.card",
    "write_metrics": "simclr.eval.card",
    "extract_features": "simclr.eval.features",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'simclr.eval' has no attribute {name!r}")


__all__ = sorted(_LAZY)
