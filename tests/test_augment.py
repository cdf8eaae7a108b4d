"""The SimCLR augmentation: every op against a plain per-image reference (numpy, colorsys, PIL), the random
parameters' distributions, the switches, determinism and the batched pipeline."""

from __future__ import annotations

import colorsys
import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
from PIL import Image

import simclr.augment as augment_module
from simclr.augment import (
    SCHEDULE,
    Augment,
    AugmentParams,
    EvalTransform,
    eval_crop_side,
    finetune_augment_config,
)
from simclr.augment_ops import (
    adjust_brightness,
    adjust_brightness_additive,
    adjust_contrast,
    adjust_hsv,
    adjust_hue,
    adjust_saturation,
    blend_,
    blur_kernel_size,
    gaussian_blur,
    resized_crop_flip,
    rgb_to_grayscale,
)
from simclr.config import AugmentConfig
from simclr.errors import SimCLRError

OFF = dict(crop=False, flip=False, color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, normalize=False)


def rand_images(b=4, c=3, h=5, w=6, seed=0, levels=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, c, h, w, generator=g)
    if levels:  # quantised values make ties between channels (hue edge cases)
        x = torch.round(x * levels) / levels
    return x


# ---------------------------------------------------------------- plain references, one image at a time


def np_gray(img):
    if img.shape[0] == 1:  # a 1-channel image is already gray
        return img[0]
    return 0.2989 * img[0] + 0.5870 * img[1] + 0.1140 * img[2]


def np_brightness(img, f):
    return np.clip(img * f, 0, 1)


def np_brightness_add(img, d):
    return np.clip(img + d, 0, 1)


def np_contrast(img, f):
    """TF adjust_contrast: (x - mean) * f + mean with each channel's own mean, then the clip."""
    mean = img.mean(axis=(1, 2), keepdims=True)
    return np.clip((img - mean) * f + mean, 0, 1)


def np_hsv_op(img, change):
    """Per pixel: RGB -> HSV (colorsys, float64), ``change(h, s, v)``, HSV -> RGB. Gray images pass."""
    if img.shape[0] == 1:
        return img.copy()
    out = np.empty_like(img)
    for i in range(img.shape[1]):
        for j in range(img.shape[2]):
            out[:, i, j] = colorsys.hsv_to_rgb(*change(*colorsys.rgb_to_hsv(*img[:, i, j])))
    return out


def np_saturation(img, f):
    """TF adjust_saturation: S scaled by f and clipped to [0, 1] in HSV."""
    return np_hsv_op(img, lambda h, s, v: (h, min(max(s * f, 0.0), 1.0), v))


def np_hue(img, delta):
    return np_hsv_op(img, lambda h, s, v: ((h + delta) % 1.0, s, v))


def np_kernel(sigma, size):
    t = np.arange(size) - size // 2
    k = np.exp(-(t**2) / (2 * sigma**2))
    return k / k.sum()


def np_blur(img, sigma, size, padding):
    """2-D correlation with the outer-product kernel, written as a plain loop over the taps."""
    k2 = np.outer(np_kernel(sigma, size), np_kernel(sigma, size))
    r = size // 2
    mode = "constant" if padding == "zeros" else "reflect"
    padded = np.pad(img, ((0, 0), (r, r), (r, r)), mode=mode)
    out = np.zeros_like(img)
    h, w = img.shape[1:]
    for di in range(size):
        for dj in range(size):
            out += k2[di, dj] * padded[:, di : di + h, dj : dj + w]
    return np.clip(out, 0, 1)


def np_jitter(img, p, b, mode):
    """Apply image b's jitter ops in its sampled order, clipping after each, as the official code."""
    if not bool(p.jitter[b]):
        return img
    for op in p.order[b].tolist():
        if op == 0:
            img = (
                np_brightness(img, p.brightness[b].item())
                if mode == "v2"
                else np_brightness_add(img, p.brightness[b].item())
            )
        elif op == 1:
            img = np_contrast(img, p.contrast[b].item())
        elif op == 2:
            img = np_saturation(img, p.saturation[b].item())
        elif img.shape[0] == 3:
            img = np_hue(img, p.hue[b].item())
    return img


# ---------------------------------------------------------------- colour ops


