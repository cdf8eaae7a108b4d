"""Write an imported TF checkpoint as a run folder that every ``simclr`` command reads.

``RUN/config.yaml`` and ``RUN/checkpoints/last.pt`` (the pretraining format of
:func:`~simclr.checkpoint.load_pretrained`: encoder + projection head) serve ``linear-eval``, ``knn``,
``finetune``, ``embed``, ``export`` and ``report``; with a supervised head, ``RUN/finetuned.pt`` (the
classifier format of :func:`~simclr.eval.finetune.load_classifier`) serves ``predict`` and
``distill --teacher RUN``. ``RUN/import.json`` records where the weights came from.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from simclr.checkpoint import file_sha256, save_checkpoint
from simclr.config import config_to_dict, dump_config
from simclr.errors import SimCLRError
from simclr.files import atomic_write, folder_lock
from simclr.tfimport.importer import INPUT_SIZE, TFCheckpoint, load_tf_checkpoint

ZERO_MEAN, UNIT_STD = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]  # unused with normalize: false; kept explicit


def write_run(ckpt: TFCheckpoint, out: str | os.PathLike, data: str | None = None, dataset: str | None = None) -> Path:
    """Write ``ckpt`` to the run folder ``out`` (created); returns it. ``data`` / ``dataset`` go to the config."""
    from simclr import __version__
    from simclr.imagenet import imagenet_wnids

    out = Path(out)
    if (out / "checkpoints" / "last.pt").exists():
        raise SimCLRError(f"{out}: already holds a run (checkpoints/last.pt); choose another --out")
    cfg = ckpt.config
    if data is not None:
        cfg.data.path = str(Path(data).expanduser())
    if dataset is not None:
        cfg.data.dataset = dataset
    stats = {"mean": ZERO_MEAN, "std": UNIT_STD}
    source = {
        "tensorflow_checkpoint": str(ckpt.source),
        "index_sha256": file_sha256(ckpt.source.with_name(ckpt.source.name + ".index")),
        "ema": ckpt.ema,
        "step": ckpt.step,
        "arch": ckpt.arch.name,
        "head_layers": ckpt.arch.head_layers,
        "num_classes": ckpt.arch.num_classes,
        "from_head_layer": ckpt.from_head_layer,
    }
    atomic_write(out / "config.yaml", lambda f: f.write(dump_config(cfg).encode()), what="config")
    save_checkpoint(
        {
            "kind": "pretrain",
            "config": config_to_dict(cfg),
            "image_size": INPUT_SIZE,
            "data_stats": stats,
            "model": ckpt.model.state_dict(),
            "run_state": {"step": ckpt.step},
            "imported_from": source,
            "library_version": __version__,
        },
        out / "checkpoints" / "last.pt",
    )
    if ckpt.linear is not None:
        classes = imagenet_wnids() if ckpt.arch.num_classes == 1000 else None
        save_checkpoint(
            {
                "kind": "finetune",
                "protocol": "import-tf",
                "config": config_to_dict(cfg),
                "encoder": ckpt.encoder.state_dict(),
                "head": ckpt.model.head.layers[: ckpt.from_head_layer].state_dict(),
                "classifier": ckpt.linear.state_dict(),
                "num_classes": ckpt.arch.num_classes,
                "classes": classes,
                "from_head_layer": ckpt.from_head_layer,
                "image_size": INPUT_SIZE,
                "data_stats": stats,
                "init": "pretrained",
                "label_subset": None,
                "metrics": {},
                "imported_from": source,
            },
            out / "finetuned.pt",
        )
    atomic_write(out / "import.json", lambda f: f.write(json.dumps(source, indent=2).encode() + b"\n"), what="record")
    return out


def import_tf_command(
    ckpt: str,
    out: str,
    ema: bool = False,
    from_head_layer: int | None = None,
    ignore: list[str] | None = None,
    data: str | None = None,
    dataset: str | None = None,
) -> int:
    """``simclr import-tf CKPT --out RUN [--ema]``: import and print one summary line."""
    tf = load_tf_checkpoint(ckpt, ema=ema, from_head_layer=from_head_layer, ignore=tuple(ignore or ()))
    with folder_lock(out, "run folder"):
        run = write_run(tf, out, data, dataset)
    a = tf.arch
    n = sum(p.numel() for p in tf.encoder.parameters()) / 1e6
    head = f"{a.head_layers}-layer projection head" if a.head_layers else "no projection head"
    sup = (
        f"classifier ({a.num_classes} classes, from head layer {tf.from_head_layer})" if tf.linear else "no classifier"
    )
    print(
        f"simclr import-tf: {a.name}{' (EMA)' if ema else ''}, {n:.1f}M encoder parameters, {head}, {sup}, "
        f"step {tf.step} -> {run}"
    )
    return 0
