"""The training loop's bookkeeping on a tiny real run."""

from __future__ import annotations

import json

import numpy as np

from simclr.config import load_config
from simclr.engine import pretrain


def test_last_epoch_is_counted_and_monitored(tmp_path):
    """Regression: the run stopped at its last step before the epoch-end work, so a 2-epoch run reported
    1 epoch and logged no kNN monitor line for its final epoch."""
    rng = np.random.default_rng(0)
    labels = np.arange(64) % 4
    images = (40 + 50 * labels[:, None, None] + rng.normal(0, 20, (64, 16, 16))).clip(0, 255).astype(np.uint8)
    npz = tmp_path / "tiny.npz"
    np.savez(npz, images=images, labels=labels, test_images=images[:32], test_labels=labels[:32])
    cfg = load_config(
        preset="fashion-mnist",
        overrides=[
            "data.dataset=npz", f"data.path={npz}", "model.width_multiplier=0.125", "model.projection_dim=16",
            "train.device=cpu", "train.batch_size=32", "train.epochs=2", "monitor.knn_train_size=64",
            "monitor.knn_test_size=32", "monitor.knn_k=5",
        ],
    )  # fmt: skip
    summary = pretrain(cfg, tmp_path / "run")
    assert summary["status"] == "finished" and summary["steps"] == 4 and summary["epochs"] == 2
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if "knn_monitor_top1" in r] == [1, 2]


def test_a_run_stopped_by_max_steps_says_so_and_resumes_to_finished(tmp_path, capsys):
    """train.max_steps before the schedule's end is not "finished" (the pipeline would take such a smoke run
    for a done pretraining); --resume continues it, and a stop exactly at the end is "finished"."""
    from simclr.cli import main

    rng = np.random.default_rng(0)
    npz = tmp_path / "tiny.npz"
    np.savez(npz, images=rng.integers(0, 256, (32, 8, 8, 3), dtype=np.uint8), labels=np.arange(32) % 4)
    run = tmp_path / "run"
    args = ["pretrain", "--dataset", "npz", "--data", str(npz), "--device", "cpu", "--out", str(run),
            "--set", "model.width_multiplier=0.0625", "--set", "train.batch_size=16", "--set", "train.epochs=1",
            "--set", "monitor.knn=false"]  # fmt: skip
    assert main([*args, "--set", "train.max_steps=1"]) == 0  # a deliberate stop: exit status 0
    assert "stopped at step 1 of 2 (train.max_steps)" in capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "stopped_at_max_steps" and summary["steps"] == 1 and summary["total_steps"] == 2
    assert main([*args, "--resume", "--set", "train.max_steps=2"]) == 0  # max_steps = the schedule's end
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 2 and summary["epochs"] == 1


def test_a_run_saved_before_the_layout_keys_resumes_with_its_own_layout(tmp_path):
    """A checkpoint whose config predates model.first_block_projection / cifar_stem_max_side resumes with the
    older layout it was trained with, although the command line's config now defaults to the official one."""
    import torch

    from simclr.checkpoint import load_checkpoint, save_checkpoint
    from simclr.cli import main

    rng = np.random.default_rng(0)
    npz = tmp_path / "tiny.npz"
    np.savez(npz, images=rng.integers(0, 256, (32, 8, 8, 3), dtype=np.uint8), labels=np.arange(32) % 4)
    run = tmp_path / "run"
    args = ["pretrain", "--dataset", "npz", "--data", str(npz), "--device", "cpu", "--out", str(run),
            "--set", "model.width_multiplier=0.0625", "--set", "train.batch_size=16", "--set", "train.epochs=1",
            "--set", "monitor.knn=false"]  # fmt: skip
    assert main([*args, "--set", "train.max_steps=1", "--set", "model.first_block_projection=false"]) == 0
    path = run / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    del state["config"]["model"]["first_block_projection"], state["config"]["model"]["cifar_stem_max_side"]
    save_checkpoint(state, path)
    assert main([*args, "--resume", "--set", "train.max_steps=2"]) == 0
    resumed = load_checkpoint(path)
    assert resumed["config"]["model"]["first_block_projection"] is False
    assert not any(k.startswith("encoder.block_group1.0.shortcut") for k in resumed["model"])
    trained = [k for k, v in state["model"].items() if v.is_floating_point()]
    assert any(not torch.equal(resumed["model"][k], state["model"][k]) for k in trained)  # it did train a step
