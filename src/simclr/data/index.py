"""A one-time index of an image folder or of WebDataset-style tar shards, for streaming without rescans.

Entries. Entry ``i`` is one image: its name, its label (or none), and where its bytes are: a file
``root/<name>`` (folders) or ``size`` bytes at ``offset`` in shard ``shards[shard[i]]`` (tar shards), so
reading an image from a shard is one ``pread`` on an open file, with no tar parsing per read.

Folders follow :func:`simclr.data.folder.scan_folder`'s rules (class sub-folders or a flat folder, hidden
names and non-image extensions ignored). Tar shards are the ``*.tar`` files of a folder (or one ``.tar``
file), in name order; inside a shard, members ``<key>.<ext>`` share a sample key (the member path up to the
first dot of its file name, as WebDataset does). A sample's image is its member with an image extension
(``jpg``, ``jpeg``, ``png``, ``webp``, ...); its label is the integer in its ``<key>.cls`` member, or in its
``<key>.txt`` member when that holds an integer. Either every sample has a label or none has.

Storage. The index is saved as ``<root>/.simclr-index/<kind>-<hash>.npz`` (a hidden folder that scans ignore)
or, when that folder is read-only, under ``$SIMCLR_CACHE/indexes/`` (default ``~/.cache/simclr``). It holds a
fingerprint: the modification time of every sub-folder (folders: adding, removing or renaming an image
changes its folder's time) or the size and time of every shard plus the folder's time (tar). Opening checks
the fingerprint with one ``stat`` per folder or shard and rebuilds the index when anything changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tarfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simclr.channels_last import cache_dir
from simclr.data.folder import IMAGE_EXTENSIONS, scan_folder
from simclr.errors import SimCLRError, file_error
from simclr.files import atomic_write

log = logging.getLogger(__name__)

INDEX_VERSION = 1
INDEX_FOLDER = ".simclr-index"
TAR_IMAGE_EXTENSIONS = frozenset(e.lstrip(".") for e in IMAGE_EXTENSIONS)
LABEL_EXTENSIONS = ("cls", "txt")  # in order of preference


class _Names(Sequence):
    """Entry names decoded on demand from one UTF-8 blob (a million names cost ~ their bytes, not objects)."""

    def __init__(self, blob: bytes, ends: np.ndarray) -> None:
        self.blob, self.ends = blob, ends

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self))[i]
        start = int(self.ends[i - 1]) if i else 0
        return self.blob[start : int(self.ends[i])].decode()


def _pack_names(names: list[str]) -> tuple[bytes, np.ndarray]:
    encoded = [n.encode() for n in names]
    return b"".join(encoded), np.cumsum([len(e) for e in encoded], dtype=np.int64)


@dataclass
class ImageIndex:
    """Where each image of a folder or of tar shards is. Arrays have one row per entry (N,)."""

    root: Path  # the folder (images or shards)
    kind: str  # "folder" | "tar"
    shards: list[str]  # shard paths relative to root (tar); empty for folders
    shard: np.ndarray  # int32: shard number of each entry, -1 for a file
    offset: np.ndarray  # int64: data offset inside the shard (0 for a file)
    size: np.ndarray  # int64: bytes of the image
    labels: np.ndarray | None  # int64 labels, or None for an unlabeled set
    classes: list[str] | None  # class names (folders with class sub-folders), else None
    names: Sequence[str]  # folder: path relative to root; tar: "<shard>:<member>"
    fingerprint: list = field(default_factory=list, repr=False)
    _fds: dict[int, int] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __len__(self) -> int:
        return len(self.size)

    def __getstate__(self) -> dict:  # picklable (DataLoader workers): open shards are not carried over
        state = self.__dict__.copy()
        state["_fds"], state["_lock"] = {}, None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    def location(self, i: int) -> str:
        """The file (or ``shard:member``) holding entry ``i``, for messages."""
        return os.fspath(self.root / self.names[i])

    def read(self, i: int) -> bytes:
        """The encoded bytes of entry ``i``: the whole file, or one ``pread`` in its shard (thread-safe)."""
        if self.kind == "folder":
            with open(self.root / self.names[i], "rb") as f:
                return f.read()
        s, offset, size = int(self.shard[i]), int(self.offset[i]), int(self.size[i])
        fd = self._fds.get(s)
        if fd is None:
            with self._lock:
                fd = self._fds.get(s)
                if fd is None:
                    fd = self._fds[s] = os.open(self.root / self.shards[s], os.O_RDONLY)
        chunks, done = [], 0
        while done < size:  # pread may return less than asked near EOF or on signals
            chunk = os.pread(fd, size - done, offset + done)
            if not chunk:
                raise OSError(f"shard ends {size - done} bytes early")
            chunks.append(chunk)
            done += len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def close(self) -> None:
        """Close the open shard files (reopened on the next read)."""
        with self._lock:
            fds, self._fds = list(self._fds.values()), {}
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def select(self, keep: np.ndarray) -> ImageIndex:
        """A new index with entries ``keep`` (int positions), e.g. without zero-byte files."""
        keep = np.asarray(keep, dtype=np.int64)
        blob, ends = _pack_names([self.names[i] for i in keep.tolist()])
        return ImageIndex(
            self.root, self.kind, self.shards, self.shard[keep], self.offset[keep], self.size[keep],
            None if self.labels is None else self.labels[keep], self.classes, _Names(blob, ends), self.fingerprint,
        )  # fmt: skip


# ---- building ----------------------------------------------------------------------------------------------


def _folder_fingerprint(root: Path) -> list:
    """[relative folder, mtime_ns] for ``root`` and every non-hidden folder under it."""
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        path = Path(dirpath)
        found.append([path.relative_to(root).as_posix(), path.stat().st_mtime_ns])
    return found


def _shard_files(target: Path) -> tuple[Path, list[str]]:
    if target.is_file():
        return target.parent, [target.name]
    shards = sorted(p.name for p in target.iterdir() if p.suffix == ".tar" and not p.name.startswith("."))
    if not shards:
        raise file_error(target, "no .tar shards in this folder")
    return target, shards


def _tar_fingerprint(root: Path, shards: list[str]) -> list:
    st = root.stat()
    found = [[".", st.st_mtime_ns, 0]]
    for name in shards:
        s = (root / name).stat()
        found.append([name, s.st_mtime_ns, s.st_size])
    return found


def _build_folder(root: Path) -> ImageIndex:
    fingerprint = _folder_fingerprint(root)
    files, labels, classes = scan_folder(root)
    sizes = np.array([f.stat().st_size for f in files], dtype=np.int64)
    blob, ends = _pack_names([f.relative_to(root).as_posix() for f in files])
    n = len(files)
    return ImageIndex(
        root, "folder", [], np.full(n, -1, np.int32), np.zeros(n, np.int64), sizes,
        None if labels is None else np.asarray(labels, np.int64), classes, _Names(blob, ends), fingerprint,
    )  # fmt: skip


def _sample_key(member: str) -> tuple[str, str]:
    """WebDataset's split of a member path into (key, extension): the file name up to its first dot."""
    folder, _, base = member.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem:
        return "", ""
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _parse_label(data: bytes) -> int | None:
    try:
        return int(data.decode("utf-8").strip())
    except (UnicodeDecodeError, ValueError):
        return None


