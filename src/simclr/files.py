"""Every write to disk goes through here: atomic files, one error line for file-system failures, folder locks.

- :func:`atomic_write` / :func:`atomic_path` write to a temporary file beside the target, fsync it and
  ``os.replace`` it: a crash, a kill or a full disk leaves the old file or the new one, never half of one,
  and never a 0-byte file.
- :func:`fs_error` turns an ``OSError`` into one :class:`~simclr.errors.SimCLRError` line naming the path and
  the reason (read-only file system, no space left, permission denied, missing parent folder).
- :func:`folder_lock` holds an OS lock (``flock``) on ``FOLDER/.lock`` for the life of a command that writes
  into FOLDER, so a second writer (two runs on one ``--out``, two ``--resume`` at once) is refused with one
  line naming the holder's pid. The kernel releases the lock when its process dies, even by SIGKILL; the
  pid such a process left in the file is reported as a stale lock and the folder is taken over.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from simclr.errors import SimCLRError

try:  # POSIX; elsewhere the lock is a no-op
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

_HINTS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENOENT: "a parent folder is missing",
    errno.ENOTDIR: "a parent path is not a folder",
}


def fs_error(path: str | os.PathLike, error: OSError, what: str = "file", kept: bool = False) -> SimCLRError:
    """One line for a failed write: ``<path>: cannot write <what> (<hint>: <OS reason>)``.

    ``kept``: an earlier version of the file exists and is intact (said in the message).
    """
    reason = error.strerror or str(error)
    if error.errno in _HINTS:
        reason = f"{_HINTS[error.errno]}: {reason}"
    tail = f"; the previous {what} is intact" if kept else ""
    return SimCLRError(f"{os.fspath(path)}: cannot write {what} ({reason}){tail}")


def make_folder(path: str | os.PathLike, what: str = "folder") -> Path:
    """``mkdir -p`` with :func:`fs_error`'s one line on failure."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise fs_error(path, e, what) from None
    return path


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # make a rename durable
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _replacing(path: Path, what: str) -> Iterator[tuple[int, Path]]:
    """(fd, name) of a new ``.NAME.XXXX.tmp`` beside ``path``; on success it replaces ``path``, else vanishes."""
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise fs_error(path, e, what, kept=existed) from None
    tmp = Path(name)
    try:
        yield fd, tmp
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError):
            raise fs_error(path, e, what, kept=existed) from None
        raise
    _fsync_folder(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, what: str = "file") -> Iterator[Path]:
    """A temporary path ``.NAME.XXXX.tmp`` beside ``path`` for writers that want a file name.

    On a normal exit the temporary file replaces ``path``; on any error it is removed and ``path`` is left as
    it was. OSErrors become :func:`fs_error` lines. Writers that infer a format from the suffix must be told
    the format explicitly (``savefig(format=...)``, ``Image.save(format=...)``).
    """
    with _replacing(Path(path), what) as (fd, tmp):
        os.close(fd)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None], what: str = "file") -> Path:
    """Call ``write(f)`` on a temporary binary file beside ``path``, then atomically replace ``path`` with it.

    A crash, a kill or a full disk at any moment leaves either the old file or the new one; an OSError
    becomes one :class:`SimCLRError` line naming ``path`` (the previous file is intact).
    """
    path = Path(path)
    with _replacing(path, what) as (fd, _), os.fdopen(fd, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    return path


def write_text(path: str | os.PathLike, text: str, what: str = "file") -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(text.encode()), what)


def _describe_holder(text: str) -> tuple[int | None, str]:
    try:
        info = json.loads(text)
        pid = int(info["pid"])
    except (ValueError, KeyError, TypeError):
        return None, ""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info.get("time", 0))))
    return pid, f"pid {pid}, `{info.get('command', '?')}`, since {since}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _open_locked(path: Path, folder: Path, what: str) -> int:
    """Open ``path`` and take its exclusive lock; refuse with the holder's pid when another process has it."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise fs_error(path, e, "lock file") from None
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _, holder = _describe_holder(os.pread(fd, 4096, 0).decode(errors="replace"))
            os.close(fd)
            raise SimCLRError(
                f"{folder}: {what} in use by another simclr process ({holder or 'pid unknown'}); "
                "wait for it to end or choose another folder"
            ) from None
        try:  # the holder before us may have removed the file between our open and our lock: start again
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "run folder", name: str = ".lock") -> Iterator[Path]:
    """Hold an exclusive OS lock on ``folder/<name>`` (created with the folder) until the block ends.

    A second holder gets one line: ``<folder>: <what> in use by pid N (`command`, since ...)``. The lock file
    is removed on release; one left by a process that died without releasing it (SIGKILL, power loss) is
    free already (the kernel drops the lock with the process): the stale holder is named on stderr and the
    folder is taken over.
    """
    folder = make_folder(folder, what)
    path = folder / name
    fd = _open_locked(path, folder, what)
    try:
        old_pid, old = _describe_holder(os.pread(fd, 4096, 0).decode(errors="replace"))
        if old_pid is not None and old_pid != os.getpid() and not _alive(old_pid):
            print(f"simclr: {folder}: stale lock of a process that ended without releasing it ({old})", file=sys.stderr)
        record = json.dumps({"pid": os.getpid(), "command": " ".join(sys.argv[:3]), "time": time.time()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still locked, so no one can lock the old file after us
        if fcntl is not None:  # explicit: copies of the descriptor in forked DataLoader workers hold it too
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


__all__ = ["atomic_path", "atomic_write", "folder_lock", "fs_error", "make_folder", "write_text"]
