"""Decode + augmentation views/s on a JPEG folder: the streamed source + batched Augment vs a torchvision DataLoader.

Ours: :class:`simclr.data.stream.ImageStreamSource` (``--threads`` decode threads, double-buffered) and
:class:`simclr.augment.Augment` making two views of each batch at once (torch with ``--threads`` threads).
Baseline: the same files through a ``torch.utils.data.DataLoader`` with ``--threads`` worker processes,
each image decoded by PIL and given the SimCLR torchvision pipeline twice (RandomResizedCrop 224, flip,
ColorJitter(0.8 s, 0.8 s, 0.8 s, 0.2 s) with p 0.8, RandomGrayscale 0.2, GaussianBlur 23 with p 0.5,
ToTensor, Normalize). Rounds alternate between the two in one run (the machine's load hits both alike); each
side's figure is the median over ``--rounds`` rounds after a warm-up round.

    python benchmarks/make_photo_folder.py /tmp/photos --count 4000
    python benchmarks/bench_stream.py /tmp/photos --threads 2 --json stream.json

Needs the ``bench`` extra (torchvision for the baseline). ``--device cuda`` runs ours on a GPU (the baseline
stays on the CPU, as a DataLoader pipeline does).
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from simclr.augment import Augment  # noqa: E402
from simclr.config import AugmentConfig  # noqa: E402
from simclr.data import make_batch_source  # noqa: E402
from simclr.data.folder import scan_folder  # noqa: E402
from simclr.data.stream import ImageStream  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def import_torchvision():
    """torchvision; a CUDA-built wheel next to a CPU torch lacks its C ops, which only its import needs."""
    try:
        import torchvision
    except RuntimeError as e:
        if "torchvision::nms" not in str(e):
            raise
        for name in list(sys.modules):  # the half-imported package
            if name.startswith("torchvision"):
                del sys.modules[name]
        lib = torch.library.Library("torchvision", "DEF")  # the two schemas its import registers fakes for
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import_torchvision.keep = lib
        import torchvision
    return torchvision


def square_crops(images: torch.Tensor, sizes: torch.Tensor | None, side: int) -> torch.Tensor:
    """Stand-in until Augment takes ``sizes``: each image's centre square of ``side`` (its shorter side)."""
    if sizes is None:
        return images
    rows = []
    for b, (h, w) in enumerate(sizes.tolist()):
        top, left = (h - side) // 2, (w - side) // 2
        rows.append(images[b, :, top : top + side, left : left + side])
    return torch.stack(rows)


class Ours:
    def __init__(self, folder: Path, args) -> None:
        self.stream = ImageStream(folder, args.stored_side, max_bad_fraction=1.0)
        self.source = make_batch_source(self.stream, args.batch, args.device, seed=0, threads=args.threads,
                                        decode=args.decode)  # fmt: skip
        self.augment = Augment(AugmentConfig(), args.size, MEAN, STD)
        self.takes_sizes = "sizes" in inspect.signature(self.augment.two_views).parameters
        self.generator = torch.Generator(args.device).manual_seed(0)
        self.epoch, self.side, self.device = 0, args.stored_side, torch.device(args.device)

    def views(self, batch):
        if self.takes_sizes:  # the lead's ragged Augment: crops from each image's full extent
            return self.augment.two_views(batch.images, self.generator, sizes=batch.sizes)
        # until then: a square centre crop of each image, then the same batched views
        return self.augment.two_views(square_crops(batch.images, batch.sizes, self.side), self.generator)

    def round(self, images: int, augment: bool = True) -> float:
        """Views per second over ``images`` images (two views each), from a cold start of the reader."""
        self.source.set_epoch(self.epoch)
        self.epoch += 1
        done, start = 0, time.perf_counter()
        batches = iter(self.source)
        for batch in batches:
            if augment:
                self.views(batch)
            done += len(batch.indices)
            if done >= images:
                break
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        batches.close()  # stops the reader (after the batch it is on), outside the timing
        return 2 * done / elapsed

    def augment_only(self, repeats: int = 2) -> float:
        """Views per second of the augmentation alone, on one decoded batch."""
        self.source.set_epoch(0)
        batches = iter(self.source)
        batch = next(batches)
        batches.close()
        self.views(batch)
        start = time.perf_counter()
        for _ in range(repeats):
            self.views(batch)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return 2 * repeats * len(batch.indices) / (time.perf_counter() - start)