def test_grayscale_is_luma():
    x = rand_images()
    want = np.stack([np_gray(img) for img in x.double().numpy()])[:, None]
    np.testing.assert_allclose(rgb_to_grayscale(x).numpy(), want, atol=1e-6)
    assert rgb_to_grayscale(x[:, :1]) is not None and rgb_to_grayscale(x[:, :1]).shape == (4, 1, 5, 6)


@pytest.mark.parametrize(
    "op, ref, factors",
    [
        (adjust_brightness, np_brightness, [0.2, 0.7, 1.0, 1.8]),
        (adjust_brightness_additive, np_brightness_add, [-0.8, -0.1, 0.0, 0.6]),
        (adjust_contrast, np_contrast, [0.2, 0.9, 1.0, 1.8]),
        (adjust_saturation, np_saturation, [0.0, 0.5, 1.0, 1.8]),
    ],
)
def test_colour_ops_match_tf_formulas(op, ref, factors):
    x = rand_images(levels=8)  # ties between channels, gray pixels, zeros and ones
    x[0, :, 0] = 0.4  # a gray row in the first image
    f = torch.tensor(factors)
    want = np.stack([ref(img, fb) for img, fb in zip(x.double().numpy(), factors, strict=True)])
    np.testing.assert_allclose(op(x, f).numpy(), want, atol=1e-6)
    gray = x[:, :1]  # 1-channel images: contrast uses their one channel's mean, saturation leaves them alone
    want = np.stack([ref(img, fb) for img, fb in zip(gray.double().numpy(), factors, strict=True)])
    np.testing.assert_allclose(op(gray, f).numpy(), want, atol=1e-6)


def test_contrast_uses_each_channels_own_mean():
    # a flat image whose channels differ is fixed by TF's contrast (each channel is its own mean), while
    # torchvision's grayscale-mean form would pull all three towards one gray level
    x = torch.tensor([0.9, 0.5, 0.1]).view(1, 3, 1, 1).expand(1, 3, 4, 4).contiguous()
    assert torch.allclose(adjust_contrast(x, torch.tensor([0.3])), x)


def test_saturation_closed_form_saturates_strongly_coloured_pixels():
    # S = 0.8: a factor of 1.8 would give 1.44, clipped to 1, so the minimum channel goes to 0 exactly
    x = torch.tensor([1.0, 0.6, 0.2]).view(1, 3, 1, 1)
    y = adjust_saturation(x, torch.tensor([1.8]))
    torch.testing.assert_close(y.flatten(), torch.tensor([1.0, 0.5, 0.0]))


def test_hue_matches_colorsys():
    x = rand_images(b=6, h=4, w=4, levels=4)  # ties: equal channels, gray pixels, zeros and ones
    x[0] = 0.5  # an all-gray image
    delta = torch.tensor([0.3, -0.2, 0.0, 0.5, -0.5, 0.123])
    want = np.stack([np_hue(img, d) for img, d in zip(x.double().numpy(), delta.tolist(), strict=True)])
    np.testing.assert_allclose(adjust_hue(x, delta).numpy(), want, atol=2e-6)
    assert torch.equal(adjust_hue(x[:, :1], delta), x[:, :1])  # gray images have no hue


def test_hsv_pass_is_saturation_and_hue_in_either_order():
    x = rand_images(b=5, h=4, w=4, levels=6)
    f = torch.tensor([0.0, 0.4, 1.0, 1.5, 1.8])
    delta = torch.tensor([0.1, -0.3, 0.25, 0.0, -0.05])
    got = adjust_hsv(x, f, delta).numpy()
    for img, fb, d, g in zip(x.double().numpy(), f.tolist(), delta.tolist(), got, strict=True):
        np.testing.assert_allclose(g, np_hue(np_saturation(img, fb), d), atol=2e-6)
        np.testing.assert_allclose(g, np_saturation(np_hue(img, d), fb), atol=2e-6)
    torch.testing.assert_close(adjust_hsv(x, f), adjust_saturation(x, f), atol=2e-6, rtol=0)


def test_blend_covers_the_linear_ops_and_identity_is_exact():
    x = rand_images()
    f = torch.tensor([0.3, 0.8, 1.2, 1.7])
    one, zero = torch.ones(4), torch.zeros(4)
    torch.testing.assert_close(blend_(x.clone(), f, zero, zero), adjust_brightness(x, f))
    torch.testing.assert_close(blend_(x.clone(), one, zero, f - 1), adjust_brightness_additive(x, f - 1))
    torch.testing.assert_close(blend_(x.clone(), f, 1 - f, zero), adjust_contrast(x, f))
    assert torch.equal(blend_(x.clone(), one, zero, zero), x)


