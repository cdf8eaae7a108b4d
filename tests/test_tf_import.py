"""Importing official SimCLR TF1 checkpoints (simclr.tfimport), without TensorFlow.

Synthetic checkpoints are written with tests/tfbundle_writer.py using the official names of
tests/tf_official.py; the 13 SimCLRv2 Table 1 encoders are checked name by name and shape by shape against
our models built on the meta device (their data is never allocated). tests/test_tf_reference.py compares
outputs with TensorFlow itself when it is installed.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from simclr.checkpoint import load_pretrained
from simclr.cli import main
from simclr.errors import SimCLRError
from simclr.eval.finetune import load_classifier
from simclr.models.build import build_model
from simclr.models.resnet import V2_NAMES
from simclr.tfimport import TensorBundle, load_tf_checkpoint, plan_import
from simclr.tfimport.importer import model_config
from tf_official import official_shapes, random_values
from tfbundle_writer import write_bundle

SLOTS = ("base_model/conv2d/kernel/Momentum", "head_contrastive/nl_0/dense/kernel/Momentum")


def parse_name(name: str) -> tuple[int, int, bool]:
    depth, width, sk = name[1:].split("_")
    return int(depth), int(width[:-1]), sk == "sk1"


def sparse_checkpoint(path: Path, shapes: dict[str, tuple[int, ...]], extra: dict | None = None) -> Path:
    """A bundle of zeros with these names and shapes that takes no disk space."""
    tensors = {n: (s, np.float32) for n, s in shapes.items()}
    tensors.update(extra or {})
    return write_bundle(path, tensors)


def tiny_checkpoint(
    path: Path, sk: bool = True, num_classes: int | None = 3, head_layers: int = 3, ema: bool = False, seed: int = 0
) -> tuple[Path, dict]:
    """ResNet-50 at width 0.25 (16 stem channels) with random values, official names, slots and a step."""
    shapes = official_shapes(50, 0.25, sk, head_layers, num_classes)
    values = random_values(shapes, seed)
    if ema:
        values.update(
            {
                f"ema_model/{n}": v + 1.0
                for n, v in random_values(shapes, seed).items()
                if not n.startswith("head_supervised")
            }
        )
    values["global_step"] = np.array(37535, dtype=np.int64)
    for slot in SLOTS:
        if slot.rsplit("/", 1)[0] in values:
            values[slot] = np.zeros_like(values[slot.rsplit("/", 1)[0]])
    return write_bundle(path, values), values


# ------------------------------------------------------------------------ all 13 Table 1 encoders
@functools.cache
def _meta_state(name: str, head_layers: int) -> dict[str, tuple[int, ...]]:
    cfg = model_config_for(name, head_layers)
    with torch.device("meta"):
        model = build_model(cfg.model, 224)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def model_config_for(name: str, head_layers: int):
    from simclr.tfimport.mapping import Arch

    depth, width, sk = parse_name(name)
    return model_config(Arch(depth, width, sk, head_layers, "nonlinear", 128, 1000))


@pytest.mark.parametrize("name", V2_NAMES)
def test_every_table1_checkpoint_maps_by_name_onto_our_model(tmp_path, name):
    depth, width, sk = parse_name(name)
    shapes = official_shapes(depth, width, sk)
    extra = {"global_step": np.array(250228, dtype=np.int64)}
    extra.update({f"{n}/Momentum": (s, np.float32) for n, s in list(shapes.items())[:5]})
    bundle = TensorBundle(sparse_checkpoint(tmp_path / "model.ckpt-250228", shapes, extra))
    arch, plan = plan_import({n: bundle.shape(n) for n in bundle.names})
    assert arch.name == name and arch.head_layers == 3 and arch.num_classes == 1000
    assert {v.tf_name for v in plan} == set(shapes)  # every official variable placed, none invented
    ours = _meta_state(name, 3)
    for v in plan:
        if v.key.startswith("classifier."):
            continue
        s = v.tf_shape
        want = (s[3], s[2], s[0], s[1]) if v.kind == "conv" else (s[1], s[0]) if v.kind == "dense" else s
        assert ours[v.key] == want, (v.tf_name, v.key)
    placed = {v.key for v in plan}
    last_beta = "head.layers.2.1.bias"  # the last projection BN has no beta in TF (fixed at 0 here)
    missing = [k for k in ours if k not in placed and not k.endswith("num_batches_tracked") and k != last_beta]
    assert not missing, missing[:5]


def test_table1_parameter_count_r152_3x_sk1(tmp_path):
    # The paper's 795M (Table 1) counts TF variables: conv kernels, BN gamma/beta/moving stats.
    shapes = official_shapes(152, 3, True, head_layers=0, num_classes=None)
    arch, plan = plan_import(shapes)
    assert arch.name == "r152_3x_sk1" and round(sum(int(np.prod(v.tf_shape)) for v in plan) / 1e6) == 795


# ------------------------------------------------------------------------------ values and forward
def _bn(x, p, name, eps=1e-5, center=True):
    y = (x - p[f"{name}/moving_mean"]) / np.sqrt(p[f"{name}/moving_variance"] + eps) * p[f"{name}/gamma"]
    return y + p[f"{name}/beta"] if center else y


def test_import_places_values_and_heads_compute_as_official(tmp_path):
    prefix, values = tiny_checkpoint(tmp_path / "model.ckpt-37535")
    tf = load_tf_checkpoint(prefix)
    assert tf.arch.name == "r50_0.25x_sk1" and tf.step == 37535 and tf.from_head_layer == 0
    sd = tf.model.state_dict()
    # SK stem: convs 0-2; first block: shortcut (3), conv1 (4), the SK 3x3 to 2f (5), fuse (6), mix (7)
    for i, key in ((3, "shortcut.conv"), (4, "conv1.0"), (5, "conv2.streams.0"), (7, "conv2.mix"), (8, "conv3")):
        k = torch.from_numpy(values[f"base_model/conv2d_{i}/kernel"]).permute(3, 2, 0, 1)
        torch.testing.assert_close(sd[f"encoder.block_group1.0.{key}.weight"], k)
    torch.testing.assert_close(
        sd["encoder.stem.2.1.running_var"], torch.from_numpy(values["base_model/batch_normalization_2/moving_variance"])
    )
    assert not any(m.training for m in tf.model.modules())
    # Heads against the official formulas (model_util.py), in numpy: dense -> BN [-> ReLU]
    h = np.random.default_rng(3).random((4, 512)).astype(np.float32)
    x = h
    for j in range(3):
        x = _bn(
            x @ values[f"head_contrastive/nl_{j}/dense/kernel"],
            values,
            f"head_contrastive/nl_{j}/batch_normalization",
            center=j < 2,
        )
        x = np.maximum(x, 0) if j < 2 else x
    with torch.no_grad():
        z = tf.head(torch.from_numpy(h)).numpy()
        logits = tf.classifier(torch.from_numpy(h)).numpy()
    np.testing.assert_allclose(z, x, rtol=1e-4, atol=1e-5)
    sup = h @ values["head_supervised/linear_layer/dense/kernel"] + values["head_supervised/linear_layer/dense/bias"]
    np.testing.assert_allclose(logits, sup, rtol=1e-4, atol=1e-5)


def test_fine_tuned_1pct_classifier_sits_on_the_first_head_layer(tmp_path):
    prefix, values = tiny_checkpoint(tmp_path / "finetuned_1pct" / "r50_1x_sk1" / "model.ckpt-751")
    tf = load_tf_checkpoint(prefix.parent)  # the folder: no `checkpoint` file, one .index
    assert tf.from_head_layer == 1
    h = torch.rand(2, 512)
    with torch.no_grad():
        torch.testing.assert_close(tf.classifier(h), tf.linear(tf.model.head(h, layers=1)))
    assert load_tf_checkpoint(prefix, from_head_layer=0).from_head_layer == 0


def test_ema_copy_is_imported_with_ema(tmp_path):
    prefix, values = tiny_checkpoint(tmp_path / "ck", ema=True)
    plain, ema = load_tf_checkpoint(prefix), load_tf_checkpoint(prefix, ema=True)
    key, name = "encoder.stem.0.1.weight", "batch_normalization/gamma"
    torch.testing.assert_close(plain.model.state_dict()[key], torch.from_numpy(values[f"base_model/{name}"]))
    torch.testing.assert_close(ema.model.state_dict()[key], torch.from_numpy(values[f"ema_model/base_model/{name}"]))


def test_v1_checkpoint_without_projection_head(tmp_path):
    import simclr

    prefix, _ = tiny_checkpoint(tmp_path / "ck", sk=False, head_layers=0, num_classes=5)
    tf = simclr.load_tf_checkpoint(prefix)  # the public API
    assert tf.head is None and tf.arch.name == "r50_0.25x_sk0" and tf.classifier is not None
    assert tf.encoder(torch.rand(1, 3, 64, 64)).shape == (1, 512)


# ------------------------------------------------------------------------------------------ refusals
def test_left_over_variable_and_wrong_shape_are_named(tmp_path, capsys):
    shapes = official_shapes(50, 0.25, False, 3, 3)
    prefix = sparse_checkpoint(tmp_path / "a", shapes, {"memory/queue": ((8, 128), np.float32)})
    with pytest.raises(SimCLRError, match=r"memory/queue \[8, 128\] cannot be placed.*--ignore"):
        load_tf_checkpoint(prefix)
    assert load_tf_checkpoint(prefix, ignore=("^memory/",)).arch.name == "r50_0.25x_sk0"
    bad = dict(shapes, **{"base_model/conv2d_7/kernel": (1, 1, 16, 17)})
    prefix = sparse_checkpoint(tmp_path / "b", bad)
    code = main(["import-tf", str(prefix), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "base_model/conv2d_7/kernel: shape [1, 1, 16, 17]" in err, err
    missing = {n: s for n, s in shapes.items() if n != "base_model/batch_normalization_3/beta"}
    with pytest.raises(SimCLRError, match="batch_normalization_3/beta missing"):
        load_tf_checkpoint(sparse_checkpoint(tmp_path / "c", missing))


@pytest.mark.parametrize("damage", ["flip", "truncate", "no_index"])
def test_damaged_checkpoint_cli_is_one_line_exit_2(tmp_path, capsys, damage):
    prefix, _ = tiny_checkpoint(tmp_path / "model.ckpt-1", sk=False)
    data, index = Path(f"{prefix}.data-00000-of-00001"), Path(f"{prefix}.index")
    if damage == "flip":
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        data.write_bytes(bytes(raw))
    elif damage == "truncate":
        data.write_bytes(data.read_bytes()[:1000])
    else:
        index.unlink()
    code = main(["import-tf", str(prefix), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    expect = {"flip": "checksum mismatch", "truncate": "truncated data file", "no_index": "index file not found"}
    assert expect[damage] in err and str(tmp_path) in err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------- run folder
def image_folder(root: Path, classes: int = 3, per_class: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(classes):
            d = root / split / f"n0000000{c}"
            d.mkdir(parents=True)
            for i in range(per_class):
                img = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(img).save(d / f"n0000000{c}_{i}.png")
    return root


def test_import_tf_writes_a_run_that_eval_commands_read(tmp_path, capsys):
    prefix, values = tiny_checkpoint(tmp_path / "model.ckpt-37535")
    data = image_folder(tmp_path / "imgs")
    run = tmp_path / "run"
    assert main(["import-tf", str(prefix), "--out", str(run), "--data", str(data)]) == 0
    assert "r50_0.25x_sk1" in capsys.readouterr().out
    pre = load_pretrained(run)
    a = pre.config.augment
    assert (a.normalize, a.eval_crop_fraction, a.eval_interpolation) == (False, 0.875, "bicubic")
    assert pre.config.data.image_size == 256 and pre.image_size == 224 and pre.config.model.head_layers == 3
    record = json.loads((run / "import.json").read_text())
    assert record["step"] == 37535 and record["arch"] == "r50_0.25x_sk1"
    net = load_classifier(run)
    assert net.num_classes == 3 and net.from_head_layer == 0
    # predict: labelled folder, classes n00000000.. are not the model's -> no accuracy, but a full CSV
    assert (
        main(["predict", str(run), "--data", str(data / "test"), "--out", str(tmp_path / "p.csv"), "--top-k", "2"]) == 0
    )
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert len(rows) == 13 and rows[0].startswith("index,name,label,top1,top2")
    assert main(["knn", str(run), "--k", "3"]) == 0
    assert main(["embed", str(run), "--split", "test", "--which", "z", "--out", str(tmp_path / "emb")]) == 0
    assert np.load(tmp_path / "emb.npy").shape == (12, 128)
    assert main(["import-tf", str(prefix), "--out", str(run)]) == 2  # never overwrites a run


@pytest.mark.slow
def test_imported_run_with_finetune_distill_linear_export_report(tmp_path):
    prefix, _ = tiny_checkpoint(tmp_path / "finetuned_10pct" / "x" / "model.ckpt-3754")
    data = image_folder(tmp_path / "imgs")
    run = tmp_path / "run"
    assert main(["import-tf", str(prefix), "--out", str(run), "--data", str(data)]) == 0
    assert load_classifier(run).from_head_layer == 1
    assert main(["linear-eval", str(run)]) == 0
    assert (
        main(["finetune", str(run), "--labels", "100%", "--from-head-layer", "2", "--epochs", "1", "--batch-size", "4"])
        == 0
    )
    assert main(["distill", "--teacher", str(run), "--epochs", "1", "--batch-size", "4"]) == 0
    assert main(["export", str(run)]) == 0
    assert main(["report", str(run), "--max-images", "6"]) == 0


def test_predict_maps_imagenet_class_folders_to_the_models_classes(tmp_path, capsys):
    import csv

    prefix, _ = tiny_checkpoint(tmp_path / "model.ckpt-1", sk=False, num_classes=1000)
    run = tmp_path / "run"
    assert main(["import-tf", str(prefix), "--out", str(run)]) == 0
    rng = np.random.default_rng(0)
    for wnid in ("n01443537", "n01484850"):  # ImageNet classes 1 and 2 (goldfish, great white shark)
        (tmp_path / "val" / wnid).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(
                tmp_path / "val" / wnid / f"{i}.png"
            )
    capsys.readouterr()
    assert main(["predict", str(run), "--data", str(tmp_path / "val"), "--out", str(tmp_path / "p.csv")]) == 0
    line = capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert [int(r["label"]) for r in rows] == [1, 1, 1, 2, 2, 2]
    top1 = 100 * np.mean([r["top1_index"] == r["label"] for r in rows])
    assert f"top1 {top1:.2f} %" in line and "top5" in line
    assert rows[0]["top1"] == class_names_of(int(rows[0]["top1_index"]))


def class_names_of(i: int) -> str:
    from simclr.imagenet import imagenet_names

    return imagenet_names()[i]
