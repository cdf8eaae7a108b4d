"""Arguments several commands share: the configuration tree's sources, and what an evaluation reads."""

from __future__ import annotations

import argparse

from simclr.config import Config


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """--preset, --config, --data, --dataset, --download, --device and repeatable --set KEY=VALUE."""
    p.add_argument("--preset", help="named preset (see `simclr presets`)")
    p.add_argument("--config", help="YAML config file, applied after the preset")
    p.add_argument("--data", help="dataset root folder or file (sets data.path)")
    p.add_argument("--dataset", help="dataset kind: fashion-mnist, cifar10, stl10, folder, npz, ... (data.dataset)")
    p.add_argument("--download", action="store_true", help="fetch a known dataset from its official address")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (train.device)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.base_lr=0.5 (repeatable)",
    )


def explicit_overrides(args: argparse.Namespace) -> list[str]:
    """--data/--dataset/--download/--device as ``key=value`` overrides, then the --set ones, in that order."""
    overrides = []
    if getattr(args, "data", None):
        overrides.append(f"data.path={args.data}")
    if getattr(args, "dataset", None):
        overrides.append(f"data.dataset={args.dataset}")
    if getattr(args, "download", False):
        overrides.append("data.download=true")
    if getattr(args, "device", None):
        overrides.append(f"train.device={args.device}")
    return overrides + list(args.overrides)


def resolve_config(args: argparse.Namespace) -> Config:
    """Preset, then YAML file, then --data/--dataset/--device, then --set overrides.

    ``--dataset`` replaces the preset's data source entirely: a split only that dataset has (STL-10's
    ``train+unlabeled``) falls back to the default unless a ``--set data.*_split`` says otherwise.
    """
    from simclr.config import DataConfig, load_config

    cfg = load_config(preset=args.preset, path=args.config, overrides=explicit_overrides(args))
    if getattr(args, "dataset", None):
        base = load_config(preset=args.preset, path=args.config)
        set_keys = {text.split("=", 1)[0].strip() for text in args.overrides}
        if base.data.dataset != cfg.data.dataset:
            for key in ("train_split", "test_split"):
                if f"data.{key}" not in set_keys:
                    setattr(cfg.data, key, getattr(DataConfig(), key))
    return cfg


def add_eval_target(p: argparse.ArgumentParser, what: str = "pretraining run folder or checkpoint") -> None:
    """RUN, --data, --dataset, --out, --device: what an evaluation reads and where it writes."""
    p.add_argument("run", help=what)
    p.add_argument("--data", help="dataset path (default: the run's)")
    p.add_argument("--dataset", help="dataset kind (default: the run's)")
    p.add_argument("--out", help="folder for metrics.json (default: RUN/eval/<protocol>[-<hash>])")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")


def eval_target(args: argparse.Namespace) -> dict:
    """The keywords of :func:`add_eval_target`'s arguments, for a ``*_command`` call."""
    return {"data": args.data, "dataset": args.dataset, "out": args.out, "device": args.device}