# ---------------------------------------------------------------- blur


def test_blur_kernel_size():
    assert [blur_kernel_size(s) for s in (224, 96, 32, 28, 19)] == [23, 9, 3, 3, 1]


@pytest.mark.parametrize("method", ["matmul", "conv"])
@pytest.mark.parametrize("padding", ["zeros", "reflect"])
def test_blur_matches_numpy_convolution(method, padding):
    x = rand_images(b=3, h=9, w=11)
    sigma = torch.tensor([0.1, 0.9, 2.0])
    got = gaussian_blur(x, sigma, 5, padding=padding, method=method)
    want = np.stack([np_blur(img, s, 5, padding) for img, s in zip(x.double().numpy(), sigma.tolist(), strict=True)])
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)


def test_blur_skipped_images_are_untouched():
    x = rand_images(b=4, h=12, w=12)
    apply = torch.tensor([True, False, True, False])
    for method in ("matmul", "conv"):
        y = gaussian_blur(x, torch.full((4,), 1.5), 7, apply=apply, method=method)
        assert torch.equal(y[~apply], x[~apply])
        assert not torch.allclose(y[apply], x[apply])


# ---------------------------------------------------------------- crop + flip


@pytest.mark.parametrize("side, atol", [(7, 1e-6), (32, 1e-6), (100, 2e-5)])
def test_whole_image_crop_is_identity_and_flip_mirrors(side, atol):
    # Exact up to float32 rounding of grid_sample's normalised coordinates (about side * 1e-7 pixels); a
    # half-pixel convention error would show up as ~0.1 here.
    x = rand_images(b=2, h=side, w=side)
    boxes = torch.tensor([[0.0, 0.0, side, side]] * 2)
    torch.testing.assert_close(resized_crop_flip(x, boxes, None, side), x, atol=atol, rtol=0)
    flipped = resized_crop_flip(x, boxes, torch.tensor([True, False]), side)
    torch.testing.assert_close(flipped[0], x[0].flip(-1), atol=atol, rtol=0)
    torch.testing.assert_close(flipped[1], x[1], atol=atol, rtol=0)


def test_crop_matches_pil_bilinear_resize():
    # PIL's bilinear filter with a (fractional) box is an independent implementation; for upsampling its
    # triangle filter equals bilinear interpolation between pixel centres, with the edges clamped.
    x = rand_images(b=3, c=1, h=10, w=12)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 12.0], [2.0, 3.0, 5.0, 6.0], [4.5, 1.25, 5.5, 4.0]])
    out = resized_crop_flip(x, boxes, None, 16)
    for b in range(3):
        top, left, h, w = boxes[b].tolist()
        pil = Image.fromarray(x[b, 0].numpy(), mode="F").resize(
            (16, 16), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h)
        )
        np.testing.assert_allclose(out[b, 0].numpy(), np.asarray(pil), atol=1e-5)


def test_crop_maps_box_onto_gradient():
    # On a linear ramp, bilinear sampling returns the sampled coordinate itself: output pixel u sits at
    # input coordinate left + (u + 0.5) * w / S - 0.5 (pixel centres), mirrored when flipped.
    h_img, w_img, size = 20, 30, 8
    cols = torch.arange(w_img, dtype=torch.float32).expand(h_img, w_img)
    rows = torch.arange(h_img, dtype=torch.float32).view(-1, 1).expand(h_img, w_img)
    x = torch.stack([cols, rows]).unsqueeze(0).repeat(2, 1, 1, 1)
    boxes = torch.tensor([[3.0, 5.0, 12.0, 16.0]] * 2)
    out = resized_crop_flip(x, boxes, torch.tensor([False, True]), size)
    u = torch.arange(size, dtype=torch.float32)
    want_cols = 5 + (u + 0.5) * 16 / size - 0.5
    want_rows = 3 + (u + 0.5) * 12 / size - 0.5
    torch.testing.assert_close(out[0, 0], want_cols.expand(size, size))
    torch.testing.assert_close(out[0, 1], want_rows.view(-1, 1).expand(size, size))
    torch.testing.assert_close(out[1, 0], want_cols.flip(0).expand(size, size))