def _scan_shard(path: Path, number: int, rows: list, names: list[str]) -> None:
    """Append (shard, offset, size, label) rows and names for the samples of one shard."""
    images: dict[str, tarfile.TarInfo] = {}
    labels: dict[str, dict[str, int | None]] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                key, ext = _sample_key(m.name)
                if not m.isreg() or not key:
                    continue
                if ext in TAR_IMAGE_EXTENSIONS:
                    if key in images:
                        raise file_error(f"{path}:{m.name}", f"second image for sample key {key!r}")
                    images[key] = m
                elif ext in LABEL_EXTENSIONS:
                    labels.setdefault(key, {})[ext] = _parse_label(tar.extractfile(m).read())
    except (tarfile.TarError, OSError, EOFError) as e:
        raise file_error(path, f"cannot read tar shard ({str(e).splitlines()[0][:120] if str(e) else e!r})") from None
    for key, m in images.items():  # tar order
        found = labels.get(key, {})
        if "cls" in found and found["cls"] is None:
            raise file_error(f"{path}:{key}.cls", "label is not an integer")
        label = found.get("cls", found.get("txt"))
        rows.append((number, m.offset_data, m.size, -1 if label is None else label))
        names.append(f"{path.name}:{m.name}")


def _build_tar(target: Path) -> ImageIndex:
    root, shards = _shard_files(target)
    fingerprint = _tar_fingerprint(root, shards)
    rows: list[tuple[int, int, int, int]] = []
    names: list[str] = []
    for number, name in enumerate(shards):
        _scan_shard(root / name, number, rows, names)
    if not rows:
        raise file_error(target, "no image members (<key>.jpg, .png, ...) in the tar shards")
    table = np.array(rows, dtype=np.int64).reshape(-1, 4)
    labelled = table[:, 3] >= 0
    if labelled.any() and not labelled.all():
        first = names[int(np.flatnonzero(~labelled)[0])]
        raise file_error(root / first, "no integer label (.cls / .txt) while other samples have one")
    if (table[:, 3] < -1).any():
        raise file_error(root / names[int(np.flatnonzero(table[:, 3] < -1)[0])], "negative label")
    blob, ends = _pack_names(names)
    return ImageIndex(
        root, "tar", shards, table[:, 0].astype(np.int32), table[:, 1], table[:, 2],
        table[:, 3].copy() if labelled.all() else None, None, _Names(blob, ends), fingerprint,
    )  # fmt: skip


