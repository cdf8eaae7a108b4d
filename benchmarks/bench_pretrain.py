"""Speed and memory of pretraining: ``python benchmarks/bench_pretrain.py`` (``make bench``).

:func:`run_benchmark` trains, in one process and with the same model, batch and optimizer, the engine's own
step (:func:`simclr.step.train_step` / :func:`~simclr.step.train_on_views`, the very function
:func:`simclr.engine.pretrain` runs):

- ``pretrain``: a batch from the batch source, then :func:`~simclr.step.train_step` (two views on the device,
  forward under autocast, 2 x NT-Xent (+ the online probe) in float32, backward, the gradient check, the
  optimizer, the BN-statistics copy, the memory when ``loss.memory_size > 0``); with ``micro_batch`` the
  gradient-cached step (``train.micro_batch``);
- ``ceiling``: the same step in its ``bare`` form on pre-made random views: forward, the SAME NT-Xent,
  backward, optimizer step; no probe, queue, checks or statistics (so ``pretrain / ceiling`` isolates data,
  augmentation and the engine's extras);
- ``baseline_pil``: the usual torchvision-style pipeline, per-image PIL augmentation (RandomResizedCrop,
  flip, colour jitter with ImageEnhance and an HSV hue shift, grayscale, blur) in 2 DataLoader workers, then
  :func:`~simclr.step.train_on_views`: ``pretrain / baseline_pil`` is the speedup of our data path.

Fairness: every variant runs ``repeats`` rounds, in a rotated order; each round is ``warmup`` untimed steps
(compilation, cuDNN autotuning, the DataLoader filling its queue) then ``steps`` timed steps; the reported
rate is the median over rounds. DataLoader workers live for one round only, so they never steal CPU time from
another variant. Step-time phases (data, augment, forward, loss, backward, optimizer, ...) are wall clock
between the step's own marks; on CUDA each mark synchronises, so phases come from an extra instrumented pass
per round and the rate from the un-instrumented one. Memory: CUDA ``max_memory_allocated`` during the timed
steps, minus what other variants keep resident; CPU the process's peak RSS during them (reset through
``/proc/self/clear_refs``; a rough figure that includes the interpreter and every variant's model).

:func:`loss_memory` compares plain and chunked NT-Xent (forward + backward) memory. Examples::

    python benchmarks/bench_pretrain.py --preset cifar10 --steps 20 --warmup 5 --repeats 3 --out-json bench.json
    python benchmarks/bench_pretrain.py --preset cifar10 --compile both --channels-last both
    python benchmarks/bench_pretrain.py --loss-memory            # plain vs chunked NT-Xent, 2N = 8192
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from simclr.dryrun import (
    _mib,
    _precision,
    _sync,
    bench_data,
    hardware,
    memory_now,
    memory_peak,
    reset_peak_memory,
)
from simclr.errors import SimCLRError

HERE = os.path.dirname(os.path.abspath(__file__))

PHASES = (
    "data",
    "augment",
    "forward",
    "loss",
    "backward",
    "grad_cache",
    "grad_check",
    "optimizer",
    "momentum",
    "other",
)
CEILING_LOSS = "nt_xent on z (the pretraining loss), no probe, queue, gradient check or logging"
# ---- clocks and memory -----------------------------------------------------------------------------------


class PhaseClock:
    """Adds the wall-clock time since the previous mark to a phase; synchronises CUDA first when enabled."""

    def __init__(self, device, enabled: bool = True) -> None:
        self.device, self.enabled = device, enabled
        self.totals = dict.fromkeys(PHASES, 0.0)
        self.last = 0.0

    def start(self) -> None:
        if self.enabled:
            _sync(self.device)
            self.last = time.perf_counter()

    def mark(self, phase: str) -> None:
        if self.enabled:
            _sync(self.device)
            now = time.perf_counter()
            self.totals[phase] += now - self.last
            self.last = now


def _tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is None or t.device.type == "meta":
            continue
        key = (t.untyped_storage().data_ptr(), t.device)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


# ---- the engine's step, with the benchmark's schedule ------------------------------------------------------


def make_parts(cfg, device, image_size: int, num_classes, mean, std, **options):
    """:func:`simclr.step.build_parts` with an early-warmup schedule (small, stable rates over the rounds)."""
    from simclr.step import build_parts

    parts = build_parts(cfg, image_size, num_classes, device, steps_per_epoch=1, mean=mean, std=std, **options)
    parts.total_steps, parts.warmup_steps = 10_000, 1_000
    return parts


def resident_bytes(parts) -> int:
    """Parameters, buffers, gradients and optimizer state the parts keep between steps."""
    tensors = [*parts.module.parameters(), *parts.module.buffers()]
    tensors += [p.grad for p in parts.module.parameters()]
    tensors += [v for s in parts.optimizer.state.values() for v in s.values() if hasattr(v, "untyped_storage")]
    if parts.momentum_model is not None:
        tensors += [*parts.momentum_model.parameters(), *parts.momentum_model.buffers(), *parts.queue.buffers()]
    return _tensor_bytes(tensors)


def _forever(source) -> Iterator:
    """The batch source's batches, epoch after epoch."""
    epoch = 0
    while True:
        source.set_epoch(epoch)
        yield from source
        epoch += 1


