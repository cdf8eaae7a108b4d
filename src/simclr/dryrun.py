"""``simclr pretrain --dry-run``: expected memory, step time and run time of a configuration, measured.

A few steps of the engine's own step (:func:`simclr.step.train_step`) at the configured batch (and, on CUDA,
doubling it until out of memory; on the CPU two batch sizes, extrapolated linearly), with the engine's kernel
settings. Also the memory helpers the benchmarks in ``benchmarks/`` share.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from typing import Any

from simclr.errors import SimCLRError

# Images per training split, for epoch times when the dataset itself is not at hand.
KNOWN_SIZES = {
    ("mnist", "train"): 60000,
    ("fashion-mnist", "train"): 60000,
    ("cifar10", "train"): 50000,
    ("cifar100", "train"): 50000,
    ("stl10", "train"): 5000,
    ("stl10", "unlabeled"): 100000,
    ("stl10", "train+unlabeled"): 105000,
}
NATIVE_SHAPES = {
    "mnist": (1, 28, 28),
    "fashion-mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
    "stl10": (3, 96, 96),
}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status() -> dict[str, int]:
    """VmRSS / VmHWM of this process in bytes (Linux); getrusage's peak elsewhere."""
    try:
        with open("/proc/self/status") as f:
            return {k: int(v.split()[0]) * 1024 for k, v in (ln.split(":", 1) for ln in f) if k in ("VmRSS", "VmHWM")}
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        return {"VmRSS": peak, "VmHWM": peak}


def reset_peak_memory(device) -> None:
    """Start a new peak: CUDA peak stats, or the process's peak RSS (``echo 5 > /proc/self/clear_refs``)."""
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not Linux, or not allowed: the peak stays the process's lifetime peak
        pass


def memory_now(device) -> int:
    import torch

    return torch.cuda.memory_allocated(device) if device.type == "cuda" else _proc_status()["VmRSS"]


def memory_peak(device) -> int:
    import torch

    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _proc_status()["VmHWM"]


def hardware(device) -> str:
    """The GPU's name, or the CPU and the number of threads torch uses."""
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} cpu ({torch.get_num_threads()} threads)"


def _precision(cfg, device) -> str:
    p = cfg.train.precision
    return "bf16" if p == "bf16" or (p == "auto" and device.type == "cuda") else "fp32"


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def bench_data(cfg, synthetic: bool | None = None, random_images: int | None = None):
    """``(ImageData, note)``: the configured training data, or random uint8 images of its shape.

    ``synthetic=None`` falls back to random images (and says so in ``note``) when the dataset cannot be
    read; ``True`` always uses them; ``False`` raises instead. ``random_images``: how many (default two
    batches' worth).
    """
    import torch

    from simclr.data import ImageData
    from simclr.engine import load_training_data

    note = None
    if not synthetic:
        try:
            return load_training_data(cfg), None
        except SimCLRError as e:
            if synthetic is False:
                raise
            note = f"{e}; using random images of the dataset's shape"
    d = cfg.data
    c, h, w = NATIVE_SHAPES.get(d.dataset, (3, 224, 224))
    if d.image_size:
        h = w = d.image_size
    n = random_images or max(2 * cfg.train.batch_size, 64)
    g = torch.Generator().manual_seed(cfg.train.seed)
    images = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    return ImageData(images, labels, None, None, f"random uint8 images {(c, h, w)}"), note or "random images"


def _measure(parts, images, steps: int, warmup: int, device) -> tuple[float, int]:
    """Seconds per step and peak memory (CUDA: allocated; CPU: process RSS) for a uint8 batch ``images``."""
    import torch

    from simclr.step import train_step

    labels = torch.zeros(len(images), dtype=torch.long, device=device) if parts.module.probe is not None else None
    done = [0]

    def step() -> None:
        train_step(parts, images, labels, done[0])  # the engine's step
        done[0] += 1

    for _ in range(warmup):
        step()
    _sync(device)
    reset_peak_memory(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - t0) / steps, memory_peak(device)


