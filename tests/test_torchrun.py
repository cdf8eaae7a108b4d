"""`simclr pretrain` under torchrun: two gloo CPU processes train like one, and runs resume across world sizes.

The real launcher (``python -m torch.distributed.run --standalone``) starts the real command on a tiny .npz.
With the random augmentations switched off, the views no longer depend on each rank's generator, so the
two-process run must log the same losses and reach the same weights as one process on the same global batch
(end to end: data sharding, global BN, gathered negatives, DDP, LARS, schedule, logging). A run stopped at
``train.max_steps`` then continues with ``--resume`` on another number of processes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from simclr.checkpoint import load_checkpoint
from simclr.cli import main

STEPS = 8  # 64 images, global batch 16: 4 steps per epoch, 2 epochs
STOP = 3  # the first invocation stops here (train.max_steps)
TINY = {
    "model.width_multiplier": "0.125",
    "train.batch_size": "16",
    "train.epochs": "2",
    "train.log_every": "1",
    "monitor.knn": "false",
    "optim.warmup_epochs": "0.5",  # a learning rate large enough for the weights to move
}
# Views that do not depend on the augmentation generator: each is the (normalised) image itself.
FIXED_VIEWS = {
    "augment.crop": "false",
    "augment.flip": "false",
    "augment.color_jitter_prob": "0",
    "augment.grayscale_prob": "0",
    "augment.blur_prob": "0",
}
CHILD_ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")


def write_npz(path: Path, n: int = 64, side: int = 8) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8), labels=np.arange(n) % 10)
    return path


def pretrain_args(data: Path, run: Path, settings: dict[str, str], *extra: str) -> list[str]:
    sets = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
    return ["pretrain", "--dataset", "npz", "--data", str(data), "--device", "cpu", "--out", str(run), *sets, *extra]


def torchrun(nproc: int, args: list[str], logs: Path) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node NPROC -m simclr ARGS``; each rank's output under ``logs``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "--redirects", "3", "--log-dir", str(logs), "-m", "simclr", *args]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=CHILD_ENV)
    assert result.returncode == 0, f"torchrun exit status {result.returncode}\n{result.stderr}\n{rank_logs(logs)}"
    return result


def rank_logs(logs: Path) -> dict[str, str]:
    """``{"0/stdout": ..., "1/stderr": ...}`` from torchrun's ``--log-dir`` (one folder per rank)."""
    files = sorted(logs.glob("*/attempt_0/*/std*.log"))
    return {f"{f.parent.name}/{f.stem}": f.read_text() for f in files}


def metrics(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def assert_same_weights(run_a: Path, run_b: Path) -> None:
    a = load_checkpoint(run_a / "checkpoints" / "last.pt")["module"]
    b = load_checkpoint(run_b / "checkpoints" / "last.pt")["module"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One process for all 8 steps (the reference), and two processes stopped at step 3."""
    root = tmp_path_factory.mktemp("torchrun")
    data = write_npz(root / "d.npz")
    settings = {**TINY, **FIXED_VIEWS}
    assert main(pretrain_args(data, root / "one", settings)) == 0
    torchrun(2, pretrain_args(data, root / "two", {**settings, "train.max_steps": str(STOP)}), root / "logs")
    return {"data": data, "one": root / "one", "two": root / "two", "logs": root / "logs", "settings": settings}


def test_two_processes_train_like_one(runs):
    one, two = metrics(runs["one"]), metrics(runs["two"])
    assert [r["step"] for r in two] == list(range(1, STOP + 1))
    for r1, r2 in zip(one, two, strict=False):
        assert math.isfinite(r2["loss"])
        # The logged loss is the global batch's (mean over ranks), not rank 0's share of it.
        assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-5), (r1, r2)
        assert r2["online_probe_acc"] == pytest.approx(r1["online_probe_acc"])
    saved = load_checkpoint(runs["two"] / "checkpoints" / "last.pt")
    assert saved["run_state"]["step"] == STOP and saved["run_state"]["batch_in_epoch"] == STOP
    assert len(saved["rng"]["augment"]) == 2  # every rank's augmentation stream
    assert json.loads((runs["two"] / "summary.json").read_text())["world_size"] == 2


def test_only_rank_zero_writes_and_prints(runs):
    files = {p.relative_to(runs["two"]).as_posix() for p in runs["two"].rglob("*") if p.is_file()}
    files = {f for f in files if not f.startswith("tb/")}  # TensorBoard, when installed
    assert files == {"config.yaml", "metrics.jsonl", "summary.json", "checkpoints/last.pt"}
    assert len(metrics(runs["two"])) == STOP  # one line per step, not one per rank
    logs = rank_logs(runs["logs"])
    assert set(logs) == {"0/stdout", "0/stderr", "1/stdout", "1/stderr"}
    assert logs["0/stdout"].count("simclr pretrain: 64 images") == 1, logs
    assert "finished" in logs["0/stdout"] and "step" in logs["0/stderr"]  # summary line, progress bar
    assert logs["1/stdout"] == "" and logs["1/stderr"] == "", logs


def test_two_process_run_resumes_on_one(runs, tmp_path):
    run = tmp_path / "two"
    shutil.copytree(runs["two"], run)
    # Without --set train.max_steps this invocation runs to the end of the schedule.
    assert main(pretrain_args(runs["data"], run, runs["settings"], "--resume")) == 0
    got, want = metrics(run), metrics(runs["one"])
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    for r1, r2 in zip(want, got, strict=True):
        assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-4), (r1, r2)
    saved = load_checkpoint(run / "checkpoints" / "last.pt")
    assert saved["run_state"]["step"] == STEPS and saved["run_state"]["epoch"] == 2
    assert len(saved["rng"]["augment"]) == 1
    # Same data order, fixed views: the 2 + 1 process run ends where the 1-process run does.
    assert_same_weights(runs["one"], run)


def test_one_process_run_resumes_on_two(tmp_path):
    data = write_npz(tmp_path / "d.npz")
    run = tmp_path / "run"
    assert main(pretrain_args(data, run, {**TINY, "train.max_steps": str(STOP)})) == 0
    result = torchrun(2, pretrain_args(data, run, TINY, "--resume"), tmp_path / "logs")
    assert "augmentation streams re-seeded" in rank_logs(tmp_path / "logs")["0/stdout"], result.stderr
    got = metrics(run)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    assert all(math.isfinite(r["loss"]) for r in got)
    saved = load_checkpoint(run / "checkpoints" / "last.pt")
    assert saved["run_state"]["step"] == STEPS
    gen = saved["rng"]["augment"]
    # Two ranks, two different augmentation streams (restoring the one saved stream on both would repeat
    # every view of rank 0 on rank 1).
    assert len(gen) == 2 and not torch.equal(gen[0], gen[1])
