"""Issue 15, hardening round 2: each case a new user hit, as a test that fails on the code before the fix.

Run-folder locks, resuming from the run folder alone, evaluation outputs keyed by what they evaluated,
invalid arguments refused before any work, embeddings that never carry another image's row, one error line
(and no partial file) when the disk is full or read-only, and `report` failing on a damaged checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import simclr.files as files_mod
from simclr.checkpoint import load_checkpoint
from simclr.cli import main
from simclr.errors import SimCLRError
from simclr.files import folder_lock

TINY = ["--set", "model.width_multiplier=0.125", "--set", "train.batch_size=16", "--set", "monitor.knn=false",
        "--set", "train.log_every=1", "--set", "optim.warmup_epochs=0.5", "--set", "train.epochs=2"]  # fmt: skip


def write_npz(path: Path, n: int = 64, side: int = 8) -> Path:
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 4
    np.savez(
        path,
        images=rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8),
        labels=labels,
        test_images=rng.integers(0, 256, (n // 2, side, side, 3), dtype=np.uint8),
        test_labels=labels[: n // 2],
    )
    return path


def pretrain_args(data: Path, run: Path, *extra: str) -> list[str]:
    return ["pretrain", "--dataset", "npz", "--data", str(data), "--device", "cpu", "--out", str(run), *TINY, *extra]


def one_error_line(capsys, code: int, *expect: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert lines and lines[-1].startswith("error: "), err[-3000:]
    for text in expect:
        assert text in lines[-1], lines[-1]
    return lines[-1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 2-step pretraining run on a labelled .npz with a test split (made once for the module)."""
    root = tmp_path_factory.mktemp("tiny")
    data = write_npz(root / "d.npz")
    assert main(pretrain_args(data, root / "run", "--set", "train.max_steps=2")) == 0
    return data, root / "run"