class TwoViews(torch.utils.data.Dataset):
    def __init__(self, files, transform, views: int = 2) -> None:
        self.files, self.transform, self.views = files, transform, views

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.files[i]) as img:
            img = img.convert("RGB")
        return tuple(self.transform(img) for _ in range(self.views))


def _as_lists(samples):
    """Images of different sizes cannot be stacked: a batch of lists (one per view)."""
    return list(zip(*samples, strict=True))


class Baseline:
    def __init__(self, folder: Path, args, decode_only: bool = False) -> None:
        tv = import_torchvision()
        t = tv.transforms
        s = 1.0
        # decode only: PIL decode + the same stored-size resize as ours, to a uint8 tensor (counted as 2 views)
        stored = t.Compose([t.Resize(args.stored_side), t.PILToTensor()])
        transform = stored if decode_only else t.Compose([
            t.RandomResizedCrop(args.size),
            t.RandomHorizontalFlip(),
            t.RandomApply([t.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8),
            t.RandomGrayscale(p=0.2),
            t.RandomApply([t.GaussianBlur(2 * (args.size // 20) + 1, sigma=(0.1, 2.0))], p=0.5),
            t.ToTensor(),
            t.Normalize(MEAN, STD),
        ])  # fmt: skip
        data = TwoViews(scan_folder(folder)[0], transform, 1 if decode_only else 2)
        # Workers start with each round (persistent ones would keep decoding during our rounds)
        self.loader = torch.utils.data.DataLoader(
            data, batch_size=args.batch, shuffle=True, num_workers=args.threads,
            prefetch_factor=2 if args.threads else None, drop_last=True, generator=torch.Generator().manual_seed(0),
            collate_fn=_as_lists if decode_only else None,
        )  # fmt: skip

    def round(self, images: int) -> float:
        """Views per second over ``images`` images (two views each), workers started in the round."""
        done, start = 0, time.perf_counter()
        batches = iter(self.loader)
        for views in batches:
            done += len(views[0])
            if done >= images:
                break
        elapsed = time.perf_counter() - start
        del batches  # shuts the workers down, outside the timing
        return 2 * done / elapsed


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--threads", type=int, default=2, help="decode threads (ours) = DataLoader workers (baseline)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--images", type=int, default=768, help="images per round (default 768)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--size", type=int, default=224, help="view side")
    p.add_argument("--stored-side", type=int, default=224, help="ours: shorter side the images are decoded to")
    p.add_argument("--device", default="cpu", help="ours: where batches and views are made")
    p.add_argument("--decode", default="auto", choices=["auto", "cpu", "gpu"])
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument(
        "--parts",
        action="store_true",
        help="also time the decoding alone (ours and the DataLoader's, to the stored side) and our augmentation alone",
    )
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = {"ours": Ours(args.folder, args)}
    if not args.no_baseline:
        runs["torchvision"] = Baseline(args.folder, args)
    rounds = {name: run.round for name, run in runs.items()}
    if args.parts:
        rounds["ours: decode only"] = lambda n: runs["ours"].round(n, augment=False)
        rounds["ours: augment only"] = lambda n: runs["ours"].augment_only()
        if "torchvision" in runs:
            rounds["torchvision: decode only"] = Baseline(args.folder, args, decode_only=True).round
    rates: dict[str, list[float]] = {name: [] for name in rounds}
    for r in range(args.rounds + 1):  # round 0 warms up (threads, workers, caches)
        for name, run in rounds.items():
            rate = run(args.images)
            if r:
                rates[name].append(rate)
            print(f"round {r}{' (warm-up)' if not r else ''} {name}: {rate:.1f} views/s", flush=True)
    result = {
        "folder": str(args.folder), "threads": args.threads, "batch": args.batch, "images_per_round": args.images,
        "stored_side": args.stored_side, "size": args.size, "device": args.device,
        "augment_takes_sizes": runs["ours"].takes_sizes, "decoder": runs["ours"].source.decoder,
        "views_per_s": {name: statistics.median(v) for name, v in rates.items()}, "rounds": rates,
    }  # fmt: skip
    if "torchvision" in rates:
        result["ratio"] = result["views_per_s"]["ours"] / result["views_per_s"]["torchvision"]
    print(json.dumps({k: result[k] for k in ("views_per_s", "ratio") if k in result}))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
