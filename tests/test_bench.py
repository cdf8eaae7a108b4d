"""The benchmark tooling: every field of the JSON result, the dry run, the PIL baseline, the parser.

Smoke tests only: a few steps on tiny data. Nothing here asserts a timing (the machine may be loaded);
speed is for ``benchmarks/bench_pretrain.py`` to measure, not for the tests to judge.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from simclr import dryrun
from simclr.config import AugmentConfig, load_config
from simclr.errors import SimCLRError
from simclr.loss import nt_xent

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_pretrain as bench  # noqa: E402  (the harness lives outside the package)

SETUP_KEYS = {
    "preset", "arch", "width_multiplier", "image_size", "batch_size", "views_per_step", "device", "hardware",
    "precision", "torch", "threads", "cpu_count", "steps", "warmup", "repeats", "data", "data_note",
    "ceiling_loss", "pil_workers", "pil_worker_peak_rss_bytes", "load_average_before", "load_average_after",
}  # fmt: skip
VARIANT_KEYS = {
    "kind", "views_per_sec", "images_per_sec", "step_time_s", "views_per_sec_rounds", "peak_memory_bytes",
    "memory_kind", "phases_s", "phases_fraction", "forward_backward_s", "compile", "channels_last",
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory) -> Path:
    """24 RGB images of 12 px with labels, in the real .npz format."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, images=rng.integers(0, 256, (24, 12, 12, 3), dtype=np.uint8), labels=rng.integers(0, 3, 24))
    return path


def tiny_overrides(path: Path) -> list[str]:
    return ["data.dataset=npz", f"data.path={path}", "model.width_multiplier=0.0625", "model.head_layers=2",
            "train.device=cpu", "monitor.knn=false"]  # fmt: skip


