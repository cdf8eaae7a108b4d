"""The ``simclr`` sub-commands, one module each: ``NAME``, ``HELP``, ``add_arguments(parser)``, ``run(args)``.

A command module only parses and dispatches: its flags come from the stage's options dataclass
(:func:`simclr.options.add_flags`) where it has one, and ``run`` calls the library function that does the
work. :mod:`simclr.cli` builds the parser from :data:`COMMANDS` in this order.
"""

from __future__ import annotations

from simclr.commands import (
    distill,
    embed,
    export,
    finetune,
    import_tf,
    knn,
    linear_eval,
    models,
    pipeline,
    predict,
    presets,
    pretrain,
    report,
    show_augmentations,
)

COMMANDS = (
    pretrain,
    presets,
    models,
    linear_eval,
    knn,
    finetune,
    distill,
    pipeline,
    report,
    export,
    embed,
    predict,
    import_tf,
    show_augmentations,
)

__all__ = ["COMMANDS"]
