"""The `simclr` command: every user error is one line `error: <file or key>: <problem>`, exit status 2.

A few cases run the real command in a subprocess (``python -m simclr.cli``) to check what a user sees on the
terminal, traceback-free; the rest call :func:`simclr.cli.main` in-process, which is the same code path.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from simclr import __version__
from simclr.checkpoint import save_checkpoint
from simclr.cli import main
from simclr.config import Config, config_to_dict
from simclr.models.build import build_model

TINY = ["--set", "model.width_multiplier=0.125", "--set", "train.batch_size=16", "--set", "monitor.knn=false"]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m simclr.cli ARGS`` with the test's interpreter, on the CPU."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    return subprocess.run(
        [sys.executable, "-m", "simclr.cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def assert_one_line_error(stderr: str, code: int, *expect: str) -> str:
    """stderr is exactly one line, ``error: ...``, containing ``expect``; the exit status is 2."""
    assert code == 2, f"exit status {code}, stderr:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip("\n").split("\n")
    assert len(lines) == 1, f"expected one line, got:\n{stderr}"
    assert lines[0].startswith("error: "), lines[0]
    for text in expect:
        assert text in lines[0], lines[0]
    return lines[0]


def in_process(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_npz(path: Path, n: int = 64, side: int = 8) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8), labels=np.arange(n) % 10)
    return path


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def fake_run(run: Path, width: float = 0.125, kind: str = "pretrain", weights: bool = True) -> Path:
    """A run folder whose checkpoint has a resnet18 x``width`` config (and weights when asked)."""
    cfg = Config()
    cfg.model.width_multiplier = width
    state = {"kind": kind, "config": config_to_dict(cfg), "image_size": 8}
    if weights:
        state["model"] = build_model(cfg.model, 8).state_dict()
    if kind == "pretrain":  # the engine's other parts, as placeholders: only the config is read before failing
        state.update(module={}, optimizer={}, run_state={}, rng={})
    return save_checkpoint(state, run / "checkpoints" / "last.pt")


# ---- the real command ---------------------------------------------------------------------------------------


def test_python_dash_m_runs_the_cli():
    result = run_cli("--version")
    assert result.returncode == 0 and __version__ in result.stdout


def test_no_command_prints_help(capsys):
    code, out, _ = in_process(capsys)
    assert code == 0 and "pretrain" in out


def test_subprocess_errors_are_one_line(tmp_path):
    """What a user sees: a missing file, a corrupt archive, a bad key, a junk checkpoint: one line each."""
    truncated = tmp_path / "cut.npz"
    truncated.write_bytes(write_npz(tmp_path / "ok.npz").read_bytes()[:500])
    junk_run = tmp_path / "junk_run"
    (junk_run / "checkpoints").mkdir(parents=True)
    (junk_run / "checkpoints" / "last.pt").write_bytes(os.urandom(3000))
    evil_run = tmp_path / "evil_run"  # protocol 4 also made torch print a UserWarning before the error line
    (evil_run / "checkpoints").mkdir(parents=True)
    (evil_run / "checkpoints" / "last.pt").write_bytes(pickle.dumps(Payload(tmp_path / "PWNED"), protocol=4))
    cases = [
        (["pretrain", "--dataset", "npz", "--data", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "r")],
         ["missing.npz", "not found"]),
        (["pretrain", "--dataset", "npz", "--data", str(truncated), "--out", str(tmp_path / "r")],
         ["cut.npz", "not a valid .npz"]),
        (["pretrain", "--set", "train.epoch=3"], ["train.epoch", "valid keys"]),
        (["pretrain", "--dataset", "npz", "--data", str(tmp_path / "ok.npz"), "--out", str(junk_run), "--resume",
          *TINY], ["last.pt", "not a readable checkpoint"]),
        (["knn", str(junk_run)], ["last.pt", "not a readable checkpoint"]),
        (["knn", str(evil_run)], ["last.pt", "not a torch.save file"]),
    ]  # fmt: skip
    for args, expect in cases:
        result = run_cli(*args)
        assert_one_line_error(result.stderr, result.returncode, *expect)
    assert not (tmp_path / "PWNED").exists()


# ---- the same path, in-process ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, expect",
    [
        ("optim.base_rate=1", "optim.base_rate"),
        ("train.epochs=many", "expected an integer"),
        ("train.log_every=0", "train.log_every"),
        ("train.device=tpu", "unknown device"),
        ("optim.base_lr", "key=value"),
    ],
)
def test_config_errors(capsys, override, expect):
    code, _, err = in_process(capsys, "pretrain", "--set", override, "--print-config")
    assert_one_line_error(err, code, expect)


def test_bad_config_file_and_preset(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("train:\n  batch_size: [256\n")
    code, _, err = in_process(capsys, "pretrain", "--config", str(tmp_path / "c.yaml"), "--print-config")
    assert_one_line_error(err, code, "c.yaml", "not valid YAML")
    code, _, err = in_process(capsys, "pretrain", "--preset", "imagenet-v7", "--print-config")
    assert_one_line_error(err, code, "imagenet-v7")


def test_run_folder_errors(tmp_path, capsys):
    data = write_npz(tmp_path / "d.npz")
    common = ["pretrain", "--dataset", "npz", "--data", str(data), "--device", "cpu", *TINY]
    code, _, err = in_process(capsys, *common, "--out", str(tmp_path / "empty"), "--resume")
    assert_one_line_error(err, code, "nothing to resume")
    fake_run(tmp_path / "taken")
    code, _, err = in_process(capsys, *common, "--out", str(tmp_path / "taken"))
    assert_one_line_error(err, code, "taken", "already holds a run", "--resume")
    code, _, err = in_process(capsys, "pretrain", "--dataset", "npz", "--data", str(data))
    assert_one_line_error(err, code, "--out")


def test_resume_with_another_model_is_one_line(tmp_path, capsys):
    data = write_npz(tmp_path / "d.npz")
    fake_run(tmp_path / "run", width=0.25)
    code, _, err = in_process(capsys, "pretrain", "--dataset", "npz", "--data", str(data), "--device", "cpu",
                              "--out", str(tmp_path / "run"), "--resume", *TINY)  # fmt: skip
    assert_one_line_error(err, code, "last.pt", "different model")


def test_resume_from_a_checkpoint_of_another_kind_is_one_line(tmp_path, capsys):
    # e.g. a fine-tuned classifier copied over last.pt: it has a config but no optimizer, no counters
    data = write_npz(tmp_path / "d.npz")
    fake_run(tmp_path / "run", kind="finetune", weights=False)
    code, _, err = in_process(capsys, "pretrain", "--dataset", "npz", "--data", str(data), "--device", "cpu",
                              "--out", str(tmp_path / "run"), "--resume", *TINY)  # fmt: skip
    assert_one_line_error(err, code, "last.pt", "not a pretraining checkpoint")


def test_evaluation_of_a_mismatched_checkpoint_is_one_line(tmp_path, capsys):
    path = fake_run(tmp_path / "run", width=0.25)
    state = torch.load(path, weights_only=True)
    state["config"]["model"]["width_multiplier"] = 0.125  # tampered: weights of x0.25, config of x0.125
    torch.save(state, path)
    for command in ("knn", "linear-eval"):
        code, _, err = in_process(capsys, command, str(tmp_path / "run"), "--device", "cpu")
        assert_one_line_error(err, code, "last.pt", "does not match this architecture")
    code, _, err = in_process(capsys, "knn", str(tmp_path / "nowhere"), "--device", "cpu")
    assert_one_line_error(err, code, "nowhere")
