"""Checkpoints: atomic writes that survive a full or read-only disk, loads that never run code.

Every failure must be one :class:`SimCLRError` line naming the file, and the checkpoint that was there before a
failed write must still load.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import simclr.checkpoint as ckpt_mod
import simclr.files as files_mod
from simclr.checkpoint import load_checkpoint, load_pretrained, resolve_checkpoint, save_checkpoint
from simclr.config import Config, config_to_dict
from simclr.errors import SimCLRError
from simclr.models.build import build_model


def one_line_error(fn, *names: str) -> str:
    """Call ``fn``; it must raise SimCLRError with one line containing every string in ``names``."""
    with pytest.raises(SimCLRError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, message
    for name in names:
        assert name in message, message
    return message


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def small_state(step: int) -> dict:
    return {"kind": "test", "step": step, "w": torch.full((64,), float(step))}


# ---- atomic writes ------------------------------------------------------------------------------------------


def test_round_trip_and_no_temp_files(tmp_path):
    path = save_checkpoint(small_state(3), tmp_path / "ck" / "last.pt")
    state = load_checkpoint(path)
    assert state["step"] == 3 and torch.equal(state["w"], torch.full((64,), 3.0))
    assert state["format"] == "simclr-checkpoint" and state["version"] == 1
    assert temp_files(path.parent) == []


def test_stale_temp_files_of_a_killed_writer_are_removed(tmp_path):
    # A SIGKILL during a write leaves `.last.pt.<random>.tmp` behind: the next successful save removes it.
    path = save_checkpoint(small_state(1), tmp_path / "last.pt")
    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / "notes.tmp").write_text("someone else's file")  # not ours: left alone
    save_checkpoint(small_state(2), path)
    assert temp_files(tmp_path) == ["notes.tmp"]
    assert load_checkpoint(path)["step"] == 2


def _fail_during_write(monkeypatch, err: int):
    """torch.save writes half the bytes, then the disk refuses (as a full disk does mid-file)."""
    real_save = torch.save

    def half_save(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(ckpt_mod.torch, "save", half_save)


@pytest.mark.parametrize(
    "err, expect", [(errno.ENOSPC, "disk full"), (errno.EROFS, "Read-only file system"), (errno.EIO, "error")]
)
def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, err, expect):
    path = save_checkpoint(small_state(1), tmp_path / "last.pt")
    _fail_during_write(monkeypatch, err)
    message = one_line_error(lambda: save_checkpoint(small_state(2), path), "last.pt", expect)
    assert "previous checkpoint is intact" in message
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("err, expect", [(errno.EROFS, "Read-only"), (errno.ENOSPC, "disk full")])
def test_failed_rename_keeps_the_previous_checkpoint(tmp_path, monkeypatch, err, expect):
    path = save_checkpoint(small_state(1), tmp_path / "last.pt")

    def refuse(src, dst):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(ckpt_mod.os, "replace", refuse)
    one_line_error(lambda: save_checkpoint(small_state(2), path), "last.pt", expect)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert temp_files(tmp_path) == []


def test_read_only_folder_cannot_even_create_the_temp_file(tmp_path, monkeypatch):
    path = save_checkpoint(small_state(1), tmp_path / "last.pt")

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(files_mod.tempfile, "mkstemp", refuse)
    one_line_error(lambda: save_checkpoint(small_state(2), path), "last.pt", "cannot write checkpoint", "Read-only")
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions (simulated in the test above)")
def test_read_only_folder_for_real(tmp_path):
    path = save_checkpoint(small_state(1), tmp_path / "last.pt")
    tmp_path.chmod(0o555)
    try:
        one_line_error(lambda: save_checkpoint(small_state(2), path), "last.pt", "cannot write checkpoint")
    finally:
        tmp_path.chmod(0o755)
    assert load_checkpoint(path)["step"] == 1 and temp_files(tmp_path) == []


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
def test_dev_full_is_a_full_disk(tmp_path, monkeypatch):
    # The temp file's descriptor is swapped for /dev/full, whose every write fails with ENOSPC.
    path = save_checkpoint(small_state(1), tmp_path / "last.pt")
    real_mkstemp = files_mod.tempfile.mkstemp

    def on_dev_full(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name

    monkeypatch.setattr(files_mod.tempfile, "mkstemp", on_dev_full)
    message = one_line_error(lambda: save_checkpoint(small_state(2), path), "last.pt", "disk full")
    assert "previous checkpoint is intact" in message
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1 and temp_files(tmp_path) == []


def test_interrupt_during_write_leaves_no_temp_file(tmp_path, monkeypatch):
    path = save_checkpoint(small_state(1), tmp_path / "last.pt")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_mod.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(small_state(2), path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1 and temp_files(tmp_path) == []


# ---- safe loading -------------------------------------------------------------------------------------------


class Payload:
    """Unpickling this would create ``marker``: the test fails if the file ever appears."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class WriteMarker:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


