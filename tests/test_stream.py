"""The streamed source: exact order and rank shards, resume, double buffering, the canvas, bad files."""

from __future__ import annotations

import io
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from simclr.data import make_batch_source
from simclr.data.decode import decode_image_bytes
from simclr.data.source import Batch, epoch_permutation
from simclr.data.stream import ImageStream, ImageStreamSource, open_image_stream
from simclr.errors import SimCLRError

RNG = np.random.default_rng(2)
SIDE = 12


def jpeg(w: int, h: int, fmt: str = "JPEG") -> bytes:
    """A distinct smooth image with a little noise (decoders then differ by rounding only)."""
    y, x = np.mgrid[0:h, 0:w]
    a, b, c = RNG.uniform(0.5, 3, 3)
    base = np.stack([127 + 100 * np.sin(a * x / w * 3), 127 + 100 * np.cos(b * y / h * 3), (x + y) * c], axis=2)
    buf = io.BytesIO()
    Image.fromarray(np.clip(base + RNG.normal(0, 3, base.shape), 0, 255).astype(np.uint8)).save(buf, fmt)
    return buf.getvalue()


def shape_of(i: int) -> tuple[int, int]:
    """Mixed sizes and orientations: (w, h)."""
    return [(24, 18), (18, 24), (30, 15), (12, 12), (40, 30)][i % 5]


