"""Crash safety of pretraining: kill it anywhere and lose nothing; numerical and disk faults stop it cleanly.

The kill tests run the real command (``python -m simclr.cli pretrain``) on a tiny .npz, interrupt it with
SIGKILL (at random moments and in the middle of checkpoint writes), SIGTERM and SIGINT, resume it with
``--resume`` each time, and require the stitched-together run to log exactly the losses of an uninterrupted
run with the same seed (CPU, deterministic mode). The default version is bounded (a few interruptions);
``-m slow`` runs many more. Numerical and disk faults are injected in-process.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import simclr.checkpoint as ckpt_mod
import simclr.engine as engine
import simclr.runfolder as runfolder
import simclr.step as step_mod
from simclr.augment import Augment
from simclr.checkpoint import load_checkpoint
from simclr.cli import main
from simclr.config import load_config

# 64 images of 8x8, batches of 16: 4 steps per epoch; a step takes well under a second on one CPU core.
TINY = {
    "model.width_multiplier": "0.125",
    "train.batch_size": "16",
    "train.checkpoint_every": "1",  # a checkpoint write at every step: many chances to kill inside one
    "train.log_every": "1",
    "train.deterministic": "true",
    "monitor.knn": "false",
    "optim.warmup_epochs": "0.5",
}


def write_npz(path: Path, n: int = 64, side: int = 8) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8), labels=np.arange(n) % 10)
    return path


def tiny_config(data: Path, **overrides: str):
    values = {**TINY, "train.deterministic": "false", "train.epochs": "2", **overrides}
    sets = [f"{k}={v}" for k, v in values.items()]
    return load_config(overrides=["data.dataset=npz", f"data.path={data}", "train.device=cpu", *sets])


def cli_args(data: Path, run: Path, *extra: str) -> list[str]:
    """`simclr pretrain` arguments for the tiny run, in-process (deterministic mode off: not needed here)."""
    sets = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    return ["pretrain", "--dataset", "npz", "--data", str(data), "--device", "cpu", "--out", str(run), *sets,
            "--set", "train.deterministic=false", *extra]  # fmt: skip


def metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by SIGKILL: the resumed run drops it
            pass
    return [r for r in out if "loss" in r]


def temp_files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*.tmp"))


def all_finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if torch.is_tensor(v) and v.is_floating_point())


# ---- numerical faults (in-process) ---------------------------------------------------------------------------


class Inject:
    """Wraps ``simclr.step.nt_xent``: from optimizer step ``start`` (0-based) for ``count`` steps it returns
    NaN (``mode="loss"``) or a finite loss whose gradient is NaN (``mode="grad"``)."""

    def __init__(self, start: int, count: int, mode: str = "loss"):
        self.start, self.count, self.mode, self.calls = start, count, mode, 0
        self.real = step_mod.nt_xent

    def __call__(self, z_a, z_b, *args, **kwargs):
        step, self.calls = self.calls, self.calls + 1
        loss = self.real(z_a, z_b, *args, **kwargs)
        if not self.start <= step < self.start + self.count:
            return loss
        if self.mode == "loss":
            return loss * float("nan")
        # value + 0, but d sqrt(|x|)/dx at x = 0 is inf * 0 = NaN: a finite loss with a NaN gradient
        return loss + (z_a - z_a.detach()).abs().sqrt().sum()


class Snapshots:
    """Wraps the run folder's ``save_checkpoint`` to keep a copy of every checkpoint's module state by step."""

    def __init__(self):
        self.by_step: dict[int, dict] = {}
        self.real = runfolder.save_checkpoint

    def __call__(self, state, path):
        self.by_step[state["run_state"]["step"]] = {k: v.clone() for k, v in state["module"].items()}
        return self.real(state, path)


@pytest.mark.parametrize("mode", ["loss", "grad"])
def test_a_transient_non_finite_step_is_skipped_and_counted(tmp_path, monkeypatch, mode):
    data = write_npz(tmp_path / "d.npz")
    snaps = Snapshots()
    monkeypatch.setattr(step_mod, "nt_xent", Inject(start=3, count=1, mode=mode))
    monkeypatch.setattr(runfolder, "save_checkpoint", snaps)
    summary = engine.pretrain(tiny_config(data), tmp_path / "run")
    assert summary["status"] == "finished" and summary["steps"] == 8 and summary["skipped_steps"] == 1
    logged = metrics(tmp_path / "run")
    assert [r["step"] for r in logged] == list(range(1, 9))
    assert "skipped_steps" not in logged[2] and logged[3]["skipped_steps"] == 1 and logged[7]["skipped_steps"] == 1
    # the skipped step (the 4th) left no trace, BN running statistics included: checkpoint 4 == checkpoint 3
    before, after = snaps.by_step[3], snaps.by_step[4]
    assert all(torch.equal(value, after[name]) for name, value in before.items())
    stem = "model.encoder.stem.0.0.weight"
    assert not torch.equal(before[stem], snaps.by_step[5][stem])  # a good step does change the weights
    final = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert final["run_state"]["skipped_steps"] == 1 and all_finite(final["module"])


@pytest.mark.parametrize("mode", ["loss", "grad"])
def test_too_many_non_finite_steps_stop_with_one_clear_line(tmp_path, monkeypatch, mode, capsys):
    data = write_npz(tmp_path / "d.npz")
    monkeypatch.setattr(step_mod, "nt_xent", Inject(start=4, count=100, mode=mode))
    run = tmp_path / "run"
    code = main(cli_args(data, run, "--set", "train.epochs=3", "--set", "train.max_bad_steps=3"))
    err = capsys.readouterr().err
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: "), err[-2000:]  # on a line of its own, after the progress bar
    # steps 5, 6, 7 (metrics.jsonl numbering) are bad; the 7th stops the run
    lr = step_mod.lr_at(6, 12, 2, 0.3 * 16 / 256)
    assert "non-finite" in last and "step 7" in last and f"lr {lr:.4g}" in last, last
    assert str(run / "checkpoints" / "last.pt") in last and "intact" in last
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert all_finite(state["module"]) and all_finite(state["model"])
    assert state["run_state"]["step"] <= 7


def test_a_real_divergence_stops_with_the_checkpoint_intact(tmp_path, capsys):
    # no injection: a learning rate of 1e30 blows the weights up after one step, and the loss goes NaN
    data = write_npz(tmp_path / "d.npz")
    run = tmp_path / "run"
    code = main(cli_args(data, run, "--set", "optim.base_lr=1e30", "--set", "optim.warmup_epochs=0",
                         "--set", "train.max_bad_steps=2"))  # fmt: skip
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("error: ") and "non-finite loss or gradient at step" in last, last
    assert "lr " in last and "last.pt is intact" in last
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert all_finite(state["module"]) and state["run_state"]["bad_steps"] >= 1


def test_resume_with_another_model_is_one_line(tmp_path, capsys):
    data = write_npz(tmp_path / "d.npz")
    run = tmp_path / "run"
    assert main(cli_args(data, run, "--set", "train.max_steps=1")) == 0
    capsys.readouterr()
    code = main(cli_args(data, run, "--set", "model.width_multiplier=0.25", "--resume"))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert "last.pt" in err and "different model" in err
    assert load_checkpoint(run / "checkpoints" / "last.pt")["run_state"]["step"] == 1


def test_a_non_finite_forward_does_not_poison_batchnorm_statistics(tmp_path, monkeypatch):
    # An input that overflows the forward pass makes the loss NaN, and BN's running statistics would take
    # NaN from that batch: the skipped step must leave them as they were, in memory and in checkpoints.
    data = write_npz(tmp_path / "d.npz")
    calls = {"n": 0}
    real_two_views = Augment.two_views

    def two_views(self, images, generator, sizes=None):
        v1, v2 = real_two_views(self, images, generator, sizes)
        calls["n"] += 1
        if calls["n"] == 3:
            v1 = v1.clone()
            v1[0, 0, 0, 0] = float("inf")
        return v1, v2

    monkeypatch.setattr(Augment, "two_views", two_views)
    snaps = Snapshots()
    monkeypatch.setattr(runfolder, "save_checkpoint", snaps)
    summary = engine.pretrain(tiny_config(data), tmp_path / "run")
    assert summary["skipped_steps"] == 1 and metrics(tmp_path / "run")[2]["skipped_steps"] == 1
    assert all(all_finite(snaps.by_step[step]) for step in range(1, 9))  # every checkpoint, the 3rd included
    assert all(torch.equal(v, snaps.by_step[3][k]) for k, v in snaps.by_step[2].items())


# ---- disk faults (in-process) --------------------------------------------------------------------------------


@pytest.mark.parametrize("err, expect", [(errno.ENOSPC, "disk full"), (errno.EROFS, "Read-only file system")])
def test_checkpoint_write_failure_mid_run_stops_cleanly(tmp_path, monkeypatch, capsys, err, expect):
    data = write_npz(tmp_path / "d.npz")
    real_save, calls = torch.save, {"n": 0}

    def failing_save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= 3:  # the third checkpoint write fails half-way
            f.write(b"\0" * 1000)
            raise OSError(err, os.strerror(err))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt_mod.torch, "save", failing_save)
    run = tmp_path / "run"
    code = main(cli_args(data, run))
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("error: ") and "last.pt" in last and expect in last, last
    assert "previous checkpoint is intact" in last
    monkeypatch.undo()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["run_state"]["step"] == 2
    assert temp_files(run) == []


def test_metrics_write_failure_mid_run_stops_cleanly(tmp_path, monkeypatch, capsys):
    data = write_npz(tmp_path / "d.npz")
    calls = {"n": 0}

    def full_disk_open(file, mode="r", *args, **kwargs):
        if "a" in mode:
            calls["n"] += 1
            if calls["n"] >= 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        return open(file, mode, *args, **kwargs)

    monkeypatch.setattr(runfolder, "open", full_disk_open, raising=False)
    run = tmp_path / "run"
    code = main(cli_args(data, run))
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err and last.startswith("error: "), err[-2000:]
    assert "metrics.jsonl" in last and "No space left on device" in last, last
    assert load_checkpoint(run / "checkpoints" / "last.pt")["run_state"]["step"] == 2


@pytest.mark.parametrize("where", ["file", "dev-full"])
def test_unwritable_run_folder_is_one_clear_line(tmp_path, capsys, where):
    data = write_npz(tmp_path / "d.npz")
    out = data / "run" if where == "file" else Path("/dev/full/run")  # a path through a non-folder
    code = main(cli_args(data, out))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(out) in last and "run folder" in last, last


def test_fresh_start_in_a_folder_without_checkpoint_restarts_the_log(tmp_path):
    # A run killed before its first checkpoint leaves metrics.jsonl lines; starting again must not keep them.
    data = write_npz(tmp_path / "d.npz")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 99.0}\n{"step": 2, "loss": 98.0}\n{"step": 3, "lo')
    engine.pretrain(tiny_config(data, **{"train.epochs": "1"}), run)
    assert [r["step"] for r in metrics(run)] == [1, 2, 3, 4] and all(r["loss"] < 90 for r in metrics(run))


# ---- kill anywhere, lose nothing (real processes) ---------------------------------------------------------------

# One thread: several times faster for a tiny model on a busy machine, and the same in every process.
CHILD_ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
WAIT = 180.0  # seconds any single wait may take before the test calls the run hung


def pretrain_command(data: Path, run: Path, epochs: int, resume: bool) -> list[str]:
    args = [sys.executable, "-m", "simclr.cli", "pretrain", "--dataset", "npz", "--data", str(data),
            "--out", str(run), "--device", "cpu", "--set", f"train.epochs={epochs}"]  # fmt: skip
    for key, value in TINY.items():
        args += ["--set", f"{key}={value}"]
    return args + (["--resume"] if resume else [])


def checkpoint_temps(run: Path) -> set[str]:
    try:
        return {e.name for e in os.scandir(run / "checkpoints") if e.name.endswith(".tmp")}
    except FileNotFoundError:
        return set()


def logged_steps(run: Path) -> list[int]:
    return [r["step"] for r in metrics(run)]


class Launch:
    """One `simclr pretrain` process of the run in ``run``: fresh, or ``--resume`` when a checkpoint exists."""

    def __init__(self, data: Path, run: Path, epochs: int, number: int):
        ckpt = run / "checkpoints" / "last.pt"
        self.resumed = ckpt.exists()
        self.start_step = load_checkpoint(ckpt)["run_state"]["step"] if self.resumed else 0
        self.stale_temps = checkpoint_temps(run)  # left by an earlier SIGKILL; the next good save removes them
        self.run = run
        self.log_path = run.parent / f"{run.name}.launch{number}.log"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                pretrain_command(data, run, epochs, self.resumed), stdout=log, stderr=subprocess.STDOUT, env=CHILD_ENV
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def wait_for_progress(self) -> bool:
        """Block until this process has logged a step of its own; False if it exited first."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            # lines past start_step may be the killed predecessor's until this process truncates the log,
            # which it does before printing its banner
            steps = logged_steps(self.run) if "simclr pretrain: " in self.log() else []
            if steps and steps[-1] > self.start_step:
                return True
            time.sleep(0.02)
        raise AssertionError(f"no progress in {WAIT} s:\n{self.log()}")

    def kill_inside_checkpoint_write(self) -> bool | None:
        """SIGKILL as soon as a new checkpoint temp file appears. True: killed mid-write (the temp file
        survived the kill); False: killed just after the rename; None: the process ended first."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if checkpoint_temps(self.run) - self.stale_temps:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(WAIT)
                return bool(checkpoint_temps(self.run) - self.stale_temps)
            if self.proc.poll() is not None:
                return None
            time.sleep(0.0005)  # a write takes milliseconds; a busy loop would steal the writer's CPU
        raise AssertionError(f"no checkpoint write in {WAIT} s:\n{self.log()}")

    def kill(self) -> bool:
        """SIGKILL now; False if the process had already finished."""
        if self.proc.poll() is not None:
            return False
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(WAIT)
        return self.proc.returncode == -signal.SIGKILL

    def interrupt(self, sig: int) -> bool:
        """SIGTERM / SIGINT: the run must save a checkpoint at the current step and exit with status 130."""
        if self.proc.poll() is not None:
            return False
        self.proc.send_signal(sig)
        code = self.proc.wait(WAIT)
        if code == 0:  # the signal raced the run's own end
            return False
        assert code == 130, f"exit status {code} after signal {sig}:\n{self.log()}"
        assert "interrupted by signal; resume with --resume" in self.log(), self.log()
        step = load_checkpoint(self.run / "checkpoints" / "last.pt")["run_state"]["step"]
        assert step == logged_steps(self.run)[-1], f"checkpoint at step {step}, log at {logged_steps(self.run)}"
        assert not checkpoint_temps(self.run) - self.stale_temps, "a clean exit left a temp file"
        return True


def check_after_interruption(run: Path, launch: Launch) -> None:
    """The latest checkpoint always loads, never goes back before this launch's start, never runs ahead."""
    ckpt = run / "checkpoints" / "last.pt"
    if not ckpt.exists():
        assert not launch.resumed
        return
    state = load_checkpoint(ckpt)
    assert state["kind"] == "pretrain" and all_finite(state["module"])
    step = state["run_state"]["step"]
    assert launch.start_step <= step <= max(logged_steps(run), default=0), (step, logged_steps(run))