@pytest.mark.parametrize(
    "how, expect",
    [
        ("torch.save", "refused to load: it references Python code"),
        ("torch.save-nested", "refused to load: it references Python code"),
        ("pickle-protocol-2", "refused to load: it references Python code"),
        ("pickle-protocol-5", "not a torch.save file"),  # stopped even earlier, at an opcode torch never writes
        ("write_text", "refused to load: it references Python code"),
    ],
)
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, how, expect):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    if how == "torch.save":
        torch.save(Payload(marker), path)
    elif how == "torch.save-nested":  # looks like one of ours, with the payload deep inside
        torch.save({"format": "simclr-checkpoint", "model": {"w": torch.zeros(2)}, "x": [Payload(marker)]}, path)
    elif how.startswith("pickle-protocol"):
        path.write_bytes(pickle.dumps(Payload(marker), protocol=int(how[-1])))
    else:
        torch.save({"format": "simclr-checkpoint", "x": WriteMarker(marker)}, path)
    message = one_line_error(lambda: load_checkpoint(path), "evil.pt", expect)
    assert not marker.exists(), "loading a checkpoint executed code"
    assert len(message) < 400
    one_line_error(lambda: load_pretrained(path), "evil.pt")
    assert not marker.exists()


def _valid_checkpoint_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save({"format": "simclr-checkpoint", "version": 1, "step": 1, "w": torch.arange(4.0)}, buf)
    return buf.getvalue()


@pytest.mark.parametrize(
    "name, content, expect",
    [
        ("random.pt", os.urandom(2000), "not a readable checkpoint"),
        ("text.pt", b"hello, I am a text file\n" * 4, "not a readable checkpoint"),
        ("empty.pt", b"", "empty file (0 bytes)"),
        ("truncated.pt", _valid_checkpoint_bytes()[:300], "not a readable checkpoint"),
        ("zip.pt", None, "not a readable checkpoint"),
        ("list.pt", "list", "not a simclr checkpoint"),
        ("nomarker.pt", "nomarker", "not a simclr checkpoint"),
    ],
)  # fmt: skip
def test_files_that_are_not_checkpoints(tmp_path, name, content, expect):
    path = tmp_path / name
    if content == "list":
        torch.save([1, 2, 3], path)
    elif content == "nomarker":
        torch.save({"model": {"w": torch.zeros(2)}}, path)
    elif content is None:  # a zip archive, but not a torch one
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("hello.txt", "hi")
    else:
        path.write_bytes(content)
    one_line_error(lambda: load_checkpoint(path), name, expect)
    one_line_error(lambda: load_pretrained(path), name)


def test_missing_paths_and_folders(tmp_path):
    one_line_error(lambda: load_checkpoint(tmp_path / "nope.pt"), "nope.pt", "not found")
    (tmp_path / "dir.pt").mkdir()
    one_line_error(lambda: load_checkpoint(tmp_path / "dir.pt"), "dir.pt", "is a folder, not a checkpoint file")
    one_line_error(lambda: resolve_checkpoint(tmp_path / "run"), "run", "no such run folder")
    (tmp_path / "run").mkdir()
    one_line_error(lambda: load_pretrained(tmp_path / "run"), "run", "checkpoints/last.pt")


FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
VALID_CHECKPOINT = _valid_checkpoint_bytes()  # once: torch.save writes a random serialization id


def _mutations(base: bytes):
    return st.lists(st.tuples(st.integers(0, len(base) - 1), st.integers(0, 255)), min_size=1, max_size=6).map(
        lambda edits: bytes(_apply(bytearray(base), edits))
    )


def _apply(buf: bytearray, edits) -> bytearray:
    for pos, value in edits:
        buf[pos] = value
    return buf