def _pil_crop_box(height: int, width: int, scale, ratio, rng: random.Random) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop sampler, per image: (top, left, h, w)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class PILTwoViews:
    """Map-style dataset: two SimCLR views of image ``i``, augmented one image at a time with PIL.

    The baseline pipeline (torchvision's ``RandomResizedCrop``, ``RandomHorizontalFlip``, ``ColorJitter``
    with p = 0.8 in a random order, ``RandomGrayscale``, ``GaussianBlur``, ``ToTensor``, ``Normalize``), with
    the same parameter ranges as :class:`~simclr.augment.Augment`. Gray images stay 1-channel until the end,
    as in ours. Returns ``(view1 float (3, S, S), view2, label or -1)``. Random numbers come from the
    ``random`` module, which DataLoader seeds differently in every worker.
    """

    def __init__(self, images, labels, cfg, out_size: int, mean, std) -> None:
        self.images, self.labels, self.cfg, self.out_size = images, labels, cfg, out_size
        self.mean, self.std = mean, std
        self.blur_prob = cfg.blur_prob if cfg.blur_prob is not None else (0.5 if out_size > 32 else 0.0)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        from PIL import Image

        arr = self.images[index].numpy()
        img = Image.fromarray(arr[0]) if arr.shape[0] == 1 else Image.fromarray(arr.transpose(1, 2, 0))
        label = int(self.labels[index]) if self.labels is not None else -1
        return self._view(img, random), self._view(img, random), label

    def _view(self, img, rng):
        import numpy as np
        import torch
        from PIL import Image, ImageEnhance, ImageFilter

        a, size = self.cfg, self.out_size
        top, left, h, w = (
            _pil_crop_box(img.height, img.width, a.crop_scale, a.crop_ratio, rng)
            if a.crop
            else (0, 0, img.height, img.width)
        )
        img = img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
        if a.flip and rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        s = 0.8 * a.color_strength
        if s > 0 and rng.random() < a.color_jitter_prob:
            ops = [0, 1, 2, 3]
            rng.shuffle(ops)
            for op in ops:
                if op == 0 and a.brightness_mode == "v2":
                    img = ImageEnhance.Brightness(img).enhance(rng.uniform(max(0.0, 1 - s), 1 + s))
                elif op == 0:
                    delta = round(255 * rng.uniform(-s, s))
                    img = img.point(lambda v, d=delta: v + d)  # additive (v1); point() clips to 0..255
                elif op == 1:
                    img = ImageEnhance.Contrast(img).enhance(rng.uniform(max(0.0, 1 - s), 1 + s))
                elif op == 2 and img.mode == "RGB":
                    img = ImageEnhance.Color(img).enhance(rng.uniform(max(0.0, 1 - s), 1 + s))
                elif op == 3 and img.mode == "RGB":  # torchvision's PIL hue: shift H in HSV, wrapping
                    hue_strength = min(0.2 * a.color_strength, 0.5)
                    h_, s_, v_ = img.convert("HSV").split()
                    shift = round(255 * rng.uniform(-hue_strength, hue_strength))
                    h_ = Image.fromarray(((np.asarray(h_, dtype=np.int16) + shift) % 256).astype(np.uint8), "L")
                    img = Image.merge("HSV", (h_, s_, v_)).convert("RGB")
        if img.mode == "RGB" and rng.random() < a.grayscale_prob:
            img = img.convert("L").convert("RGB")
        if rng.random() < self.blur_prob:
            img = img.filter(ImageFilter.GaussianBlur(rng.uniform(*a.blur_sigma)))
        x = torch.from_numpy(np.array(img, dtype=np.uint8))
        x = (x.unsqueeze(0) if x.dim() == 2 else x.permute(2, 0, 1)).float().div_(255)
        if a.normalize:
            c = x.shape[0]
            mean = torch.tensor(self.mean[:c] if len(self.mean) >= c else self.mean * c).view(-1, 1, 1)
            std = torch.tensor(self.std[:c] if len(self.std) >= c else self.std * c).view(-1, 1, 1)
            x = (x - mean) / std
        return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x


