"""Speed of the batched colour jitter, the crop samplers and the crop resize, on the CPU (or --device).

Times :meth:`simclr.augment.Augment.apply` with only the colour jitter on (p = 0.8 per image, random order,
strength 1), the crop-box samplers, and the crop + resize + flip resampling (``grid_sample``, bilinear as
used, bicubic as the official code) for each batch shape and thread count. Each figure is the median of
``--repeats`` rounds of ``--iters`` calls, after one untimed call. The jitter part uses only the public
``Augment`` API, so the same script also times an older checkout (``PYTHONPATH=OLD/src``) for before/after.

    python benchmarks/bench_augment_ops.py                          # 256x3x224x224 and 512x3x40x40, 1 and 2 threads
    python benchmarks/bench_augment_ops.py --parts jitter --shapes 256x3x224x224 --threads 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from simclr.augment import Augment
from simclr.config import AugmentConfig


def timed(fn: Callable[[], object], iters: int, repeats: int) -> float:
    """Median over ``repeats`` rounds of the mean seconds per call of ``fn`` (one warm-up call first)."""
    fn()
    rounds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        rounds.append((time.perf_counter() - start) / iters)
    return statistics.median(rounds)


def jitter_only(size: int) -> Augment:
    cfg = AugmentConfig(crop=False, flip=False, grayscale_prob=0.0, blur_prob=0.0, normalize=False)
    return Augment(cfg, out_size=size)


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, out_size: int, mode: str) -> torch.Tensor:
    """The augmentation's crop + resize as one grid_sample (as simclr.augment_ops.resized_crop_flip)."""
    b, _, height, width = images.shape
    top, left, h, w = boxes.unbind(1)
    theta = images.new_zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w / width, (2 * left + w) / width - 1
    theta[:, 1, 1], theta[:, 1, 2] = h / height, (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [b, 1, out_size, out_size], align_corners=False)
    return F.grid_sample(images, grid, mode=mode, padding_mode="border", align_corners=False)


def bench_jitter(shape: tuple[int, ...], iters: int, repeats: int) -> dict:
    b, c, h, w = shape
    g = torch.Generator().manual_seed(0)
    x = torch.rand(b, c, h, w, generator=g)
    aug = jitter_only(h)
    params = aug.sample_params(b, h, w, g)
    return {"jitter_ms": 1e3 * timed(lambda: aug.apply(x, params), iters, repeats)}


def bench_crops(shape: tuple[int, ...], out_size: int, iters: int, repeats: int) -> dict:
    from simclr.crop_boxes import tf_crop_boxes, torchvision_crop_boxes

    b, c, h, w = shape
    g = torch.Generator().manual_seed(0)
    x = torch.rand(b, c, h, w, generator=g)
    boxes = tf_crop_boxes(b, h, w, generator=g)
    out = {
        "boxes_tf_ms": 1e3 * timed(lambda: tf_crop_boxes(b, h, w, generator=g), iters, repeats),
        "boxes_torchvision_ms": 1e3 * timed(lambda: torchvision_crop_boxes(b, h, w, generator=g), iters, repeats),
    }
    for mode in ("bilinear", "bicubic"):
        out[f"resize_{mode}_ms"] = 1e3 * timed(lambda m=mode: resized_crop(x, boxes, out_size, m), iters, repeats)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="256x3x224x224,512x3x40x40", help="batch shapes BxCxHxW, comma-separated")
    p.add_argument("--crop-shapes", default="256x3x256x256:224,1024x1x28x28:40", help="BxCxHxW:S for the crops")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--parts", default="jitter,crops")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--chunk-elements", type=int, help="override simclr.augment.CPU_CHUNK_ELEMENTS (the jitter)")
    args = p.parse_args()
    if args.chunk_elements:
        import simclr.augment

        simclr.augment.CPU_CHUNK_ELEMENTS = args.chunk_elements
    parts = args.parts.split(",")
    results = []
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        if "jitter" in parts:
            for text in args.shapes.split(","):
                shape = tuple(int(v) for v in text.split("x"))
                row = {"part": "jitter", "shape": text, "threads": threads}
                row.update(bench_jitter(shape, args.iters, args.repeats))
                print(json.dumps(row), flush=True)
                results.append(row)
        if "crops" in parts:
            for text in args.crop_shapes.split(","):
                shape_text, size = text.split(":")
                shape = tuple(int(v) for v in shape_text.split("x"))
                row = {"part": "crops", "shape": text, "threads": threads,
                       **bench_crops(shape, int(size), args.iters, args.repeats)}  # fmt: skip
                print(json.dumps(row), flush=True)
                results.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