@FUZZ
@given(
    blob=st.one_of(
        st.binary(max_size=400),
        st.binary(max_size=200).map(lambda b: b"\x80\x02" + b),  # a pickle header, then garbage
        st.binary(max_size=200).map(lambda b: b"PK\x03\x04" + b),  # a zip header, then garbage
        _mutations(_valid_checkpoint_bytes()),
        st.integers(1, len(_valid_checkpoint_bytes()) - 1).map(lambda n: _valid_checkpoint_bytes()[:n]),
    )
)
@example(blob=VALID_CHECKPOINT)
def test_fuzz_load_checkpoint(tmp_path, blob):
    """Random or damaged bytes: a SimCLRError naming the file, or (a harmless byte flip) a loaded dict; the
    undamaged file loads."""
    path = tmp_path / "fuzz.pt"
    path.write_bytes(blob)
    valid = blob == VALID_CHECKPOINT
    try:
        state = load_checkpoint(path)
    except SimCLRError as e:
        assert not valid, f"the valid checkpoint was refused: {e}"
        assert str(e).startswith(f"{path}: ") and "\n" not in str(e), str(e)
    else:
        assert isinstance(state, dict) and state["format"] == "simclr-checkpoint"
        if valid:
            assert state["step"] == 1 and torch.equal(state["w"], torch.arange(4.0))


# ---- checkpoints from another architecture --------------------------------------------------------------------


def pretrain_like_checkpoint(path: Path, width: float, stored_width: float | None = None) -> Path:
    """A checkpoint shaped like the engine's: weights of resnet18 x``width``, config saying ``stored_width``."""
    cfg = Config()
    cfg.model.width_multiplier = width
    model = build_model(cfg.model, 16)
    cfg.model.width_multiplier = stored_width if stored_width is not None else width
    return save_checkpoint(
        {"kind": "pretrain", "config": config_to_dict(cfg), "model": model.state_dict(), "image_size": 16}, path
    )


def test_load_pretrained_round_trip(tmp_path):
    path = pretrain_like_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", 0.125)
    pre = load_pretrained(tmp_path / "run")
    assert pre.config.model.width_multiplier == 0.125 and pre.image_size == 16 and pre.path == path


def test_checkpoint_of_the_older_layout_loads_and_gives_the_same_outputs(tmp_path):
    # Saved before `model.first_block_projection` and `model.cifar_stem_max_side` existed: ResNet-18 whose
    # group 1 keeps an identity shortcut, and 48 px views that got the CIFAR stem automatically (then up to 64).
    cfg = Config()
    cfg.model.width_multiplier, cfg.model.first_block_projection, cfg.model.cifar_stem_max_side = 0.125, False, 64
    torch.manual_seed(0)
    model = build_model(cfg.model, 48).eval()
    assert model.encoder.cifar_stem and model.encoder.block_group1[0].shortcut is None
    stored = config_to_dict(cfg)
    del stored["model"]["first_block_projection"], stored["model"]["cifar_stem_max_side"]
    save_checkpoint({"kind": "pretrain", "config": stored, "model": model.state_dict(), "image_size": 48},
                    tmp_path / "old.pt")  # fmt: skip
    pre = load_pretrained(tmp_path / "old.pt")
    assert pre.config.model.first_block_projection is False and pre.config.model.cifar_stem_max_side == 64
    x = torch.rand(2, 3, 48, 48)
    assert torch.equal(pre.model.eval()(x)[1], model(x)[1])
    # a checkpoint written now records the official layout and loads with it
    new = pretrain_like_checkpoint(tmp_path / "new.pt", 0.125)
    assert load_pretrained(new).model.encoder.block_group1[0].shortcut is not None


def test_cifar_stem_is_automatic_up_to_32_px():
    assert build_model(Config().model, 32).encoder.cifar_stem
    assert not build_model(Config().model, 33).encoder.cifar_stem  # the official rule; 64 px before


def test_weights_of_another_width_are_one_clear_line(tmp_path):
    path = pretrain_like_checkpoint(tmp_path / "w025.pt", 0.25, stored_width=0.125)  # config tampered
    message = one_line_error(lambda: load_pretrained(path), "w025.pt", "does not match this architecture")
    assert "size mismatch" in message or "Missing key" in message or "Unexpected key" in message


def test_checkpoint_lacking_parts_or_with_a_bad_config(tmp_path):
    save_checkpoint({"kind": "finetune", "config": config_to_dict(Config()), "image_size": 16}, tmp_path / "ft.pt")
    one_line_error(lambda: load_pretrained(tmp_path / "ft.pt"), "ft.pt", "lacks 'model'")
    bad = config_to_dict(Config())
    bad["model"]["no_such_key"] = 1
    save_checkpoint({"config": bad, "model": {}, "image_size": 16}, tmp_path / "cfg.pt")
    one_line_error(lambda: load_pretrained(tmp_path / "cfg.pt"), "cfg.pt", "stored config is invalid", "no_such_key")
