"""The three-stage pipeline: tiny synthetic .npz data, --quick, results table, stage skipping, CLI wiring."""

from __future__ import annotations

import json

import numpy as np
import pytest

from simclr.config import load_config
from simclr.errors import SimCLRError
from simclr.pipeline import (
    RECIPES,
    PipelineOptions,
    fraction_tag,
    parse_fractions,
    pipeline_command,
    run_pipeline,
)

SIZE, CLASSES = 16, 4


def write_npz(path, n_train: int = 96, n_test: int = 32):
    rng = np.random.default_rng(0)

    def arrays(n):
        labels = np.arange(n) % CLASSES
        images = 40 + 50 * labels[:, None, None] + rng.normal(0, 20, (n, SIZE, SIZE))
        return images.clip(0, 255).astype(np.uint8), labels

    (x, y), (xt, yt) = arrays(n_train), arrays(n_test)
    np.savez(path, images=x, labels=y, test_images=xt, test_labels=yt)
    return path


def tiny_config(npz):
    return load_config(
        preset="fashion-mnist",
        overrides=[
            "data.dataset=npz",
            f"data.path={npz}",
            "model.width_multiplier=0.125",
            "model.projection_dim=16",
            "train.device=cpu",
        ],
    )


def test_fraction_names():
    assert parse_fractions("1%, 10%,100%") == ("1%", "10%", "100%")
    assert [fraction_tag(s) for s in ("1%", "0.5%", "13-per-class")] == ["1pct", "0.5pct", "13-per-class"]
    with pytest.raises(SimCLRError, match="not a percentage"):
        parse_fractions("1%,ten")
    with pytest.raises(SimCLRError, match="at least one"):
        parse_fractions(" , ")


def test_pipeline_quick_end_to_end_and_skips_finished_stages(tmp_path, capsys):
    npz = write_npz(tmp_path / "tiny.npz")
    out = tmp_path / "pipe"
    opts = PipelineOptions(fractions=("25%", "50%"), quick=True)
    table = run_pipeline(tiny_config(npz), out, opts)

    stages = ["pretrain", "linear-eval-paper", "linear-eval"] + [
        f"{s}-{f}" for f in ("25pct", "50pct") for s in ("finetune", "scratch", "distill")
    ]
    for stage in stages[1:]:
        assert (out / stage / "metrics.json").is_file(), stage
    assert (out / "pretrain" / "summary.json").is_file()
    assert table["columns"] == ["25%", "50%", "100%"]
    names = [r["name"] for r in table["rows"]]
    assert names == [
        "supervised (scratch)", "linear eval (fast proxy)", "linear eval (paper protocol)", "SimCLR fine-tune",
        "SimCLR distilled",
    ]  # fmt: skip
    rows = {r["key"]: r["cells"] for r in table["rows"]}
    assert set(rows["linear"]) == {"100%"} and set(rows["finetune"]) == {"25%", "50%"}
    linear_paper = json.loads((out / "linear-eval-paper" / "metrics.json").read_text())
    assert linear_paper["mode"] == "paper" and rows["linear"]["100%"]["top1"] == linear_paper["top1"]
    assert set(table["stage_seconds"]) == {"pretrain", *stages[1:]}
    assert all(v >= 0 for v in table["stage_seconds"].values()) and "Stage times" in (out / "results.md").read_text()
    assert rows["distill"]["25%"]["metrics"] == "distill-25pct/metrics.json"
    assert rows["finetune"]["25%"]["card"]["subset_hash"] == rows["scratch"]["25%"]["card"]["subset_hash"]
    distilled = json.loads((out / "distill-25pct" / "metrics.json").read_text())
    teacher = json.loads((out / "finetune-25pct" / "metrics.json").read_text())
    # default alpha 0.5: the student mixes the teacher's probabilities with the teacher's own labelled subset
    assert distilled["self_distillation"] and distilled["alpha"] == 0.5
    assert distilled["n_labelled"] == teacher["n_labelled"] > 0
    scratch = json.loads((out / "scratch-25pct" / "metrics.json").read_text())
    for result, init in ((teacher, "pretrained"), (scratch, "scratch")):  # each init with its searched recipe
        want = dict(RECIPES[init])
        if "lr_per_256" in want:
            want["lr"] = want.pop("lr_per_256") * result["batch_size"] / 256
        assert {k: result["recipe"].get(k, result.get(k)) for k in want} == pytest.approx(want), init
    assert json.loads((out / "results.json").read_text())["rows"] == json.loads(json.dumps(table["rows"]))

    md = (out / "results.md").read_text()
    assert "| model | 25% labels | 50% labels | 100% labels |" in md
    for name in names:
        assert f"| {name} |" in md
    cell = rows["finetune"]["50%"]
    assert f"[{cell['top1']:.2f} ({cell['top5']:.2f})](finetune-50pct/metrics.json)" in md
    assert "| linear eval (paper protocol) | - | - | [" in md
    assert "Evaluation cards" in md

    # A second run skips every finished stage and rewrites the same table.
    mtimes = {s: (out / s / "metrics.json").stat().st_mtime_ns for s in stages[1:]}
    capsys.readouterr()
    again = run_pipeline(tiny_config(npz), out, opts)
    log = capsys.readouterr().out
    assert log.count("skipped") == len(stages)
    assert all((out / s / "metrics.json").stat().st_mtime_ns == mtimes[s] for s in stages[1:])
    assert again["rows"] == table["rows"]

    # A missing stage output is redone, and a pretraining without its summary resumes from its checkpoint.
    (out / "distill-50pct" / "metrics.json").unlink()
    (out / "pretrain" / "summary.json").unlink()
    run_pipeline(tiny_config(npz), out, opts)
    log = capsys.readouterr().out
    assert "pretrain (resumed)" in log and "distill-50pct ..." in log
    assert (out / "distill-50pct" / "metrics.json").is_file()