def test_bench_json_has_every_field(tiny_npz: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    bench.bench_command(
        overrides=tiny_overrides(tiny_npz), steps=2, warmup=1, batch_size=8, out_json=str(out), baselines=True,
        repeats=2, channels_last="both", micro_batch=4, workers=2,
    )  # fmt: skip
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert set(result) == {"setup", "variants", "ratios"}
    assert SETUP_KEYS <= set(result["setup"])
    assert result["setup"]["views_per_step"] == 16 and result["setup"]["pil_workers"] == 2
    names = {
        "pretrain[channels_last]", "pretrain[nchw]", "ceiling[channels_last]", "ceiling[nchw]",
        "pretrain[micro_batch=4]", "baseline_pil",
    }  # fmt: skip
    assert set(result["variants"]) == names
    for name, v in result["variants"].items():
        assert VARIANT_KEYS <= set(v), name
        assert set(v["phases_s"]) == set(bench.PHASES)
        assert len(v["views_per_sec_rounds"]) == 2
        assert v["views_per_sec"] > 0 and v["peak_memory_bytes"] > 0
        assert v["images_per_sec"] == pytest.approx(v["views_per_sec"] / 2)
        assert sum(v["phases_fraction"].values()) == pytest.approx(1.0)
    assert result["variants"]["pretrain[nchw]"]["phases_s"]["augment"] > 0
    assert result["variants"]["baseline_pil"]["phases_s"]["augment"] == 0  # done in the workers
    assert result["variants"]["pretrain[micro_batch=4]"]["phases_s"]["grad_cache"] > 0
    assert set(result["ratios"]) == {
        "pretrain[channels_last] / ceiling[channels_last]", "pretrain[nchw] / ceiling[nchw]",
        "pretrain[channels_last] / baseline_pil", "pretrain[nchw] / baseline_pil",
        "pretrain[micro_batch=4] / baseline_pil",
    }  # fmt: skip
    for name in names:
        assert name in printed
    assert "/ baseline_pil" in printed


def test_bench_without_baselines_on_random_data() -> None:
    cfg = load_config(preset="cifar10", overrides=["model.width_multiplier=0.0625", "train.batch_size=4",
                                                   "train.device=cpu", "data.path=/nonexistent"])  # fmt: skip
    result = bench.run_benchmark(cfg, steps=1, warmup=0, repeats=1, baselines=False)
    assert set(result["variants"]) == {"pretrain"}
    assert result["ratios"] == {}
    assert "random" in result["setup"]["data"] and "not found" in result["setup"]["data_note"]
    assert result["setup"]["image_size"] == 32


def test_dry_run_reports_estimates(tiny_npz: Path) -> None:
    cfg = load_config(overrides=[*tiny_overrides(tiny_npz), "train.batch_size=16", "train.epochs=3"])
    lines: list[str] = []
    report = dryrun.dry_run(cfg, steps=1, warmup=1, max_cpu_pixels=8 * 12 * 12, out=lines.append)
    assert report["estimated"] is True  # measured at 4 and 8, extrapolated to 16
    assert set(report["measured"]) == {"4", "8"}
    assert report["step_time_s"] > 0 and report["peak_memory_bytes"] > 0
    assert report["steps_per_epoch"] == 1 and report["run_steps"] == 3
    assert report["largest_batch"] is None or report["largest_batch"] > 0
    text = "\n".join(lines)
    assert "ESTIMATE" in text and "batch 16" in text and "epoch: 1 steps" in text


def test_dry_run_extrapolation_never_shrinks_the_step_time(tiny_npz: Path, monkeypatch) -> None:
    """Regression: timings of 0.2 s at batch 4 and 0.1 s at batch 8 (noise on a loaded CPU) extrapolated to a
    negative step time at batch 16; the step time is now at least the larger batch's."""
    times = {4: 0.2, 8: 0.1}
    monkeypatch.setattr(dryrun, "_measure", lambda parts, images, *a: (times[len(images)], 10**8))
    cfg = load_config(overrides=[*tiny_overrides(tiny_npz), "train.batch_size=16"])
    report = dryrun.dry_run(cfg, steps=1, warmup=1, max_cpu_pixels=8 * 12 * 12, out=lambda line: None)
    assert report["estimated"] and report["step_time_s"] == pytest.approx(0.1)


def test_dry_run_takes_micro_batches_into_account(tiny_npz: Path) -> None:
    overrides = [*tiny_overrides(tiny_npz), "train.batch_size=8", "train.activation_checkpointing=true"]
    lines: list[str] = []
    report = dryrun.dry_run(load_config(overrides=[*overrides, "train.micro_batch=2"]), steps=1, out=lines.append)
    assert report["step_time_s"] > 0
    assert "gradient caching: micro-batches of 2 images, activation checkpointing" in "\n".join(lines)
    with pytest.raises(SimCLRError, match="train.micro_batch"):
        dryrun.dry_run(load_config(overrides=[*overrides, "train.micro_batch=3"]), out=lines.append)


def test_gradient_cached_variant_takes_the_engines_step(tiny_npz: Path, monkeypatch) -> None:
    """`micro_batch` counts images, each forward pass holding both views of its images, and NT-Xent runs in
    float32 with autocast off, as in the engine (before: micro-batches of views, the loss under bf16 autocast)."""
    import simclr.loss
    import simclr.step
    from simclr.step import train_on_views

    cfg = load_config(overrides=[*tiny_overrides(tiny_npz), "train.batch_size=8", "train.precision=bf16"])
    parts = bench.make_parts(cfg, torch.device("cpu"), 12, 3, (0.5,) * 3, (0.5,) * 3, micro_batch=4)
    passes, autocast_in_loss = [], []
    forward = parts.train_module.forward
    monkeypatch.setattr(parts.train_module, "forward", lambda x: passes.append(x[:, 0, 0, 0].tolist()) or forward(x))
    real_nt_xent = simclr.loss.nt_xent

    def nt_xent(*args, **kwargs):
        autocast_in_loss.append(torch.is_autocast_enabled("cpu"))
        return real_nt_xent(*args, **kwargs)

    monkeypatch.setattr(simclr.step, "nt_xent", nt_xent)
    image = torch.arange(8.0)[:, None, None, None].expand(8, 3, 12, 12)
    views = torch.cat([image, image + 100])  # view 2 of image i: i + 100
    stats = train_on_views(parts, views, torch.arange(8) % 3, 0, clock=bench.PhaseClock(torch.device("cpu"), False))
    both_views = [[0, 1, 2, 3, 100, 101, 102, 103], [4, 5, 6, 7, 104, 105, 106, 107]]
    assert passes == both_views * 2  # two passes of gradient caching, 4 images x 2 views each
    assert autocast_in_loss == [False]
    assert float(stats.loss) > 0 and stats.applied  # the logged loss


@pytest.mark.parametrize("channels", [1, 3])
def test_pil_views_shape_range_and_seeding(channels: int) -> None:
    images = torch.randint(0, 256, (3, channels, 20, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    cfg = AugmentConfig(blur_prob=0.5, color_jitter_prob=1.0, normalize=False)
    ds = bench.PILTwoViews(images, None, cfg, out_size=10, mean=(0.5,) * channels, std=(0.5,) * channels)
    random.seed(0)
    v1, v2, label = ds[1]
    assert v1.shape == v2.shape == (3, 10, 10) and v1.dtype == torch.float32 and label == -1
    assert 0 <= v1.min() and v1.max() <= 1
    random.seed(0)
    assert torch.equal(ds[1][0], v1)


def test_pil_crop_box_is_inside_the_image() -> None:
    rng = random.Random(0)
    for _ in range(200):
        h, w = rng.randint(1, 40), rng.randint(1, 40)
        top, left, bh, bw = bench._pil_crop_box(h, w, (0.08, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= top and 0 <= left and 0 < bh and 0 < bw and top + bh <= h and left + bw <= w


def test_parser_and_dispatch(monkeypatch) -> None:
    parser = bench.add_bench_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--preset", "cifar10", "--batch-size", "64", "--compile", "both",
                              "--set", "model.arch=resnet50", "--no-baselines", "--out-json", "x.json"])  # fmt: skip
    seen = {}
    monkeypatch.setattr(bench, "bench_command", lambda **kw: seen.update(kw))
    assert bench.bench_from_args(args) == 0
    assert seen["preset"] == "cifar10" and seen["batch_size"] == 64 and seen["compile"] == "both"
    assert seen["overrides"] == ["model.arch=resnet50"] and seen["baselines"] is False
    assert seen["out_json"] == "x.json" and seen["steps"] == 20 and seen["warmup"] == 5


def test_loss_memory_measures_the_plain_loss_holding_its_logits() -> None:
    """2N = 2048 views: the plain loss holds the 2N x 2N float32 logits (16 MiB) at least once, the chunked
    one 128 rows of them at a time (1 MiB); measured ratios were 4.3x to 12x, the test asks for 2x."""
    views, dim = 2048, 16
    r = bench.loss_memory(views=views, dim=dim, chunk_size=128)
    assert r["same_result"], bench.format_loss_memory(r)
    assert r["plain"]["peak_bytes"] >= views * views * 4, bench.format_loss_memory(r)
    if os.access("/proc/self/clear_refs", os.W_OK):  # else each peak is the child's lifetime one, start-up included
        assert r["memory_ratio"] >= 2, bench.format_loss_memory(r)
    g = torch.Generator().manual_seed(0)  # the children's projections
    z_a, z_b = torch.randn(views // 2, dim, generator=g), torch.randn(views // 2, dim, generator=g)
    assert r["plain"]["loss"] == pytest.approx(nt_xent(z_a, z_b, 0.1).item(), rel=1e-5)
    assert "memory plain / chunked" in bench.format_loss_memory(r)


@pytest.mark.slow
def test_chunked_loss_needs_at_least_4x_less_memory_at_8192_views() -> None:
    r = bench.loss_memory(views=8192, dim=128, chunk_size=1024)
    assert r["same_result"]
    assert r["memory_ratio"] >= 4, bench.format_loss_memory(r)