# ---- storing -----------------------------------------------------------------------------------------------


def _save(index: ImageIndex, path: Path) -> None:
    meta = {"version": INDEX_VERSION, "kind": index.kind, "shards": index.shards, "classes": index.classes,
            "fingerprint": index.fingerprint}  # fmt: skip
    names = index.names if isinstance(index.names, _Names) else _Names(*_pack_names(list(index.names)))
    arrays = {
        "meta": np.frombuffer(json.dumps(meta).encode(), np.uint8),
        "shard": index.shard, "offset": index.offset, "size": index.size,
        "labels": index.labels if index.labels is not None else np.zeros(0, np.int64),
        "names": np.frombuffer(names.blob, np.uint8), "name_ends": names.ends,
    }  # fmt: skip

    def write(f) -> None:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        f.write(buf.getvalue())

    atomic_write(path, write, "image index")


def _load(path: Path, root: Path) -> ImageIndex | None:
    """The index stored at ``path``, or None when it is missing, unreadable or of another version."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            if meta.get("version") != INDEX_VERSION:
                return None
            labels = z["labels"]
            names = _Names(z["names"].tobytes(), z["name_ends"])
            return ImageIndex(
                root, meta["kind"], meta["shards"], z["shard"], z["offset"], z["size"],
                labels if len(labels) == len(z["size"]) and len(labels) else None, meta["classes"], names,
                meta["fingerprint"],
            )  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError, EOFError):
        return None


def _current_fingerprint(index: ImageIndex) -> list | None:
    """The fingerprint the data has now, checked against the stored one's folders or shards (cheap)."""
    try:
        if index.kind == "folder":
            return [[d, (index.root / d).stat().st_mtime_ns] for d, _ in index.fingerprint]
        return _tar_fingerprint(index.root, index.shards)
    except OSError:
        return None


def _is_fresh(index: ImageIndex) -> bool:
    return _current_fingerprint(index) == index.fingerprint


def index_kind(path: str | os.PathLike) -> str:
    """``"tar"`` for a ``.tar`` file or a folder with ``.tar`` files at its top level, else ``"folder"``."""
    p = Path(path)
    if p.is_file():
        if p.suffix != ".tar":
            raise file_error(p, "expected an image folder, a folder of .tar shards, or one .tar shard")
        return "tar"
    if p.is_dir() and any(c.suffix == ".tar" and not c.name.startswith(".") for c in p.iterdir()):
        return "tar"
    return "folder"


def index_paths(path: str | os.PathLike, kind: str) -> tuple[Path, Path]:
    """Where the index of ``path`` is stored: (next to the data, in the cache folder)."""
    p = Path(path).expanduser().resolve()
    folder = p.parent if p.is_file() else p
    spec = f"v{INDEX_VERSION}:{kind}:{p.name if p.is_file() else '.'}"
    local = folder / INDEX_FOLDER / f"{kind}-{hashlib.sha1(spec.encode()).hexdigest()[:12]}.npz"
    cached = cache_dir() / "indexes" / f"{kind}-{hashlib.sha1(f'{spec}:{p}'.encode()).hexdigest()[:16]}.npz"
    return local, cached


def open_index(path: str | os.PathLike, kind: str | None = None, rebuild: bool = False) -> ImageIndex:
    """The index of an image folder or of tar shards at ``path``: reused when fresh, else (re)built and saved.

    ``kind``: ``"folder"`` or ``"tar"`` (default: :func:`index_kind`). The index is saved next to the data
    when its folder is writable, else in the cache folder; when neither can be written it is only logged.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise file_error(p, "image folder not found")
    kind = kind or index_kind(p)
    if kind not in ("folder", "tar"):
        raise SimCLRError(f"index kind must be folder or tar, got {kind!r}")
    root = p.parent.resolve() if p.is_file() else p.resolve()
    local, cached = index_paths(p, kind)
    if not rebuild:
        for candidate in (local, cached):
            index = _load(candidate, root)
            if index is not None and index.kind == kind and _is_fresh(index):
                return index
    # The hidden folder exists before the fingerprint is taken: creating it changes root's mtime.
    with contextlib.suppress(OSError):
        local.parent.mkdir(exist_ok=True)
    index = _build_folder(root) if kind == "folder" else _build_tar(p.resolve())
    for target in (local, cached):
        try:
            _save(index, target)
            log.info("%s: indexed %d images -> %s", root, len(index), target)
            break
        except SimCLRError as e:
            log.info("%s", e)
    else:
        log.warning("%s: could not save the image index (read-only data and cache folders)", root)
    return index


__all__ = ["INDEX_FOLDER", "ImageIndex", "index_kind", "index_paths", "open_index"]