def test_command_passes_every_option(monkeypatch):
    import simclr.pipeline

    seen = {}
    monkeypatch.setattr(simclr.pipeline, "run_pipeline", lambda cfg, out, o: seen.update(o=o, out=out) or {})
    kwargs = dict(pretrain_epochs=2, finetune_epochs=3, distill_epochs=4, distill_init="scratch", quick=True, seed=5,
                  distill_alpha=0.3, distill_temperature=1.0)  # fmt: skip
    assert pipeline_command(load_config(preset="fashion-mnist"), "x", fractions="1%,100%", **kwargs) == 0
    assert seen["out"] == "x" and seen["o"].fractions == ("1%", "100%")
    for key, value in kwargs.items():
        assert getattr(seen["o"], key) == value, key


def test_cli_flags_reach_the_commands(monkeypatch):
    """Every flag of `simclr pipeline` / `simclr distill` (generated from the options dataclasses) arrives."""
    import simclr.distill
    import simclr.pipeline
    from simclr.cli import main
    from simclr.distill import DistillOptions

    seen = {}
    monkeypatch.setattr(simclr.pipeline, "run_pipeline", lambda cfg, out, o: seen.update(o=o, out=out) or {})
    argv = ["pipeline", "--preset", "fashion-mnist", "--out", "x", "--fractions", "1%,100%", "--pretrain-epochs",
            "2", "--finetune-epochs", "3", "--distill-epochs", "4", "--distill-init", "scratch", "--quick",
            "--seed", "5", "--distill-alpha", "0.3", "--distill-temperature", "1"]  # fmt: skip
    assert main(argv) == 0
    o = seen["o"]
    assert seen["out"] == "x" and o.fractions == ("1%", "100%") and o.pretrain_epochs == 2 and o.quick
    assert (o.finetune_epochs, o.distill_epochs, o.distill_init, o.seed) == (3, 4, "scratch", 5)
    assert (o.distill_alpha, o.distill_temperature) == (0.3, 1.0)
    with pytest.raises(SimCLRError, match="--out"):
        pipeline_command(load_config(preset="fashion-mnist"), None)

    monkeypatch.setattr(simclr.distill, "distill_command", lambda *a, **k: seen.update(args=a, kwargs=k))
    argv = ["distill", "--teacher", "T", "--student", "resnet18", "--student-width", "0.25", "--alpha", "0.9",
            "--no-augment", "--cache-teacher", "--temperature", "1", "--epochs", "7"]  # fmt: skip
    assert main(argv) == 0
    kwargs = seen["kwargs"]
    assert seen["args"] == ("T",) and kwargs["student"] == "resnet18" and kwargs["student_width"] == 0.25
    assert not kwargs["augment"] and kwargs["cache_teacher"] and kwargs["alpha"] == 0.9
    assert kwargs["temperature"] == 1.0 and kwargs["epochs"] == 7
    fields = set(DistillOptions.__dataclass_fields__) - {"student_arch", "student_width"}
    assert fields <= set(kwargs), fields - set(kwargs)  # every option field is passed on


