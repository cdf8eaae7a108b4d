"""Batches of images of different sizes (issue 17: crops from the whole image, not a pre-cut square).

A canvas holds each image top-left aligned; ``sizes`` says where each one ends. Every view must come from its
own image only (never the canvas padding), equal what the same crop of that image alone gives, and reach the
image's periphery; the evaluation crop of each image is its own official centre crop.
"""

from __future__ import annotations

import torch

from simclr.augment import Augment, EvalTransform
from simclr.augment_ops import resized_crop_flip
from simclr.config import AugmentConfig

SIZES = [(30, 40), (40, 30), (25, 25), (40, 53)]


def canvas(images: list[torch.Tensor], fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    hc, wc = max(i.shape[1] for i in images), max(i.shape[2] for i in images)
    out = torch.full((len(images), 3, hc, wc), fill, dtype=torch.uint8)
    for k, img in enumerate(images):
        out[k, :, : img.shape[1], : img.shape[2]] = img
    return out, torch.tensor([list(i.shape[1:]) for i in images])


def random_images(seed: int = 0, high: int = 100) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, high, (3, h, w), generator=g, dtype=torch.uint8) for h, w in SIZES]


def test_each_view_equals_the_same_crop_of_its_image_alone():
    images = random_images()
    x, sizes = canvas(images, fill=255)
    g = torch.Generator().manual_seed(1)
    boxes = torch.stack([torch.tensor([h * 0.3 * torch.rand(1, generator=g).item(), w * 0.2, h * 0.7, w * 0.8])
                         for h, w in SIZES])  # fmt: skip
    boxes[2] = torch.tensor([0.0, 0.0, 25.0, 25.0])  # a whole image, upsampled: touches every border
    flip = torch.tensor([False, True, True, False])
    ragged = resized_crop_flip(x.float(), boxes, flip, 48, sizes)
    for k, img in enumerate(images):
        alone = resized_crop_flip(img[None].float(), boxes[k : k + 1], flip[k : k + 1], 48)
        torch.testing.assert_close(ragged[k : k + 1], alone, rtol=0, atol=2e-3)


def test_views_never_read_the_canvas_padding():
    cfg = AugmentConfig(color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, normalize=False)
    aug = Augment(cfg, 32)
    x, sizes = canvas(random_images(high=100), fill=255)  # image pixels < 100, padding 255
    views = aug(x.repeat(64, 1, 1, 1), torch.Generator().manual_seed(0), sizes.repeat(64, 1))
    assert views.max() <= 100 / 255 + 1e-6


def test_views_reach_the_periphery_of_non_square_images():
    # a 40 x 120 image (the centre square would be 40 x 40) with a marked left edge and a marked top row
    img = torch.full((3, 40, 120), 50, dtype=torch.uint8)
    img[0, :, :2] = 250  # red left border: outside any centre square
    img[1, :2, :] = 250  # green top border
    x, sizes = canvas([img] * 256, fill=0)
    aug = Augment(AugmentConfig(color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, normalize=False), 24)
    views = aug(x, torch.Generator().manual_seed(0), sizes)
    reds = (views[:, 0] > 0.5).flatten(1).any(1)
    greens = (views[:, 1] > 0.5).flatten(1).any(1)
    assert reds.sum() >= 3 and greens.sum() >= 3  # a centre square of the image could show neither
    # and the views cover the whole width: their centres spread over the image, not the middle third
    boxes = aug.sample_params(256, sizes[:, 0], sizes[:, 1], torch.Generator().manual_seed(0)).boxes
    centres = boxes[:, 1] + boxes[:, 3] / 2
    assert centres.min() < 30 and centres.max() > 90
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 1] + boxes[:, 3] <= 120).all()


def test_two_views_of_a_ragged_batch_are_two_independent_views_of_each_image():
    aug = Augment(AugmentConfig(), 16)
    x, sizes = canvas(random_images(), fill=0)
    v1, v2 = aug.two_views(x, torch.Generator().manual_seed(0), sizes)
    assert v1.shape == v2.shape == (4, 3, 16, 16) and not torch.equal(v1, v2)


def test_evaluation_crop_of_each_image_is_its_own_official_centre_crop():
    images = random_images() + [torch.randint(0, 255, (3, 256, 341), dtype=torch.uint8)]
    x, sizes = canvas(images, fill=7)
    t = EvalTransform(24, crop_fraction=0.875, normalize=False)
    ragged = t(x, sizes)
    for k, img in enumerate(images):
        torch.testing.assert_close(ragged[k : k + 1], t(img[None]), rtol=0, atol=1e-6)
    # the 256 x 341 image: its 224 px centre crop, taken at the official offset ((H - h) + 1) // 2
    t224 = EvalTransform(224, crop_fraction=0.875, normalize=False)
    x, sizes = canvas([images[-1], images[0]], fill=7)
    out = t224(x, sizes)[0]
    top, left = (256 - 224 + 1) // 2, (341 - 224 + 1) // 2
    torch.testing.assert_close(out, images[-1][:, top : top + 224, left : left + 224].float() / 255)
