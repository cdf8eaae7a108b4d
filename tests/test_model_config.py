"""``build_model`` honours every ``model.*`` key: a key added to ``ModelConfig`` without a check here fails.

Each check builds the model with the key changed from its default and looks at what changed (layers, widths,
the stem, the head's depth), so a key that is parsed but never reaches the network is caught.
"""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np
import pytest
import torch
from torch import nn

from simclr.checkpoint import load_pretrained
from simclr.config import ModelConfig, load_config
from simclr.engine import pretrain
from simclr.models.build import build_model
from simclr.models.layers import SKConv2d
from simclr.models.resnet import BasicBlock, Bottleneck

BASE = ModelConfig(arch="resnet18", width_multiplier=0.125, projection_dim=16)


def blocks(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.head.modules() if isinstance(m, nn.Linear)]


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.encoder.modules() if isinstance(m, nn.Conv2d))


def forward(model: nn.Module, side: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return model.eval()(torch.randn(2, 3, side, side))


def check_arch(tmp_path):
    r18, r34 = build_model(BASE, 32), build_model(replace(BASE, arch="resnet34"), 32)
    assert blocks(r18, BasicBlock) == 8 and blocks(r34, BasicBlock) == 16  # 2-2-2-2 and 3-4-6-3
    r50 = build_model(replace(BASE, arch="resnet50"), 32)
    assert blocks(r50, Bottleneck) == 16 and r50.encoder.out_dim == 2048 * 0.125 == forward(r50)[0].shape[1]


def check_width_multiplier(tmp_path):
    for width in (0.125, 0.25):
        model = build_model(replace(BASE, width_multiplier=width), 32)
        assert first_conv(model).out_channels == 64 * width  # the stem too (SPEC 3)
        assert model.encoder.out_dim == 512 * width == forward(model)[0].shape[1]


def check_sk_ratio(tmp_path):
    plain = build_model(replace(BASE, arch="resnet50"), 32)
    sk = build_model(replace(BASE, arch="resnet50", sk_ratio=0.0625), 32)
    assert blocks(plain, SKConv2d) == 0 and blocks(sk, SKConv2d) == 16  # every bottleneck's 3x3 (v2 2)


def check_cifar_stem(tmp_path):
    cifar = build_model(replace(BASE, cifar_stem=True), 96)
    imagenet = build_model(replace(BASE, cifar_stem=False), 32)
    assert (first_conv(cifar).kernel_size, first_conv(cifar).stride) == ((3, 3), (1, 1))  # v1 B.9
    assert (first_conv(imagenet).kernel_size, first_conv(imagenet).stride) == ((7, 7), (2, 2))
    assert not any(isinstance(m, nn.MaxPool2d) for m in cifar.encoder.modules())
    # None (the default): the CIFAR stem up to 32 px (the official rule), the ImageNet stem above
    assert first_conv(build_model(BASE, 32)).kernel_size == (3, 3)
    assert first_conv(build_model(BASE, 33)).kernel_size == (7, 7)


def check_cifar_stem_max_side(tmp_path):
    wide = replace(BASE, cifar_stem_max_side=64)  # what runs saved before the official rule meant
    assert first_conv(build_model(wide, 64)).kernel_size == (3, 3)
    assert first_conv(build_model(wide, 65)).kernel_size == (7, 7)
    assert first_conv(build_model(replace(wide, cifar_stem=False), 48)).kernel_size == (7, 7)  # explicit wins


def check_first_block_projection(tmp_path):
    official = build_model(BASE, 32)  # True: the first block of every group projects its shortcut
    shape_only = build_model(replace(BASE, first_block_projection=False), 32)
    assert official.encoder.block_group1[0].shortcut is not None
    assert shape_only.encoder.block_group1[0].shortcut is None  # group 1 keeps 64w channels and stride 1
    assert official.encoder.block_group1[1].shortcut is None  # only the first block
    for g in (2, 3, 4):  # shape changes: projected either way
        assert getattr(shape_only.encoder, f"block_group{g}")[0].shortcut is not None


def check_input_size(tmp_path):
    """Honoured by the engine: views of that side, the model built for it (stem chosen by it) and saved."""
    rng = np.random.default_rng(0)
    data = tmp_path / "tiny.npz"
    np.savez(data, images=rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8))
    cfg = load_config(
        overrides=[
            "data.dataset=npz", f"data.path={data}", "train.device=cpu", "model.width_multiplier=0.0625",
            "model.projection_dim=8", "train.batch_size=8", "train.epochs=1", "train.max_steps=1",
            "monitor.knn=false", "model.input_size=72",
        ]
    )  # fmt: skip
    pretrain(cfg, tmp_path / "run")
    pre = load_pretrained(tmp_path / "run")
    assert pre.image_size == 72  # 16 px images, 72 px views
    assert first_conv(pre.model).kernel_size == (7, 7)  # 72 > 32: the ImageNet stem, not 16 px's CIFAR stem


def check_head_layers(tmp_path):
    for layers in (2, 3):  # v1 and v2
        model = build_model(replace(BASE, head_layers=layers), 32)
        assert len(linears(model)) == layers == model.head.num_layers
        relus = sum(isinstance(m, nn.ReLU) for m in model.head.modules())
        assert relus == layers - 1  # the last layer has none
    assert build_model(replace(BASE, head_layers=0), 32).head.out_dim == 64  # no head: z = h


def check_head_hidden_dim(tmp_path):
    assert [m.out_features for m in linears(build_model(BASE, 32))] == [64, 16]  # default: the encoder's width
    model = build_model(replace(BASE, head_layers=3, head_hidden_dim=48), 32)
    assert [m.out_features for m in linears(model)] == [48, 48, 16]
    assert model.features(torch.randn(2, 3, 32, 32), head_layers=1).shape == (2, 48)


def check_projection_dim(tmp_path):
    for dim in (16, 24):
        h, z = forward(build_model(replace(BASE, projection_dim=dim), 32))
        assert h.shape == (2, 64) and z.shape == (2, dim)


CHECKS = {
    "arch": check_arch,
    "width_multiplier": check_width_multiplier,
    "sk_ratio": check_sk_ratio,
    "cifar_stem": check_cifar_stem,
    "cifar_stem_max_side": check_cifar_stem_max_side,
    "first_block_projection": check_first_block_projection,
    "input_size": check_input_size,
    "head_layers": check_head_layers,
    "head_hidden_dim": check_head_hidden_dim,
    "projection_dim": check_projection_dim,
}


@pytest.mark.parametrize("key", [f.name for f in fields(ModelConfig)])
def test_every_model_key_is_honoured(key, tmp_path):
    assert key in CHECKS, f"model.{key} has no check: add one to CHECKS in {__file__}"
    CHECKS[key](tmp_path)


def test_every_check_is_for_a_real_key():
    assert set(CHECKS) == {f.name for f in fields(ModelConfig)}
