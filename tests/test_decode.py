"""Decoding to the stored size: each CPU backend against PIL written plainly, and the GPU path's CPU fallback."""

from __future__ import annotations

import io
import subprocess
import sys
import types
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

import simclr.data.decode as decode_mod
from simclr.data.decode import (
    choose_decoder,
    decode_batch_cuda,
    decode_image_bytes,
    orient_chw,
    resize_chw,
    stored_shape,
)
from simclr.data.folder import BadImage
from simclr.errors import SimCLRError

RNG = np.random.default_rng(1)
CPU_BACKENDS = ["pil", "draft"] + (["simplejpeg"] if decode_mod.simplejpeg is not None else [])


def photo(w: int, h: int) -> np.ndarray:
    """A smooth image with some noise (JPEG-friendly, so backends can be compared closely)."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], axis=2)
    return np.clip(base + RNG.normal(0, 4, base.shape), 0, 255).astype(np.uint8)


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def reference(data: bytes, side: int | None) -> np.ndarray:
    """PIL, plainly: EXIF orientation, RGB, shorter side resized to ``side`` with bicubic."""
    img = Image.open(io.BytesIO(data))
    img.load()
    from PIL import ImageOps

    img = ImageOps.exif_transpose(img).convert("RGB")
    if side is not None:
        w, h = img.size
        s = side / min(w, h)
        img = img.resize((max(side, round(w * s)), max(side, round(h * s))), Image.BICUBIC)
    return np.asarray(img)


def with_orientation(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=95, exif=exif)


def test_stored_shape_keeps_aspect_and_caps_it():
    assert stored_shape(375, 500, 224, 2.0) == ((0, 0, 375, 500), (224, 299))
    assert stored_shape(500, 375, 224, 2.0) == ((0, 0, 500, 375), (299, 224))
    assert stored_shape(100, 1000, 50, 2.0) == ((0, 400, 100, 200), (50, 100))  # centre crop to 2:1
    assert stored_shape(10, 20, 50, None) == ((0, 0, 10, 20), (50, 100))  # small images are enlarged
    assert stored_shape(10, 20, None, 1.5) == ((0, 2, 10, 15), (10, 15))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_pil_backend_equals_pil_full_size_and_resized(fmt):
    data = encode(Image.fromarray(photo(64, 48)), fmt)
    assert np.array_equal(decode_image_bytes(data, None, None, "pil"), reference(data, None))
    assert np.array_equal(decode_image_bytes(data, 20, None, "pil"), reference(data, 20))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_reduced_decoding_is_close_to_full_decoding(backend):
    data = encode(Image.fromarray(photo(400, 300)), quality=95)
    out = decode_image_bytes(data, 64, None, backend)
    ref = reference(data, 64)
    assert out.shape == ref.shape == (64, 85, 3) and out.dtype == np.uint8
    diff = np.abs(out.astype(int) - ref.astype(int))
    assert diff.mean() < 2.0 and np.percentile(diff, 99) < 12
    full = decode_image_bytes(data, None, None, backend)  # no reduction asked: the full decode
    assert np.abs(full.astype(int) - reference(data, None).astype(int)).max() <= 1


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(backend, orientation):
    data = with_orientation(Image.fromarray(photo(40, 24)), orientation)
    out, ref = decode_image_bytes(data, None, None, backend), reference(data, None)
    assert out.shape == ref.shape and np.abs(out.astype(int) - ref.astype(int)).max() <= 1


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_cmyk_gray_and_alpha_follow_the_folder_policy(backend):
    rgb = Image.fromarray(photo(32, 24))
    cmyk = encode(rgb.convert("CMYK"), quality=95)
    assert np.abs(decode_image_bytes(cmyk, None, None, backend).astype(int) - reference(cmyk, None)).max() <= 1
    gray = decode_image_bytes(encode(rgb.convert("L")), None, None, backend)
    assert gray.shape == (24, 32, 3) and (gray[..., 0] == gray[..., 2]).all()
    rgba = np.dstack([photo(8, 8), np.full((8, 8), 128, np.uint8)])
    out = decode_image_bytes(encode(Image.fromarray(rgba), "PNG"), None, None, backend)
    assert np.array_equal(out, (rgba[..., :3].astype(np.uint16) * 128 + 127) // 255)  # on black


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_broken_files_raise_bad_image(backend):
    data = encode(Image.fromarray(photo(64, 48)))
    for broken in (b"", data[: len(data) // 2], b"\xff\xd8\xff" + b"\x00" * 50, b"not an image"):
        with pytest.raises(BadImage):
            decode_image_bytes(broken, 16, 2.0, backend)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_chw_matches_pil(orientation):
    img = photo(6, 4)
    data = with_orientation(Image.fromarray(img), orientation)
    raw = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # decoded, not yet oriented
    out = orient_chw(torch.from_numpy(raw.copy()).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    assert np.array_equal(out, reference(data, None))


def test_resize_chw_is_close_to_pil():
    img = photo(120, 90)
    out = resize_chw(torch.from_numpy(img).permute(2, 0, 1), 30, 2.0).permute(1, 2, 0).numpy()
    ref = np.asarray(Image.fromarray(img).resize((40, 30), Image.BICUBIC))
    assert out.shape == ref.shape and np.abs(out.astype(int) - ref.astype(int)).mean() < 2.0


def test_decoder_choice(monkeypatch):
    assert choose_decoder("cpu") == "cpu" and choose_decoder("cpu", "cpu") == "cpu"
    with pytest.raises(SimCLRError, match="decode=gpu needs a CUDA device"):
        choose_decoder("cpu", "gpu")
    with pytest.raises(SimCLRError, match="auto, cpu or gpu"):
        choose_decoder("cpu", "nvjpeg")
    if not torch.cuda.is_available():
        assert not decode_mod.gpu_decode_available("cuda")
        assert choose_decoder("cuda") == "cpu"  # auto: no CUDA here, so the CPU decoder
    monkeypatch.setattr(decode_mod, "gpu_decode_available", lambda device: True)
    assert choose_decoder("cuda") == "gpu" and choose_decoder("cuda", "gpu") == "gpu"
    assert choose_decoder("cuda", "cpu") == "cpu"


def test_modules_import_without_torchvision():
    code = (
        "import sys; sys.modules['torchvision'] = None\n"
        "import simclr.data.decode as d, simclr.data.stream\n"
        "assert d._torchvision_decode_jpeg() is None and not d.gpu_decode_available('cuda')\n"
        "assert d.choose_decoder('cuda') == 'cpu'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.fixture
def fake_torchvision(monkeypatch):
    """A stand-in for torchvision.io: decode_jpeg decodes with PIL on the CPU and records its calls."""
    calls = []

    def decode_jpeg(x, mode=None, device="cpu"):
        batch = isinstance(x, list)
        calls.append(len(x) if batch else 1)
        out = []
        for t in x if batch else [x]:
            try:
                img = Image.open(io.BytesIO(t.numpy().tobytes()))
                img.load()
            except Exception as e:
                raise RuntimeError(f"nvjpeg: {e}") from None
            out.append(torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).to(device))
        return out if batch else out[0]

    io_mod = types.SimpleNamespace(decode_jpeg=decode_jpeg, ImageReadMode=types.SimpleNamespace(RGB="RGB"))
    monkeypatch.setitem(sys.modules, "torchvision", types.SimpleNamespace(io=io_mod))
    monkeypatch.setitem(sys.modules, "torchvision.io", io_mod)
    return decode_jpeg, calls


def test_batched_device_decode_with_cpu_fallback(fake_torchvision):
    decode_jpeg, calls = fake_torchvision
    rgb = Image.fromarray(photo(48, 32))
    good = encode(rgb, quality=95)
    datas = [
        good,
        encode(rgb, "PNG"),  # not a JPEG: CPU
        encode(rgb.convert("CMYK"), quality=95),  # CMYK: CPU
        with_orientation(rgb, 6),  # oriented on the device
        good[: len(good) * 2 // 3],  # broken: the batch call fails, then alone, then the CPU says bad
        b"",
    ]
    with ThreadPoolExecutor(2) as pool:
        out = decode_batch_cuda(datas, 16, "cpu", pool, 2.0, "pil", decode_jpeg=decode_jpeg)
    assert calls[0] == 3 and calls[1:] == [1, 1, 1]  # one batch of the 3 JPEGs, then each alone
    assert isinstance(out[4], BadImage) and isinstance(out[5], BadImage)
    for i in range(4):
        ref = reference(datas[i], 16)
        got = out[i].permute(1, 2, 0).numpy()
        assert got.shape == ref.shape and np.abs(got.astype(int) - ref.astype(int)).mean() < 3.0, i


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_every_backend_gives_the_stored_shape_of_the_full_image(backend):
    # reduced decoding rounds the reduced sides (24 x 18 at 5/8 is 15 x 12): the shape must not follow it
    for w, h, orientation in [(24, 18, 1), (18, 24, 1), (500, 375, 1), (375, 500, 6), (37, 23, 8), (200, 40, 1)]:
        data = with_orientation(Image.fromarray(photo(w, h)), orientation)
        upright = (w, h) if orientation in (5, 6, 7, 8) else (h, w)
        for side in (12, 100, 224):
            expected = stored_shape(*upright, side, 2.0)[1]
            assert decode_image_bytes(data, side, 2.0, backend).shape == (*expected, 3), (w, h, side)