# ---- variants and rounds ---------------------------------------------------------------------------------


@dataclass
class Variant:
    """A named training loop measured by :func:`run_benchmark`."""

    name: str
    kind: str  # pretrain | ceiling | baseline_pil
    parts: Any  # simclr.step.TrainParts
    step: Callable[[PhaseClock], None]
    images_per_step: int
    begin: Callable[[], None] = lambda: None  # start of a round
    end: Callable[[], None] = lambda: None  # end of a round
    resident: Callable[[], int] = lambda: 0  # device bytes held besides the parts (data, views)
    options: dict = field(default_factory=dict)
    rates: list[float] = field(default_factory=list)  # views per second, one per round
    cpu_seconds: list[float] = field(default_factory=list)  # this process's CPU time per step, per round
    peaks: list[int] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    phase_steps: int = 0


def _pretrain_variant(name, parts, data, batch_size: int, options: dict) -> Variant:
    from simclr.data import make_batch_source
    from simclr.step import train_step

    source = make_batch_source(data, batch_size, parts.device, shuffle=True, drop_last=True, seed=parts.cfg.train.seed)
    batches = _forever(source)
    done = [0]

    def step(clock: PhaseClock) -> None:
        batch = next(batches)
        clock.mark("data")
        # the engine's step, augmentation included
        train_step(parts, batch.images, batch.labels, done[0], batch.sizes, clock=clock)
        done[0] += 1

    def resident() -> int:
        return _tensor_bytes([source.images, source.labels]) if parts.device.type == "cuda" else 0

    return Variant(name, "pretrain", parts, step, batch_size, resident=resident, options=options)


def _views_variant(name, kind, parts, make_views, batch_size: int, options: dict, **extra) -> Variant:
    """A variant that trains the engine's step on views from ``make_views(clock) -> (views, labels)``."""
    from simclr.step import train_on_views

    done = [0]

    def step(clock: PhaseClock) -> None:
        views, labels = make_views(clock)
        train_on_views(parts, views, labels, done[0], clock=clock)
        done[0] += 1

    return Variant(name, kind, parts, step, batch_size, options=options, **extra)


def _ceiling_variant(name, parts, batch_size: int, image_size: int, options: dict) -> Variant:
    import torch

    g = torch.Generator().manual_seed(1)
    views = torch.randn(2 * batch_size, 3, image_size, image_size, generator=g).to(parts.device)
    if parts.channels_last:
        views = views.contiguous(memory_format=torch.channels_last)
    resident = lambda: _tensor_bytes([views])  # noqa: E731
    return _views_variant(name, "ceiling", parts, lambda clock: (views, None), batch_size, options, resident=resident)


def _pil_variant(name, parts, data, image_size, mean, std, batch_size: int, workers: int, options) -> Variant:
    import torch
    from torch.utils.data import DataLoader

    dataset = PILTwoViews(data.images, data.labels, parts.cfg.augment, image_size, mean, std)
    cuda = parts.device.type == "cuda"
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(0),
        pin_memory=cuda,
        prefetch_factor=2 if workers else None,
    )
    state: dict[str, Any] = {}

    def begin() -> None:
        state["it"] = iter(loader)

    def end() -> None:
        state.pop("it", None)  # the iterator's workers exit with it

    def views(clock: PhaseClock):
        try:
            v1, v2, labels = next(state["it"])
        except StopIteration:
            state["it"] = iter(loader)
            v1, v2, labels = next(state["it"])
        views = torch.cat([v1, v2]).to(parts.device, non_blocking=True)
        if parts.channels_last:
            views = views.contiguous(memory_format=torch.channels_last)
        labels = labels.to(parts.device, non_blocking=True) if data.labels is not None else None
        clock.mark("data")
        return views, labels

    return _views_variant(
        name, "baseline_pil", parts, views, batch_size, {**options, "workers": workers}, begin=begin, end=end
    )


