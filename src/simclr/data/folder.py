"""Image folders: ImageNet-style class sub-folders, or a flat folder of unlabeled images.

Layout. If ``root`` has sub-folders holding images, each sub-folder is a class (``root/class_x/.../img.jpg``,
searched recursively; classes sorted by name, label = index). A folder with class sub-folders must not also
have loose images at its top level (that is an error, not a silent skip). Otherwise the images directly in
``root`` are read as one unlabeled set. Hidden files and folders (``.name``) are ignored, and so are files
whose extension is not an image extension (``IMAGE_EXTENSIONS``). No image at all is an error.

Conversion policy, applied to every image:

- EXIF orientation is applied (camera photos come out upright).
- Everything becomes 8-bit RGB, C = 3: grayscale and bilevel are replicated to three channels; 16- and
  32-bit integer images are scaled from the 0..65535 range (value / 257); float images are clipped to 0..255;
  palette images are expanded through their palette; images with transparency (RGBA, LA, palette with a
  transparent colour) are **composited on black**: rgb x alpha / 255.
- The aspect ratio is kept: the shorter side is resized to ``image_size`` (bicubic, antialiased), the
  longer side alike; a longer side beyond twice the shorter is centre-cropped to that (one panorama must not
  widen a whole batch). ``image_size=None`` means ``DEFAULT_IMAGE_SIZE`` (224). Views are later cropped from
  the whole stored image, as the official input pipeline crops from the whole decoded image.

Bad images (zero bytes, truncated, not decodable) are skipped, counted and listed in
``ImageData.bad_files``; more than ``max_bad_fraction`` of them is an error naming the first one. Folders too
large for memory are read by :class:`~simclr.data.stream.ImageStream` with the same decoding
(:mod:`simclr.data.decode`).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from simclr.data.base import ImageData
from simclr.errors import SimCLRError, file_error

log = logging.getLogger(__name__)

DEFAULT_IMAGE_SIZE = 224
IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .bmp .gif .tif .tiff .webp .ppm .pgm .pbm .pnm .tga .ico".split()
)


class BadImage(Exception):
    """Raised by :func:`decode_image` for a file that cannot be turned into an image."""


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _images_under(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if _is_image(Path(f)))
    return found


def scan_folder(root: str | os.PathLike) -> tuple[list[Path], list[int] | None, list[str] | None]:
    """List the images of a folder: ``(files, labels or None, classes or None)``, in a fixed sorted order."""
    root = Path(root)
    if not root.is_dir():
        raise file_error(root, "image folder not found" if not root.exists() else "not a folder")
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    loose = [p for p in entries if p.is_file() and _is_image(p)]
    class_dirs = [(d, _images_under(d)) for d in entries if d.is_dir()]
    class_dirs = [(d, files) for d, files in class_dirs if files]
    if class_dirs:
        if loose:
            raise file_error(loose[0], "loose image next to class sub-folders; move it into a class folder")
        files = [f for _, fs in class_dirs for f in fs]
        labels = [i for i, (_, fs) in enumerate(class_dirs) for _ in fs]
        return files, labels, [d.name for d, _ in class_dirs]
    if not loose:
        raise file_error(root, f"empty folder: no image files ({', '.join(sorted(IMAGE_EXTENSIONS)[:6])}, ...)")
    return loose, None, None


def _to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB following the module's policy (transparency composited on black)."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(img, dtype=np.float64)
        a = np.clip(a, 0, 255) if img.mode == "F" else np.clip(a, 0, 65535) / 257.0
        img = Image.fromarray(np.round(a).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode == "PA":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
        rgb = (rgba[..., :3] * rgba[..., 3:] + 127) // 255  # alpha-weighted onto a black background
        return Image.fromarray(rgb.astype(np.uint8), mode="RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def decode_image(path: str | os.PathLike, image_size: int) -> np.ndarray:
    """Decode one file into uint8 (3, H, W) per the module's policy (shorter side ``image_size``, aspect
    kept); raises :class:`BadImage` on failure."""
    from simclr.data.decode import DEFAULT_MAX_ASPECT, decode_image_bytes

    return decode_image_bytes(_read(Path(path)), image_size, DEFAULT_MAX_ASPECT).transpose(2, 0, 1).copy()


def _check_bad(root: Path, bad: list[tuple[str, str]], total: int, max_bad_fraction: float) -> None:
    if not bad:
        return
    fraction = len(bad) / total
    if fraction > max_bad_fraction or len(bad) == total:
        path, why = bad[0]
        raise SimCLRError(
            f"{path}: cannot decode image ({why}); {len(bad)} of {total} images in {root} are bad "
            f"({fraction:.1%} > max_bad_fraction {max_bad_fraction:.1%})"
        )
    log.warning("%s: skipped %d undecodable image(s) of %d, e.g. %s (%s)", root, len(bad), total, *bad[0])


def load_folder(
    root: str | os.PathLike,
    image_size: int | None = None,
    max_bad_fraction: float = 0.01,
    threads: int | None = None,
) -> ImageData:
    """Decode every image under ``root`` into memory, each keeping its aspect ratio.

    Shorter side ``image_size`` (default 224), the longer side scaled alike (beyond twice the shorter it is
    centre-cropped, see :mod:`simclr.data.decode`). Images of one shape are stacked into a tensor (N, 3,
    H, W); otherwise they are packed (:class:`~simclr.data.packed.PackedImages`), and batches carry each
    image's size so that views are cropped from the whole image. Decoding runs in a small thread pool
    (the decoders release the GIL). Labels come from class sub-folders (None for a flat folder); ``names``
    are paths relative to ``root``.
    """
    from simclr.data.decode import DEFAULT_MAX_ASPECT, decode_image_bytes
    from simclr.data.packed import PackedImages

    root = Path(root)
    size = image_size or DEFAULT_IMAGE_SIZE
    files, labels, classes = scan_folder(root)
    arrays: list[np.ndarray | None] = [None] * len(files)
    bad: list[tuple[str, str]] = []

    def work(i: int) -> None:
        try:
            arrays[i] = decode_image_bytes(_read(files[i]), size, DEFAULT_MAX_ASPECT)
        except BadImage as e:
            bad.append((os.fspath(files[i]), str(e)))

    threads = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(work, range(len(files))))
    bad.sort()
    _check_bad(root, bad, len(files), max_bad_fraction)
    keep = [i for i, a in enumerate(arrays) if a is not None]
    kept = [arrays[i] for i in keep]
    if len({a.shape for a in kept}) == 1:
        images = torch.from_numpy(np.stack(kept).transpose(0, 3, 1, 2).copy())  # one shape: a plain tensor
    else:
        images = PackedImages.from_arrays(kept)
    names = [files[i].relative_to(root).as_posix() for i in keep]
    label_tensor = torch.tensor(labels, dtype=torch.int64)[keep] if labels is not None else None
    return ImageData(images, label_tensor, classes, names, os.fspath(root), [p for p, _ in bad])


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise BadImage(f"cannot read ({e.strerror or e})") from None