# ---------------------------------------------------------------- random parameters


def test_parameter_distributions():
    aug = Augment(AugmentConfig(), out_size=64)
    p = aug.sample_params(8000, 64, 64, torch.Generator().manual_seed(1))
    assert abs(p.flip.float().mean() - 0.5) < 0.03
    assert abs(p.jitter.float().mean() - 0.8) < 0.03
    assert abs(p.grayscale.float().mean() - 0.2) < 0.03
    assert abs(p.blur.float().mean() - 0.5) < 0.03
    for v, lo, hi in [(p.brightness, 0.2, 1.8), (p.contrast, 0.2, 1.8), (p.saturation, 0.2, 1.8)]:
        assert v.min() >= lo and v.max() <= hi and abs(v.mean() - 1.0) < 0.03
    assert p.hue.min() >= -0.2 and p.hue.max() <= 0.2 and abs(p.hue.mean()) < 0.01
    assert p.sigma.min() >= 0.1 and p.sigma.max() <= 2.0 and abs(p.sigma.mean() - 1.05) < 0.03
    assert torch.equal(p.order.sort(1).values, torch.arange(4).expand(8000, 4))
    perms = {tuple(r) for r in p.order.tolist()}
    assert perms == set(itertools.permutations(range(4)))
    first_op = torch.bincount(p.order[:, 0], minlength=4).float() / 8000
    assert (abs(first_op - 0.25) < 0.03).all()


def test_strength_and_auto_fields():
    p = Augment(AugmentConfig(color_strength=0.5, brightness_mode="v1"), 32).sample_params(
        4000, 32, 32, torch.Generator().manual_seed(0)
    )
    assert p.brightness.min() >= -0.4 and p.brightness.max() <= 0.4 and p.brightness.min() < -0.35
    assert p.contrast.min() >= 0.6 and p.contrast.max() <= 1.4
    assert p.hue.abs().max() <= 0.1
    assert not p.blur.any()  # blur_prob None: off at 32 px
    assert Augment(AugmentConfig(), 33).cfg.blur_prob == 0.5
    assert Augment(AugmentConfig(blur_prob=0.25), 32).cfg.blur_prob == 0.25


# ---------------------------------------------------------------- the pipeline


def only(**on):
    return AugmentConfig(**{**OFF, **on})


@pytest.mark.parametrize("mode", ["v2", "v1"])
def test_jitter_applies_each_images_ops_in_its_order(mode):
    x = rand_images(b=160, h=3, w=3, seed=3)
    aug = Augment(only(color_jitter_prob=0.8, brightness_mode=mode), out_size=3)
    p = aug.sample_params(160, 3, 3, torch.Generator().manual_seed(5))
    assert len({tuple(r) for r in p.order[p.jitter].tolist()}) == 24  # every order is exercised
    got = aug.apply(x, p)
    want = np.stack([np_jitter(img, p, b, mode) for b, img in enumerate(x.double().numpy())])
    np.testing.assert_allclose(got.numpy(), want, atol=2e-5)
    assert torch.equal(got[~p.jitter], x[~p.jitter])  # skipped images are bit-exact


def test_every_op_order_fits_the_jitter_schedule():
    orders = torch.tensor(list(itertools.permutations(range(4))))  # op ids: brightness, contrast, saturation, hue
    slots = Augment._jitter_slots(orders, channels=3)  # (24, 4): the pass of each op
    for order, slot in zip(orders.tolist(), slots.tolist(), strict=True):
        passes = [slot[op] for op in order]
        assert all(SCHEDULE[p] == ("N" if op >= 2 else "L") for op, p in zip(order, passes, strict=True))
        for (op_a, a), (op_b, b) in itertools.pairwise(zip(order, passes, strict=True)):
            # in order; only saturation and hue that follow each other share a pass (they commute)
            assert a < b or (a == b and {op_a, op_b} == {2, 3})
    gray = Augment._jitter_slots(orders, channels=1)
    for order, slot in zip(orders.tolist(), gray.tolist(), strict=True):
        assert slot[2] == slot[3] == -1 and sorted(slot[:2]) == [0, 1]
        assert (slot[0] < slot[1]) == (order.index(0) < order.index(1))


