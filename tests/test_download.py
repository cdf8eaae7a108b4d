"""download_dataset against a local HTTP server (127.0.0.1, ephemeral port) serving tiny files it made."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import simclr.data.download as dl
from simclr.data import load_dataset
from simclr.data.download import DATASETS, download_dataset
from simclr.errors import SimCLRError


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def server(tmp_path):
    """Serve ``tmp_path / "www"``; yields (folder, base URL)."""
    www = tmp_path / "www"
    www.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def idx_gz(arr: np.ndarray) -> bytes:
    return gzip.compress(bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes())


def serve_mnist(www: Path, base: str) -> tuple[dict[str, str], dict[str, str]]:
    """Tiny MNIST-format files on the server; returns (urls, md5s) keyed by file name."""
    blobs = {}
    for prefix, n in (("train", 5), ("t10k", 2)):
        blobs[f"{prefix}-images-idx3-ubyte.gz"] = idx_gz(np.full((n, 28, 28), 7, np.uint8))
        blobs[f"{prefix}-labels-idx1-ubyte.gz"] = idx_gz(np.arange(n, dtype=np.uint8))
    for name, blob in blobs.items():
        (www / name).write_bytes(blob)
    return {n: base + n for n in blobs}, {n: md5(b) for n, b in blobs.items()}


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def test_download_verifies_and_places_files(tmp_path, server):
    www, base = server
    urls, md5s = serve_mnist(www, base)
    root = tmp_path / "data"
    assert download_dataset("fashion-mnist", root, urls=urls, md5s=md5s) == root
    assert sorted(p.name for p in root.iterdir()) == sorted(urls)
    data = load_dataset("fashion-mnist", root)
    assert data.images.shape == (5, 1, 28, 28) and data.labels.tolist() == [0, 1, 2, 3, 4]
    # already present and verified: nothing is fetched again (the server has nothing now)
    for f in www.iterdir():
        f.unlink()
    download_dataset("fashion-mnist", root, urls=urls, md5s=md5s)


def test_checksum_mismatch_leaves_nothing_behind(tmp_path, server):
    www, base = server
    urls, _ = serve_mnist(www, base)
    root = tmp_path / "data"
    with pytest.raises(SimCLRError) as info:
        download_dataset("fashion-mnist", root, urls=urls)  # the official md5s cannot match the tiny files
    message = str(info.value)
    assert "train-images-idx3-ubyte.gz" in message and "checksum mismatch" in message and "\n" not in message
    assert list(root.iterdir()) == []


def test_http_error_is_one_line(tmp_path, server):
    _, base = server
    root = tmp_path / "data"
    with pytest.raises(SimCLRError, match=r"cifar-10-python\.tar\.gz: download failed .*HTTP 404"):
        download_dataset("cifar10", root, urls={"cifar-10-python.tar.gz": base + "missing.tar.gz"})
    assert list(root.iterdir()) == []


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


def test_archive_is_extracted_into_place(tmp_path, server):
    www, base = server
    batch = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 4]}, protocol=2)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    archive = _tar_gz({f"cifar-10-batches-py/{n}": batch for n in names})
    (www / "c10.tgz").write_bytes(archive)
    root = tmp_path / "data"
    options = {
        "urls": {"cifar-10-python.tar.gz": base + "c10.tgz"},
        "md5s": {"cifar-10-python.tar.gz": md5(archive)},
    }
    download_dataset("cifar10", root, **options)
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py"]  # archive removed, no temp dirs
    assert load_dataset("cifar10", root).labels.tolist() == [3, 4] * 5


def test_unsafe_archive_is_refused(tmp_path, server):
    www, base = server
    archive = _tar_gz({"../escaped.txt": b"x", "cifar-10-batches-py/test_batch": b"y"})
    (www / "evil.tgz").write_bytes(archive)
    root = tmp_path / "data"
    name = "cifar-10-python.tar.gz"
    with pytest.raises(SimCLRError, match="cannot extract"):
        download_dataset("cifar10", root, urls={name: base + "evil.tgz"}, md5s={name: md5(archive)})
    assert not (tmp_path / "escaped.txt").exists() and leftovers(root) == []


def test_load_dataset_downloads_into_the_cache(tmp_path, server, monkeypatch):
    www, base = server
    urls, md5s = serve_mnist(www, base)
    table = [dl.Remote(r.filename, urls[r.filename], md5s[r.filename]) for r in DATASETS["mnist"]]
    monkeypatch.setitem(DATASETS, "mnist", table)
    monkeypatch.setenv("SIMCLR_DATA", str(tmp_path / "cache"))
    data = load_dataset("mnist", split="test", download=True)
    assert data.images.shape == (2, 1, 28, 28) and (tmp_path / "cache" / "mnist").is_dir()


def test_unknown_dataset(tmp_path):
    with pytest.raises(SimCLRError, match="no download known"):
        download_dataset("imagenet", tmp_path)


def test_table_has_official_addresses():
    for name, remotes in DATASETS.items():
        for r in remotes:
            assert r.url.startswith(("http://", "https://")) and len(r.md5) == 32, name
