"""The official SimCLR v1/v2 TensorFlow checkpoints, read without TensorFlow (SPEC-DETAILS 10).

- :func:`load_tf_checkpoint` — encoder, projection head and classifier as nn.Modules;
- :func:`write_run` / ``simclr import-tf`` — the same as a run folder every command reads;
- :class:`TensorBundle` — the name-based checkpoint format itself (:mod:`.bundle`, :mod:`.sstable`).
"""

from __future__ import annotations

from simclr.tfimport.bundle import TensorBundle
from simclr.tfimport.importer import TFCheckpoint, load_tf_checkpoint, plan_import
from simclr.tfimport.run import write_run

__all__ = ["TFCheckpoint", "TensorBundle", "load_tf_checkpoint", "plan_import", "write_run"]