@pytest.mark.parametrize("mode", ["v2", "v1"])
def test_jitter_with_strong_colours_matches_ops_one_by_one(mode):
    # strength 1.25 (factors in [0, 2]): saturation clips S, contrast and brightness clip values
    x = rand_images(b=96, h=4, w=4, seed=11)
    x[::3] = x[::3] ** 3  # darker, strongly coloured images
    aug = Augment(only(color_jitter_prob=0.9, color_strength=1.25, brightness_mode=mode), out_size=4)
    p = aug.sample_params(96, 4, 4, torch.Generator().manual_seed(12))
    got = aug.apply(x, p)
    want = np.stack([np_jitter(img, p, b, mode) for b, img in enumerate(x.double().numpy())])
    np.testing.assert_allclose(got.numpy(), want, atol=2e-5)
    assert torch.equal(got[~p.jitter], x[~p.jitter])


@pytest.mark.parametrize("channels", [3, 1])
def test_jitter_in_cpu_chunks_equals_one_pass_over_the_batch(monkeypatch, channels):
    x = rand_images(b=40, c=channels, h=6, w=6, seed=5)
    aug = Augment(only(color_jitter_prob=0.8), out_size=6)
    p = aug.sample_params(40, 6, 6, torch.Generator().manual_seed(6))
    whole = aug.apply(x, p)
    monkeypatch.setattr(augment_module, "CPU_CHUNK_ELEMENTS", 7 * channels * 36)  # chunks of 7 images
    assert torch.equal(aug.apply(x, p), whole)


def test_jitter_on_one_channel_images():
    x = rand_images(b=32, c=1, h=4, w=4, seed=4)
    aug = Augment(only(color_jitter_prob=1.0), out_size=4)
    p = aug.sample_params(32, 4, 4, torch.Generator().manual_seed(6))
    got = aug.apply(x, p)
    assert got.shape == (32, 3, 4, 4) and torch.equal(got[:, 0], got[:, 2])
    want = np.stack([np_jitter(img, p, b, "v2") for b, img in enumerate(x.double().numpy())])
    np.testing.assert_allclose(got[:, :1].numpy(), want, atol=2e-5)


