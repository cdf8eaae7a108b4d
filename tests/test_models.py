"""Tests of the encoders, heads and model zoo. Big models are only ever built on the meta device."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from simclr.errors import SimCLRError
from simclr.models import (
    ProjectionHead,
    SimCLRModel,
    create_encoder,
    encoder_from_spec,
    encoder_spec,
    list_encoders,
)
from simclr.models.layers import AvgPoolShortcut, MaxPool2dSame, SKConv2d, SqueezeExcite
from simclr.models.resnet import BasicBlock, Bottleneck
from simclr.models.zoo import PAPER_PARAMS_M, count_macs, count_params, format_model_table, model_table


def meta_encoder(name: str, **kw) -> nn.Module:
    with torch.device("meta"):
        return create_encoder(name, **kw)


def convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


# ---------------------------------------------------------------- parameter counts (v2 Table 1)


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS_M))
def test_param_counts_match_paper(name):
    params, tf_vars = count_params(meta_encoder(name))
    paper = PAPER_PARAMS_M[name]
    assert abs(tf_vars / 1e6 - paper) / paper < 0.02
    # The paper rounds TF variable counts (with BN moving statistics) to whole millions.
    assert round(tf_vars / 1e6) == paper
    assert abs(params / 1e6 - paper) / paper < 0.021  # r50_1x_sk0: 23.51M vs the rounded 24


def test_param_counts_of_standard_resnets():
    # torchvision's resnet18 / resnet34 / resnet50 counts minus their FC layer (512*1000+1000, 2048*1000+1000).
    # torchvision projects shortcuts only where the shape changes, our older layout; the official one also
    # projects group 1's first shortcut of ResNet-18/34: a 64 x 64 1x1 conv and its BN (gamma, beta).
    group1_projection = 64 * 64 + 2 * 64
    assert count_params(meta_encoder("resnet18", first_block_projection=False))[0] == 11_689_512 - 513_000
    assert count_params(meta_encoder("resnet18"))[0] == 11_689_512 - 513_000 + group1_projection
    assert count_params(meta_encoder("resnet34", first_block_projection=False))[0] == 21_797_672 - 513_000
    assert count_params(meta_encoder("resnet34"))[0] == 21_797_672 - 513_000 + group1_projection
    assert count_params(meta_encoder("resnet50"))[0] == 25_557_032 - 2_049_000


def test_out_dim():
    assert meta_encoder("resnet18").out_dim == 512
    assert meta_encoder("resnet34", width=2).out_dim == 1024
    assert meta_encoder("r50_1x_sk0").out_dim == 2048
    assert meta_encoder("r50_2x_sk1").out_dim == 4096
    assert meta_encoder("r152_3x_sk1").out_dim == 6144
    assert meta_encoder("resnet50", width=0.25).out_dim == 512


# ---------------------------------------------------------------- layout


def test_width_multiplier_scales_every_conv():
    one, two = convs(meta_encoder("resnet18")), convs(meta_encoder("resnet18", width=2))
    assert len(one) == len(two)
    for a, b in zip(one, two, strict=True):
        assert b.out_channels == 2 * a.out_channels
        assert b.in_channels == (3 if a.in_channels == 3 else 2 * a.in_channels)
        assert (a.kernel_size, a.stride) == (b.kernel_size, b.stride)


def test_width_multiplier_scales_sk_stem():
    stem = convs(meta_encoder("r152_3x_sk1").stem)
    assert [(c.out_channels, c.kernel_size[0], c.stride[0]) for c in stem] == [
        (96, 3, 2),
        (96, 3, 1),
        (192, 3, 1),
    ]
    assert not any(isinstance(m, nn.MaxPool2d) for m in meta_encoder("r50_1x_sk1").stem)
    assert any(isinstance(m, MaxPool2dSame) for m in meta_encoder("r50_1x_sk1").stem)


def test_cifar_stem_gives_4x4_map_without_maxpool():
    enc = create_encoder("resnet18", width=0.25, cifar_stem=True)
    stem_convs = convs(enc.stem)
    assert [(c.kernel_size, c.stride) for c in stem_convs] == [((3, 3), (1, 1))]
    assert not any(isinstance(m, (nn.MaxPool2d, MaxPool2dSame)) for m in enc.stem.modules())
    assert enc.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 128, 4, 4)
    # The CIFAR stem replaces the ResNet-D stem too.
    assert len(convs(meta_encoder("r50_1x_sk1", cifar_stem=True).stem)) == 1


def test_imagenet_stem_output_stride_32():
    enc = create_encoder("resnet18", width=0.25)
    assert enc.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 128, 2, 2)


def test_stride_sits_on_3x3_conv():
    block = meta_encoder("resnet50").block_group2[0]
    assert block.conv1[0].stride == (1, 1) and block.conv2[0].stride == (2, 2)
    assert block.conv2[0].kernel_size == (3, 3)


def test_last_bn_gamma_zero_init():
    enc = create_encoder("resnet50", width=0.25, sk_ratio=0.0625)
    blocks = [m for m in enc.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 16
    for blk in blocks:
        assert torch.all(blk.bn3.weight == 0)
        assert torch.all(blk.conv1[1].weight == 1)
    for blk in (m for m in create_encoder("resnet18", width=0.25).modules() if isinstance(m, BasicBlock)):
        assert torch.all(blk.bn2.weight == 0)


def test_bn_constants_and_conv_init():
    enc = create_encoder("resnet18", width=0.5)
    bns = [m for m in enc.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.eps == 1e-5 and m.momentum == 0.1 for m in bns)
    assert all(c.bias is None for c in convs(enc))
    w = enc.block_group4[0].conv2.weight  # 256 x 256 x 3 x 3: fan-in variance scaling, std sqrt(1/fan_in)
    assert w.std().item() == pytest.approx((1 / (256 * 9)) ** 0.5, rel=0.05)


def test_first_block_of_every_group_projects_its_shortcut():
    # The official BlockGroup passes use_projection=True to its first block (SPEC-DETAILS 2.1).
    for name in ("resnet18", "resnet34"):
        enc = meta_encoder(name, width=0.5)
        for group in enc.stages()[1:]:
            assert group[0].shortcut is not None
            assert all(block.shortcut is None for block in group[1:])
        old = meta_encoder(name, width=0.5, first_block_projection=False)
        assert old.block_group1[0].shortcut is None  # 32 -> 32 channels, stride 1: the identity
        assert all(g[0].shortcut is not None for g in old.stages()[2:])
        extra = {k for k in enc.state_dict() if k not in old.state_dict()}
        assert extra and all(k.startswith("block_group1.0.shortcut.") for k in extra)


@pytest.mark.parametrize("name", ["resnet50", "r50_1x_sk1", "r101_2x_sk0"])
def test_bottleneck_layout_does_not_depend_on_the_shortcut_rule(name):
    new, old = meta_encoder(name), meta_encoder(name, first_block_projection=False)
    assert {k: v.shape for k, v in new.state_dict().items()} == {k: v.shape for k, v in old.state_dict().items()}


def test_resnet_d_shortcut_only_with_sk():
    sk = meta_encoder("r50_1x_sk1")
    assert isinstance(sk.block_group2[0].shortcut, AvgPoolShortcut)
    assert isinstance(sk.block_group1[0].shortcut, AvgPoolShortcut)  # stride 1, channels 64 -> 256
    plain = meta_encoder("r50_1x_sk0").block_group2[0].shortcut
    assert isinstance(plain[0], nn.Conv2d) and plain[0].stride == (2, 2)


# ---------------------------------------------------------------- SK, SE, pooling


def test_sk_conv_shapes_and_attention():
    torch.manual_seed(0)
    sk = SKConv2d(8, 16, stride=2, sk_ratio=0.0625)
    out, attention = sk.forward_with_attention(torch.randn(3, 8, 10, 10))
    assert out.shape == (3, 16, 5, 5)
    assert attention.shape == (3, 2, 16)
    assert torch.allclose(attention.sum(dim=1), torch.ones(3, 16))
    assert sk.fuse[0].out_channels == 32  # max(int(16 * 0.0625), 32)
    assert sk.streams[0].out_channels == 32 and sk.mix.out_channels == 32  # 2 * channels
    assert sk.streams[0].kernel_size == (3, 3) and sk.streams[0].dilation == (1, 1)  # both streams 3x3


def test_sk_output_is_weighted_sum_of_streams():
    torch.manual_seed(0)
    sk = SKConv2d(4, 6, stride=1, sk_ratio=0.5).eval()
    x = torch.randn(2, 4, 7, 7)
    out, a = sk.forward_with_attention(x)
    s = sk.streams(x)
    expected = s[:, :6] * a[:, 0, :, None, None] + s[:, 6:] * a[:, 1, :, None, None]
    assert torch.allclose(out, expected, atol=1e-6)


def test_sk_mid_dim_per_group():
    def mids(name):
        enc = meta_encoder(name)
        return [getattr(enc, f"block_group{i}")[0].conv2.fuse[0].out_channels for i in range(1, 5)]

    assert mids("r50_1x_sk1") == [32, 32, 32, 32]
    assert mids("r50_2x_sk1") == [32, 32, 32, 64]
    assert mids("r152_3x_sk1") == [32, 32, 48, 96]


def test_avg_pool_shortcut_matches_tf_same_padding():
    sc = AvgPoolShortcut(1, 1, stride=1)
    x = torch.arange(9.0).view(1, 1, 3, 3)
    # 'SAME' 2x2 stride 1: pad after only, average the valid cells of each window.
    expected = torch.tensor([[[[2.0, 3.0, 3.5], [5.0, 6.0, 6.5], [6.5, 7.5, 8.0]]]])
    padded = F.pad(x, (0, 1, 0, 1))
    pooled = F.avg_pool2d(padded, 2, 1) / F.avg_pool2d(F.pad(torch.ones_like(x), (0, 1, 0, 1)), 2, 1)
    assert torch.allclose(pooled, expected)
    sc.conv.weight.data.fill_(1.0)
    sc.eval()
    bn = sc.bn
    y = sc(x)
    assert torch.allclose(y, (expected - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps), atol=1e-5)
    assert AvgPoolShortcut(2, 4, stride=2)(torch.randn(2, 2, 8, 8)).shape == (2, 4, 4, 4)


def test_max_pool_same_pads_after_on_even_maps():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    # TF 'SAME' 3x3/2 on 4x4: pad 0 before and 1 after; windows start at rows/cols 0 and 2.
    assert MaxPool2dSame()(x).tolist() == [[[[10.0, 11.0], [14.0, 15.0]]]]
    assert MaxPool2dSame()(torch.randn(1, 1, 7, 7)).shape == (1, 1, 4, 4)


def test_squeeze_excite_option():
    enc = create_encoder("resnet50", width=0.25, se_ratio=0.25)
    se = enc.block_group1[0].se
    assert isinstance(se, SqueezeExcite)
    assert se.reduce.out_channels == 4 and se.expand.out_channels == 64  # f * ratio, back to 4f
    assert enc(torch.randn(2, 3, 32, 32)).shape == (2, 512)


# ---------------------------------------------------------------- forward passes


def test_forward_resnet18_quarter_width_and_backward():
    torch.manual_seed(0)
    enc = create_encoder("resnet18", width=0.25, cifar_stem=True)
    h = enc(torch.randn(4, 3, 32, 32))
    assert h.shape == (4, enc.out_dim) == (4, 128)
    h.square().mean().backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_forward_r50_1x_sk1_small_input():
    torch.manual_seed(0)
    enc = create_encoder("r50_1x_sk1")
    x = torch.randn(2, 3, 64, 64)
    feats = enc.forward_features(x)  # stem /4, then groups /1 /2 /2 /2
    assert feats.shape == (2, 2048, 2, 2)
    h = enc(x)
    assert h.shape == (2, 2048) and torch.allclose(h, feats.mean(dim=(2, 3)), atol=1e-6)
    assert torch.isfinite(h).all()


# ---------------------------------------------------------------- create_encoder


def test_create_encoder_parses_v2_names():
    enc = meta_encoder("r101_2x_sk1")
    assert (enc.arch_name, enc.width, enc.sk_ratio, enc.cifar_stem) == ("r101_2x_sk1", 2.0, 0.0625, False)
    assert len(enc.block_group3) == 23
    assert meta_encoder("r50_2x_sk1", width=2.0, sk_ratio=0.1).sk_ratio == 0.1
    # Config defaults (width 1, sk_ratio 0) defer to the name.
    enc = meta_encoder("r50_2x_sk1", width=1.0, sk_ratio=0.0)
    assert (enc.width, enc.sk_ratio) == (2.0, 0.0625)
    assert meta_encoder("R50_0.5x_sk0").out_dim == 1024
    assert meta_encoder("resnet50", width=2, sk_ratio=0.0625).sk_ratio == 0.0625


@pytest.mark.parametrize(
    "name, kw",
    [
        ("r50_2x_sk1", {"width": 3.0}),
        ("r50_1x_sk0", {"sk_ratio": 0.0625}),
        ("resnet18", {"sk_ratio": 0.0625}),
        ("r34_1x_sk1", {}),
        ("resnet77", {}),
        ("resnet50", {"width": 0.0}),
        ("resnet50", {"sk_ratio": -1.0}),
    ],
)
def test_create_encoder_rejects_conflicts(name, kw):
    with pytest.raises(SimCLRError):
        meta_encoder(name, **kw)


def test_unknown_name_lists_valid_names():
    with pytest.raises(SimCLRError, match="resnet50.*r152_3x_sk1"):
        create_encoder("vit_b16")
    assert "r50_2x_sk1" in list_encoders() and "resnet18" in list_encoders()


def test_encoder_spec_round_trip():
    enc = meta_encoder("r50_2x_sk1", cifar_stem=True)
    spec = encoder_spec(enc)
    again = meta_encoder(**spec)
    assert encoder_spec(again) == spec and spec["first_block_projection"] is True
    shapes = {k: v.shape for k, v in enc.state_dict().items()}
    assert shapes == {k: v.shape for k, v in again.state_dict().items()}


def test_spec_without_the_shortcut_rule_rebuilds_the_older_layout():
    torch.manual_seed(0)
    old = create_encoder("resnet18", width=0.125, first_block_projection=False).eval()
    spec = encoder_spec(old)
    del spec["first_block_projection"]  # as saved before the key existed
    again = encoder_from_spec(spec).eval()
    assert again.block_group1[0].shortcut is None
    again.load_state_dict(old.state_dict())  # strict: the same parameter names and shapes
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(again(x), old(x))
    assert encoder_from_spec(encoder_spec(create_encoder("resnet18", width=0.125))).block_group1[0].shortcut


# ---------------------------------------------------------------- projection head


def test_head_layers_semantics():
    torch.manual_seed(0)
    head = ProjectionHead(64, out_dim=128, num_layers=3)
    h = torch.randn(8, 64)
    assert head(h, layers=0) is h
    assert head(h, layers=1).shape == (8, 64) and (head(h, layers=1) >= 0).all()  # after the ReLU
    assert head(h).shape == (8, 128) and torch.equal(head(h), head(h, layers=3))
    assert torch.equal(head(h, layers=-1), head(h))
    assert head.layer_dim(0) == 64 and head.layer_dim(3) == 128
    with pytest.raises(ValueError):
        head(h, layers=4)


def test_head_bias_and_bn_layout():
    head = ProjectionHead(32, hidden_dim=16, out_dim=8, num_layers=3)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    bns = [m for m in head.modules() if isinstance(m, nn.BatchNorm1d)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 16), (16, 16), (16, 8)]
    assert all(m.bias is None for m in linears)
    assert [m.bias.requires_grad for m in bns] == [True, True, False]  # last BN: gamma only
    # The last BN's beta stays at zero through training.
    opt = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=1.0)
    head(torch.randn(4, 32)).sum().backward()
    opt.step()
    assert torch.all(bns[-1].bias == 0)


def test_head_v1_variants():
    v1 = ProjectionHead(32, num_layers=2)  # official code: last layer Linear + BN without beta
    assert v1(torch.randn(4, 32)).shape == (4, 128)
    paper = ProjectionHead(32, num_layers=2, last_bn=False)  # v1 paper: last Linear with bias, no BN
    assert paper.layers[-1][0].bias is not None
    assert not any(isinstance(m, nn.BatchNorm1d) for m in paper.layers[-1].modules())
    assert ProjectionHead(32, num_layers=0)(torch.ones(2, 32)).shape == (2, 32)


def test_simclr_model_forward_and_features():
    torch.manual_seed(0)
    enc = create_encoder("resnet18", width=0.25, cifar_stem=True)
    model = SimCLRModel(enc, ProjectionHead(enc.out_dim, num_layers=3))
    x = torch.randn(4, 3, 32, 32)
    h, z = model(x)
    assert h.shape == (4, 128) and z.shape == (4, 128)
    model.eval()
    assert torch.allclose(model.features(x), enc(x))
    assert model.features(x, head_layers=1).shape == (4, 128)


# ---------------------------------------------------------------- zoo table


def test_count_macs_reference():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 10 * 10, 5))
    assert count_macs(net, (1, 3, 10, 10)) == 10 * 10 * 8 * 27 + 800 * 5


def test_model_table_rows():
    rows = model_table(names=("resnet18", "r50_1x_sk0"))
    r18, r50 = rows
    assert r18["paper_params_m"] is None and r18["rel_diff"] is None
    assert r18["gmacs"] == pytest.approx(1.82, abs=0.02)  # the usual 1.8 "GFLOPs" of ResNet-18
    assert r50["gmacs"] == pytest.approx(4.09, abs=0.02)  # the usual 4.1 "GFLOPs" of ResNet-50
    assert r50["params_m"] == pytest.approx(23.51, abs=0.01)
    assert abs(r50["rel_diff"]) < 0.02
    text = format_model_table(rows)
    assert "r50_1x_sk0" in text and "MACs" in text


def test_model_table_without_flops_covers_all_paper_rows():
    rows = model_table(flops=False)
    assert {r["name"] for r in rows} >= set(PAPER_PARAMS_M) | {"resnet18", "resnet34"}
    assert all(r["gmacs"] is None for r in rows)
    assert all(abs(r["rel_diff"]) < 0.02 for r in rows if r["paper_params_m"] is not None)
    assert "r152_3x_sk1" in format_model_table(rows)
