"""SimCLR and SimCLRv2 in PyTorch.

The public API (stable; used by scripts and notebooks):

- :func:`nt_xent` — the NT-Xent loss over the 2N views of a batch (SimCLR v1, section 2.1).
- :func:`create_encoder` — ResNet encoders by name, e.g. ``create_encoder("r50_2x_sk1")``.
- :class:`Augment` — the batched SimCLR augmentation, run on the model's device.
- :func:`load_encoder` — an exported encoder, loaded with torch alone.
- :func:`load_tf_checkpoint` — an official SimCLR v1/v2 TensorFlow checkpoint, read without TensorFlow.
- :func:`pretrain` — run SimCLR pretraining from a :class:`Config`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from simclr.config import Config, load_config
from simclr.errors import SimCLRError

_LAZY = {
    "Augment": "simclr.augment",
    "nt_xent": "simclr.loss",
    "create_encoder": "simclr.models",
    "load_tf_checkpoint": "simclr.tfimport",
}


def __getattr__(name: str):
    # Imported on first use so that `import simclr` stays light (the CLI starts fast).
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'simclr' has no attribute {name!r}")


def pretrain(config: Config, out: str, resume: bool = False):
    """Run SimCLR pretraining with ``config``, writing the run folder ``out``; returns the run summary."""
    from simclr.engine import pretrain as _pretrain

    return _pretrain(config, out, resume=resume)


def load_encoder(path: str):
    """Load an encoder exported by ``simclr export`` (safetensors + JSON); needs torch alone."""
    from simclr.export import load_encoder as _load

    return _load(path)


__all__ = [
    "Augment",
    "Config",
    "SimCLRError",
    "__version__",
    "create_encoder",
    "load_config",
    "load_encoder",
    "load_tf_checkpoint",
    "nt_xent",
    "pretrain",
]
