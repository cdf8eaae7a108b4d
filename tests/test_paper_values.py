"""The papers' numbers, pinned: the config defaults, every preset's method settings, and what is really used.

Each value below has its source beside it: "v1 A" is appendix A of SimCLR v1 (arXiv 2002.05709), "v1 B.9"
its CIFAR-10 appendix, "v2 2" section 2 of SimCLRv2 (arXiv 2006.10029), "SD x.y" a section of
``shared/SPEC-DETAILS.md`` (the official code). A value that is the project's own choice says so and why.
Changing a preset, a default, or the augmentation's sampling ranges fails one of these tests: update the
table only together with the source that justifies the new value.

Besides the declared values, the tests check what they turn into: the ranges ``Augment`` actually samples
(the bounds must be reached, not just respected, so a narrowed range fails), the peak learning rate and the
optimizer's groups that ``build_optimizer`` makes, and the evaluation crop.
"""

from __future__ import annotations

import math
import re
from importlib import resources

import pytest
import torch
from torch import nn

from simclr.augment import Augment, EvalTransform
from simclr.config import Config, available_presets, load_config
from simclr.optim import LARS, build_optimizer, scaled_lr

# ---- the papers' values -------------------------------------------------------------------------------------------

# The configuration's defaults: SimCLR v1 on ImageNet, except where noted.
DEFAULTS = {
    "augment.crop": (True, "v1 A: random crop and resize"),
    "augment.crop_sampler": ("tf", "SD 1.2: TF's sample_distorted_bounding_box, as the official code"),
    "augment.crop_scale": ((0.08, 1.0), "v1 A: area fraction of the Inception crop"),
    "augment.crop_ratio": ((3 / 4, 4 / 3), "v1 A: aspect ratio range"),
    "augment.flip": (True, "v1 A: horizontal flip, p = 0.5"),
    "augment.color_strength": (1.0, "v1 A: s = 1 on ImageNet"),
    "augment.color_jitter_prob": (0.8, "v1 A: colour jitter applied with p = 0.8"),
    "augment.grayscale_prob": (0.2, "v1 A: random grayscale with p = 0.2"),
    "augment.brightness_mode": ("v2", "SD 1.3: the released code's multiplicative brightness"),
    "augment.blur_prob": (None, "auto: 0.5 above 32 px (v1 A), none at 32 px (v1 B.9)"),
    "augment.blur_sigma": ((0.1, 2.0), "v1 A: sigma uniform in [0.1, 2.0]"),
    "augment.eval_crop_fraction": (None, "auto: 0.875 above 32 px (SD 1.7 CROP_PROPORTION), none at 32 px"),
    "model.head_layers": (2, "v1 2.1: g is an MLP with one hidden layer"),
    "model.head_hidden_dim": (None, "SD 3.1: hidden width = the encoder's output width"),
    "model.projection_dim": (128, "v1 B.4: 128-d z"),
    "loss.temperature": (0.5, "v1 B.9: CIFAR-10's tau (the ImageNet presets set 0.1, v1 Table 5)"),
    "loss.memory_size": (0, "v1 has no memory; v2 2 adds one"),
    "loss.memory_momentum": (0.999, "v2 2: EMA decay 0.999 (as MoCo)"),
    "optim.name": ("lars", "v1 2.3: LARS"),
    "optim.base_lr": (0.3, "v1 B.1: lr = 0.3 x B / 256"),
    "optim.lr_scaling": ("linear", "v1 B.1"),
    "optim.weight_decay": (1e-6, "v1 2.3 / B.1"),
    "optim.momentum": (0.9, "SD 5.1: LARS momentum 0.9"),
    "optim.trust_coefficient": (0.001, "SD 5.1: LARS eta = 0.001"),
    "optim.nesterov": (False, "SD 5.1: classic momentum"),
    "optim.warmup_epochs": (10.0, "v1 B.1: 10 warmup epochs"),
    "optim.schedule": ("cosine", "v1 B.1: cosine decay without restarts"),
    "train.epochs": (100, "v1 6: the ablations' 100 epochs"),
    "monitor.knn_k": (200, "SPEC 8: weighted kNN, k = 200 (InstDisc)"),
    "monitor.knn_temperature": (0.1, "SPEC 8: weights exp(sim / 0.1)"),
}