def test_one_channel_matches_three_equal_channels():
    x = (torch.rand(16, 1, 12, 12, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    aug = Augment(AugmentConfig(blur_prob=0.5), out_size=10)
    p = aug.sample_params(16, 12, 12, torch.Generator().manual_seed(1))
    # luma weights sum to 0.9999, so a 3-channel gray image differs by about 1e-4 after saturation/grayscale
    torch.testing.assert_close(aug.apply(x, p), aug.apply(x.expand(-1, 3, -1, -1), p), atol=5e-4, rtol=0)


def test_grayscale_switch():
    x = rand_images(b=64, h=3, w=3)
    aug = Augment(only(grayscale_prob=0.5), out_size=3)
    p = aug.sample_params(64, 3, 3, torch.Generator().manual_seed(0))
    y = aug.apply(x, p)
    g = p.grayscale
    assert 10 < g.sum() < 54
    torch.testing.assert_close(y[g], rgb_to_grayscale(x[g]).expand(-1, 3, -1, -1))
    assert torch.equal(y[~g], x[~g])


def test_blur_switch_uses_ten_percent_kernel():
    x = rand_images(b=8, h=40, w=40)
    aug = Augment(only(blur_prob=0.5), out_size=40)
    p = aug.sample_params(8, 40, 40, torch.Generator().manual_seed(2))
    y = aug.apply(x, p)
    want = [
        np_blur(img, s, 5, "zeros") if blur else img
        for img, s, blur in zip(x.double().numpy(), p.sigma.tolist(), p.blur.tolist(), strict=True)
    ]
    np.testing.assert_allclose(y.numpy(), np.stack(want), atol=1e-5)


def test_batched_pipeline_equals_image_by_image():
    # every stage on, uint8 input, normalised output: a batch must equal its images done one at a time
    x = (torch.rand(12, 3, 24, 24, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    aug = Augment(
        AugmentConfig(blur_prob=0.5, grayscale_prob=0.5),
        out_size=20,
        mean=(0.4, 0.5, 0.6),
        std=(0.2, 0.25, 0.3),
    )
    p = aug.sample_params(12, 24, 24, torch.Generator().manual_seed(3))
    batch = aug.apply(x, p)
    for b in range(12):
        one = AugmentParams(**{f.name: getattr(p, f.name)[b : b + 1] for f in dataclasses.fields(p)})
        torch.testing.assert_close(aug.apply(x[b : b + 1], one), batch[b : b + 1], atol=1e-5, rtol=0)
    # and the stages themselves: crop + flip, jitter, grayscale, blur (3 taps at 20 px), normalise
    assert p.blur.any() and p.grayscale.any() and p.jitter.any() and p.flip.any()
    y = resized_crop_flip(x.float() / 255, p.boxes, p.flip, 20)
    y = torch.from_numpy(np.stack([np_jitter(img, p, b, "v2") for b, img in enumerate(y.double().numpy())]))
    y = torch.where(p.grayscale.view(-1, 1, 1, 1), rgb_to_grayscale(y), y)
    y = np.stack(
        [
            np_blur(img, s, 3, "zeros") if blur else img
            for img, s, blur in zip(y.numpy(), p.sigma.tolist(), p.blur.tolist(), strict=True)
        ]
    )
    y = (y - np.array([0.4, 0.5, 0.6]).reshape(3, 1, 1)) / np.array([0.2, 0.25, 0.3]).reshape(3, 1, 1)
    np.testing.assert_allclose(batch.numpy(), y, atol=1e-4)


def test_output_shape_dtype_device_and_determinism():
    x = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    aug = Augment(AugmentConfig(), out_size=24)
    v = aug(x, torch.Generator().manual_seed(0))
    assert v.shape == (6, 3, 24, 24) and v.dtype == torch.float32 and v.device == x.device and v.is_contiguous()
    assert torch.equal(v, aug(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(v, aug(x, torch.Generator().manual_seed(1)))
    v1, v2 = aug.two_views(x, torch.Generator().manual_seed(0))
    assert v1.shape == v2.shape == (6, 3, 24, 24) and not torch.equal(v1, v2)
    w1, w2 = aug.two_views(x, torch.Generator().manual_seed(0))
    assert torch.equal(v1, w1) and torch.equal(v2, w2)
    assert aug(x).shape == (6, 3, 24, 24)  # the global generator also works
    assert Augment(AugmentConfig(), 16)(torch.randint(0, 256, (2, 3, 20, 30), dtype=torch.uint8)).shape == (
        2,
        3,
        16,
        16,
    )


def test_everything_off_is_a_normalised_resize():
    x = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    cfg = dataclasses.replace(only(), normalize=True)
    same = Augment(cfg, out_size=8, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4))(x)
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.3, 0.4]).view(1, 3, 1, 1)
    torch.testing.assert_close(same, (x / 255 - mean) / std)
    up = Augment(cfg, out_size=12, mean=(0.0,), std=(1.0,))(x)
    for b in range(3):
        for c in range(3):
            pil = Image.fromarray(x[b, c].numpy().astype(np.float32), mode="F").resize(
                (12, 12), Image.Resampling.BILINEAR
            )
            np.testing.assert_allclose(up[b, c].numpy(), np.asarray(pil) / 255, atol=1e-5)
    assert torch.equal(Augment(only(), 8)(x), x / 255)  # normalize off: [0, 1]
    assert torch.equal(Augment(only(color_strength=0.0, color_jitter_prob=1.0), 8)(x), x / 255)


def test_finetune_config_is_crop_and_flip_only():
    cfg = finetune_augment_config(AugmentConfig(color_strength=0.5))
    assert (cfg.color_jitter_prob, cfg.grayscale_prob, cfg.blur_prob, cfg.crop, cfg.flip) == (
        0,
        0,
        0,
        True,
        True,
    )
    x = torch.full((16, 3, 40, 40), 77, dtype=torch.uint8)
    x[:, 1] = 150  # a flat colour survives any crop and flip, but not colour jitter
    v = Augment(cfg, 40, mean=(0.0,), std=(1.0,))(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(v, x.float() / 255)
    w = Augment(AugmentConfig(), 40, mean=(0.0,), std=(1.0,))(x, torch.Generator().manual_seed(0))
    assert not torch.allclose(w, x.float() / 255)


def test_config_errors():
    with pytest.raises(SimCLRError, match="brightness_mode"):
        Augment(AugmentConfig(brightness_mode="v3"), 32)
    with pytest.raises(SimCLRError, match="grayscale_prob"):
        Augment(AugmentConfig(grayscale_prob=1.5), 32)
    with pytest.raises(SimCLRError, match="crop_scale"):
        Augment(AugmentConfig(crop_scale=(0.5, 0.1)), 32)


# ---------------------------------------------------------------- evaluation preprocessing


def keys_cubic(t, a=-0.5):
    t = abs(t)
    if t <= 1:
        return (a + 2) * t**3 - (a + 3) * t**2 + 1
    return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a if t < 2 else 0.0


def tf2_bicubic_matrix(n_in, n_out):
    """TF2 tf.image.resize(method="bicubic"): Keys a = -0.5 on half-pixel centres, taps outside the image
    dropped and the rest renormalised (resize_bicubic with half_pixel_centers=True), as an (out, in) matrix."""
    m = np.zeros((n_out, n_in))
    for o in range(n_out):
        centre = (o + 0.5) * n_in / n_out - 0.5
        base = math.floor(centre)
        for i in range(base - 1, base + 3):
            if 0 <= i < n_in:
                m[o, i] = keys_cubic(centre - i)
        m[o] /= m[o].sum()
    return m


def test_eval_transform_centre_crop_resize_normalise():
    x = torch.randint(0, 256, (2, 1, 40, 48), dtype=torch.uint8)
    side = round(0.875 * 40)  # 35, offsets ((H - h) + 1) // 2 as the official code
    top, left = (40 - side + 1) // 2, (48 - side + 1) // 2
    out = EvalTransform(side, crop_fraction=0.875, mean=(0.5,), std=(0.25,))(x)
    crop = x[:, :, top : top + side, left : left + side].float() / 255
    torch.testing.assert_close(out, ((crop - 0.5) / 0.25).expand(-1, 3, -1, -1))
    # enlarging: exactly TF2's bicubic, then the clip to [0, 1]
    big = EvalTransform(50, crop_fraction=0.875, normalize=False)(x)
    rows, cols = tf2_bicubic_matrix(side, 50), tf2_bicubic_matrix(side, 50)
    for b in range(2):
        want = np.clip(rows @ crop[b, 0].double().numpy() @ cols.T, 0, 1)
        np.testing.assert_allclose(big[b, 0].numpy(), want, atol=1e-5)
    assert big.min() >= 0 and big.max() <= 1
    # shrinking antialiases like PIL's bicubic filter (also Keys a = -0.5) on the cropped image
    small = EvalTransform(20, crop_fraction=0.875, normalize=False)(x)
    for b in range(2):
        cropped = np.ascontiguousarray(crop[b, 0].numpy())
        pil = Image.fromarray(cropped, mode="F").resize((20, 20), Image.Resampling.BICUBIC)
        np.testing.assert_allclose(small[b, 0].numpy(), np.clip(np.asarray(pil), 0, 1), atol=1e-5)
    y = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(EvalTransform(32, None, normalize=False)(y), y / 255)  # None: no crop at 32 px
    assert EvalTransform(64, None).crop_fraction == 0.875


@pytest.mark.parametrize("height, width, side", [(256, 256, 224), (100, 120, 88), (375, 500, 328), (9, 9, 8)])
def test_eval_crop_is_the_official_centre_crop(height, width, side):
    # crop side rint(0.875 * shorter side) (87.5 -> 88: half to even), offset ((H - h) + 1) // 2
    assert eval_crop_side(min(height, width), 0.875) == side
    x = torch.arange(height * width, dtype=torch.float32).view(1, 1, height, width) / (height * width)
    out = EvalTransform(side, crop_fraction=0.875, normalize=False)(x)
    top, left = (height - side + 1) // 2, (width - side + 1) // 2
    assert torch.equal(out[0, 0], x[0, 0, top : top + side, left : left + side])


def test_augment_moves_with_module_to():
    """Regression: Augment once shadowed nn.Module._apply, so `.to(device)` raised TypeError."""
    aug = Augment(AugmentConfig(), out_size=8).to("cpu")
    assert aug(torch.zeros(2, 1, 8, 8, dtype=torch.uint8)).shape == (2, 3, 8, 8)