def interrupted_run(data: Path, run: Path, epochs: int, plan: list[str], rng: random.Random) -> dict:
    """Run to the end through the interruptions in ``plan``; returns what happened, by kind."""
    done = {"sigkill_in_checkpoint_write": 0, "sigkill_after_checkpoint_rename": 0, "sigkill_random": 0,
            "sigkill_at_startup": 0, "sigterm": 0, "sigint": 0}  # fmt: skip
    for number, action in enumerate(plan):
        launch = Launch(data, run, epochs, number)
        if action == "startup":
            time.sleep(rng.uniform(0.0, 4.0))  # imports, data, model, or the first steps
            happened = launch.kill()
            key = "sigkill_at_startup"
        elif not launch.wait_for_progress():
            happened = False
        elif action == "write":
            hit = launch.kill_inside_checkpoint_write()
            happened = hit is not None
            key = "sigkill_in_checkpoint_write" if hit else "sigkill_after_checkpoint_rename"
        elif action == "random":
            time.sleep(rng.uniform(0.0, 0.4))
            happened = launch.kill()
            key = "sigkill_random"
        else:
            happened = launch.interrupt(signal.SIGTERM if action == "term" else signal.SIGINT)
            key = "sigterm" if action == "term" else "sigint"
        if not happened:  # the run finished before the interruption: nothing left to interrupt
            assert launch.proc.wait(WAIT) == 0, launch.log()
            return done
        done[key] += 1
        check_after_interruption(run, launch)
    final = Launch(data, run, epochs, len(plan))
    assert final.proc.wait(WAIT) == 0, final.log()
    return done


