"""The SimCLRv2 semi-supervised pipeline in one command (v2 section 2, Figure 3; SPEC 8-9).

``run_pipeline(config, out)`` runs, each stage into its own folder of ``out``:

1. ``pretrain/`` — contrastive pretraining (:func:`simclr.engine.pretrain`);
2. ``linear-eval-paper/`` — linear evaluation of the frozen encoder with the paper's protocol (the reported
   row) and ``linear-eval/`` — the ``fast`` protocol on cached features beside it, labelled as a proxy;
3. for each label fraction F (default 1 %, 10 % and 100 %): ``finetune-<F>/`` (fine-tuning of the pretrained
   network on the subset), ``scratch-<F>/`` (the supervised baseline: the same network and labels, random
   init, the same number of steps), and for the distilled fractions ``distill-<F>/`` (self-distillation of
   the fine-tuned teacher into a student of the same size);
4. ``results.md`` / ``results.json`` — one table in the paper's layout (rows: models, columns: label
   fractions, cells: top-1 (top-5) on the test split, each linked to its ``metrics.json`` and card), the
   time of every stage, and the report when :mod:`simclr.report` can draw.

Folder names spell the fraction without ``%`` (``finetune-1pct``). A stage whose ``metrics.json`` exists is
skipped, so a stopped pipeline continues where it stopped; pretraining resumes from its last checkpoint and
distillation from its last epoch. Delete a stage's folder to run it again.

Two schedules. The default (``demo``) is sized for a small dataset on a CPU; ``--full`` is the complete one:

- linear evaluation, paper protocol: 3 epochs at batch 256 (``--full``: the paper's 90 epochs at batch 4096);
- fine-tuning and the scratch baseline: batch min(256, n / 5), enough epochs for ``finetune_steps`` = 150
  optimizer steps and at least 1 epoch (``--full``: 3), evaluated after the last epoch; each init uses its
  recipe of :data:`RECIPES` (chosen by a search with the same budget for both, see docs/results.md) on top of
  :func:`~simclr.eval.finetune.finetune`'s defaults (``--finetune-recipe default``: those defaults alone);
- distillation: the fractions under 100 % (``--full``: all), 1 epoch over the unlabeled train images
  (``--full``: 4), tau 0.1, alpha 0.5 (half the loss on the teacher's tempered probabilities, half on the
  fraction's own labels; ``--distill-alpha 1`` reads no label), the student starting from the pretrained
  network (``--distill-init scratch``: the paper's setting); ``--distill-recipe paper`` (the default) trains
  with LARS and the teacher's pretraining learning rate, weight decay and warmup share, ``short`` with SGD
  at the fine-tuning rate (:mod:`simclr.distill`).

``quick=True`` shrinks every stage to a few steps (smoke tests, CI).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simclr.config import Config
from simclr.errors import SimCLRError
from simclr.files import folder_lock, write_text
from simclr.options import option, validate
from simclr.results_table import FOLDERS, ROWS, format_results, fraction_tag, write_results

DISTILL_EPOCHS = {"demo": 1, "full": 4}  # epochs over the unlabeled train images
DISTILL_ALPHA = 0.5  # weight of the distillation term (teacher probabilities); 1 - alpha: the fraction's labels
FINETUNE_MIN_EPOCHS = {"demo": 1, "full": 3}
LINEAR_PAPER_EPOCHS = {"demo": 3, "full": 90}
LINEAR_PAPER_BATCH = {"demo": 256, "full": None}  # None: linear_eval's (the paper's 4096, scaled to the data)
# The ``searched`` fine-tuning recipe (FinetuneOptions fields) per init: the best of a search on the
# Fashion-MNIST demo with the same grid size and step budget for both inits (docs/results.md); Nesterov SGD,
# cosine decay, no warmup; ``lr_per_256``: the learning rate scales linearly with the batch (B / 256).
# ``--finetune-recipe default`` uses finetune()'s own defaults instead.
RECIPES: dict[str, dict[str, Any]] = {
    "pretrained": {"optimizer": "sgd", "lr_per_256": 0.02, "weight_decay": 0.0, "crop_min_scale": 0.5},
    "scratch": {"optimizer": "sgd", "lr": 0.4, "weight_decay": 5e-4, "label_smoothing": 0.1, "crop_min_scale": 0.5},
}


@dataclass
class PipelineOptions:
    """Per-stage settings of :func:`run_pipeline` (None = the module docstring's default)."""

    fractions: tuple[str, ...] = option(
        ("1%", "10%", "100%"), "label fractions, e.g. 1%,10%", parse=lambda text: parse_fractions(text)
    )
    full: bool = option(False, "the complete schedules (module docstring) instead of the short demo ones")
    pretrain_epochs: int | None = option(None, "override the preset's pretraining epochs", ge=1)
    finetune_epochs: int | None = option(None, "fine-tune / baseline epochs (default: finetune_steps)", ge=1)
    finetune_steps: int = option(150, "optimizer steps of a fine-tune / baseline stage", ge=1, cli=False)
    finetune_min_epochs: int | None = option(None, "fewest fine-tune / baseline epochs (1, --full 3)", ge=1, cli=False)
    finetune_batch: int = option(256, "largest fine-tune / baseline batch", ge=1, cli=False)
    finetune_recipe: str = option(
        "searched",
        "searched: RECIPES (tuned on the demo); default: finetune's defaults (LARS at batch >= 1024)",
        choices=("searched", "default"),
    )
    distill_fractions: tuple[str, ...] | None = option(
        None, "fractions distilled (default 1%,10% of --fractions; --full: all)", parse=lambda t: parse_fractions(t)
    )
    distill_epochs: int | None = option(None, "distillation epochs (default 1, --full 4)", ge=1)
    distill_unlabeled: int | None = option(None, "distil on a seeded subset of this many images", ge=1, cli=False)
    distill_recipe: str = option("paper", "paper: LARS with the pretraining schedule; short: SGD at the fine-tuning "
                                 "rate", choices=("paper", "short"))  # fmt: skip
    distill_init: str = option("pretrained", "student start: pretrained, or scratch (the paper)",
                               choices=("pretrained", "scratch"))  # fmt: skip
    distill_temperature: float | None = option(None, "distillation tau (default 0.1, self-distillation)", gt=0)
    distill_alpha: float = option(DISTILL_ALPHA, "(1 - alpha) labelled CE + alpha distillation CE", ge=0, le=1)
    linear_epochs: int | None = option(None, "fast linear eval epochs (default 100)", ge=1, cli=False)
    linear_paper_epochs: int | None = option(None, "paper-protocol linear eval epochs (default 3, --full 90)", ge=1)
    linear_paper_batch: int | None = option(None, "paper-protocol linear eval batch (default 256, --full 4096)", ge=1)
    quick: bool = option(False, "a few steps per stage (smoke test)")
    seed: int = option(0, "label subsets and evaluation seed", ge=0, lt=2**63)

    @property
    def schedule(self) -> str:
        return "full" if self.full else "demo"


def finetune_epochs_for(n_labelled: int, batch_size: int, o: PipelineOptions) -> int:
    """Fine-tune / scratch epochs: ``o.finetune_epochs``, else enough for ``o.finetune_steps`` optimizer steps
    of ``n_labelled // batch_size`` per epoch, and at least ``o.finetune_min_epochs`` (1, with --full 3)."""
    if o.finetune_epochs:
        return o.finetune_epochs
    least = o.finetune_min_epochs or FINETUNE_MIN_EPOCHS[o.schedule]
    return max(least, math.ceil(o.finetune_steps / max(1, n_labelled // batch_size)))


def parse_fractions(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"1%,10%,100%"`` -> ``("1%", "10%", "100%")``, each checked as a label spec."""
    from simclr.eval.subsets import parse_spec

    items = text.split(",") if isinstance(text, str) else list(text)
    fractions = tuple(s.strip() for s in items if s.strip())
    if not fractions:
        raise SimCLRError("--fractions: give at least one label fraction, e.g. 1%,10%")
    for spec in fractions:
        parse_spec(spec)
    if len({fraction_tag(s) for s in fractions}) != len(fractions):
        raise SimCLRError(f"--fractions {','.join(fractions)}: two fractions share a folder name")
    return fractions


def _quick(cfg: Config, o: PipelineOptions) -> None:
    """A few steps per stage: enough to exercise every code path in seconds."""
    cfg.train.epochs = o.pretrain_epochs or 1
    cfg.train.max_steps = 3
    cfg.train.batch_size = min(cfg.train.batch_size, 32)
    cfg.train.log_every = 1
    cfg.monitor.knn = False
    o.finetune_epochs = o.finetune_epochs or 1
    o.distill_epochs = o.distill_epochs or 1
    o.distill_unlabeled = min(o.distill_unlabeled or 10**9, 64)
    o.linear_epochs = o.linear_epochs or 5
    o.linear_paper_epochs = o.linear_paper_epochs or 1


def _stage(out: Path, name: str, run: Callable[..., dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
    """``run(out_dir=out/name, **kwargs)`` unless ``out/name/metrics.json`` exists; returns the metrics.

    The stage's wall-clock seconds (of the run that made it) are kept in ``metrics["stage_seconds"]``.
    """
    folder = out / name
    metrics = folder / "metrics.json"
    if metrics.is_file():
        print(f"pipeline: {name}: done before ({metrics}), skipped", flush=True)
        return json.loads(metrics.read_text())
    print(f"pipeline: {name} ...", flush=True)
    t0 = time.perf_counter()
    result = run(out_dir=folder, **kwargs)
    result["stage_seconds"] = _record_seconds(metrics, t0)
    print(f"pipeline: {name}: top-1 {result['top1']:.2f} % ({result['stage_seconds']:.0f} s)", flush=True)
    return result


def _distill_stage(out_dir: Path, teacher_dir: Path, device: Any, **kwargs: Any) -> dict[str, Any]:
    """Distillation from ``teacher_dir``, resumed from its last epoch when a checkpoint is there."""
    from simclr.distill import Teacher, distill

    resume = (out_dir / "checkpoints" / "last.pt").is_file()
    return distill(Teacher(teacher_dir, device), device=device, out_dir=out_dir, resume=resume, **kwargs)


def _pretrain_stage(cfg: Config, folder: Path) -> dict[str, Any]:
    """Pretraining, skipped when done, resumed from ``checkpoints/last.pt`` when stopped.

    Done means finished, or stopped by ``train.max_steps`` at or past this pipeline's own ``train.max_steps``
    (``--quick``); a run stopped earlier (a ``--set train.max_steps=N`` smoke run, a signal) is resumed to the
    end of its schedule, or to this pipeline's ``train.max_steps``.
    """
    from simclr.engine import pretrain

    summary = folder / "summary.json"
    if summary.is_file():
        done = json.loads(summary.read_text())
        status, target = done.get("status"), cfg.train.max_steps
        if status == "finished" or (
            status == "stopped_at_max_steps" and target is not None and done.get("steps", 0) >= target
        ):
            print(f"pipeline: pretrain: done before ({summary}), skipped", flush=True)
            return done
    resume = (folder / "checkpoints" / "last.pt").is_file()
    print(f"pipeline: pretrain{' (resumed)' if resume else ''} ...", flush=True)
    t0 = time.perf_counter()
    done = pretrain(cfg, folder, resume=resume)
    if done.get("status") != "interrupted":  # the time of this (last) run, for the table
        done["stage_seconds"] = _record_seconds(summary, t0)
    return done


def _record_seconds(path: Path, t0: float) -> float:
    """Seconds since ``t0``, also kept as ``stage_seconds`` in the JSON file ``path`` (when the stage wrote
    it), so that a continued pipeline still reports the time of a stage it skips."""
    from simclr.eval.card import write_json_atomic

    seconds = round(time.perf_counter() - t0, 1)
    if path.is_file():
        write_json_atomic(path, {**json.loads(path.read_text()), "stage_seconds": seconds})
    return seconds


def run_pipeline(config: Config, out: str | Path, options: PipelineOptions | None = None) -> dict[str, Any]:
    """Pretrain, evaluate, fine-tune, train the baselines, distil; write ``results.md`` / ``results.json``.

    ``config``: the pretraining configuration (preset, data, overrides); ``out``: the pipeline folder.
    Returns the results dict (``rows`` of cells with top-1 / top-5 and the path of their metrics, and
    ``stage_seconds``), or ``{"status": "interrupted"}`` when pretraining was stopped by a signal (run again to
    resume).
    """
    from simclr.checkpoint import load_pretrained
    from simclr.eval.features import load_eval_data
    from simclr.runtime import resolve_device

    t0 = time.perf_counter()
    o = dataclasses.replace(options) if options is not None else PipelineOptions()
    o.fractions = parse_fractions(o.fractions)
    if o.distill_fractions is not None:
        o.distill_fractions = parse_fractions(o.distill_fractions)
    validate(o)
    cfg = dataclasses.replace(
        config, train=dataclasses.replace(config.train), monitor=dataclasses.replace(config.monitor)
    )
    if o.pretrain_epochs is not None:
        cfg.train.epochs = o.pretrain_epochs
    if o.quick:
        _quick(cfg, o)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _record_options(out, o)

    summary = _pretrain_stage(cfg, out / "pretrain")
    if summary.get("status") == "interrupted":
        print("pipeline: pretraining interrupted; run the same command again to resume", flush=True)
        return {"status": "interrupted"}
    device = resolve_device(cfg.train.device)
    pre = load_pretrained(out / "pretrain", device)
    train, test, name = load_eval_data(pre.config)
    results = _evaluate(out, o, pre, train, test, name, device)
    seconds = {"pretrain": summary["stage_seconds"]} if "stage_seconds" in summary else {}
    seconds.update({stage: r["stage_seconds"] for stage, r in _stage_results(results) if "stage_seconds" in r})

    table = write_results(out, results, o.fractions, pre, name, summary, time.perf_counter() - t0, seconds)
    print(f"pipeline: results table -> {out / 'results.md'} (and results.json)", flush=True)
    try:
        from simclr.report import write_report
    except ImportError:
        pass
    else:
        where = write_report(out)
        print(f"pipeline: report -> {where or out}", flush=True)
    return table


def _stage_results(results: dict[str, dict[str, dict[str, Any]]]):
    """(stage folder name, metrics) of every evaluation stage."""
    for key, cells in results.items():
        for col, result in cells.items():
            yield FOLDERS[key].format(fraction_tag(col)), result


def _evaluate(out: Path, o: PipelineOptions, pre: Any, train: Any, test: Any, name: str, device: Any):
    """The evaluation stages on a pretrained run: linear (paper protocol and fast proxy), then per fraction
    fine-tuning, the scratch baseline and (for the distilled fractions) distillation."""
    from simclr.data.access import without_labels
    from simclr.eval.features import scaled_batch_size
    from simclr.eval.finetune import FinetuneOptions, finetune
    from simclr.eval.linear import linear_eval
    from simclr.eval.subsets import select_labels

    results: dict[str, dict[str, dict[str, Any]]] = {key: {} for key, _ in ROWS}
    linear = dict(pretrained=pre, train=train, test=test, seed=o.seed, device=device, dataset=name)
    paper_epochs = o.linear_paper_epochs or LINEAR_PAPER_EPOCHS[o.schedule]
    results["linear"]["100%"] = _stage(out, "linear-eval-paper", linear_eval, mode="paper", epochs=paper_epochs,
                                       batch_size=_linear_paper_batch(o), **linear)  # fmt: skip
    results["linear_fast"]["100%"] = _stage(out, "linear-eval", linear_eval, mode="fast", epochs=o.linear_epochs,
                                            **linear)  # fmt: skip
    distilled = o.distill_fractions or (o.fractions if o.full else tuple(f for f in o.fractions if f != "100%"))
    unlabeled = without_labels(train)  # what distillation sees with alpha = 1
    for frac in o.fractions:
        tag = fraction_tag(frac)
        n = len(select_labels(train.labels, frac, o.seed, train.names))
        batch = scaled_batch_size(n, o.finetune_batch)
        epochs = finetune_epochs_for(n, batch, o)
        common = dict(train=train, test=test, device=device, dataset=name)
        for key, init in (("finetune", pre), ("scratch", None)):
            recipe = FinetuneOptions(labels=frac, epochs=epochs, batch_size=batch, seed=o.seed, eval_every=epochs,
                                     **_recipe(o, init is None, batch))  # fmt: skip
            results[key][frac] = _stage(out, FOLDERS[key].format(tag), finetune, init=init, options=recipe,
                                        config=pre.config, **common)  # fmt: skip
        if frac in distilled:
            results["distill"][frac] = _stage(
                out, f"distill-{tag}", _distill_stage, teacher_dir=out / f"finetune-{tag}", device=device,
                train=unlabeled if o.distill_alpha >= 1 else train, test=test, options=_distill_options(o),
                student_init=pre if o.distill_init == "pretrained" else None, dataset=name,
            )  # fmt: skip
    return results


def _linear_paper_batch(o: PipelineOptions) -> int | None:
    """The paper protocol's batch: 256 in the demo (its 3 epochs then make 700 steps on Fashion-MNIST, where
    batch 4096 would make 42), linear_eval's default with --full."""
    if o.quick:
        return 64
    return o.linear_paper_batch or LINEAR_PAPER_BATCH[o.schedule]


def _recipe(o: PipelineOptions, scratch: bool, batch: int) -> dict[str, Any]:
    """The FinetuneOptions fields of the chosen recipe for one init at ``batch``."""
    if o.finetune_recipe != "searched":
        return {}
    recipe = dict(RECIPES["scratch" if scratch else "pretrained"])
    if "lr_per_256" in recipe:
        recipe["lr"] = recipe.pop("lr_per_256") * batch / 256
    return recipe


def _distill_options(o: PipelineOptions) -> Any:
    """The distillation recipe: ``short`` (SGD at the fine-tuning rate, the CPU default) or ``paper`` (LARS
    with the teacher's pretraining learning rate, weight decay and warmup share)."""
    from simclr.distill import DistillOptions

    return DistillOptions(
        temperature=o.distill_temperature,
        alpha=o.distill_alpha,
        epochs=o.distill_epochs or DISTILL_EPOCHS[o.schedule],
        max_unlabeled=o.distill_unlabeled,
        seed=o.seed,
        optimizer="lars" if o.distill_recipe == "paper" else "sgd",
        batch_size=16 if o.quick else None,
    )


def _record_options(out: Path, o: PipelineOptions) -> None:
    """Keep the options in ``pipeline.json``; say so when a re-run asks for different ones."""
    path = out / "pipeline.json"
    now = dataclasses.asdict(o)
    now["fractions"] = list(o.fractions)
    if path.is_file():
        before = json.loads(path.read_text())
        changed = sorted(k for k in now if before.get(k) != now[k] and k != "fractions")
        if changed:
            print(
                f"pipeline: note: options {', '.join(changed)} differ from the first run in {out}; "
                "finished stages are kept (delete a stage's folder to redo it)",
                flush=True,
            )
    write_text(path, json.dumps(now, indent=2) + "\n", "pipeline options")


def pipeline_command(config: Config, out: str | None, **options: Any) -> int:
    """``simclr pipeline --preset P --data D --out DIR``: :func:`run_pipeline` with :class:`PipelineOptions`
    fields as ``options`` (checked before any work); exit status 130 if stopped."""
    if not out:
        raise SimCLRError("simclr pipeline: --out DIR is required")
    if "fractions" in options:
        options["fractions"] = parse_fractions(options["fractions"])
    o = validate(PipelineOptions(**options))
    with folder_lock(out, "pipeline folder"):
        result = run_pipeline(config, out, o)
    return 130 if result.get("status") == "interrupted" else 0


__all__ = [
    "PipelineOptions",
    "finetune_epochs_for",
    "fraction_tag",
    "format_results",
    "parse_fractions",
    "pipeline_command",
    "run_pipeline",
    "write_results",
]