def make_tar_shards(root: Path, n: int = 22, per_shard: int = 8) -> list[bytes]:
    root.mkdir(parents=True, exist_ok=True)
    images = [jpeg(*shape_of(i)) for i in range(n)]
    for s in range(0, n, per_shard):
        with tarfile.open(root / f"shard-{s // per_shard:03d}.tar", "w") as tar:
            for i in range(s, min(n, s + per_shard)):
                for name, data in ((f"{i:05d}.jpg", images[i]), (f"{i:05d}.cls", str(i % 4).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return images


def make_folder(root: Path, n: int = 12) -> None:
    for i in range(n):
        (root / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        (root / f"c{i % 3}" / f"{i:03d}.jpg").write_bytes(jpeg(*shape_of(i)))


def collect(source, epoch: int, start: int = 0) -> list[Batch]:
    source.set_epoch(epoch, start_batch=start)
    return [Batch(*(None if t is None else t.clone() for t in b)) for b in source]


def same(a: list[Batch], b: list[Batch]) -> bool:
    def eq(x, y):
        return (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))

    return len(a) == len(b) and all(eq(x, y) for p, q in zip(a, b, strict=True) for x, y in zip(p, q, strict=True))


def test_batches_hold_each_image_top_left_with_its_size_and_label(tmp_path):
    images = make_tar_shards(tmp_path)
    stream = ImageStream(tmp_path, SIDE)
    source = make_batch_source(stream, 4, "cpu", seed=0, threads=2)
    assert isinstance(source, ImageStreamSource) and len(source) == 5
    for batch in collect(source, 0):
        assert batch.images.dtype == torch.uint8 and batch.images.shape[:2] == (4, 3)
        assert batch.valid is None and batch.labels.tolist() == (batch.indices % 4).tolist()
        sizes = batch.sizes if batch.sizes is not None else torch.tensor([batch.images.shape[2:]] * 4)
        assert tuple(batch.images.shape[2:]) == tuple(sizes.max(0).values.tolist())
        for row, i in enumerate(batch.indices.tolist()):
            h, w = sizes[row].tolist()
            ref = decode_image_bytes(images[i], SIDE, 2.0)
            assert min(h, w) == SIDE and (h, w) == ref.shape[:2]
            assert np.array_equal(batch.images[row, :, :h, :w].permute(1, 2, 0).numpy(), ref)
            assert not batch.images[row, :, h:].any() and not batch.images[row, :, :, w:].any()


def test_order_is_the_exact_epoch_permutation_and_ranks_split_each_batch(tmp_path):
    make_tar_shards(tmp_path)
    stream = ImageStream(tmp_path, SIDE)
    whole = collect(make_batch_source(stream, 4, "cpu", seed=7, threads=2), 3)
    perm = epoch_permutation(22, 7, 3)
    assert torch.equal(torch.cat([b.indices for b in whole]), perm[:20])  # drop_last
    ranks = [collect(make_batch_source(stream, 4, "cpu", seed=7, rank=r, world_size=2, threads=1), 3) for r in (0, 1)]
    for k, batch in enumerate(whole):
        r0, r1 = ranks[0][k], ranks[1][k]
        assert torch.equal(torch.cat([r0.indices, r1.indices]), batch.indices)
        assert torch.equal(torch.cat([r0.labels, r1.labels]), batch.labels)
        w = batch.images.shape[3]
        for row, part in enumerate([r0, r0, r1, r1]):  # the same pixels, on each rank's own canvas
            own = part.images[row % 2]
            h_i, w_i = part.sizes[row % 2].tolist() if part.sizes is not None else own.shape[1:]
            assert torch.equal(own[:, :h_i, :w_i], batch.images[row, :, :h_i, :w_i]) and w_i <= w


def test_tar_source_resumed_mid_epoch_gives_the_same_batches(tmp_path):
    make_tar_shards(tmp_path)
    stream = ImageStream(tmp_path, SIDE)
    source = make_batch_source(stream, 4, "cpu", seed=1, threads=2)
    full = collect(source, 2)
    resumed_source = make_batch_source(ImageStream(tmp_path, SIDE), 4, "cpu", seed=1, threads=2)  # a new process
    resumed = collect(resumed_source, 2, start=3)
    assert len(resumed) == 2 and same(full[3:], resumed)
    assert len(collect(source, 2)) == 5  # the start batch applied to one iteration only


def test_double_buffered_reader_equals_the_sequential_reader(tmp_path):
    make_folder(tmp_path)
    stream = ImageStream(tmp_path, SIDE)
    prefetched = ImageStreamSource(stream, make_batch_source(stream, 3, "cpu").order, torch.device("cpu"), threads=3)
    plain = make_batch_source(stream, 3, "cpu", threads=1)
    plain.prefetch = False
    assert prefetched.prefetch and same(collect(prefetched, 0), collect(plain, 0))
    for batch in collect(plain, 0):  # and the folder's labels come through
        assert batch.labels.tolist() == [int(stream.names[i][1]) for i in batch.indices.tolist()]


def test_leaving_an_epoch_early_stops_the_reader(tmp_path):
    make_folder(tmp_path)
    source = make_batch_source(ImageStream(tmp_path, SIDE), 3, "cpu", threads=2)
    source.set_epoch(0)
    it = iter(source)
    first = next(it)
    it.close()  # the producer thread is joined
    source.set_epoch(0)
    assert torch.equal(next(iter(source)).indices, first.indices)


def test_bad_files_are_substituted_or_flagged_and_counted(tmp_path, caplog):
    make_folder(tmp_path)
    broken = tmp_path / "c1" / "004.jpg"
    broken.write_bytes(broken.read_bytes()[:40])  # truncated: found only when decoded
    (tmp_path / "c2" / "zero.jpg").write_bytes(b"")  # dropped when the stream opens
    stream = ImageStream(tmp_path, SIDE, max_bad_fraction=0.5)
    assert len(stream) == 12 and stream.bad_files == [str(tmp_path / "c2" / "zero.jpg")]
    bad = list(stream.names).index("c1/004.jpg")
    with caplog.at_level(logging.WARNING):
        batches = collect(make_batch_source(stream, 12, "cpu", shuffle=False, threads=2), 0)
    row = batches[0]
    assert "004.jpg: cannot decode image" in caplog.text and stream.bad_files[-1] == str(broken)
    good = ImageStream(tmp_path, SIDE, max_bad_fraction=0.5)
    next_image = good.decode(bad + 1)
    h, w = next_image.shape[:2]
    assert np.array_equal(row.images[bad, :, :h, :w].permute(1, 2, 0).numpy(), next_image)  # the next image
    assert row.indices[bad] == bad and row.labels[bad] == stream.labels[bad + 1]  # the substitute's label
    collect(make_batch_source(stream, 12, "cpu", shuffle=False, threads=2), 1)
    assert len(stream.bad_files) == 2  # counted once

    flagged = collect(make_batch_source(good, 12, "cpu", shuffle=False, threads=2, on_bad="flag"), 0)[0]
    assert flagged.valid.tolist() == [i != bad for i in range(12)]
    assert not flagged.images[bad].any() and flagged.sizes[bad].tolist() == list(flagged.images.shape[2:])

    strict = ImageStream(tmp_path, SIDE, max_bad_fraction=0.1)  # 1 zero-byte of 13: allowed; 2: not
    with pytest.raises(SimCLRError, match="004.jpg: cannot decode image .* 2 of 13 images"):
        collect(make_batch_source(strict, 12, "cpu", shuffle=False, threads=2), 0)
    with pytest.raises(SimCLRError, match="zero.jpg: cannot decode image"):
        ImageStream(tmp_path, SIDE, max_bad_fraction=0.0)


def test_open_image_stream_uses_split_folders(tmp_path):
    make_tar_shards(tmp_path / "train", n=5)
    make_folder(tmp_path / "val", n=3)
    assert len(open_image_stream(tmp_path, "train", SIDE)) == 5
    test = open_image_stream(tmp_path, "test", SIDE)  # val stands in for test
    assert len(test) == 3 and test.classes == ["c0", "c1", "c2"]
    assert len(open_image_stream(tmp_path / "train" / "shard-000.tar", "train", SIDE)) == 5


def test_gpu_decoder_path_builds_the_same_batches(tmp_path, monkeypatch):
    """The device-decoding branch, run on the CPU with a stand-in for torchvision's decode_jpeg."""
    import sys
    import types

    import simclr.data.decode as decode_mod

    def decode_jpeg(x, mode=None, device="cpu"):
        def one(t):
            img = Image.open(io.BytesIO(t.numpy().tobytes()))
            img.load()
            return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).to(device)

        return [one(t) for t in x] if isinstance(x, list) else one(x)

    io_mod = types.SimpleNamespace(decode_jpeg=decode_jpeg, ImageReadMode=types.SimpleNamespace(RGB="RGB"))
    monkeypatch.setitem(sys.modules, "torchvision.io", io_mod)
    monkeypatch.setattr(decode_mod, "_torchvision_decode_jpeg", lambda: decode_jpeg)
    make_folder(tmp_path)
    (tmp_path / "c0" / "099.png").write_bytes(jpeg(20, 14, "PNG"))  # not a JPEG: decoded on the CPU
    stream = ImageStream(tmp_path, SIDE, backend="pil")  # full-size decoding on both sides
    cpu = make_batch_source(stream, 13, "cpu", shuffle=False, drop_last=False, threads=2)
    gpu = make_batch_source(stream, 13, "cpu", shuffle=False, drop_last=False, threads=2)
    gpu.decoder = "gpu"
    (a,), (b,) = collect(cpu, 0), collect(gpu, 0)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.labels, b.labels) and torch.equal(a.sizes, b.sizes)
    diff = (a.images.float() - b.images.float()).abs()
    assert diff.max() <= 2 and diff.mean() < 0.5  # torch's antialiased bicubic against PIL's