# The augmentation every paper preset keeps from the defaults (v1 A; unchanged on CIFAR-10, v1 B.9).
PAPER_AUGMENT = {
    "augment.crop_sampler": ("tf", "SD 1.2: the official crop sampler"),
    "augment.crop_scale": ((0.08, 1.0), "v1 A (B.9: the same crop on CIFAR-10)"),
    "augment.crop_ratio": ((3 / 4, 4 / 3), "v1 A"),
    "augment.color_jitter_prob": (0.8, "v1 A"),
    "augment.grayscale_prob": (0.2, "v1 A"),
    "augment.blur_sigma": ((0.1, 2.0), "v1 A"),
}
LARS_CONSTANTS = {
    "optim.name": ("lars", "v1 2.3"),
    "optim.momentum": (0.9, "SD 5.1"),
    "optim.trust_coefficient": (0.001, "SD 5.1"),
    "optim.schedule": ("cosine", "v1 B.1"),
}
# CPU demos on 28 px grayscale Fashion-MNIST: deliberate deviations, each explained in the preset's comment
# (the phrase on the right must be found there).
FASHION_DEVIATIONS = {
    "augment.crop_scale": ((0.2, 1.0), "crop area from 0.2"),
    "augment.color_strength": (0.5, "colour strength 0.5"),
    "augment.blur_prob": (0.0, "no blur"),
    "model.arch": ("resnet18", "resnet-18"),
    "model.width_multiplier": (0.5, "width 0.5"),
    "model.cifar_stem": (False, "imagenet stem"),
    "model.input_size": (40, "40 px"),
    "loss.temperature": (0.1, "tau 0.1"),
    "train.epochs": (5, "5 epochs"),
}