def _out_of_memory(e: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the plain RuntimeError cuDNN and cuBLAS raise when an allocation fails."""
    import torch

    text = str(e).lower()
    return isinstance(e, torch.cuda.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and ("out of memory" in text or "cudnn_status_alloc_failed" in text)
    )


def _fits(parts, shape, batch: int, device, steps: int = 1, warmup: int = 1) -> tuple[float, int] | None:
    """Measure one batch size on CUDA; None when it runs out of memory (memory freed again)."""
    import gc

    import torch

    try:
        images = torch.randint(0, 256, (batch, *shape), dtype=torch.uint8, device=device)
        return _measure(parts, images, steps, warmup, device)
    except RuntimeError as e:  # OutOfMemoryError is a RuntimeError too
        if not _out_of_memory(e):
            raise
    parts.optimizer.zero_grad(set_to_none=True)  # outside the except block: the traceback is gone
    gc.collect()
    torch.cuda.empty_cache()
    return None


def _human_time(seconds: float) -> str:
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def dry_run(cfg, steps: int = 3, warmup: int = 1, max_cpu_pixels: int = 2**17, out=print) -> dict:
    """Expected peak memory, step time, throughput and run time of ``cfg``, from a few measured steps.

    Builds the model and the data (random images of the dataset's shape when it cannot be read), runs
    ``warmup`` + ``steps`` steps of the engine's step. CUDA: at the configured batch, then doubling it (or
    halving when it does not fit) until out of memory, to report the largest batch that fits. CPU: at two
    batch sizes b/2 and b, with b the configured batch or, when larger than ``max_cpu_pixels`` view pixels
    per image batch, the largest power of two under it; step time and peak RSS are then extrapolated
    linearly to the configured batch (an estimate, said so), and the largest batch from the memory
    available. Prints the report with ``out`` and returns it as a dict.
    """
    from simclr.config import micro_batch_images
    from simclr.runtime import resolve_device, set_kernel_flags
    from simclr.step import build_parts

    device = resolve_device(cfg.train.device)
    set_kernel_flags(device, cfg.train.deterministic)  # as the engine: the estimate is of the real run
    data, note = bench_data(cfg, synthetic=None, random_images=64)
    from simclr.data.access import data_stats, stored_side

    side = stored_side(data)
    shape = (data.images.shape[1] if hasattr(data, "images") else 3, side, side)  # measured as square images
    image_size = cfg.model.input_size or side
    mean, std = data_stats(data)
    num_classes = int(data.labels.max()) + 1 if data.labels is not None else None
    micro = cfg.train.micro_batch if micro_batch_images(cfg.train) else None  # checks the key as pretrain does
    parts = build_parts(cfg, image_size, num_classes, device, steps_per_epoch=1000, mean=mean, std=std)
    batch = cfg.train.batch_size
    params = sum(p.numel() for p in parts.model.encoder.parameters())
    report: dict[str, Any] = {
        "batch_size": batch,
        "device": str(device),
        "hardware": hardware(device),
        "encoder_params": params,
        "data": data.source,
        "data_note": note,
    }
    out(
        f"simclr pretrain --dry-run: {cfg.model.arch} x{cfg.model.width_multiplier:g} ({params / 1e6:.2f}M encoder "
        f"params), {image_size} px views, batch {batch}, {report['hardware']}, precision {_precision(cfg, device)}"
    )
    out(f"  data: {data.source}" + (f" ({note})" if note and note != "random images" else ""))
    if micro or cfg.train.activation_checkpointing:
        ckpt = ", activation checkpointing" if cfg.train.activation_checkpointing else ""
        passes = f"micro-batches of {micro} images" if micro else "one micro-batch"
        bound = " (CPU memory extrapolated linearly: an upper bound)" if micro and device.type != "cuda" else ""
        out(f"  gradient caching: {passes}{ckpt}{bound}")

    if device.type == "cuda":
        report.update(_cuda_estimate(parts, data, shape, batch, device, steps, warmup, note, out))
    else:
        report.update(_cpu_estimate(parts, shape, batch, image_size, device, steps, warmup, max_cpu_pixels, out))
    if report["step_time_s"] is not None:
        _run_time(report, cfg, data, note, device, out)
    if report.get("largest_batch") is not None:
        out(f"  largest batch that fits: {report['largest_batch']} ({report['largest_batch_note']})")
    return report


def _cuda_estimate(parts, data, shape, batch: int, device, steps: int, warmup: int, note, out) -> dict[str, Any]:
    """CUDA: the configured batch measured, then doubled (or halved when it does not fit) until out of memory."""
    resident = data.images.to(device) if hasattr(data, "images") else None  # in memory: held on the GPU
    largest, fit = None, _fits(parts, shape, batch, device, steps, warmup)
    if fit is not None:
        step_s, peak = fit
        largest, b = batch, batch * 2
        while b <= 64 * batch and _fits(parts, shape, b, device) is not None:
            largest, b = b, b * 2
    else:
        step_s = peak = None
        b = batch // 2
        while b >= 1 and largest is None:
            largest = b if _fits(parts, shape, b, device) is not None else None
            b //= 2
    found = dict(
        estimated=False,
        step_time_s=step_s,
        peak_memory_bytes=peak,
        largest_batch=largest,
        largest_batch_note="measured: doubling until out of memory (capped at 64x)",
    )
    del resident
    if note:
        out("  note: random images stand in for the dataset, which the engine would also hold on the GPU")
    if fit is None:
        out(f"  batch {batch} does NOT fit in GPU memory; largest that fits: {largest}")
    return found


def _cpu_estimate(parts, shape, batch: int, image_size: int, device, steps: int, warmup: int, max_cpu_pixels: int,
                  out) -> dict[str, Any]:  # fmt: skip
    """CPU: two measured batches b/2 and b, step time and peak RSS extrapolated linearly to ``batch``."""
    import torch

    b2 = batch
    while b2 > 2 and b2 * image_size * image_size > max_cpu_pixels:
        b2 //= 2
    b1 = max(1, b2 // 2)
    g = torch.Generator().manual_seed(0)
    meas = {}
    for b in sorted({b1, b2}):  # smaller first: the peak RSS only grows
        images = torch.randint(0, 256, (b, *shape), generator=g, dtype=torch.uint8)
        meas[b] = _measure(parts, images, steps, warmup, device)
    (t1, m1), (t2, m2) = meas[b1], meas[b2]
    # A step never gets faster with more images: two noisy timings (a loaded CPU) must not make the
    # extrapolated step time shrink, or go negative.
    slope_t = max((t2 - t1) / (b2 - b1), 0.0) if b2 > b1 else t2 / b2
    slope_m = max((m2 - m1) / (b2 - b1), 1.0) if b2 > b1 else 0.0
    step_s = t2 + slope_t * (batch - b2)
    peak = int(m2 + slope_m * (batch - b2))
    available = _available_memory() + _proc_status()["VmRSS"]
    largest = max(int(b2 + (available - m2) / slope_m), 0) if slope_m > 0 else None
    for b, (t, m) in sorted(meas.items()):
        out(f"  measured batch {b}: {t:.3f} s/step, process peak RSS {_mib(m)} MiB")
    return dict(
        estimated=batch != b2,
        measured={str(b): {"step_time_s": t, "peak_rss_bytes": m} for b, (t, m) in meas.items()},
        step_time_s=step_s,
        peak_memory_bytes=peak,
        largest_batch=largest,
        largest_batch_note=f"estimate: linear in batch from {b1} and {b2}, {_mib(available)} MiB usable",
    )


def _run_time(report: dict[str, Any], cfg, data, note, device, out) -> None:
    """Adds throughput, epoch and run time at the configured batch to ``report`` and prints them."""
    batch = cfg.train.batch_size
    est = " (ESTIMATE: extrapolated linearly)" if report.get("estimated") else ""
    kind = "GPU memory allocated" if device.type == "cuda" else "process RSS"
    out(
        f"  at batch {batch}{est}: {report['step_time_s']:.3f} s/step, {batch / report['step_time_s']:.1f} "
        f"images/s, peak {kind} {_mib(report['peak_memory_bytes'])} MiB"
    )
    report["images_per_sec"] = batch / report["step_time_s"]
    n = len(data) if not note else KNOWN_SIZES.get((cfg.data.dataset, cfg.data.train_split))
    if n:
        steps_per_epoch = n // batch
        total = cfg.train.epochs * steps_per_epoch
        if cfg.train.max_steps is not None:
            total = min(total, cfg.train.max_steps)
        report.update(
            steps_per_epoch=steps_per_epoch,
            epoch_time_s=steps_per_epoch * report["step_time_s"],
            run_steps=total,
            run_time_s=total * report["step_time_s"],
        )
        out(
            f"  epoch: {steps_per_epoch} steps = {_human_time(report['epoch_time_s'])}; run: {total} steps = "
            f"{_human_time(report['run_time_s'])} (without the kNN monitor and checkpoints)"
        )
    else:
        out("  epoch time: unknown number of images (dataset not found)")


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            info = {k: int(v.split()[0]) * 1024 for k, v in (ln.split(":", 1) for ln in f)}
        return info.get("MemAvailable", info.get("MemFree", 0))
    except OSError:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


# ---- command line ----------------------------------------------------------------------------------------
