"""The crop samplers against plain per-image references: TF's ``sample_distorted_bounding_box`` (the official
crop, transcribed from the TF kernel one image at a time) and torchvision's ``RandomResizedCrop.get_params``.
Statistics are compared within sampling error: tolerances are ``Z`` standard errors of the difference of two
independent samples of ``N`` draws."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from simclr.augment import Augment
from simclr.config import AugmentConfig
from simclr.crop_boxes import sample_crop_boxes, tf_crop_boxes, torchvision_crop_boxes

N, Z = 20000, 5.0
SIZES = [(256, 256), (375, 500), (500, 333)]
f32 = np.float32


# ---------------------------------------------------------------- plain references, one image at a time


def lrint(v) -> int:
    return int(np.rint(v))  # round half to even, as the kernel's lrintf


def ref_tf_try(height, width, min_area, max_area, ar, draw_height):
    """One GenerateRandomCrop of the TF kernel (float32 arithmetic): (h, w) or None."""
    h = lrint(np.sqrt(min_area / ar))
    max_h = lrint(np.sqrt(max_area / ar))
    if lrint(f32(max_h) * ar) > width:  # the widest height whose rounded width still fits
        max_h = int((width + 0.5 - float(f32(1e-7))) / float(ar))
        if lrint(f32(max_h) * ar) > width:
            max_h -= 1
    max_h = min(max_h, height)
    h = min(h, max_h)
    h += draw_height(max_h - h + 1)
    w = lrint(f32(h) * ar)
    area = f32(w * h)
    if area < min_area:
        h += 1
        w = lrint(f32(h) * ar)
        area = f32(w * h)
    if area > max_area:
        h -= 1
        w = lrint(f32(h) * ar)
        area = f32(w * h)
    if area < min_area or area > max_area or w > width or h > height or w <= 0 or h <= 0:
        return None
    return h, w


def ref_tf_crop(height, width, draw_ratio, draw_height, draw_offset, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """TF's sampler with the whole image as the one bounding box: (top, left, h, w, fell_back)."""
    min_area = f32(scale[0]) * f32(width) * f32(height)
    max_area = f32(scale[1]) * f32(width) * f32(height)
    lo, hi = f32(ratio[0]), f32(ratio[1])
    for _ in range(100):
        ar = f32(draw_ratio()) * (hi - lo) + lo
        hw = ref_tf_try(height, width, min_area, max_area, ar, draw_height)
        if hw is None:
            continue
        area = f32(hw[0] * hw[1])
        if area >= 1 and area / f32(width * height) >= f32(0.1):  # min_object_covered
            h, w = hw
            return draw_offset(height - h), draw_offset(width - w), h, w, False
    return 0, 0, height, width, True


def python_random_tf_crop(height, width, rng):
    def pick(n):  # TF's Uniform(n): an integer in [0, n)
        return rng.randrange(n) if n > 0 else 0

    return ref_tf_crop(height, width, rng.random, pick, pick)


def ref_torchvision_box(height, width, scale, ratio, rng):
    """torchvision's RandomResizedCrop.get_params, transcribed with Python's random module."""
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    return None  # fallback


# ---------------------------------------------------------------- statistics


def summary(boxes: np.ndarray, height: int, width: int) -> dict:
    """Area fraction, aspect ratio (w / h) and the whole-image rate of (n, 4) boxes (top, left, h, w)."""
    h, w = boxes[:, 2].astype(float), boxes[:, 3].astype(float)
    return {"area": h * w / (height * width), "aspect": w / h, "whole": (h == height) & (w == width)}


def assert_same_distribution(ours: np.ndarray, ref: np.ndarray, what: str) -> None:
    """Means within Z standard errors; the CDF at the reference's 5/25/50/75/95 % quantiles within Z binomial
    standard errors (evaluated on both samples alike, as the values are discrete)."""
    se = math.sqrt(ours.var() / len(ours) + ref.var() / len(ref))
    assert abs(ours.mean() - ref.mean()) <= Z * se + 1e-12, (what, ours.mean(), ref.mean())
    for q in (0.05, 0.25, 0.5, 0.75, 0.95):
        cut = np.quantile(ref, q)
        p_ours, p_ref = (ours <= cut).mean(), (ref <= cut).mean()
        p = (p_ours + p_ref) / 2
        tol = Z * math.sqrt(2 * p * (1 - p) / len(ref)) + 1e-12
        assert abs(p_ours - p_ref) <= tol, (what, q, p_ours, p_ref)


