"""The `simclr` command: parses arguments and dispatches; no method logic lives here.

A :class:`~simclr.errors.SimCLRError` is printed as one line, ``error: <file or key>: <problem>``, with exit
status 2. Ctrl-C during pretraining saves a checkpoint first (exit status 130).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from simclr import __version__
from simclr.errors import SimCLRError

COMMANDS: dict[str, Callable[[argparse.Namespace], int | None]] = {}


def command(name: str):
    def register(fn):
        COMMANDS[name] = fn
        return fn

    return register


def _config_args(p: argparse.ArgumentParser) -> None:
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


def resolve_config(args: argparse.Namespace):
    """Preset, then YAML file, then --data/--dataset/--device, then --set overrides."""
    from simclr.config import load_config

    overrides = []
    if getattr(args, "data", None):
        overrides.append(f"data.path={args.data}")
    if getattr(args, "dataset", None):
        overrides.append(f"data.dataset={args.dataset}")
    if getattr(args, "download", False):
        overrides.append("data.download=true")
    if getattr(args, "device", None):
        overrides.append(f"train.device={args.device}")
    return load_config(preset=args.preset, path=args.config, overrides=overrides + list(args.overrides))


@command("pretrain")
def _pretrain(args: argparse.Namespace) -> int:
    from simclr.config import dump_config

    cfg = resolve_config(args)
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    if args.dry_run:
        from simclr.bench import dry_run

        dry_run(cfg)
        return 0
    if not args.out:
        raise SimCLRError("simclr pretrain: --out RUN_DIR is required")
    from simclr.engine import pretrain

    summary = pretrain(cfg, args.out, resume=args.resume)
    return 130 if summary.get("status") == "interrupted" else 0


@command("presets")
def _presets(args: argparse.Namespace) -> int:
    from simclr.config import available_presets, load_config

    for name in available_presets():
        c = load_config(preset=name)
        print(
            f"{name:16s} {c.data.dataset:14s} {c.model.arch} x{c.model.width_multiplier:g} head {c.model.head_layers} "
            f"batch {c.train.batch_size} epochs {c.train.epochs} tau {c.loss.temperature} s {c.augment.color_strength}"
        )
    return 0


@command("models")
def _models(args: argparse.Namespace) -> int:
    from simclr.models.zoo import format_model_table, model_table

    print(format_model_table(model_table(resolution=args.resolution, flops=not args.no_flops)))
    return 0


@command("linear-eval")
def _linear_eval(args: argparse.Namespace) -> int:
    from simclr.eval import linear_eval_command

    linear_eval_command(
        run=args.run,
        data=args.data,
        dataset=args.dataset,
        mode=args.mode,
        out=args.out,
        device=args.device,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        baselines=args.baselines,
    )
    return 0


@command("knn")
def _knn(args: argparse.Namespace) -> int:
    from simclr.eval import knn_command

    knn_command(
        run=args.run,
        data=args.data,
        dataset=args.dataset,
        k=args.k,
        temperature=args.temperature,
        out=args.out,
        device=args.device,
    )
    return 0


@command("finetune")
def _finetune(args: argparse.Namespace) -> int:
    from simclr.eval import finetune_command

    finetune_command(
        run=args.run,
        data=args.data,
        dataset=args.dataset,
        labels=args.labels,
        from_head_layer=args.from_head_layer,
        init=args.init,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        seed=args.seed,
        out=args.out,
        device=args.device,
    )
    return 0


@command("bench")
def _bench(args: argparse.Namespace) -> int:
    from simclr.bench import bench_from_args

    return bench_from_args(args)


@command("distill")
def _distill(args: argparse.Namespace) -> int:
    from simclr.distill import distill_command

    distill_command(**{k: v for k, v in vars(args).items() if k != "command"})
    return 0


@command("pipeline")
def _pipeline(args: argparse.Namespace) -> int:
    from simclr.pipeline import pipeline_command

    return pipeline_command(
        resolve_config(args),
        args.out,
        fractions=args.fractions,
        pretrain_epochs=args.pretrain_epochs,
        finetune_epochs=args.finetune_epochs,
        distill_epochs=args.distill_epochs,
        distill_init=args.distill_init,
        distill_alpha=args.distill_alpha,
        distill_temperature=args.distill_temperature,
        quick=args.quick,
        seed=args.seed,
    )


@command("report")
def _report(args: argparse.Namespace) -> int:
    from simclr.report import report_command

    return report_command(args.run, out=args.out, device=args.device, max_images=args.max_images)


@command("export")
def _export(args: argparse.Namespace) -> int:
    from simclr.export import export_command

    return export_command(args.run, out=args.out, onnx=args.onnx)


@command("embed")
def _embed(args: argparse.Namespace) -> int:
    from simclr.embed import embed_command

    return embed_command(
        args.run, data=args.data, dataset=args.dataset, out=args.out, which=args.which,
        batch_size=args.batch_size, device=args.device, split=args.split,
    )  # fmt: skip


@command("import-tf")
def _import_tf(args: argparse.Namespace) -> int:
    from simclr.tfimport.run import import_tf_command

    return import_tf_command(args.ckpt, args.out, args.ema, args.from_head_layer, args.ignore, args.data, args.dataset)


@command("predict")
def _predict(args: argparse.Namespace) -> int:
    from simclr.predict import predict_command

    return predict_command(
        args.run, args.data, args.out, args.dataset, args.split, args.top_k, args.batch_size, args.device
    )


@command("show-augmentations")
def _show_augmentations(args: argparse.Namespace) -> int:
    from simclr.preview import show_augmentations_command

    return show_augmentations_command(
        preset=args.preset, config=args.config, data=args.data, dataset=args.dataset, out=args.out, n=args.n,
        overrides=args.overrides, seed=args.seed, split=args.split,
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simclr", description="SimCLR / SimCLRv2: pretrain, evaluate, fine-tune, distill."
    )
    parser.add_argument("--version", action="version", version=f"simclr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("pretrain", help="contrastive pretraining (SimCLR v1/v2)")
    _config_args(p)
    p.add_argument("--out", help="run folder (config.yaml, metrics.jsonl, checkpoints/last.pt)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--dry-run", action="store_true", help="measure a few steps: memory, speed, largest batch")

    sub.add_parser("presets", help="list the shipped presets")

    p = sub.add_parser("models", help="the encoder zoo: parameters and GFLOPs against the SimCLRv2 paper")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--no-flops", action="store_true", help="skip the GFLOPs column (faster)")

    def eval_common(p: argparse.ArgumentParser) -> None:
        p.add_argument("run", help="pretraining run folder or checkpoint file")
        p.add_argument("--data", help="dataset path (default: the run's)")
        p.add_argument("--dataset", help="dataset kind (default: the run's)")
        p.add_argument("--out", help="folder for metrics.json (default: RUN/eval/<protocol>)")
        p.add_argument("--device", default="auto")
        p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("linear-eval", help="linear evaluation on frozen features (fast or paper protocol)")
    eval_common(p)
    p.add_argument("--mode", choices=["fast", "paper"], default="fast")
    p.add_argument(
        "--baselines", action="store_true", help="also probe the random-init encoder and the raw pixels (fast mode)"
    )
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)

    p = sub.add_parser("knn", help="weighted kNN evaluation on frozen features")
    eval_common(p)
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.1)

    p = sub.add_parser("finetune", help="semi-supervised fine-tuning on a label subset")
    eval_common(p)
    p.add_argument(
        "--labels",
        default="10%",
        help="1%%, 10%% (the official lists on an ImageNet folder; 1%%-balanced: a seeded draw), 100%%, "
        "N-per-class, or a FILE of image names",
    )
    p.add_argument("--from-head-layer", type=int, help="keep this many projection-head layers (v2 default 1)")
    p.add_argument("--init", choices=["pretrained", "scratch"], default="pretrained")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer", choices=["lars", "sgd"])

    from simclr.bench import add_bench_parser
    from simclr.distill import add_distill_parser
    from simclr.pipeline import add_pipeline_parser

    add_distill_parser(sub)
    add_bench_parser(sub)
    add_pipeline_parser(sub, _config_args)

    p = sub.add_parser("report", help="HTML report with plots: training curves, embeddings, retrieval, health")
    p.add_argument("run", help="pretraining run folder or pipeline folder")
    p.add_argument("--out", help="report folder (default: RUN/report)")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-images", type=int, default=1000, help="test images embedded for the plots")

    p = sub.add_parser("export", help="encoder as safetensors + JSON (and ONNX with --onnx)")
    p.add_argument("run", help="pretraining run folder or checkpoint")
    p.add_argument("--out", help="export folder (default: RUN/export)")
    p.add_argument("--onnx", action="store_true", help="also write encoder.onnx (needs the onnx package)")

    p = sub.add_parser("embed", help="write embeddings (h or z) with names and labels to .npy + .csv")
    p.add_argument("run", help="pretraining run folder or checkpoint")
    p.add_argument("--data", help="dataset path (default: the run's)")
    p.add_argument("--dataset", help="dataset kind (default: the run's)")
    p.add_argument("--split", default="train")
    p.add_argument("--out", required=True, help="output file stem (FILE.npy, FILE.csv)")
    p.add_argument("--which", choices=["h", "z"], default="h", help="representation h or projection z")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")

    p = sub.add_parser("import-tf", help="import an official SimCLR v1/v2 TensorFlow checkpoint as a run folder")
    p.add_argument("ckpt", help="checkpoint prefix (.../model.ckpt-250228) or folder with a 'checkpoint' file")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--ema", action="store_true", help="import the ema_model/ copy (v2 pretrained checkpoints)")
    p.add_argument("--from-head-layer", type=int, help="projection layers under the classifier (default: by folder)")
    p.add_argument("--ignore", action="append", default=[], metavar="REGEX", help="skip matching variables")
    p.add_argument("--data", help="dataset path to record in the run's config (e.g. an ImageNet folder)")
    p.add_argument("--dataset", help="dataset kind to record (default: folder)")

    p = sub.add_parser("predict", help="class predictions of a classifier run, as CSV")
    p.add_argument("run", help="folder with finetuned.pt (finetune/distill output, imported checkpoint) or the file")
    p.add_argument("--data", required=True, help="images to classify (a folder, or a dataset path)")
    p.add_argument("--dataset", help="dataset kind (default: detected from --data)")
    p.add_argument("--split", help="split of --data (default: the folder itself, or test)")
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto")

    p = sub.add_parser("show-augmentations", help="PNG grid of image / view 1 / view 2 for a preset and data")
    _config_args(p)
    p.add_argument("--out", default="augmentations.png")
    p.add_argument("-n", type=int, default=8, help="number of images (rows)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="train")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        code = COMMANDS[args.command](args) or 0
    except SimCLRError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