def hold_lock_in_child(folder: Path) -> subprocess.Popen:
    """Another process that holds ``folder``'s lock until killed (a running simclr command stands in)."""
    code = (
        "import sys, time\nfrom simclr.files import folder_lock\n"
        f"with folder_lock({str(folder)!r}):\n    print('locked', flush=True)\n    time.sleep(120)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    return child


# ---- 2. one writer per run folder ----------------------------------------------------------------------------


def test_a_second_run_or_resume_on_a_locked_folder_is_refused_naming_the_pid(tiny_run, tmp_path, capsys):
    data, run = tiny_run
    before = (run / "checkpoints" / "last.pt").read_bytes()
    child = hold_lock_in_child(run)
    try:
        code = main(pretrain_args(data, run, "--resume"))
        one_error_line(capsys, code, str(run), "in use", f"pid {child.pid}")
        fresh = tmp_path / "fresh"
        other = hold_lock_in_child(fresh)
        try:
            code = main(pretrain_args(data, fresh))
            one_error_line(capsys, code, "in use", f"pid {other.pid}")
        finally:
            other.kill()
            other.wait()
    finally:
        child.kill()
        child.wait()
    assert (run / "checkpoints" / "last.pt").read_bytes() == before  # untouched by the refused resume


def test_a_sigkilled_holder_leaves_a_stale_lock_that_is_reported_and_taken_over(tmp_path, capsys):
    child = hold_lock_in_child(tmp_path / "run")
    child.kill()  # SIGKILL: no clean release, its pid stays in the lock file
    child.wait()
    assert json.loads((tmp_path / "run" / ".lock").read_text())["pid"] == child.pid
    with folder_lock(tmp_path / "run"):
        assert json.loads((tmp_path / "run" / ".lock").read_text())["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert "stale lock" in err and f"pid {child.pid}" in err
    assert not (tmp_path / "run" / ".lock").exists()  # released cleanly: nothing left behind


def test_the_lock_is_released_when_the_command_fails(tmp_path):
    with pytest.raises(SimCLRError), folder_lock(tmp_path / "x"):
        raise SimCLRError("boom")
    with folder_lock(tmp_path / "x"):  # free again, in the same process
        pass


# ---- 4. resuming needs nothing but the run folder ------------------------------------------------------------


def test_resume_reads_the_runs_own_config(tmp_path, capsys):
    data = write_npz(tmp_path / "d.npz")
    run = tmp_path / "run"
    # a preset run, stopped early, then resumed with the README's line: no preset, no --data
    assert main(["pretrain", "--preset", "fashion-mnist", "--dataset", "npz", "--data", str(data), "--out", str(run),
                 "--device", "cpu", *TINY, "--set", "train.max_steps=1"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["pretrain", "--out", str(run), "--resume", "--set", "train.max_steps=2"]) == 0
    assert load_checkpoint(run / "checkpoints" / "last.pt")["run_state"]["step"] == 2
    # a --set that changes the method is named, with both values; the checkpoint is kept
    code = main(["pretrain", "--out", str(run), "--resume", "--set", "optim.base_lr=0.5"])
    line = one_error_line(capsys, code, "optim.base_lr", "the run has 1.0", "0.5")
    assert "train.max_steps" in line  # what may change is said too
    # a --set equal to the run's value is fine, and so is the run's own preset with its own settings
    assert main(["pretrain", "--out", str(run), "--resume", "--set", "model.width_multiplier=0.125", "--set",
                 "train.max_steps=3"]) == 0  # fmt: skip
    assert main(["pretrain", "--preset", "fashion-mnist", "--dataset", "npz", "--out", str(run), "--resume", *TINY,
                 "--set", "train.max_steps=4"]) == 0  # fmt: skip
    assert load_checkpoint(run / "checkpoints" / "last.pt")["run_state"]["step"] == 4
    capsys.readouterr()
    code = main(["pretrain", "--preset", "cifar10", "--out", str(run), "--resume"])  # another preset: named
    one_error_line(capsys, code, "a different model config", "model.head_layers: the run has 3, given 2")


def test_dataset_flag_replaces_the_presets_data_source(capsys):
    assert main(["pretrain", "--preset", "stl10", "--dataset", "folder", "--data", "x", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "train_split: train\n" in printed and "train+unlabeled" not in printed
    assert main(["pretrain", "--preset", "stl10", "--dataset", "folder", "--data", "x", "--set",
                 "data.train_split=unlabeled", "--print-config"]) == 0  # fmt: skip
    assert "train_split: unlabeled" in capsys.readouterr().out


# ---- 6. evaluations keyed by what they evaluated; bad arguments refused before any work ----------------------


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["linear-eval", "RUN", "--epochs", "0"], "--epochs: must be >= 1, got 0"),
        (["linear-eval", "RUN", "--batch-size", "-3"], "--batch-size: must be >= 1, got -3"),
        (["finetune", "RUN", "--epochs", "0"], "--epochs: must be >= 1, got 0"),
        (["finetune", "RUN", "--lr", "-1"], "--lr: must be > 0, got -1"),
        (["knn", "RUN", "--k", "0"], "--k: must be >= 1, got 0"),
        (["knn", "RUN", "--temperature", "0"], "--temperature: must be > 0"),
        (["pipeline", "--out", "OUT", "--distill-alpha", "2"], "--distill-alpha: must be >= 0 and <= 1"),
        (["distill", "--teacher", "RUN", "--epochs", "0"], "--epochs: must be >= 1"),
        (["report", "RUN", "--max-images", "0"], "--max-images: must be >= 1"),
        (["embed", "RUN", "--out", "OUT/e", "--batch-size", "0"], "--batch-size: must be >= 1, got 0"),
        (["linear-eval", "RUN", "--device", "tpu"], "device 'tpu': unknown"),
    ],
)
def test_invalid_arguments_are_refused_before_any_work(tiny_run, tmp_path, capsys, argv, expect):
    _, run = tiny_run
    before = sorted(p.relative_to(run).as_posix() for p in run.rglob("*"))
    argv = [a.replace("RUN", str(run)).replace("OUT", str(tmp_path / "out")) for a in argv]
    one_error_line(capsys, main(argv), expect)
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*")) == before  # nothing written
    assert not (tmp_path / "out").exists()


def test_an_evaluation_on_other_data_never_overwrites_the_runs_own(tiny_run, tmp_path, capsys):
    data, run = tiny_run
    assert main(["knn", str(run), "--device", "cpu", "--k", "5"]) == 0
    own = json.loads(next((run / "eval").glob("knn-*/metrics.json")).read_text())
    other = write_npz(tmp_path / "other.npz", n=32)
    assert main(["knn", str(run), "--device", "cpu", "--k", "5", "--data", str(other)]) == 0
    folders = sorted((run / "eval").glob("knn-*"))
    assert len(folders) == 2  # one per evaluated dataset
    results = [json.loads((f / "metrics.json").read_text()) for f in folders]
    assert own in results  # the first result is still there, unchanged
    assert {r["card"]["evaluated"]["data"] for r in results} == {str(data), str(other)}
    # --out pointing at a folder holding another evaluation is refused, not overwritten
    capsys.readouterr()
    target = next(f for f, r in zip(folders, results, strict=True) if r == own)
    code = main(["knn", str(run), "--device", "cpu", "--k", "7", "--out", str(target)])
    one_error_line(capsys, code, "holds another evaluation", "k: 5 there, 7 now")
    assert json.loads((target / "metrics.json").read_text()) == own


# ---- 3. embed never writes a row under the wrong name --------------------------------------------------------


def _image_folder(folder: Path, n: int, bad: int) -> list[str]:
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"im{i:03d}.png")
    (folder / f"im{bad:03d}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")  # undecodable, not empty
    return [f"im{i:03d}.png" for i in range(n) if i != bad]


def test_embed_leaves_out_an_undecodable_image_and_every_row_keeps_its_own_name(tiny_run, tmp_path, capsys):
    from simclr.checkpoint import load_pretrained
    from simclr.data.folder import decode_image
    from simclr.eval.features import eval_transform_for

    _, run = tiny_run
    good = _image_folder(tmp_path / "imgs", 120, bad=7)  # 1 bad in 120: under the 1 % threshold
    out = tmp_path / "e"
    assert main(["embed", str(run), "--data", str(tmp_path / "imgs"), "--dataset", "folder", "--out", str(out),
                 "--device", "cpu", "--batch-size", "16"]) == 0  # fmt: skip
    assert "skipped 1 undecodable image" in capsys.readouterr().err
    emb = np.load(out.with_suffix(".npy"))
    rows = (out.with_suffix(".csv")).read_text().splitlines()[1:]
    names = [row.split(",")[1] for row in rows]
    assert names == good and emb.shape[0] == len(good)
    # each row is the embedding of the image its name says (the old code gave im007's row to im008)
    pre = load_pretrained(run)
    transform = eval_transform_for(pre.config, pre.image_size, pre.mean, pre.std)
    with torch.no_grad():
        for r in (6, 7, 8):
            x = torch.from_numpy(decode_image(tmp_path / "imgs" / names[r], pre.config.data.image_size or 8))
            h = pre.model.eval().encoder(transform(x.unsqueeze(0)))
            np.testing.assert_allclose(emb[r], h[0].numpy(), rtol=1e-4, atol=1e-5)


def test_embed_over_the_bad_image_threshold_writes_nothing(tiny_run, tmp_path, capsys):
    _, run = tiny_run
    _image_folder(tmp_path / "imgs", 6, bad=2)  # 1 bad in 6
    code = main(["embed", str(run), "--data", str(tmp_path / "imgs"), "--dataset", "folder", "--out",
                 str(tmp_path / "out" / "e"), "--device", "cpu"])  # fmt: skip
    one_error_line(capsys, code, "im002.png", "cannot decode", "max_bad_fraction")
    assert [p.name for p in (tmp_path / "out").iterdir()] == []  # nothing written


# ---- 5. full or read-only disks: one line, no partial file ---------------------------------------------------


def full_disk(monkeypatch):
    """Every file write fails with ENOSPC (the temporary files of atomic writes and savefig alike)."""
    real_mkstemp = files_mod.tempfile.mkstemp

    def on_dev_full(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        os.close(fd)
        os.unlink(name)
        os.symlink("/dev/full", name)  # writes by name or by descriptor both hit /dev/full
        return os.open(name, os.O_WRONLY), name

    monkeypatch.setattr(files_mod.tempfile, "mkstemp", on_dev_full)


def _writing_command(command: str, data, run, out) -> list[str]:
    """The argv of a command that writes under ``out``."""
    return {
        "export": ["export", str(run), "--out", str(out)],
        "report": ["report", str(run), "--out", str(out), "--device", "cpu", "--max-images", "8"],
        "embed": ["embed", str(run), "--out", str(out / "e"), "--device", "cpu"],
        "show-augmentations": [
            "show-augmentations",
            "--dataset",
            "npz",
            "--data",
            str(data),
            "--out",
            str(out / "a.png"),
            "-n",
            "2",
        ],  # fmt: skip
    }[command]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
@pytest.mark.parametrize("command", ["export", "report", "embed", "show-augmentations"])
def test_commands_on_a_full_disk_say_so_in_one_line_and_leave_no_partial_file(
    tiny_run, tmp_path, monkeypatch, capsys, command
):
    data, run = tiny_run
    out = tmp_path / "out"
    argv = _writing_command(command, data, run, out)
    full_disk(monkeypatch)
    code = main(argv)
    one_error_line(capsys, code, str(out), "disk full")
    monkeypatch.undo()
    left = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert left == [], left  # no 0-byte figure, no half-written file, no temporary file


@pytest.mark.parametrize("command", ["export", "report", "embed", "show-augmentations"])
def test_commands_on_a_read_only_path_say_so_in_one_line(tiny_run, tmp_path, capsys, command):
    data, run = tiny_run
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = blocker / "out"  # a path through a file: cannot be created, as on a read-only mount
    argv = _writing_command(command, data, run, out)
    one_error_line(capsys, main(argv), str(out), "cannot write")


def test_config_values_out_of_range_are_one_line_from_the_cli(tmp_path, capsys):
    data = write_npz(tmp_path / "d.npz")
    for override, key in (("optim.base_lr=-1", "optim.base_lr"), ("optim.momentum=-1", "optim.momentum"),
                          ("data.image_size=0", "data.image_size"), ("train.epochs=0", "train.epochs")):  # fmt: skip
        code = main(pretrain_args(data, tmp_path / "run", "--set", override))
        one_error_line(capsys, code, f"config key {key}: must be")
    assert not (tmp_path / "run").exists()


# ---- 8. report fails on a damaged checkpoint -----------------------------------------------------------------


def test_report_on_a_truncated_checkpoint_is_an_error(tiny_run, tmp_path, capsys):
    import shutil

    _, run = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    ckpt = copy / "checkpoints" / "last.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    code = main(["report", str(copy), "--device", "cpu", "--max-images", "8"])
    one_error_line(capsys, code, "last.pt", "not a readable checkpoint")
    assert not (copy / "report" / "index.html").exists()