def assert_same_run(reference: Path, run: Path, total_steps: int, why: str) -> None:
    """Identical metrics.jsonl losses step by step, identical final checkpoints, no temp files anywhere."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    got = [json.loads(line) for line in lines]  # every line whole: cut lines were dropped on resume
    want = metrics(reference)
    assert [r["step"] for r in got] == list(range(1, total_steps + 1)), why
    assert [r["step"] for r in want] == list(range(1, total_steps + 1))
    for a, b in zip(want, got, strict=True):
        for key in ("loss", "contrastive_acc", "online_probe_acc", "lr", "epoch"):
            assert a[key] == b[key], f"step {a['step']}: {key} {a[key]} (uninterrupted) != {b[key]} ({why})"
    final, ref = (
        load_checkpoint(run / "checkpoints" / "last.pt"),
        load_checkpoint(reference / "checkpoints" / "last.pt"),
    )
    assert final["run_state"] == ref["run_state"]
    for name, value in ref["module"].items():
        assert torch.equal(value, final["module"][name]), f"{name} differs ({why})"
    assert temp_files(run) == [], why
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == total_steps


def kill_test(tmp_path: Path, epochs: int, plan: list[str], seed: int) -> dict:
    data = write_npz(tmp_path / "d.npz")
    reference_run = tmp_path / "reference"
    with open(tmp_path / "reference.log", "w") as log:  # runs alongside the interrupted one
        reference = subprocess.Popen(pretrain_command(data, reference_run, epochs, False), stdout=log,
                                     stderr=subprocess.STDOUT, env=CHILD_ENV)  # fmt: skip
    run = tmp_path / "run"
    done = interrupted_run(data, run, epochs, plan, random.Random(seed))
    assert reference.wait(WAIT) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    why = f"seed {seed}, interruptions {done}"
    assert_same_run(reference_run, run, epochs * 4, why)
    print(f"\nkills survived ({why}): {sum(done.values())}")
    return done


def test_kill_anywhere_lose_nothing(tmp_path, record_property):
    """Bounded default version: a SIGKILL inside a checkpoint write, SIGTERM, a SIGKILL at a random moment
    and SIGINT, each followed by --resume; the result equals an uninterrupted run."""
    seed = int(os.environ.get("SIMCLR_KILL_SEED", random.randrange(1 << 30)))
    done = kill_test(tmp_path, epochs=4, plan=["write", "term", "random", "int"], seed=seed)
    record_property("kills_survived", sum(done.values()))
    assert done["sigterm"] == 1 and done["sigint"] == 1 and done["sigkill_random"] == 1, done
    assert done["sigkill_in_checkpoint_write"] + done["sigkill_after_checkpoint_rename"] == 1, done


@pytest.mark.slow
def test_kill_anywhere_lose_nothing_many_times(tmp_path, record_property):
    """Opt-in (`-m slow`): 30 interruptions of every kind at random moments over a 40-step run."""
    seed = int(os.environ.get("SIMCLR_KILL_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    plan = rng.choices(["write", "random", "startup", "term", "int"], weights=[4, 3, 1, 1, 1], k=30)
    done = kill_test(tmp_path, epochs=10, plan=plan, seed=seed)
    record_property("kills_survived", sum(done.values()))
    assert done["sigkill_in_checkpoint_write"] >= 3, done
    assert sum(done.values()) >= 20, done
