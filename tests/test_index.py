"""The one-time image index: folders and tar shards, stored next to the data or in the cache, reused, rebuilt."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import simclr.data.index as index_mod
from simclr.data.folder import scan_folder
from simclr.data.index import INDEX_FOLDER, index_kind, index_paths, open_index
from simclr.errors import SimCLRError

RNG = np.random.default_rng(0)


def jpeg_bytes(w: int = 20, h: int = 15, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def make_folder(root: Path, classes: int = 2, per_class: int = 3) -> None:
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (root / f"class{c}" / f"{i}.jpg").write_bytes(jpeg_bytes())


def write_tar(path: Path, samples: list[tuple[str, bytes, dict[str, bytes]]]) -> None:
    """A WebDataset shard: for each (key, image bytes, {ext: bytes}) the members key.jpg and key.<ext>."""
    with tarfile.open(path, "w") as tar:
        for key, image, extra in samples:
            for name, data in [(f"{key}.jpg", image)] + [(f"{key}.{e}", d) for e, d in extra.items()]:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def bump_mtime(path: Path) -> None:
    """Move a folder's or file's mtime clearly later (the file system's clock tick can be coarse)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))


@pytest.fixture
def builds(monkeypatch):
    """Count index builds (folder and tar)."""
    count = {"folder": 0, "tar": 0}
    real_folder, real_tar = index_mod._build_folder, index_mod._build_tar

    def folder(root):
        count["folder"] += 1
        return real_folder(root)

    def tar(target):
        count["tar"] += 1
        return real_tar(target)

    monkeypatch.setattr(index_mod, "_build_folder", folder)
    monkeypatch.setattr(index_mod, "_build_tar", tar)
    return count


def test_folder_index_matches_scan_and_is_reused(tmp_path, builds):
    make_folder(tmp_path)
    index = open_index(tmp_path)
    files, labels, classes = scan_folder(tmp_path)
    assert index.kind == "folder" and len(index) == 6 and index.classes == classes
    assert list(index.names) == [f.relative_to(tmp_path).as_posix() for f in files]
    assert index.labels.tolist() == labels
    assert index.read(4) == files[4].read_bytes()
    assert index.size.tolist() == [f.stat().st_size for f in files]
    local, _ = index_paths(tmp_path, "folder")
    assert local.parent.name == INDEX_FOLDER and local.is_file()
    again = open_index(tmp_path)
    assert builds["folder"] == 1 and list(again.names) == list(index.names)
    assert np.array_equal(again.labels, index.labels)


@pytest.mark.parametrize("change", ["add", "remove", "new_class"])
def test_folder_index_is_rebuilt_when_the_folder_changes(tmp_path, builds, change):
    make_folder(tmp_path)
    open_index(tmp_path)
    if change == "add":
        (tmp_path / "class1" / "9.jpg").write_bytes(jpeg_bytes())
        bump_mtime(tmp_path / "class1")
    elif change == "remove":
        (tmp_path / "class0" / "0.jpg").unlink()
        bump_mtime(tmp_path / "class0")
    else:
        make_folder(tmp_path, classes=3)
        bump_mtime(tmp_path)
    index = open_index(tmp_path)
    assert builds["folder"] == 2
    assert list(index.names) == [f.relative_to(tmp_path).as_posix() for f in scan_folder(tmp_path)[0]]


def test_flat_folder_and_read_only_data_go_to_the_cache(tmp_path, builds, monkeypatch):
    data, cache = tmp_path / "data", tmp_path / "cache"
    data.mkdir()
    for i in range(3):
        (data / f"{i}.png").write_bytes(jpeg_bytes(fmt="PNG"))
    (data / INDEX_FOLDER).write_text("not a folder: the index cannot be written next to the data")
    monkeypatch.setenv("SIMCLR_CACHE", str(cache))
    index = open_index(data)
    assert index.labels is None and index.classes is None and list(index.names) == ["0.png", "1.png", "2.png"]
    _, cached = index_paths(data, "folder")
    assert cached.is_file() and cached.is_relative_to(cache)
    open_index(data)
    assert builds["folder"] == 1  # reused from the cache
    monkeypatch.setenv("SIMCLR_CACHE", str(data / "0.png"))  # the cache cannot be written either
    assert len(open_index(data, rebuild=True)) == 3  # still works, index kept in memory only


def test_tar_index_offsets_labels_and_reuse(tmp_path, builds, monkeypatch):
    images = [jpeg_bytes(10 + i, 12) for i in range(5)]
    write_tar(tmp_path / "shard-000.tar", [(f"s{i}", images[i], {"cls": str(i % 3).encode()}) for i in range(3)])
    write_tar(tmp_path / "shard-001.tar", [("dir/s3", images[3], {"txt": b" 7\n"}),
                                           ("s4", images[4], {"cls": b"2", "txt": b"a caption"})])  # fmt: skip
    (tmp_path / "notes.md").write_text("ignored")
    assert index_kind(tmp_path) == "tar"
    index = open_index(tmp_path)
    assert index.kind == "tar" and index.shards == ["shard-000.tar", "shard-001.tar"]
    assert index.labels.tolist() == [0, 1, 2, 7, 2]  # .cls wins over .txt
    assert list(index.names)[3] == "shard-001.tar:dir/s3.jpg"

    def no_tarfile(*a, **k):
        raise AssertionError("reads must not parse the tar")

    monkeypatch.setattr(tarfile, "open", no_tarfile)
    assert [index.read(i) for i in range(5)] == images
    assert index.read(1) == images[1]  # the shard file stays open
    index.close()
    open_index(tmp_path)
    assert builds["tar"] == 1
    monkeypatch.undo()


def test_tar_index_is_rebuilt_when_a_shard_changes(tmp_path, builds):
    write_tar(tmp_path / "a.tar", [("x", jpeg_bytes(), {})])
    assert open_index(tmp_path).labels is None
    write_tar(tmp_path / "a.tar", [("x", jpeg_bytes(), {}), ("y", jpeg_bytes(), {})])
    bump_mtime(tmp_path / "a.tar")
    assert len(open_index(tmp_path)) == 2 and builds["tar"] == 2
    write_tar(tmp_path / "b.tar", [("z", jpeg_bytes(), {})])
    bump_mtime(tmp_path)
    assert len(open_index(tmp_path)) == 3 and builds["tar"] == 3
    single = open_index(tmp_path / "b.tar")  # one shard on its own
    assert len(single) == 1 and single.read(0)[:2] == b"\xff\xd8"


def test_tar_label_errors(tmp_path):
    write_tar(tmp_path / "a.tar", [("x", jpeg_bytes(), {"cls": b"1"}), ("y", jpeg_bytes(), {})])
    with pytest.raises(SimCLRError, match="y.jpg: no integer label"):
        open_index(tmp_path)
    write_tar(tmp_path / "a.tar", [("x", jpeg_bytes(), {"cls": b"cat"})])
    bump_mtime(tmp_path / "a.tar")
    with pytest.raises(SimCLRError, match="x.cls: label is not an integer"):
        open_index(tmp_path)
    (tmp_path / "a.tar").write_bytes(b"garbage" * 100)
    bump_mtime(tmp_path / "a.tar")
    with pytest.raises(SimCLRError, match="a.tar"):
        open_index(tmp_path)
    with pytest.raises(SimCLRError, match="not found"):
        open_index(tmp_path / "missing")
