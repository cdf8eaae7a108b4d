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
- Resized so the shorter side is ``image_size`` (bicubic, antialiased) and centre-cropped to
  ``image_size x image_size``. ``image_size=None`` means ``DEFAULT_IMAGE_SIZE`` (224).

Bad images (zero bytes, truncated, not decodable) are skipped, counted and listed in
``ImageData.bad_files``; more than ``max_bad_fraction`` of them is an error naming the first one.
:class:`FolderStream` is the same reader as a torch Dataset that decodes on demand, for folders too large to
hold in memory.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset

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
    """Decode one file into uint8 (3, S, S) per the module's policy; raises :class:`BadImage` on failure."""
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":
                img.draft("RGB", (image_size, image_size))  # let libjpeg downscale by 1/2..1/8 while decoding
            img.load()
            img = ImageOps.exif_transpose(img)
            img = _to_rgb(img)
            w, h = img.size
            scale = image_size / min(w, h)
            new_w, new_h = max(image_size, round(w * scale)), max(image_size, round(h * scale))
            img = img.resize((new_w, new_h), Image.BICUBIC, reducing_gap=3.0)
            left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
            img = img.crop((left, top, left + image_size, top + image_size))
            return np.array(img, dtype=np.uint8).transpose(2, 0, 1)  # (H, W, 3) -> (3, H, W), writable
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            raise BadImage("zero-byte file") from None
        raise BadImage(str(e).splitlines()[0][:120] if str(e) else type(e).__name__) from None


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
    """Decode every image under ``root`` into memory: uint8 (N, 3, S, S) with S = ``image_size`` or 224.

    Decoding runs in a small thread pool (PIL releases the GIL while decoding and resizing). Labels come from
    class sub-folders (None for a flat folder); ``names`` are paths relative to ``root``.
    """
    root = Path(root)
    size = image_size or DEFAULT_IMAGE_SIZE
    files, labels, classes = scan_folder(root)
    out = torch.empty((len(files), 3, size, size), dtype=torch.uint8)
    ok = np.zeros(len(files), dtype=bool)
    bad: list[tuple[str, str]] = []

    def work(i: int) -> None:
        try:
            out[i] = torch.from_numpy(decode_image(files[i], size))
            ok[i] = True
        except BadImage as e:
            bad.append((os.fspath(files[i]), str(e)))

    threads = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(work, range(len(files))))
    bad.sort()
    _check_bad(root, bad, len(files), max_bad_fraction)
    keep = torch.from_numpy(np.flatnonzero(ok))
    images = out if len(keep) == len(files) else out.index_select(0, keep)
    names = [files[i].relative_to(root).as_posix() for i in keep.tolist()]
    label_tensor = torch.tensor(labels, dtype=torch.int64)[keep] if labels is not None else None
    return ImageData(images, label_tensor, classes, names, os.fspath(root), [p for p, _ in bad])


class FolderStream(Dataset):
    """An image folder decoded on demand (in DataLoader workers), for folders too large for memory.

    ``dataset[i]`` is ``(image uint8 (3, S, S), label int64 (-1 when unlabeled), i)``. Zero-byte files are
    dropped when the folder is scanned (listed in ``bad_files``). A file that fails to decode later is
    replaced by the next decodable image in folder order, with a warning, so batch shapes never change.
    """

    def __init__(self, root: str | os.PathLike, image_size: int | None = None, max_bad_fraction: float = 0.01):
        self.root = Path(root)
        self.image_size = image_size or DEFAULT_IMAGE_SIZE
        files, labels, classes = scan_folder(self.root)
        empty = [f for f in files if f.stat().st_size == 0]
        _check_bad(self.root, [(os.fspath(f), "zero-byte file") for f in empty], len(files), max_bad_fraction)
        keep = [i for i, f in enumerate(files) if f.stat().st_size > 0] if empty else list(range(len(files)))
        self.files = [files[i] for i in keep]
        self.labels = torch.tensor([labels[i] for i in keep], dtype=torch.int64) if labels is not None else None
        self.classes = classes
        self.names = [f.relative_to(self.root).as_posix() for f in self.files]
        self.source = os.fspath(self.root)
        self.bad_files = [os.fspath(f) for f in empty]
        self.max_bad_fraction = max_bad_fraction

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(N, C, H, W) of the images this stream yields."""
        return (len(self.files), 3, self.image_size, self.image_size)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int]:
        tries = max(1, min(len(self.files), 100))
        for k in range(tries):
            j = (index + k) % len(self.files)
            try:
                image = torch.from_numpy(decode_image(self.files[j], self.image_size))
            except BadImage as e:
                log.warning("%s: cannot decode image (%s); using the next image instead", self.files[j], e)
                continue
            label = torch.tensor(-1 if self.labels is None else int(self.labels[j]))  # the substitute's label
            return image, label, index
        raise file_error(self.files[index], f"cannot decode this image nor the {tries - 1} after it")