PRESETS = {
    "imagenet-v1": {
        **PAPER_AUGMENT,
        **LARS_CONSTANTS,
        "augment.color_strength": (1.0, "v1 A: s = 1"),
        "augment.blur_prob": (0.5, "v1 A: blur with p = 0.5 on ImageNet"),
        "augment.brightness_mode": ("v1", "SD 1.3: the v1 code and the v1 paper's pseudocode add brightness"),
        "model.arch": ("resnet50", "v1 2.3: ResNet-50"),
        "model.input_size": (224, "v1 A: 224 x 224 views"),
        "model.cifar_stem": (False, "v1: ImageNet stem"),
        "model.head_layers": (2, "v1 2.1: one hidden layer"),
        "model.projection_dim": (128, "v1 B.4"),
        "loss.temperature": (0.1, "v1 Table 5: tau 0.1 is best"),
        "loss.memory_size": (0, "v1: no memory"),
        "optim.base_lr": (0.3, "v1 B.1: 0.3 x B / 256"),
        "optim.lr_scaling": ("linear", "v1 B.1"),
        "optim.weight_decay": (1e-6, "v1 2.3"),
        "optim.warmup_epochs": (10.0, "v1 B.1"),
        "train.batch_size": (4096, "v1 2.3"),
        "train.epochs": (100, "v1 6: ablations (1000 for the final models)"),
        "peak_lr": (4.8, "v1 2.3: 4.8 = 0.3 x 4096 / 256"),
    },
    "imagenet-v2": {
        **PAPER_AUGMENT,
        **LARS_CONSTANTS,
        "augment.color_strength": (1.0, "v1 A"),
        "augment.blur_prob": (0.5, "v1 A"),
        "augment.brightness_mode": ("v2", "SD 1.3"),
        "model.arch": ("resnet50", "v2 Table 1: R50 1x"),
        "model.input_size": (224, "v1 A"),
        "model.cifar_stem": (False, "ImageNet stem"),
        "model.head_layers": (3, "v2 2: a 3-layer projection head"),
        "model.projection_dim": (128, "SD 3.1"),
        "loss.temperature": (0.1, "SD 5.3: the README command's tau 0.1"),
        "loss.memory_size": (65536, "v2 2: memory buffer of 64K"),
        "loss.memory_momentum": (0.999, "v2 2: EMA decay 0.999"),
        "optim.base_lr": (0.1, "SD 5.3 (issue #77): lr = 0.1 x sqrt(B)"),
        "optim.lr_scaling": ("sqrt", "SD 5.3"),
        "optim.weight_decay": (1e-4, "SD 5.3: wd 1e-4"),
        "optim.warmup_epochs": (40.0, "SD 5.3: warmup 5 % of 800 epochs"),
        "train.batch_size": (4096, "SD 5.3"),
        "train.epochs": (800, "SD 5.3: 800 epochs"),
        "peak_lr": (6.4, "SD 5.3: 6.4 = 0.1 x sqrt(4096)"),
    },
    "cifar10": {
        **PAPER_AUGMENT,
        **LARS_CONSTANTS,
        "augment.color_strength": (0.5, "v1 B.9: s = 0.5 on CIFAR-10"),
        "augment.blur_prob": (0.0, "v1 B.9: no blur on CIFAR-10"),
        "model.arch": ("resnet18", "official README's single-GPU CIFAR-10 recipe: ResNet-18"),
        "model.cifar_stem": (True, "v1 B.9: 3x3 stride-1 stem, no max-pool"),
        "model.head_layers": (2, "v1 2.1"),
        "loss.temperature": (0.5, "v1 B.9: tau 0.5 is best beyond 300 epochs"),
        "loss.memory_size": (0, "v1"),
        "optim.base_lr": (1.0, "SD 5.3 README CIFAR command: lr 1.0, linear scaling"),
        "optim.lr_scaling": ("linear", "SD 5.3"),
        "optim.weight_decay": (1e-4, "SD 5.3 README CIFAR command: wd 1e-4"),
        "optim.warmup_epochs": (10.0, "v1 B.1"),
        "train.batch_size": (512, "SD 5.3 README CIFAR command: batch 512"),
        "train.epochs": (800, "project choice (the README command trains 1000; B.9 reports 100-1000)"),
        "peak_lr": (2.0, "1.0 x 512 / 256"),
    },
    "stl10": {
        **PAPER_AUGMENT,
        **LARS_CONSTANTS,
        "augment.color_strength": (1.0, "v1 A"),
        "augment.blur_prob": (0.5, "v1 A (96 px views)"),
        "model.arch": ("resnet18", "project choice: not a dataset of the papers"),
        "model.cifar_stem": (False, "project choice: 96 px images"),
        "model.head_layers": (2, "v1 2.1"),
        "loss.temperature": (0.2, "project choice: between v1 Table 5's 0.1 and B.9's 0.5"),
        "optim.base_lr": (0.3, "v1 B.1"),
        "optim.lr_scaling": ("linear", "v1 B.1"),
        "optim.weight_decay": (1e-6, "v1 2.3"),
        "optim.warmup_epochs": (10.0, "v1 B.1"),
        "train.batch_size": (512, "project choice"),
        "train.epochs": (400, "project choice"),
        "peak_lr": (0.6, "0.3 x 512 / 256"),
    },
    "fashion-mnist": {
        **{k: v for k, v in PAPER_AUGMENT.items() if k != "augment.crop_scale"},
        **LARS_CONSTANTS,
        **{k: (v, f"CPU demo: {why}") for k, (v, why) in FASHION_DEVIATIONS.items()},
        "model.head_layers": (3, "v2 2: 3-layer head, fine-tuning from its first layer"),
        "optim.base_lr": (1.0, "CPU demo (tuned; README table): 1.0 x 256 / 256"),
        "optim.lr_scaling": ("linear", "v1 B.1"),
        "optim.weight_decay": (1e-6, "v1 2.3"),
        "optim.warmup_epochs": (1.0, "CPU demo: 1 of 5 epochs"),
        "train.batch_size": (256, "CPU demo"),
        "peak_lr": (1.0, "1.0 x 256 / 256"),
    },
    "fashion-mnist-v2": {
        **{k: v for k, v in PAPER_AUGMENT.items() if k != "augment.crop_scale"},
        **LARS_CONSTANTS,
        **{k: (v, f"CPU demo: {why}") for k, (v, why) in FASHION_DEVIATIONS.items()},
        "model.head_layers": (3, "v2 2"),
        "optim.base_lr": (0.075, "v1 B.1 / v2: square-root scaling, 0.075 x sqrt(B)"),
        "optim.lr_scaling": ("sqrt", "v2 (SD 5.3)"),
        "optim.weight_decay": (1e-6, "v1 2.3"),
        "optim.warmup_epochs": (1.0, "CPU demo"),
        "train.batch_size": (256, "CPU demo"),
        "peak_lr": (1.2, "0.075 x sqrt(256)"),
    },
}