def _round(v: Variant, steps: int, warmup: int, device) -> None:
    """Warmup, then ``steps`` timed steps (phases inline on CPU, in an extra pass on CUDA)."""
    v.begin()
    try:
        off = PhaseClock(device, enabled=False)
        for _ in range(warmup):
            v.step(off)
        _sync(device)
        reset_peak_memory(device)
        start = memory_now(device)
        inline = device.type != "cuda"
        clock = PhaseClock(device, enabled=inline)
        t0, cpu0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            clock.start()
            v.step(clock)
        _sync(device)
        elapsed = time.perf_counter() - t0
        v.cpu_seconds.append((time.process_time() - cpu0) / steps)
        if device.type == "cuda":  # as if alone on the device: its own growth plus what it keeps
            v.peaks.append(memory_peak(device) - start + resident_bytes(v.parts) + v.resident())
        else:
            v.peaks.append(memory_peak(device))
        v.rates.append(2 * v.images_per_step * steps / elapsed)
        if not inline:
            clock = PhaseClock(device, enabled=True)
            for _ in range(steps):
                clock.start()
                v.step(clock)
        for k, s in clock.totals.items():
            v.phases[k] += s
        v.phase_steps += steps
    finally:
        v.end()


def _summary(v: Variant, device) -> dict:
    rate = statistics.median(v.rates)
    per_step = {k: s / max(v.phase_steps, 1) for k, s in v.phases.items()}
    total = sum(per_step.values()) or 1.0
    return {
        "kind": v.kind,
        "views_per_sec": rate,
        "images_per_sec": rate / 2,
        "step_time_s": 2 * v.images_per_step / rate,
        "views_per_sec_rounds": v.rates,
        # all threads of this process (not the DataLoader workers): less sensitive to a loaded machine
        "cpu_time_per_step_s": statistics.median(v.cpu_seconds),
        "peak_memory_bytes": max(v.peaks),
        "memory_kind": "cuda_max_allocated_own" if device.type == "cuda" else "process_peak_rss_rough",
        "phases_s": per_step,
        "phases_fraction": {k: s / total for k, s in per_step.items()},
        "forward_backward_s": per_step["forward"] + per_step["backward"] + per_step["grad_cache"],
        **v.options,
    }


def _tag(kind: str, tags: list[str]) -> str:
    return f"{kind}[{','.join(tags)}]" if tags else kind