@pytest.mark.slow
def test_pipeline_quick_on_fashion_mnist(tmp_path):
    """The README demo's path with --quick: the real preset and data, a few steps per stage."""
    from pathlib import Path

    root = Path("/usr/share/datasets/fashion-mnist")
    if not root.is_dir():
        pytest.skip("Fashion-MNIST not installed")
    cfg = load_config(preset="fashion-mnist", overrides=[f"data.path={root}", "train.device=cpu"])
    assert pipeline_command(cfg, str(tmp_path / "demo"), quick=True) == 0
    table = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert table["columns"] == ["1%", "10%", "100%"] and table["dataset"] == "fashion-mnist"
    assert all(r["cells"] for r in table["rows"])


def test_a_pretraining_stopped_at_max_steps_is_resumed_not_skipped(tmp_path, capsys):
    """A `--set train.max_steps=N` smoke run in the pipeline's pretrain folder is continued to the end of its
    schedule by a pipeline without max_steps; a pipeline whose own max_steps it reached (--quick) skips it."""
    from simclr.engine import pretrain
    from simclr.pipeline import _pretrain_stage

    cfg = tiny_config(write_npz(tmp_path / "tiny.npz", n_train=32))
    cfg.train.batch_size, cfg.train.epochs, cfg.monitor.knn = 16, 1, False
    folder = tmp_path / "pipe" / "pretrain"
    cfg.train.max_steps = 1
    assert pretrain(cfg, folder)["status"] == "stopped_at_max_steps"
    capsys.readouterr()
    assert _pretrain_stage(cfg, folder)["steps"] == 1  # the pipeline's own stopping point: done
    assert "skipped" in capsys.readouterr().out
    cfg.train.max_steps = None
    summary = _pretrain_stage(cfg, folder)
    assert "pretrain (resumed)" in capsys.readouterr().out
    assert summary["status"] == "finished" and summary["steps"] == 2
    assert json.loads((folder / "summary.json").read_text())["status"] == "finished"
    assert _pretrain_stage(cfg, folder)["steps"] == 2 and "skipped" in capsys.readouterr().out


def test_pipeline_distill_alpha_one_reads_no_label(tmp_path):
    """--distill-alpha 1: the student sees only the unlabelled images and the teacher's probabilities."""
    npz = write_npz(tmp_path / "tiny.npz")
    opts = PipelineOptions(fractions=("50%", "100%"), quick=True, distill_alpha=1.0)
    run_pipeline(tiny_config(npz), tmp_path / "pipe", opts)
    assert not (tmp_path / "pipe" / "distill-100pct").exists()  # the demo distils the fractions under 100 %
    distilled = json.loads((tmp_path / "pipe" / "distill-50pct" / "metrics.json").read_text())
    assert distilled["alpha"] == 1.0 and distilled["n_labelled"] == 0


def test_finetune_epochs_rule_on_fashion_mnist_sizes():
    """150 steps, at least 1 epoch (--full: 3): 1 % (600 images, batch 120) 30, 10 % (6,000, batch 256) 7, 100 % 1."""
    from simclr.pipeline import finetune_epochs_for

    o = PipelineOptions()
    assert [finetune_epochs_for(n, b, o) for n, b in ((600, 120), (6000, 256), (60000, 256))] == [30, 7, 1]
    full = PipelineOptions(full=True)
    assert [finetune_epochs_for(n, b, full) for n, b in ((600, 120), (6000, 256), (60000, 256))] == [30, 7, 3]
    from simclr.pipeline import _linear_paper_batch

    # the demo's 3-epoch paper-protocol linear eval at batch 256; --full: linear_eval's paper default
    assert _linear_paper_batch(o) == 256 and _linear_paper_batch(full) is None
    assert _linear_paper_batch(PipelineOptions(linear_paper_batch=1024)) == 1024
    assert finetune_epochs_for(60000, 256, PipelineOptions(finetune_epochs=5)) == 5


def test_distill_recipes_and_schedules():
    """paper (the default): LARS with the pretraining schedule; short: SGD; demo 1 epoch, --full 4."""
    from simclr.pipeline import _distill_options

    paper, short = _distill_options(PipelineOptions()), _distill_options(PipelineOptions(distill_recipe="short"))
    assert (short.optimizer, paper.optimizer) == ("sgd", "lars") and short.epochs == paper.epochs == 1
    assert _distill_options(PipelineOptions(full=True)).epochs == 4
    assert _distill_options(PipelineOptions(distill_epochs=2, distill_alpha=1.0)).alpha == 1.0
    with pytest.raises(SimCLRError, match="distill_recipe"):
        run_pipeline(None, "unused", PipelineOptions(distill_recipe="long"))