# Side of the stored images and of the views, per preset (for the sampled ranges below).
SIDES = {
    "imagenet-v1": (256, 224),
    "imagenet-v2": (256, 224),
    "cifar10": (32, 32),
    "stl10": (96, 96),
    "fashion-mnist": (28, 40),
    "fashion-mnist-v2": (28, 40),
}


def value(cfg: Config, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def same(got, want) -> bool:
    if isinstance(want, tuple):
        return isinstance(got, tuple) and len(got) == len(want) and all(map(same, got, want))
    if isinstance(want, float) and not isinstance(got, bool):
        return isinstance(got, int | float) and math.isclose(got, want, rel_tol=1e-12)
    return type(got) is type(want) and got == want


# ---- declared values ----------------------------------------------------------------------------------------------


def test_the_config_defaults_are_the_papers():
    cfg = Config()
    wrong = {k: (value(cfg, k), want, why) for k, (want, why) in DEFAULTS.items() if not same(value(cfg, k), want)}
    assert not wrong, wrong


def test_every_preset_has_a_table_of_paper_values():
    assert set(available_presets()) == set(PRESETS) == set(SIDES)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_method_settings_are_the_papers(preset):
    cfg = load_config(preset=preset)
    table = {k: v for k, v in PRESETS[preset].items() if k != "peak_lr"}
    wrong = {k: (value(cfg, k), want, why) for k, (want, why) in table.items() if not same(value(cfg, k), want)}
    assert not wrong, wrong


@pytest.mark.parametrize("preset", ["fashion-mnist", "fashion-mnist-v2"])
def test_demo_presets_explain_their_deviations(preset):
    """Every deviation from the papers' augmentation and model is explained in the preset file's comment."""
    text = (resources.files("simclr") / "presets" / f"{preset}.yaml").read_text()
    comment = " ".join(line.lstrip("# ") for line in text.splitlines() if line.startswith("#")).lower()
    comment = re.sub(r"\s+", " ", comment)
    missing = [f"{k}: {phrase!r}" for k, (_, phrase) in FASHION_DEVIATIONS.items() if phrase not in comment]
    assert not missing, missing


# ---- what the values turn into ------------------------------------------------------------------------------------


def test_lr_scaling_rules():
    """v1 B.1: linear 0.3 x B / 256 and square-root 0.075 x sqrt(B) both give 4.8 at B = 4096; v2: 0.1 x sqrt(B)."""
    assert scaled_lr(0.3, 4096, "linear") == pytest.approx(4.8, rel=1e-12)
    assert scaled_lr(0.075, 4096, "sqrt") == pytest.approx(4.8, rel=1e-12)
    assert scaled_lr(0.1, 4096, "sqrt") == pytest.approx(6.4, rel=1e-12)
    assert scaled_lr(0.5, 1024, "none") == 0.5


def _tiny_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_optimizer_is_lars_with_the_papers_peak_lr_and_groups(preset):
    """SPEC 6: LARS, eta and momentum as configured; BN parameters and biases neither decayed nor adapted."""
    cfg = load_config(preset=preset)
    net = _tiny_net()
    opt, peak = build_optimizer(net, cfg.optim, cfg.train.batch_size)
    assert peak == pytest.approx(PRESETS[preset]["peak_lr"][0], rel=1e-12)
    assert isinstance(opt, LARS)
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    for p in net.parameters():
        g = by_param[id(p)]
        assert g["eta"] == 0.001 and g["momentum"] == 0.9
        if p.ndim > 1:
            assert g["weight_decay"] == PRESETS[preset]["optim.weight_decay"][0] and not g["lars_exclude"]
        else:
            assert g["weight_decay"] == 0.0 and g["lars_exclude"]


def _check_uniform(name, samples: torch.Tensor, low: float, high: float) -> None:
    """Inside [low, high] and reaching both ends (20,000 draws come within 0.1 % of each end)."""
    tol = 2e-3 * (high - low)
    assert samples.min() >= low - 1e-6 and samples.max() <= high + 1e-6, (name, samples.min(), samples.max())
    assert samples.min() < low + tol and samples.max() > high - tol, (name, samples.min(), samples.max(), low, high)


def _check_coin(name, flags: torch.Tensor, p: float) -> None:
    assert abs(flags.float().mean().item() - p) < 0.015, (name, flags.float().mean().item(), p)


def check_sampled_ranges(cfg: Config, stored: int, view: int, s: float, blur: float, crop_min: float) -> None:
    """The parameters ``Augment`` draws for 20,000 images match the paper's ranges (v1 A, SD 1.2-1.4)."""
    aug = Augment(cfg.augment, view)
    p = aug.sample_params(20_000, stored, stored, torch.Generator().manual_seed(0))
    if cfg.augment.brightness_mode == "v2":
        _check_uniform("brightness", p.brightness, max(0.0, 1 - 0.8 * s), 1 + 0.8 * s)
    else:
        _check_uniform("brightness", p.brightness, -0.8 * s, 0.8 * s)
    _check_uniform("contrast", p.contrast, max(0.0, 1 - 0.8 * s), 1 + 0.8 * s)
    _check_uniform("saturation", p.saturation, max(0.0, 1 - 0.8 * s), 1 + 0.8 * s)
    _check_uniform("hue", p.hue, -0.2 * s, 0.2 * s)
    _check_uniform("sigma", p.sigma, 0.1, 2.0)
    _check_coin("jitter", p.jitter, 0.8)
    _check_coin("grayscale", p.grayscale, 0.2)
    _check_coin("blur", p.blur, blur)
    _check_coin("flip", p.flip, 0.5)
    assert sorted({tuple(r) for r in p.order.tolist()}) == sorted(
        {(a, b, c, d) for a in range(4) for b in range(4) for c in range(4) for d in range(4) if len({a, b, c, d}) == 4}
    )  # all 24 orders of the four jitter ops (SD 1.3: random order per image)
    # Crop (v1 A, SD 1.2): area from crop_min (the TF sampler's 10 % coverage rule lifts 0.08 to 0.1) to the
    # whole image, aspect ratio 3/4 to 4/3; whole pixels, so a small image gets some rounding slack.
    top, left, h, w = p.boxes.unbind(1)
    area, ratio = h * w / stored**2, w / h
    slack = 0.01 + 1.5 / stored
    assert crop_min - slack <= area.min() <= max(crop_min, 0.1) + slack, (area.min(), crop_min)
    assert area.max() >= 0.95
    ratio_slack = 0.01 + 1.0 / (stored * math.sqrt(crop_min))
    assert 3 / 4 - ratio_slack <= ratio.min() <= 3 / 4 + ratio_slack, ratio.min()
    assert 4 / 3 - ratio_slack <= ratio.max() <= 4 / 3 + ratio_slack, ratio.max()
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= stored).all() and (left + w <= stored).all()