def run_benchmark(
    cfg,
    *,
    steps: int = 20,
    warmup: int = 5,
    repeats: int = 3,
    compile="off",
    channels_last="config",
    baselines: bool = True,
    synthetic: bool | None = None,
    workers: int = 2,
    micro_batch: int | None = None,
    checkpoint_stages: bool = False,
) -> dict:
    """Measure pretraining throughput, phases and memory against the ceiling and the PIL baseline.

    ``cfg`` gives model, batch size (``train.batch_size``), device, precision, loss and augmentation.
    ``compile``: ``off`` | ``on`` | ``both`` (torch.compile of the module, measured both ways with ``both``);
    ``channels_last``: ``config`` (``train.channels_last``, None = on) | ``on`` | ``off`` | ``both``.
    ``baselines``: also the ceiling and the PIL baseline. ``micro_batch``: add a gradient-cached variant, the
    engine's ``train.micro_batch`` step (:func:`simclr.gradcache.grad_cache_two_views`: ``micro_batch`` images
    with both their views per forward pass; it must divide the batch), ``checkpoint_stages`` with activation
    checkpointing.
    Returns the JSON-ready result (``variants``, ``ratios``, ``setup``); see :func:`format_table`.
    """
    import torch

    from simclr.data.base import channel_stats
    from simclr.runtime import resolve_device, set_kernel_flags

    if steps < 1 or warmup < 0 or repeats < 1:
        raise SimCLRError(f"bench: need steps >= 1, warmup >= 0, repeats >= 1 (got {steps}, {warmup}, {repeats})")
    if micro_batch and (micro_batch < 1 or cfg.train.batch_size % micro_batch):
        raise SimCLRError(
            f"bench --micro-batch {micro_batch}: images per forward pass, must divide the batch of "
            f"{cfg.train.batch_size} images"
        )
    device = resolve_device(cfg.train.device)
    load_before = os.getloadavg()
    data, note = bench_data(cfg, synthetic)
    batch_size = cfg.train.batch_size
    if len(data) < batch_size:
        raise SimCLRError(f"{data.source}: {len(data)} images are fewer than one batch of {batch_size}")
    image_size = cfg.model.input_size or data.images.shape[-1]
    mean, std = channel_stats(data.images)
    num_classes = int(data.labels.max()) + 1 if data.labels is not None else None
    set_kernel_flags(device)  # as the engine

    compiles = {"off": [False], "on": [True], "both": [False, True]}[_choice(compile, "compile")]
    cl_default = cfg.train.channels_last is not False  # as the engine: None = on
    cl_modes = {"config": [cl_default], "on": [True], "off": [False], "both": [True, False]}[
        _choice(channels_last, "channels_last")
    ]
    variants: list[Variant] = []
    for comp in compiles:
        for cl in cl_modes:
            tags = (["compile" if comp else "eager"] if len(compiles) > 1 else []) + (
                ["channels_last" if cl else "nchw"] if len(cl_modes) > 1 else []
            )
            opts = {"compile": comp, "channels_last": cl}
            common = dict(compile=comp, channels_last=cl, micro_batch=None, checkpointing=False)
            parts = make_parts(cfg, device, image_size, num_classes, mean, std, **common)
            variants.append(_pretrain_variant(_tag("pretrain", tags), parts, data, batch_size, opts))
            if baselines:
                parts = make_parts(cfg, device, image_size, num_classes, mean, std, bare=True, **common)
                variants.append(_ceiling_variant(_tag("ceiling", tags), parts, batch_size, image_size, opts))
    first = {"compile": compiles[0], "channels_last": cl_modes[0]}
    if micro_batch:
        parts = make_parts(
            cfg, device, image_size, num_classes, mean, std, compile=False, channels_last=first["channels_last"],
            micro_batch=micro_batch, checkpointing=checkpoint_stages,
        )  # fmt: skip
        name = f"pretrain[micro_batch={micro_batch}{',checkpoint' if checkpoint_stages else ''}]"
        opts = {**first, "compile": False, "micro_batch": micro_batch, "checkpoint_stages": checkpoint_stages}
        variants.append(_pretrain_variant(name, parts, data, batch_size, opts))
    if baselines:
        plain = dict(micro_batch=None, checkpointing=False)
        parts = make_parts(cfg, device, image_size, num_classes, mean, std, **plain, **first)
        variants.append(_pil_variant("baseline_pil", parts, data, image_size, mean, std, batch_size, workers, first))

    for r in range(repeats):
        k = r % len(variants)
        for v in variants[k:] + variants[:k]:  # rotated: no variant always runs first or after the same one
            _round(v, steps, warmup, device)

    results = {v.name: _summary(v, device) for v in variants}
    ratios = {}
    for v in variants:
        if v.kind != "pretrain":
            continue
        ceiling = v.name.replace("pretrain", "ceiling", 1)
        if ceiling in results:
            ratios[f"{v.name} / {ceiling}"] = results[v.name]["views_per_sec"] / results[ceiling]["views_per_sec"]
        if "baseline_pil" in results:
            ratios[f"{v.name} / baseline_pil"] = (
                results[v.name]["views_per_sec"] / results["baseline_pil"]["views_per_sec"]
            )
    workers_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    setup = {
        "preset": cfg.name,
        "arch": cfg.model.arch,
        "width_multiplier": cfg.model.width_multiplier,
        "image_size": image_size,
        "batch_size": batch_size,
        "views_per_step": 2 * batch_size,
        "device": str(device),
        "hardware": hardware(device),
        "precision": _precision(cfg, device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "steps": steps,
        "warmup": warmup,
        "repeats": repeats,
        "data": data.source,
        "data_note": note,
        "ceiling_loss": CEILING_LOSS,
        "pil_workers": workers if baselines else None,
        "pil_worker_peak_rss_bytes": workers_rss if baselines else None,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    return {"setup": setup, "variants": results, "ratios": ratios}


def _choice(value, name: str) -> str:
    if value is True:
        return "on"
    if value is False or value is None:
        return "off" if name == "compile" else "config"
    allowed = ("off", "on", "both") if name == "compile" else ("config", "on", "off", "both")
    if value not in allowed:
        raise SimCLRError(f"bench --{name.replace('_', '-')}: expected one of {', '.join(allowed)}, got {value!r}")
    return value


def format_table(result: dict) -> str:
    """The benchmark result as a fixed-width table (rates, step time, memory, phase shares)."""
    s = result["setup"]
    shown = ("data", "augment", "forward", "loss", "backward", "grad_cache", "optimizer", "other")
    lines = [
        f"bench_pretrain: {s['arch']} x{s['width_multiplier']:g}, {s['image_size']} px, batch {s['batch_size']} "
        f"({s['views_per_step']} views), {s['hardware']}, precision {s['precision']}, torch {s['torch']}",
        f"{s['steps']} timed steps x {s['repeats']} rounds after {s['warmup']} warmup steps per round; "
        f"data: {s['data']}; load average {s['load_average_before'][0]:.1f} -> {s['load_average_after'][0]:.1f}",
        "",
        f"{'variant':34s} {'views/s':>9s} {'img/s':>8s} {'step ms':>9s} {'peak MiB':>9s}  "
        + " ".join(f"{p[:7]:>7s}" for p in shown),
    ]
    for name, v in result["variants"].items():
        fr = v["phases_fraction"]
        other = fr["other"] + fr["grad_check"] + fr["momentum"]
        parts = [fr[p] if p != "other" else other for p in shown]
        lines.append(
            f"{name:34s} {v['views_per_sec']:9.1f} {v['images_per_sec']:8.1f} {1000 * v['step_time_s']:9.1f} "
            f"{_mib(v['peak_memory_bytes']):>9s}  " + " ".join(f"{100 * x:6.1f}%" for x in parts)
        )
    lines.append("")
    for k, ratio in result["ratios"].items():
        lines.append(f"{k}: {ratio:.2f}x")
    mem = next(iter(result["variants"].values()))["memory_kind"]
    lines.append(
        f"ceiling loss: {s['ceiling_loss']}; memory: {mem}; phases as % of step time ('other' "
        "includes the CPU gradient check, momentum encoder and logging)"
    )
    return "\n".join(lines)


# ---- memory of the loss: plain vs chunked NT-Xent ---------------------------------------------------------


def _loss_memory_child(spec_json: str) -> None:
    """Run in a fresh process: one NT-Xent forward + backward, print its peak memory growth as JSON."""
    import torch

    from simclr.loss import nt_xent

    spec = json.loads(spec_json)
    device = torch.device(spec["device"])
    n, dim = spec["views"] // 2, spec["dim"]
    g = torch.Generator().manual_seed(spec["seed"])
    z_a = torch.randn(n, dim, generator=g).to(device).requires_grad_(True)
    z_b = torch.randn(n, dim, generator=g).to(device).requires_grad_(True)
    small = [z[:8].detach().clone().requires_grad_(True) for z in (z_a, z_b)]
    nt_xent(*small, spec["temperature"], chunk_size=spec["chunk_size"]).backward()  # lazy initialisation
    _sync(device)
    reset_peak_memory(device)
    start = memory_now(device)
    t0 = time.perf_counter()
    loss = nt_xent(z_a, z_b, spec["temperature"], chunk_size=spec["chunk_size"])
    loss.backward()
    _sync(device)
    seconds = time.perf_counter() - t0
    peak = memory_peak(device) - start
    torch.save({"grad_a": z_a.grad.cpu(), "grad_b": z_b.grad.cpu()}, spec["grad_path"])
    print(json.dumps({"loss": loss.item(), "peak_bytes": peak, "seconds": seconds}))


def loss_memory(
    views: int = 8192,
    dim: int = 128,
    chunk_size: int = 1024,
    temperature: float = 0.1,
    device: str = "cpu",
    seed: int = 0,
) -> dict:
    """Peak memory of NT-Xent forward + backward over ``views`` projections: plain vs ``chunk_size`` rows.

    Each computation runs in its own fresh Python process, so that neither sees the other's allocations:
    CUDA ``max_memory_allocated`` growth, or on CPU the growth of the process's peak RSS (reset through
    ``/proc/self/clear_refs``; elsewhere the lifetime peak, which includes start-up). Also checks that both
    give the same loss and gradients (to float rounding). The 2N x 2N logits are 2N^2 x 4 bytes (256 MiB
    at 2N = 8192), held several times by the plain computation; the chunked one holds chunk x 2N.
    """
    import torch

    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode, chunk in (("plain", None), ("chunked", chunk_size)):
            spec = {
                "views": views,
                "dim": dim,
                "chunk_size": chunk,
                "temperature": temperature,
                "device": device,
                "seed": seed,
                "grad_path": os.path.join(tmp, f"{mode}.pt"),
            }
            code = "import sys; from bench_pretrain import _loss_memory_child; _loss_memory_child(sys.argv[1])"
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")])}
            proc = subprocess.run(
                [sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, env=env
            )
            if proc.returncode != 0:
                raise SimCLRError(f"bench --loss-memory ({mode}): {proc.stderr.strip().splitlines()[-1:]}")
            runs[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
            runs[mode]["grads"] = torch.load(spec["grad_path"])
    grads = {m: torch.cat([g.flatten() for g in r.pop("grads").values()]) for m, r in runs.items()}
    diff = (grads["plain"] - grads["chunked"]).abs().max().item()
    scale = grads["plain"].abs().max().item()
    ratio = runs["plain"]["peak_bytes"] / max(runs["chunked"]["peak_bytes"], 1)
    return {
        "views": views,
        "dim": dim,
        "chunk_size": chunk_size,
        "temperature": temperature,
        "device": device,
        "memory_kind": "cuda_max_allocated_growth" if device.startswith("cuda") else "process_peak_rss_growth",
        "plain": runs["plain"],
        "chunked": runs["chunked"],
        "memory_ratio": ratio,
        "loss_abs_diff": abs(runs["plain"]["loss"] - runs["chunked"]["loss"]),
        "grad_max_abs_diff": diff,
        "grad_max_abs": scale,
        "same_result": bool(
            abs(runs["plain"]["loss"] - runs["chunked"]["loss"]) <= 1e-5 * abs(runs["plain"]["loss"])
            and diff <= 1e-4 * scale
        ),
    }


def format_loss_memory(r: dict) -> str:
    p, c = r["plain"], r["chunked"]
    return "\n".join(
        [
            f"NT-Xent forward + backward, 2N = {r['views']} views of {r['dim']}-d, tau {r['temperature']}, "
            f"{r['device']} ({r['memory_kind']})",
            f"  plain:              peak {_mib(p['peak_bytes']):>7s} MiB, {p['seconds']:.2f} s, loss {p['loss']:.6f}",
            f"  chunked ({r['chunk_size']:>5d} rows): peak {_mib(c['peak_bytes']):>7s} MiB, {c['seconds']:.2f} s, "
            f"loss {c['loss']:.6f}",
            f"  memory plain / chunked = {r['memory_ratio']:.1f}x; |loss diff| {r['loss_abs_diff']:.2e}, "
            f"max |grad diff| {r['grad_max_abs_diff']:.2e} (max |grad| {r['grad_max_abs']:.2e}); "
            f"same result: {r['same_result']}",
        ]
    )


# ---- dry run: memory and time estimates for `simclr pretrain --dry-run` ------------------------------------


def add_bench_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of the benchmark; returns the parser."""
    p.add_argument("--preset", help="named preset (see `simclr presets`)")
    p.add_argument("--config", help="YAML config file, applied after the preset")
    p.add_argument("--data", help="dataset root folder or file (data.path)")
    p.add_argument("--dataset", help="dataset kind (data.dataset)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (repeatable), e.g. --set model.arch=resnet50",
    )
    p.add_argument("--arch", help="encoder (model.arch)")
    p.add_argument("--resolution", type=int, help="view side in pixels (model.input_size)")
    p.add_argument("--batch-size", type=int, help="images per step (train.batch_size)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"])
    p.add_argument("--compile", choices=["off", "on", "both"], default="off", help="torch.compile the module")
    p.add_argument("--channels-last", choices=["config", "on", "off", "both"], default="config")
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant and round")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before each round's timed steps")
    p.add_argument("--repeats", type=int, default=3, help="rounds; the median rate is reported")
    p.add_argument(
        "--no-baselines",
        dest="baselines",
        action="store_false",
        help="skip the ceiling and the PIL DataLoader baseline",
    )
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the PIL baseline")
    p.add_argument("--synthetic", action="store_true", help="random images of the dataset's shape")
    p.add_argument("--micro-batch", type=int, help="also measure gradient caching: images per pass (train.micro_batch)")
    p.add_argument("--checkpoint-stages", action="store_true", help="activation checkpointing with --micro-batch")
    p.add_argument("--loss-memory", action="store_true", help="only compare plain vs chunked NT-Xent memory")
    p.add_argument("--loss-views", type=int, default=8192, help="2N for --loss-memory")
    p.add_argument("--chunk-size", type=int, default=1024, help="chunk rows for --loss-memory")
    p.add_argument("--threads", type=int, help="torch CPU threads of the training process (default: torch's)")
    p.add_argument("--out-json", help="write the result here as JSON")
    return p


def bench_command(
    preset=None,
    config=None,
    data=None,
    dataset=None,
    overrides=(),
    steps=20,
    warmup=5,
    batch_size=None,
    device=None,
    precision=None,
    compile="off",
    out_json=None,
    baselines=True,
    *,
    repeats=3,
    channels_last="config",
    arch=None,
    resolution=None,
    synthetic=None,
    workers=2,
    micro_batch=None,
    checkpoint_stages=False,
    loss_memory_mode=False,
    loss_views=8192,
    chunk_size=1024,
    threads=None,
    out=print,
) -> dict:
    """Resolve the config, run :func:`run_benchmark` (or :func:`loss_memory`), print, save.

    The first thirteen arguments are the issue's interface; the keyword-only ones are the extra options of
    :func:`add_bench_arguments` (``threads``: ``torch.set_num_threads`` for this process, e.g. 1 on a shared
    machine, where idle-waiting OpenMP threads slow small ops down by 10-100x).
    """
    import torch

    from simclr.config import load_config

    if threads:
        torch.set_num_threads(threads)

    if loss_memory_mode:
        dev = device if device not in (None, "auto") else _auto_device()
        result = loss_memory(views=loss_views, chunk_size=chunk_size, device=dev)
        out(format_loss_memory(result))
    else:
        extra = [f"data.path={data}"] if data else []
        extra += [f"data.dataset={dataset}"] if dataset else []
        extra += [f"model.arch={arch}"] if arch else []
        extra += [f"model.input_size={resolution}"] if resolution else []
        extra += [f"train.batch_size={batch_size}"] if batch_size else []
        extra += [f"train.device={device}"] if device else []
        extra += [f"train.precision={precision}"] if precision else []
        cfg = load_config(preset=preset, path=config, overrides=extra + list(overrides))
        result = run_benchmark(
            cfg,
            steps=steps,
            warmup=warmup,
            repeats=repeats,
            compile=compile,
            channels_last=channels_last,
            baselines=baselines,
            synthetic=synthetic,
            workers=workers,
            micro_batch=micro_batch,
            checkpoint_stages=checkpoint_stages,
        )
        out(format_table(result))
    if out_json:
        with open(out_json, "w") as f:
            json.dump(result, f, indent=2)
        out(f"wrote {out_json}")
    return result


def _auto_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def bench_from_args(args: argparse.Namespace) -> int:
    """Dispatch parsed arguments (from :func:`add_bench_arguments`) to :func:`bench_command`."""
    bench_command(
        preset=args.preset,
        config=args.config,
        data=args.data,
        dataset=args.dataset,
        overrides=args.overrides,
        steps=args.steps,
        warmup=args.warmup,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        compile=args.compile,
        out_json=args.out_json,
        baselines=args.baselines,
        repeats=args.repeats,
        channels_last=args.channels_last,
        arch=args.arch,
        resolution=args.resolution,
        synthetic=True if args.synthetic else None,
        workers=args.workers,
        micro_batch=args.micro_batch,
        checkpoint_stages=args.checkpoint_stages,
        loss_memory_mode=args.loss_memory,
        loss_views=args.loss_views,
        chunk_size=args.chunk_size,
        threads=args.threads,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python benchmarks/bench_pretrain.py ...``."""
    parser = argparse.ArgumentParser(prog="bench_pretrain.py", description=__doc__.splitlines()[0])
    args = add_bench_arguments(parser).parse_args(argv)
    try:
        return bench_from_args(args)
    except SimCLRError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


__all__ = [
    "PhaseClock",
    "PILTwoViews",
    "add_bench_arguments",
    "bench_command",
    "bench_data",
    "bench_from_args",
    "format_loss_memory",
    "format_table",
    "loss_memory",
    "make_parts",
    "run_benchmark",
]

if __name__ == "__main__":
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
