"""`simclr pretrain` under torchrun: two gloo CPU processes train like one, and runs resume across world sizes.

The real launcher (``python -m torch.distributed.run --standalone``) starts the real command on a tiny .npz.
With the random augmentations switched off, the views no longer depend on each rank's generator, so the
two-process run must log the same losses and reach the same weights as one process on the same global batch
(end to end: data sharding, global BN, gathered negatives, DDP, LARS, schedule, logging). A run stopped at
``train.max_steps`` then continues with ``--resume`` on another number of processes. The ranks take each
step's decisions together: a SIGTERM that reaches only one worker, or a loss that is NaN on only one rank,
stops or skips the step on both instead of leaving them in mismatched collectives.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
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


def torchrun_cmd(nproc: int, args: list[str], logs: Path, script: Path | None = None) -> list[str]:
    """``torchrun --standalone --nproc_per_node NPROC -m simclr ARGS`` (or ``SCRIPT ARGS``), output under ``logs``."""
    entry = [str(script)] if script is not None else ["-m", "simclr"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "--redirects", "3", "--log-dir", str(logs), *entry, *args]  # fmt: skip


def torchrun(nproc: int, args: list[str], logs: Path, script: Path | None = None) -> subprocess.CompletedProcess:
    """Runs :func:`torchrun_cmd` to the end; each rank's output under ``logs``."""
    cmd = torchrun_cmd(nproc, args, logs, script)
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
    assert f"stopped at step {STOP} of {STEPS}" in logs["0/stdout"] and "step" in logs["0/stderr"]  # summary, bar
    assert json.loads((runs["two"] / "summary.json").read_text())["status"] == "stopped_at_max_steps"
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


def worker_pids(launcher: int) -> dict[int, int]:
    """``{rank: pid}`` of the workers a torchrun process started: its children, by ``RANK`` in their environment."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            env = (stat.parent / "environ").read_bytes().split(b"\0") if ppid == launcher else []
        except (OSError, ValueError, IndexError):  # gone meanwhile, or not ours
            continue
        for item in env:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(stat.parent.name)
    return found


def test_a_signal_to_one_worker_stops_both_at_the_same_step(tmp_path):
    """SIGTERM to rank 1 only (as a scheduler or an OOM guard might send it): both ranks stop after the same
    step, rank 0 writes that step's checkpoint and the summary, and --resume continues. Before the ranks
    agreed on stopping, rank 1 went to its final checkpoint's all-gather while rank 0 started the next step's
    collectives: a hang or a crash, and no checkpoint of the stopping step."""
    data = write_npz(tmp_path / "d.npz")
    run, logs = tmp_path / "run", tmp_path / "logs"
    settings = {**TINY, "train.epochs": "500"}  # 2000 steps: only the signal ends this run
    cmd = torchrun_cmd(2, pretrain_args(data, run, settings), logs)
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CHILD_ENV)
    workers: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 60
        log = run / "metrics.jsonl"
        while not log.is_file() or log.read_text().count("\n") < 2:  # two steps logged: both ranks in the loop
            assert launcher.poll() is None and time.monotonic() < deadline, rank_logs(logs)
            time.sleep(0.05)
        workers = worker_pids(launcher.pid)
        assert set(workers) == {0, 1}, workers
        os.kill(workers[1], signal.SIGTERM)
        _, err = launcher.communicate(timeout=20)  # a hang, before
    finally:
        for pid in [*workers.values(), launcher.pid]:  # the workers run in sessions of their own
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        launcher.wait()
    ranks = rank_logs(logs)
    assert launcher.returncode != 0  # the workers exit with 130, torchrun reports that
    assert "Traceback" not in ranks["0/stderr"] + ranks["1/stderr"], ranks
    assert "interrupted by signal" in ranks["0/stdout"], (err, ranks)
    summary = json.loads((run / "summary.json").read_text())
    saved = load_checkpoint(run / "checkpoints" / "last.pt")
    stopped = summary["steps"]
    assert summary["status"] == "interrupted" and saved["run_state"]["step"] == stopped >= 2
    assert len(saved["rng"]["augment"]) == 2  # the final checkpoint's all-gather was a collective of both ranks
    assert metrics(run)[-1]["step"] == stopped

    assert main(pretrain_args(data, run, settings, "--resume", "--set", f"train.max_steps={stopped + 2}")) == 0
    assert [r["step"] for r in metrics(run)] == list(range(1, stopped + 3))
    assert json.loads((run / "summary.json").read_text())["status"] == "stopped_at_max_steps"


# Rank 1's NT-Xent is NaN at its second step, rank 0's stays finite (the loss of each rank is over its own rows).
NAN_ON_RANK_1 = """
import os, sys
import simclr.step as step  # the step calls nt_xent
from simclr.cli import main

if os.environ["RANK"] == "1":
    real, calls = step.nt_xent, []

    def nt_xent(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == 2 else loss

    step.nt_xent = nt_xent
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("micro_batch", [None, 4])
def test_a_loss_non_finite_on_one_rank_is_skipped_on_both(tmp_path, micro_batch):
    """Both ranks skip the step (before, rank 1 skipped its backward alone while rank 0 waited in DDP's
    all-reduce); also with gradient caching, whose skip test runs inside simclr.gradcache."""
    data = write_npz(tmp_path / "d.npz")
    script = tmp_path / "nan_on_rank_1.py"
    script.write_text(NAN_ON_RANK_1)
    run = tmp_path / "run"
    settings = {**TINY, "train.max_steps": "4"}
    if micro_batch:
        settings["train.micro_batch"] = str(micro_batch)
    torchrun(2, pretrain_args(data, run, settings), tmp_path / "logs", script=script)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["skipped_steps"] == 1, summary
    logged = metrics(run)
    assert [r.get("skipped_steps", 0) for r in logged] == [0, 1, 1, 1]
    saved = load_checkpoint(run / "checkpoints" / "last.pt")
    assert saved["run_state"]["skipped_steps"] == 1 and saved["run_state"]["bad_steps"] == 0
    assert all(torch.isfinite(v).all() for v in saved["module"].values() if v.is_floating_point())