@pytest.mark.parametrize("height, width", SIZES)
def test_tf_sampler_statistics_match_a_plain_port_of_the_kernel(height, width):
    boxes = tf_crop_boxes(N, height, width, generator=torch.Generator().manual_seed(height)).numpy()
    rng = random.Random(width)
    ref_rows = [python_random_tf_crop(height, width, rng) for _ in range(N)]
    ref = np.array([r[:4] for r in ref_rows])
    ours, theirs = summary(boxes, height, width), summary(ref, height, width)
    assert_same_distribution(ours["area"], theirs["area"], "area")
    assert_same_distribution(ours["aspect"], theirs["aspect"], "aspect")
    p_ours, p_ref = ours["whole"].mean(), theirs["whole"].mean()
    p = max((p_ours + p_ref) / 2, 1 / N)
    assert abs(p_ours - p_ref) <= Z * math.sqrt(2 * p * (1 - p) / N)  # whole image: the fallback (or a full crop)
    # every crop covers at least 10 % of the image (min_object_covered), none the 8 % of the area range
    assert ours["area"].min() >= 0.1 - 1e-6 and theirs["area"].min() >= 0.1 - 1e-6
    assert ours["aspect"].min() >= 0.75 - 0.02 and ours["aspect"].max() <= 4 / 3 + 0.02  # rounding to pixels
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()


@pytest.mark.parametrize("height, width, n", [(256, 256, 1500), (375, 500, 1500), (500, 333, 1500),
                                              (33, 17, 300), (7, 300, 40), (1, 1, 20), (2, 3, 50)])  # fmt: skip
def test_tf_sampler_equals_the_port_box_by_box_on_the_same_uniforms(height, width, n):
    # Replaying the sampler's own uniforms through the plain port pins every rounding and clamping rule.
    g = torch.Generator().manual_seed(7)
    boxes = tf_crop_boxes(n, height, width, generator=g)
    g = torch.Generator().manual_seed(7)
    u = torch.rand(n, 100, 2, generator=g).numpy()
    uo = torch.rand(n, 2, generator=g).numpy()

    def pick(it):  # floor(u * k) in float32, at most k - 1: the sampler's integer draw
        return lambda k: min(int(f32(next(it)) * f32(k)), max(k - 1, 0))

    for i in range(n):
        ratios = iter(u[i, :, 0])
        want = ref_tf_crop(height, width, ratios.__next__, pick(iter(u[i, :, 1])), pick(iter(uo[i])))[:4]
        assert boxes[i].tolist() == [float(v) for v in want], (i, boxes[i].tolist(), want)


def test_tf_sampler_falls_back_to_the_whole_image():
    # 7 x 300: no box with an aspect ratio in [3/4, 4/3] covers 10 % of it, so every draw is the whole image
    boxes = tf_crop_boxes(16, 7, 300, generator=torch.Generator().manual_seed(0))
    assert torch.equal(boxes, torch.tensor([[0.0, 0.0, 7.0, 300.0]]).expand(16, 4))


def test_mean_area_fractions_of_the_two_samplers_on_a_square_image():
    # the figures: TF about 0.42 of the area and no crop under 10 %, torchvision 0.48 and a few %
    g = torch.Generator().manual_seed(0)
    tf = tf_crop_boxes(N, 256, 256, generator=g)
    tv = torchvision_crop_boxes(N, 256, 256, generator=g)
    tf_area, tv_area = (b[:, 2] * b[:, 3] / 256**2 for b in (tf, tv))
    assert abs(tf_area.mean().item() - 0.42) < 0.01 and (tf_area < 0.1).sum() == 0
    assert abs(tv_area.mean().item() - 0.48) < 0.01 and 0.01 < (tv_area < 0.1).float().mean() < 0.05


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(1, 400), st.integers(1, 400)), min_size=1, max_size=12),
    sampler=st.sampled_from(["tf", "torchvision"]),
)
def test_boxes_of_a_mixed_size_batch_lie_inside_their_own_images(sizes, sampler):
    heights = torch.tensor([h for h, _ in sizes] * 8)
    widths = torch.tensor([w for _, w in sizes] * 8)
    n = len(heights)
    boxes = sample_crop_boxes(n, heights, widths, generator=torch.Generator().manual_seed(n), sampler=sampler)
    top, left, h, w = boxes.unbind(1)
    assert boxes.shape == (n, 4) and boxes.dtype == torch.float32 and torch.equal(boxes, boxes.round())
    assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert (top + h <= heights).all() and (left + w <= widths).all()