def test_the_default_augmentation_samples_the_papers_ranges():
    check_sampled_ranges(Config(), 256, 224, s=1.0, blur=0.5, crop_min=0.08)
    check_sampled_ranges(Config(), 32, 32, s=1.0, blur=0.0, crop_min=0.08)  # no blur at 32 px (v1 B.9)
    half = load_config(overrides=["augment.color_strength=0.5", "augment.brightness_mode=v1"])
    check_sampled_ranges(half, 64, 64, s=0.5, blur=0.5, crop_min=0.08)  # v1 brightness: additive, +-0.8 s


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_augmentation_samples_the_papers_ranges(preset):
    table = PRESETS[preset]
    stored, view = SIDES[preset]
    s = table["augment.color_strength"][0]
    blur = table["augment.blur_prob"][0]
    crop_min = table.get("augment.crop_scale", PAPER_AUGMENT["augment.crop_scale"])[0][0]
    check_sampled_ranges(load_config(preset=preset), stored, view, s=s, blur=blur, crop_min=crop_min)


def test_evaluation_crop_keeps_87_5_percent_above_32_px():
    """SD 1.7: centre crop of 0.875 of the shorter side (CROP_PROPORTION); CIFAR's 32 px are not cropped."""
    assert EvalTransform(224).crop_fraction == 0.875 and EvalTransform(96).crop_fraction == 0.875
    assert EvalTransform(32).crop_fraction == 1.0
    x = torch.zeros(1, 1, 64, 64, dtype=torch.uint8)
    x[..., 4:60, 4:60] = 255  # a 56 px square = 0.875 x 64: exactly the crop
    out = EvalTransform(56, normalize=False)(x)
    assert torch.equal(out, torch.ones(1, 3, 56, 56))
