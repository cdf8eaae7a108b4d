"""Fetch known datasets from their official addresses, verified and moved into place atomically.

``download_dataset(name, root)`` downloads each file of ``name`` (table ``DATASETS``: official URL and the
md5 published with the archive) into ``root``. A file is streamed to a temporary file in the same folder,
its md5 checked, then ``os.replace``-d to its final name, so an interrupted or corrupted download never
leaves a file that looks complete. Archives are extracted into a temporary folder inside ``root`` (with
tarfile's "data" filter: no absolute paths, links out of the tree or devices) and the dataset folder is
moved into place the same way; the archive is then deleted unless ``keep_archive``. Files already in place
(or an already extracted folder) are not fetched again.

Result layout (what :func:`simclr.data.load_dataset` reads): ``root/*-idx?-ubyte.gz`` for MNIST and
Fashion-MNIST, ``root/cifar-10-batches-py``, ``root/cifar-100-python``, ``root/stl10_binary``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from simclr.errors import SimCLRError, file_error

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Remote:
    """One file to fetch: where from, its md5, and the folder it extracts to (None: not an archive)."""

    filename: str
    url: str
    md5: str
    extracts_to: str | None = None


_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # yann.lecun.com refuses scripted downloads

_IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
              "t10k-labels-idx1-ubyte.gz")  # fmt: skip


def _idx(base: str, md5s: tuple[str, str, str, str]) -> list[Remote]:
    return [Remote(f, base + f, m) for f, m in zip(_IDX_FILES, md5s, strict=True)]


DATASETS: dict[str, list[Remote]] = {
    "fashion-mnist": _idx(_FASHION, ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                                     "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310")),
    "mnist": _idx(_MNIST, ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                           "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c")),
    "cifar10": [
        Remote("cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
               "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py"),
    ],
    "cifar100": [
        Remote("cifar-100-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
               "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python"),
    ],
    "stl10": [
        Remote("stl10_binary.tar.gz", "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
               "91f7769df0f17e558f3565bffb0c7dfb", "stl10_binary"),
    ],
}  # fmt: skip

_CHUNK = 1 << 20


def md5_of(path: str | os.PathLike) -> str:
    """Hex md5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, md5: str, dest: Path, timeout: float) -> None:
    """Stream ``url`` to a temporary file next to ``dest``, check its md5, then move it to ``dest``."""
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        size = 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        got = digest.hexdigest()
        if got != md5:
            raise SimCLRError(
                f"{dest.name}: checksum mismatch for {url} (md5 {got}, expected {md5}, {size} bytes); "
                "the download was deleted"
            )
        os.replace(tmp, dest)
    except urllib.error.HTTPError as e:
        raise SimCLRError(f"{dest.name}: download failed from {url} (HTTP {e.code} {e.reason})") from None
    except (urllib.error.URLError, OSError) as e:  # no network, DNS, refused, timeout, disk full
        reason = getattr(e, "reason", None) or e
        raise SimCLRError(f"{dest.name}: download failed from {url} ({reason})") from None
    finally:
        tmp.unlink(missing_ok=True)


def _extract(archive: Path, folder: str, root: Path) -> None:
    """Unpack ``archive`` in a temporary folder in ``root``, then move its ``folder`` to ``root/folder``."""
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{folder}."))
    try:
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise file_error(archive, f"cannot extract archive ({e})") from None
        if not (tmp / folder).is_dir():
            raise file_error(archive, f"archive has no {folder}/ folder")
        os.replace(tmp / folder, root / folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download_dataset(
    name: str,
    root: str | os.PathLike,
    *,
    urls: Mapping[str, str] | None = None,
    md5s: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    keep_archive: bool = False,
) -> Path:
    """Download dataset ``name`` (fashion-mnist, mnist, cifar10, cifar100, stl10) into folder ``root``.

    ``urls`` / ``md5s`` map a file name of the table (e.g. ``"cifar-10-python.tar.gz"``) to a replacement
    address or checksum (a mirror, or a local server in tests). Returns ``root``. Raises SimCLRError on a
    network failure or a checksum mismatch; nothing partial is left under a final name.
    """
    if name not in DATASETS:
        raise SimCLRError(f"no download known for dataset {name!r}; known: {', '.join(DATASETS)}")
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise file_error(root, f"cannot create folder ({e.strerror or e})") from None
    urls, md5s = urls or {}, md5s or {}
    for remote in DATASETS[name]:
        url, md5 = urls.get(remote.filename, remote.url), md5s.get(remote.filename, remote.md5)
        dest = root / remote.filename
        if remote.extracts_to and (root / remote.extracts_to).is_dir():
            continue  # already extracted
        if not (dest.is_file() and md5_of(dest) == md5):
            log.info("downloading %s to %s", url, dest)
            _fetch(url, md5, dest, timeout)
        if remote.extracts_to:
            _extract(dest, remote.extracts_to, root)
            if not keep_archive:
                dest.unlink(missing_ok=True)
    return root
