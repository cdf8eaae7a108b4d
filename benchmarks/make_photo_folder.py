"""Build a folder of realistic, distinct JPEG photos for the streaming benchmarks.

The photos come from scikit-image's sample data (`skimage.data`, shipped inside the PyPI package, no
download): astronaut, coffee, chelsea, rocket, the two stereo motorcycle frames, the Hubble deep field, the
retina, immunohistochemistry and a few gray ones. Each output image is a random crop of one of them (random
scale and aspect), randomly flipped, colour shifted (per-channel gain, gamma), with mild sensor-like noise so
that the JPEG payload has the entropy of a camera photo, resized to 500 x 375 (a quarter of them portrait,
375 x 500, as in ImageNet) and saved at a random quality in 85..95. Images go to ``<out>/class_XX/`` by
source photo, so the folder reads as a labelled ImageNet-style folder.

    python benchmarks/make_photo_folder.py /tmp/photos --count 4000

Needs the ``bench`` extra (scikit-image); without it (or with ``--procedural``) the sources are 12
procedural "photos" (smooth colour fields, shapes and texture), which is what the GPU check uses on a
machine without scikit-image. Deterministic for a given ``--seed``.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "stereo_motorcycle",  # left frame
    "stereo_motorcycle:1",  # right frame
    "hubble_deep_field",
    "retina",
    "immunohistochemistry",
    "camera",
    "clock",
    "coins",
)


def procedural_photos(count: int = 12, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Stand-ins for the sample photos: smooth colour fields with ellipses and fine texture, 640 x 480."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:480, 0:640].astype(np.float32) / 480
    photos = []
    for k in range(count):
        img = np.zeros((480, 640, 3), np.float32)
        for c in range(3):
            fx, fy, phase = rng.uniform(0.5, 4, 3)
            img[..., c] = 128 + 90 * np.sin(fx * x * 3 + phase) * np.cos(fy * y * 3)
        for _ in range(8):
            cy, cx, ry, rx = rng.uniform(0, 1), rng.uniform(0, 1.33), rng.uniform(0.03, 0.3), rng.uniform(0.03, 0.3)
            inside = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1
            img[inside] = rng.uniform(0, 255, 3)
        img += 12 * np.sin(x * rng.uniform(200, 400))[..., None] * np.sin(y * rng.uniform(200, 400))[..., None]
        photos.append((f"procedural_{k}", np.clip(img, 0, 255).astype(np.uint8)))
    return photos


def load_photos(procedural: bool = False) -> list[tuple[str, np.ndarray]]:
    """The sample photos as uint8 (H, W, 3) arrays (gray ones replicated), with their names."""
    try:
        if procedural:
            raise ImportError
        from skimage import data
    except ImportError:
        return procedural_photos()
    photos = []
    for spec in PHOTOS:
        name, _, part = spec.partition(":")
        image = getattr(data, name)()
        if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity)
            image = image[int(part or 0)]
        image = np.asarray(image)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        photos.append((spec.replace(":", "_"), np.ascontiguousarray(image[..., :3]).astype(np.uint8)))
    return photos


def make_one(photo: np.ndarray, rng: np.random.Generator, portrait: bool, size=(500, 375)) -> Image.Image:
    """One distinct ``size`` (w, h) photo (``portrait``: h, w) cut from ``photo``."""
    out_w, out_h = size[::-1] if portrait else size
    h, w = photo.shape[:2]
    aspect = out_w / out_h * np.exp(rng.uniform(-0.15, 0.15))  # a slightly different aspect, then resized
    area = rng.uniform(0.25, 1.0) * h * w
    ch = int(min(h, np.sqrt(area / aspect)))
    cw = int(min(w, ch * aspect))
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = photo[top : top + ch, left : left + cw].astype(np.float32)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    crop = 255.0 * (crop / 255.0) ** rng.uniform(0.8, 1.25)  # gamma
    crop = crop * rng.uniform(0.85, 1.15, size=3)  # white balance
    img = Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).resize((out_w, out_h), Image.BICUBIC)
    pixels = np.array(img, dtype=np.float32)
    pixels += rng.uniform(6.0, 12.0) * rng.standard_normal(pixels.shape, dtype=np.float32)  # sensor noise
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))


def build(
    out: Path,
    count: int,
    seed: int = 0,
    portrait_fraction: float = 0.25,
    threads: int = 2,
    procedural: bool = False,
    size: tuple[int, int] = (500, 375),
) -> dict:
    """Write ``count`` JPEGs of ``size`` (w, h) under ``out/class_XX/``; returns a summary (count, bytes, s)."""
    photos = load_photos(procedural)
    out.mkdir(parents=True, exist_ok=True)
    for k, (name, _) in enumerate(photos):
        (out / f"class_{k:02d}_{name}").mkdir(exist_ok=True)

    def work(i: int) -> int:
        rng = np.random.default_rng([seed, i])
        k = i % len(photos)
        name, photo = photos[k]
        img = make_one(photo, rng, rng.random() < portrait_fraction, size)
        path = out / f"class_{k:02d}_{name}" / f"{i:07d}.jpg"
        img.save(path, "JPEG", quality=int(rng.integers(85, 96)))
        return path.stat().st_size

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        sizes = list(pool.map(work, range(count)))
    return {"count": count, "mean_bytes": float(np.mean(sizes)), "seconds": time.perf_counter() - start,
            "sources": "procedural" if photos[0][0].startswith("procedural") else "skimage"}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="folder to write (class sub-folders are created)")
    p.add_argument("--count", type=int, default=4000, help="number of JPEGs (default 4000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--portrait-fraction", type=float, default=0.25)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--procedural", action="store_true", help="procedural sources instead of scikit-image's")
    args = p.parse_args(argv)
    summary = build(args.out, args.count, args.seed, args.portrait_fraction, args.threads, args.procedural)
    print(
        f"make_photo_folder: {summary['count']} JPEGs in {args.out}, mean {summary['mean_bytes'] / 1e3:.0f} kB, "
        f"{summary['seconds']:.1f} s ({summary['sources']} sources)"
    )


if __name__ == "__main__":
    main()
