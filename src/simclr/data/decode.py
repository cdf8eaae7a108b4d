"""Decode encoded images to stored-size RGB arrays: on the CPU (PIL, PIL draft, simplejpeg) or batched on CUDA.

Stored size. An image is kept with its aspect ratio: its shorter side resized to the stored side ``S``
(antialiased bicubic, up or down), the longer side scaled alike. A longer side beyond ``max_aspect`` times
the shorter is centre-cropped first, so one panorama cannot widen a whole batch's canvas. ``S = None``
keeps the native size (the crop still applies).

Policy, as :mod:`simclr.data.folder`: EXIF orientation applied, 8-bit RGB (grayscale replicated, 16-bit
scaled, palette expanded, transparency composited on black, CMYK converted by PIL). A file that cannot be
decoded raises :class:`~simclr.data.folder.BadImage`.

CPU backends for JPEG (others always go through PIL):

- ``"pil"``: a full-size decode, then the resize (the reference).
- ``"draft"``: PIL's draft mode lets libjpeg decode at 1/2, 1/4 or 1/8 size while keeping both sides >= S.
- ``"simplejpeg"``: libjpeg-turbo through the optional ``simplejpeg`` package, decoding at the smallest of
  its M/8 DCT scales (M = 1..8, finer than draft's powers of two) that keeps both sides >= S; falls back to
  PIL for CMYK and anything it refuses.
- ``"auto"``: simplejpeg when installed, else draft.

CUDA (:func:`decode_batch_cuda`, the optional ``gpu-decode`` extra): JPEGs decoded in one batched
``torchvision.io.decode_jpeg(..., device="cuda")`` call (nvJPEG), oriented, cropped and resized on the
device; PNG, CMYK, progressive-failing and broken files fall back to the CPU decoder. This module imports
without torchvision.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Executor

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor

from simclr.data.folder import BadImage, _to_rgb
from simclr.errors import SimCLRError

try:  # optional: libjpeg-turbo with DCT scaling (the ``bench`` / ``fast-decode`` extra)
    import simplejpeg
except ImportError:  # pragma: no cover - depends on the environment
    simplejpeg = None

BACKENDS = ("auto", "pil", "draft", "simplejpeg")
DEFAULT_MAX_ASPECT = 2.0
_ORIENTATION = 0x0112  # EXIF tag
# PIL's exif_transpose methods per EXIF orientation (2..8)
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def stored_shape(height: int, width: int, side: int | None, max_aspect: float | None) -> tuple[tuple, tuple]:
    """``(crop (top, left, h, w), out (H, W))`` for an image of ``height x width`` (see the module doc)."""
    short = min(height, width)
    keep = height, width
    if max_aspect is not None:
        limit = max(short, int(max_aspect * short))
        keep = min(height, limit), min(width, limit)
    crop = ((height - keep[0]) // 2, (width - keep[1]) // 2, keep[0], keep[1])
    if side is None:
        return crop, keep
    scale = side / short
    return crop, (max(side, round(keep[0] * scale)), max(side, round(keep[1] * scale)))


def resolve_backend(backend: str) -> str:
    """The CPU backend ``backend`` names: ``auto`` becomes simplejpeg when installed, else draft."""
    if backend not in BACKENDS:
        raise SimCLRError(f"decode backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return "simplejpeg" if simplejpeg is not None else "draft"
    if backend == "simplejpeg" and simplejpeg is None:
        raise SimCLRError("decode backend simplejpeg: the simplejpeg package is not installed (pip install simplejpeg)")
    return backend


def _finish(img: Image.Image, side: int | None, max_aspect: float | None, full: tuple[int, int] | None = None):
    """Crop and resize an 8-bit RGB image to its stored shape; uint8 (H, W, 3).

    ``full``: (H, W) of the upright image at full size when ``img`` was decoded at a reduced scale. The
    stored shape and the crop come from the full size, so every backend gives the same shape; the crop box
    is mapped to the reduced image in fractional pixels (PIL's resize box).
    """
    full_h, full_w = full or (img.height, img.width)
    (top, left, h, w), (out_h, out_w) = stored_shape(full_h, full_w, side, max_aspect)
    if (full_h, full_w) == (img.height, img.width) and (out_h, out_w) == (h, w):  # no resampling
        if (h, w) != (img.height, img.width):
            img = img.crop((left, top, left + w, top + h))
        return np.asarray(img)
    sy, sx = img.height / full_h, img.width / full_w
    box = (left * sx, top * sy, (left + w) * sx, (top + h) * sy)
    return np.asarray(img.resize((out_w, out_h), Image.BICUBIC, box=box, reducing_gap=None))


def _upright(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """(H, W) after EXIF ``orientation`` of an image of PIL ``size`` (W, H)."""
    w, h = size
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def _decode_pil(data: bytes, side: int | None, max_aspect: float | None, draft: bool) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        full = _upright(img.size, img.getexif().get(_ORIENTATION, 1))
        if draft and side is not None and img.format == "JPEG":
            img.draft("RGB", (side, side))  # libjpeg scales by 1/2..1/8 while keeping both sides >= side
        img.load()
        img = _to_rgb(ImageOps.exif_transpose(img))
        return _finish(img, side, max_aspect, full)


def _decode_simplejpeg(data: bytes, side: int | None, max_aspect: float | None) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as header:  # parses the markers only: format, mode and EXIF
        fmt, mode, orientation = header.format, header.mode, header.getexif().get(_ORIENTATION, 1)
        height, width = header.height, header.width
    if fmt != "JPEG" or mode not in ("RGB", "L"):
        return _decode_pil(data, side, max_aspect, draft=True)
    # libjpeg-turbo picks the smallest of its M/8 DCT scales (M = 1..8) keeping both sides >= side
    min_side = side if side is not None else max(height, width)
    try:
        rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=min_side, min_width=min_side)
    except ValueError:  # strict: warnings too; PIL decides (it tolerates some, and says why it refuses the rest)
        return _decode_pil(data, side, max_aspect, draft=True)
    img = Image.fromarray(rgb)
    if orientation in _TRANSPOSE:
        img = img.transpose(_TRANSPOSE[orientation])
    return _finish(img, side, max_aspect, _upright((width, height), orientation))


def decode_image_bytes(
    data: bytes, side: int | None, max_aspect: float | None = DEFAULT_MAX_ASPECT, backend: str = "auto"
) -> np.ndarray:
    """Decode ``data`` to uint8 (H, W, 3) RGB at stored side ``side`` (module doc); raises :class:`BadImage`."""
    backend = resolve_backend(backend)
    if not data:
        raise BadImage("zero-byte file")
    try:
        if backend == "simplejpeg":
            return _decode_simplejpeg(data, side, max_aspect)
        return _decode_pil(data, side, max_aspect, draft=backend == "draft")
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        raise BadImage(str(e).splitlines()[0][:120] if str(e) else type(e).__name__) from None


# ---- CUDA: batched nvJPEG through torchvision ----------------------------------------------------------------


def _torchvision_decode_jpeg() -> Callable | None:
    """``torchvision.io.decode_jpeg`` when torchvision (with its image extension) imports, else None."""
    try:
        from torchvision.io import decode_jpeg
    except Exception:  # ImportError, or a torchvision built for another torch (RuntimeError at import)
        return None
    return decode_jpeg


def gpu_decode_available(device: torch.device | str) -> bool:
    """Whether JPEGs can be decoded on ``device``: a CUDA device, CUDA present and torchvision importable."""
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.is_available() and _torchvision_decode_jpeg() is not None


def choose_decoder(device: torch.device | str, decode: str = "auto") -> str:
    """``"gpu"`` or ``"cpu"`` for ``data.decode`` = auto | cpu | gpu on ``device``.

    ``auto`` decodes on the GPU when :func:`gpu_decode_available`; ``gpu`` insists (an error otherwise).
    """
    if decode not in ("auto", "cpu", "gpu"):
        raise SimCLRError(f"decode must be auto, cpu or gpu, got {decode!r}")
    if decode == "cpu":
        return "cpu"
    if gpu_decode_available(device):
        return "gpu"
    if decode == "gpu":
        raise SimCLRError(
            f"decode=gpu needs a CUDA device and torchvision (pip install 'simclr[gpu-decode]'); device is {device}"
        )
    return "cpu"


def orient_chw(x: Tensor, orientation: int) -> Tensor:
    """Apply EXIF ``orientation`` (1..8) to an image (C, H, W), as PIL's ``exif_transpose`` does."""
    if orientation in (2, 3, 7):
        x = x.flip(-1)
    if orientation in (3, 4, 7):
        x = x.flip(-2)
    if orientation in (5, 7):
        x = x.transpose(-1, -2)
    if orientation == 6:
        x = torch.rot90(x, -1, dims=(-2, -1))
    if orientation == 8:
        x = torch.rot90(x, 1, dims=(-2, -1))
    return x


def resize_chw(x: Tensor, side: int | None, max_aspect: float | None) -> Tensor:
    """Crop and resize a uint8 image (3, H, W) on its device to its stored shape (antialiased bicubic)."""
    (top, left, h, w), (out_h, out_w) = stored_shape(x.shape[-2], x.shape[-1], side, max_aspect)
    x = x[:, top : top + h, left : left + w]
    if (out_h, out_w) == (h, w):
        return x.contiguous()
    y = F.interpolate(x[None].float(), size=(out_h, out_w), mode="bicubic", antialias=True, align_corners=False)
    return y[0].round_().clamp_(0, 255).to(torch.uint8)


def _header(data: bytes) -> tuple[str | None, str | None, int]:
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.format, img.mode, int(img.getexif().get(_ORIENTATION, 1))
    except Exception:
        return None, None, 1


def decode_batch_cuda(
    datas: Sequence[bytes],
    side: int | None,
    device: torch.device | str,
    pool: Executor,
    max_aspect: float | None = DEFAULT_MAX_ASPECT,
    cpu_backend: str = "auto",
    decode_jpeg: Callable | None = None,
) -> list[Tensor | BadImage]:
    """Decode encoded images on ``device``: uint8 (3, H_i, W_i) tensors at the stored side, or a BadImage each.

    Baseline and extended JPEGs in RGB or gray go to one batched ``decode_jpeg`` call; when the batch call
    fails (one broken file fails it), each is retried alone. Everything else (PNG, WebP, CMYK, files nvJPEG
    refuses) is decoded by :func:`decode_image_bytes` in ``pool`` and copied to the device, so broken files
    raise the same :class:`BadImage` as on the CPU. ``decode_jpeg`` defaults to torchvision's.
    """
    device = torch.device(device)
    decode_jpeg = decode_jpeg or _torchvision_decode_jpeg()
    if decode_jpeg is None:
        raise SimCLRError("decode_batch_cuda needs torchvision (pip install 'simclr[gpu-decode]')")
    headers = list(pool.map(_header, datas))
    on_gpu = [i for i, (fmt, mode, _) in enumerate(headers) if fmt == "JPEG" and mode in ("RGB", "L")]
    out: list[Tensor | BadImage | None] = [None] * len(datas)
    if on_gpu:
        from torchvision.io import ImageReadMode  # only reached with torchvision (or a test's stand-in)

        encoded = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in on_gpu]
        if device.type == "cuda":
            # torchvision allocates the outputs on the current stream but decodes on a private one that does not
            # wait for it (pytorch/vision#9606): let no queued kernel still read memory the decoder may be given.
            torch.cuda.current_stream(device).synchronize()
        try:
            decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            decoded = []
            for e in encoded:
                try:
                    decoded.append(decode_jpeg(e, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    decoded.append(None)
        for i, x in zip(on_gpu, decoded, strict=True):
            if x is not None:
                out[i] = resize_chw(orient_chw(x, headers[i][2]), side, max_aspect)

    def on_cpu(i: int) -> Tensor | BadImage:
        try:
            return torch.tensor(decode_image_bytes(datas[i], side, max_aspect, cpu_backend)).permute(2, 0, 1)
        except BadImage as e:
            return e

    rest = [i for i in range(len(datas)) if out[i] is None]
    for i, x in zip(rest, pool.map(on_cpu, rest), strict=True):
        out[i] = x if isinstance(x, BadImage) else x.to(device, non_blocking=False)
    return out  # type: ignore[return-value]


def cpu_count() -> int:
    """CPU cores this process may use (the decode threads' default)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


__all__ = [
    "BACKENDS",
    "DEFAULT_MAX_ASPECT",
    "choose_decoder",
    "cpu_count",
    "decode_batch_cuda",
    "decode_image_bytes",
    "gpu_decode_available",
    "orient_chw",
    "resize_chw",
    "resolve_backend",
    "stored_shape",
]
