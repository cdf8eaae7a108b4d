"""Every stage reads image folders either in memory (packed, aspect kept) or streamed, chosen by size.

Pretraining, linear evaluation, kNN, fine-tuning, distillation and embedding run on a folder of images of
several sizes both ways and agree where they must: the same images, the same features.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from simclr.cli import main
from simclr.data import access
from simclr.data.access import batches, open_split, stored_side, take
from simclr.data.packed import PackedImages
from simclr.data.stream import ImageStream

TINY = ["--set", "model.width_multiplier=0.125", "--set", "train.batch_size=8", "--set", "train.epochs=1",
        "--set", "monitor.knn=false", "--set", "data.image_size=16"]  # fmt: skip


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """24 images of 4 classes, 16-30 px wide and high (landscape and portrait), in train/ and test/."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("test", 8)):
        for i in range(n):
            c = i % 4
            (root / split / f"c{c}").mkdir(parents=True, exist_ok=True)
            h, w = int(rng.integers(16, 31)), int(rng.integers(16, 31))
            pixels = np.clip(rng.normal(60 * c, 30, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / split / f"c{c}" / f"{i}.png")
    return root


def test_packed_images_cut_a_canvas_with_each_image_top_left():
    arrays = [np.full((h, w, 3), k, np.uint8) for k, (h, w) in enumerate([(4, 6), (5, 3), (4, 4)])]
    packed = PackedImages.from_arrays(arrays)
    canvas, sizes = packed.batch(torch.tensor([2, 0, 1]))
    assert canvas.shape == (3, 3, 5, 6) and sizes.tolist() == [[4, 4], [4, 6], [5, 3]]
    for row, k in enumerate([2, 0, 1]):
        h, w = sizes[row].tolist()
        assert (canvas[row, :, :h, :w] == k).all() and canvas[row].sum() == k * 3 * h * w  # zeros elsewhere
    assert packed.side == 3 and len(packed) == 3


def test_auto_chooses_memory_or_stream_by_size(photos, monkeypatch):
    assert isinstance(open_split("folder", photos, "train", 16).images, PackedImages)  # small: in memory
    monkeypatch.setattr(access, "IN_MEMORY_BUDGET", 1000)
    seen = []
    data = open_split("folder", photos, "train", 16, on_memory_estimate=seen.append)
    assert isinstance(data, ImageStream) and seen[0] == 24 * 3 * 16 * 16 * 4 // 3
    assert isinstance(open_split("folder", photos, "train", 16, in_memory=True).images, PackedImages)
    assert isinstance(open_split("folder", photos, "train", 16, in_memory=False), ImageStream)


def test_memory_and_stream_give_the_same_batches(photos):
    memory = open_split("folder", photos, "train", 16, in_memory=True)
    stream = open_split("folder", photos, "train", 16, in_memory=False)
    assert stored_side(memory) == stored_side(stream) == 16
    for m, s in zip(batches(memory, 5, "cpu", shuffle=True, seed=3), batches(stream, 5, "cpu", shuffle=True, seed=3),
                    strict=True):  # fmt: skip
        assert torch.equal(m.indices, s.indices) and torch.equal(m.sizes, s.sizes)
        assert torch.equal(m.images, s.images) and torch.equal(m.labels, s.labels)
    subset = torch.tensor([5, 1, 7])
    assert torch.equal(take(memory, subset)[0], take(stream, subset)[0])


@pytest.mark.parametrize("in_memory", ["true", "false"])
def test_every_stage_runs_on_a_folder_of_images_of_several_sizes(photos, tmp_path, capsys, in_memory):
    run = tmp_path / "run"
    data = ["--dataset", "folder", "--data", str(photos), "--set", f"data.in_memory={in_memory}"]
    assert main(["pretrain", *data, "--device", "cpu", "--out", str(run), *TINY]) == 0
    assert main(["linear-eval", str(run), "--device", "cpu", "--epochs", "2"]) == 0
    assert main(["linear-eval", str(run), "--device", "cpu", "--mode", "paper", "--epochs", "1"]) == 0
    assert main(["knn", str(run), "--device", "cpu", "--k", "3"]) == 0
    assert main(["finetune", str(run), "--device", "cpu", "--labels", "50%", "--epochs", "1", "--out",
                 str(tmp_path / "ft")]) == 0  # fmt: skip
    assert main(["distill", "--teacher", str(tmp_path / "ft"), "--device", "cpu", "--epochs", "1", "--batch-size",
                 "8", "--out", str(tmp_path / "st")]) == 0  # fmt: skip
    assert main(["embed", str(run), "--device", "cpu", "--out", str(tmp_path / "e")]) == 0
    assert np.load(tmp_path / "e.npy").shape[0] == 24
    printed = capsys.readouterr().out
    assert "stored side 16" in printed and "top-1" in printed
    result = json.loads((tmp_path / "st" / "metrics.json").read_text())
    assert 0 <= result["top1"] <= 100 and result["n_unlabeled"] == 24


def test_streamed_and_in_memory_features_agree(photos, tmp_path):
    """The same network on the same folder read both ways: the same h for every image."""
    from simclr.augment import EvalTransform
    from simclr.eval.features import extract_features
    from simclr.models import create_encoder

    torch.manual_seed(0)
    encoder = create_encoder("resnet18", width=0.125).eval()
    t = EvalTransform(16, normalize=False)
    memory = open_split("folder", photos, "test", 16, in_memory=True)
    stream = open_split("folder", photos, "test", 16, in_memory=False)
    torch.testing.assert_close(extract_features(encoder, memory, t, 3), extract_features(encoder, stream, t, 3))