@pytest.mark.parametrize("sampler", ["tf", "torchvision"])
def test_per_image_sizes_equal_an_int_size_when_all_alike(sampler):
    n = 64
    a = sample_crop_boxes(n, 40, 60, generator=torch.Generator().manual_seed(3), sampler=sampler)
    b = sample_crop_boxes(n, torch.full((n,), 40), torch.full((n,), 60), generator=torch.Generator().manual_seed(3),
                          sampler=sampler)  # fmt: skip
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="height"):
        sample_crop_boxes(n, torch.full((n - 1,), 40), 60, sampler=sampler)


def test_augment_samples_per_image_sizes_with_the_configured_sampler():
    heights, widths = torch.tensor([256, 375, 500, 32]), torch.tensor([256, 500, 333, 32])
    for sampler in ("tf", "torchvision"):
        aug = Augment(AugmentConfig(crop_sampler=sampler), out_size=32)
        p = aug.sample_params(4, heights, widths, torch.Generator().manual_seed(0))
        assert (p.boxes[:, 0] + p.boxes[:, 2] <= heights).all() and (p.boxes[:, 1] + p.boxes[:, 3] <= widths).all()
    whole = Augment(AugmentConfig(crop=False), out_size=32).sample_params(4, heights, widths)
    assert torch.equal(whole.boxes, torch.stack([torch.zeros(4), torch.zeros(4), heights, widths], 1).float())
    tf_boxes = Augment(AugmentConfig(), 32).sample_params(4000, 64, 64, torch.Generator().manual_seed(1)).boxes
    assert (tf_boxes[:, 2] * tf_boxes[:, 3]).min() >= 0.1 * 64 * 64  # the default is TF's sampler


# ---------------------------------------------------------------- torchvision's sampler


@settings(max_examples=30, deadline=None)
@given(
    height=st.integers(1, 300),
    width=st.integers(1, 300),
    lo=st.floats(0.01, 1.0),
    ratio_lo=st.floats(0.2, 1.0),
    ratio_hi=st.floats(1.0, 5.0),
    sampler=st.sampled_from([tf_crop_boxes, torchvision_crop_boxes]),
)
def test_crop_boxes_lie_inside_the_image(height, width, lo, ratio_lo, ratio_hi, sampler):
    g = torch.Generator().manual_seed(height * 1000 + width)
    boxes = sampler(64, height, width, (lo, 1.0), (ratio_lo, ratio_hi), g)
    top, left, h, w = boxes.unbind(1)
    assert boxes.dtype == torch.float32 and torch.equal(boxes, boxes.round())
    assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert (top + h <= height).all() and (left + w <= width).all()


def test_crop_box_distribution_matches_torchvision_sampler():
    n, side = N, 64
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    boxes = torchvision_crop_boxes(n, side, side, scale, ratio, torch.Generator().manual_seed(0))
    area = (boxes[:, 2] * boxes[:, 3] / side**2).numpy()
    log_ratio = torch.log(boxes[:, 3] / boxes[:, 2]).numpy()
    rng = random.Random(0)
    ref = [ref_torchvision_box(side, side, scale, ratio, rng) for _ in range(n)]
    ref_area = np.array([h * w / side**2 for _, _, h, w in ref])
    ref_log_ratio = np.array([math.log(w / h) for _, _, h, w in ref])
    assert area.min() >= 0.07 and area.max() <= 1.0  # 0.08 up to rounding to whole pixels
    assert_same_distribution(area, ref_area, "area")
    assert_same_distribution(log_ratio, ref_log_ratio, "log aspect")
    assert np.abs(log_ratio).max() <= math.log(4 / 3) + 0.05
    # log-uniform: as many boxes are wider than 1.15 as taller than 1 / 1.15
    wide, tall = (log_ratio > math.log(1.15)).mean(), (log_ratio < -math.log(1.15)).mean()
    assert abs(wide - tall) < 0.02
    top, left = boxes[:, 0], boxes[:, 1]
    centre_y = ((top + boxes[:, 2] / 2) / side).mean().item()  # offsets uniform: centred on average
    assert abs(centre_y - 0.5) < 0.01 and left.min() == 0


def test_torchvision_fallback_is_centred_clamped_ratio():
    boxes = torchvision_crop_boxes(8, 50, 100, (1.0, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
    w = round(50 * 4 / 3)
    assert torch.equal(boxes, torch.tensor([[0.0, (100 - w) // 2, 50.0, w]]).expand(8, 4))
    mixed = torchvision_crop_boxes(2, torch.tensor([50, 100]), torch.tensor([100, 50]), (1.0, 1.0))
    h = round(50 / (3 / 4))
    assert mixed.tolist() == [[0.0, (100 - w) // 2, 50.0, w], [(100 - h) // 2, 0.0, h, 50.0]]
