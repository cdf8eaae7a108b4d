"""Evaluation protocols: top-k, kNN, label subsets, linear eval (frozen encoder), fine-tuning, cards.

Tiny data is made here: 16 px images of four classes whose mean brightness depends on the class, a
ResNet-18 at width 0.125, and checkpoints written with ``save_checkpoint`` in the format
``load_pretrained`` reads.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from simclr.checkpoint import load_pretrained, save_checkpoint
from simclr.config import Config, ModelConfig, config_to_dict
from simclr.data import ImageData
from simclr.errors import SimCLRError
from simclr.eval.card import REQUIRED_FIELDS, evaluation_card, write_metrics
from simclr.eval.finetune import finetune, finetune_command, load_classifier
from simclr.eval.knn import knn_command, knn_eval, knn_scores
from simclr.eval.linear import fit_linear, linear_eval, linear_eval_command
from simclr.eval.metrics import topk_accuracy, topk_correct
from simclr.eval.subsets import load_subset, save_subset, select_labels, subset_hash
from simclr.models.build import build_model

SIZE = 16
CLASSES = 4


# ---------------------------------------------------------------------------------------------- helpers
def tiny_config(head_layers: int = 3) -> Config:
    cfg = Config()
    cfg.model = ModelConfig(arch="resnet18", width_multiplier=0.125, head_layers=head_layers, projection_dim=16)
    return cfg


def tiny_images(n: int, seed: int, channels: int = 1) -> ImageData:
    """Class c has mean brightness 40 + 50 c, plus noise: easy but not trivial."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % CLASSES
    base = (40 + 50 * labels).view(n, 1, 1, 1).float()
    noise = torch.randn(n, channels, SIZE, SIZE, generator=g) * 20
    images = (base + noise).clamp(0, 255).to(torch.uint8)
    names = [f"c{int(y)}/img_{i:04d}.png" for i, y in enumerate(labels)]
    return ImageData(images, labels, [f"class{c}" for c in range(CLASSES)], names, f"synthetic-{seed}")


def write_pretrained(path, head_layers: int = 3, image_size: int = SIZE, **config_changes) -> Config:
    cfg = tiny_config(head_layers)
    for key, value in config_changes.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    torch.manual_seed(0)
    model = build_model(cfg.model, image_size)
    save_checkpoint(
        {
            "kind": "pretrain",
            "config": config_to_dict(cfg),
            "model": model.state_dict(),
            "image_size": image_size,
            "data_stats": {"mean": [0.4], "std": [0.25]},
        },
        path,
    )
    return cfg


def check_card(card: dict) -> None:
    for key in REQUIRED_FIELDS:
        assert key in card, key
    assert card["hardware"]["cpu"] and card["hardware"]["torch_threads"] >= 1
    assert card["library_version"]


# ---------------------------------------------------------------------------------------------- top-k
def test_topk_hand_example():
    logits = torch.tensor(
        [
            [0.1, 0.9, 0.0, 0.0, 0.0, 0.0],  # target 1: top-1 hit
            [0.5, 0.4, 0.3, 0.2, 0.1, 0.0],  # target 4: 5th best, top-5 hit only
            [0.5, 0.4, 0.3, 0.2, 0.1, 0.0],  # target 5: last, miss
            [0.0, 0.0, 0.0, 0.0, 1.0, 0.2],  # target 5: 2nd best
        ]
    )
    targets = torch.tensor([1, 4, 5, 5])
    assert topk_correct(logits, targets).tolist() == [1, 3]
    top1, top5 = topk_accuracy(logits, targets)
    assert top1 == pytest.approx(25.0) and top5 == pytest.approx(75.0)


def test_topk_fewer_classes_than_k():
    logits = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([0, 1, 0])
    top1, top5 = topk_accuracy(logits, targets)  # top-5 = top-2 with two classes
    assert top1 == pytest.approx(100 / 3) and top5 == 100.0


# ---------------------------------------------------------------------------------------------- kNN
def test_knn_hand_example():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    bank_labels = torch.tensor([0, 0, 1, 2])
    query = torch.tensor([[2.0, 0.2]])  # scale must not matter: features are L2-normalised
    scores = knn_scores(bank, bank_labels, query, k=3, temperature=0.5, num_classes=3)
    q = np.array([2.0, 0.2]) / np.linalg.norm([2.0, 0.2])
    sims = [float(q @ (b / np.linalg.norm(b))) for b in bank.numpy()]
    # the 3 nearest are rows 0, 1 (class 0) and 2 (class 1); row 3 (class 2) is left out
    expected = [math.exp(sims[0] / 0.5) + math.exp(sims[1] / 0.5), math.exp(sims[2] / 0.5), 0.0]
    assert scores[0].tolist() == pytest.approx(expected, rel=1e-5)
    top1, top5 = knn_eval(bank, bank_labels, query, torch.tensor([0]), k=3, temperature=0.5, num_classes=3)
    assert (top1, top5) == (100.0, 100.0)
    top1, _ = knn_eval(bank, bank_labels, query, torch.tensor([1]), k=3, temperature=0.5, num_classes=3)
    assert top1 == 0.0


def test_knn_chunking_does_not_change_scores():
    g = torch.Generator().manual_seed(0)
    bank, query = torch.randn(300, 8, generator=g), torch.randn(50, 8, generator=g)
    labels = torch.randint(0, 7, (300,), generator=g)
    a = knn_scores(bank, labels, query, k=20, num_classes=7, chunk_size=7)
    b = knn_scores(bank, labels, query, k=20, num_classes=7, chunk_size=1000)
    torch.testing.assert_close(a, b)
    assert knn_scores(bank[:5], labels[:5], query, k=200).shape == (50, int(labels[:5].max()) + 1)  # k > N


# ---------------------------------------------------------------------------------------------- subsets
def imbalanced_labels() -> torch.Tensor:
    counts = [100, 100, 100, 100, 100, 100, 100, 100, 100, 4]  # class 9 cannot give its share
    labels = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]


def test_select_labels_class_balanced_and_seeded():
    labels = imbalanced_labels()  # 904 images
    idx = select_labels(labels, "10%", seed=0)
    assert len(idx) == round(0.1 * 904) and len(set(idx.tolist())) == len(idx)
    counts = torch.bincount(labels[idx], minlength=10)
    assert counts[9] == 4  # all of the short class, its missing share spread over the others
    assert counts[:9].max() - counts[:9].min() <= 1
    assert torch.equal(idx, select_labels(labels, "10%", seed=0))
    assert not torch.equal(idx, select_labels(labels, "10%", seed=1))
    # remainder: 1 % of 904 = 9 images over 10 classes -> nine classes get one, chosen by the seed
    small = torch.bincount(labels[select_labels(labels, "1%", seed=0)], minlength=10)
    assert small.sum() == 9 and small.max() == 1
    # subsets nest for one seed, like the official 1 % / 10 % lists
    assert set(select_labels(labels, "1%", 0).tolist()) <= set(idx.tolist())


def test_select_labels_per_class_and_all():
    labels = imbalanced_labels()
    idx = select_labels(labels, "13-per-class", seed=3)
    assert torch.bincount(labels[idx], minlength=10).tolist() == [13] * 9 + [4]
    assert torch.equal(select_labels(labels, "100%", seed=5), torch.arange(len(labels)))
    unlabelled = labels.clone()
    unlabelled[:10] = -1
    assert not set(range(10)) & set(select_labels(unlabelled, "50%", 0).tolist())
    with pytest.raises(SimCLRError, match="not a percentage"):
        select_labels(labels, "ten percent", 0)


def test_select_labels_from_file(tmp_path):
    data = tiny_images(40, seed=0)
    wanted = [3, 17, 22]
    listing = tmp_path / "1percent.txt"
    # official format: basenames only, one per line
    listing.write_text("".join(f"{data.names[i].split('/')[-1]}\n" for i in wanted))
    idx = select_labels(data.labels, str(listing), seed=123, names=data.names)
    assert idx.tolist() == wanted
    listing.write_text("img_0003.png\nimg_9999.png\n")
    with pytest.raises(SimCLRError, match=r"1percent\.txt.*img_9999\.png"):
        select_labels(data.labels, str(listing), seed=0, names=data.names)
    with pytest.raises(SimCLRError, match="file names"):
        select_labels(data.labels, str(listing), seed=0, names=None)


def test_subset_hash_and_roundtrip(tmp_path):
    idx = torch.tensor([5, 1, 9])
    assert subset_hash(idx) == subset_hash(torch.tensor([1, 5, 9])) == subset_hash([9, 5, 1])
    assert len(subset_hash(idx)) == 16 and subset_hash(idx) != subset_hash(torch.tensor([1, 5, 8]))
    path = save_subset(tmp_path / "s.json", idx, "3-per-class", 7, labels=torch.arange(10) % 2)
    loaded, meta = load_subset(path)
    assert loaded.tolist() == [1, 5, 9] and meta["seed"] == 7 and meta["hash"] == subset_hash(idx)
    record = json.loads(path.read_text())
    record["indices"][0] = 2
    path.write_text(json.dumps(record))
    with pytest.raises(SimCLRError, match="hash"):
        load_subset(path)


# ---------------------------------------------------------------------------------------------- linear
def test_linear_probe_reaches_100_on_separable_features():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(400) % 5
    centres = torch.randn(5, 32, generator=g) * 3
    feats = centres[labels] + 0.3 * torch.randn(400, 32, generator=g) + 10.0  # offset: needs the bias
    clf = fit_linear(feats, labels, 5, epochs=30, batch_size=64)
    assert topk_accuracy(clf(feats), labels)[0] == 100.0
    test = centres[labels] + 0.3 * torch.randn(400, 32, generator=g) + 10.0
    assert topk_accuracy(clf(test), labels)[0] == 100.0


@pytest.mark.parametrize("mode", ["fast", "paper"])
def test_linear_eval_keeps_the_encoder_frozen(tmp_path, mode):
    write_pretrained(tmp_path / "ckpt.pt")
    pre = load_pretrained(tmp_path / "ckpt.pt")
    pre.model.train()  # whatever mode the caller left it in is restored
    before = {k: v.clone() for k, v in pre.model.state_dict().items()}
    grads_before = [p.requires_grad for p in pre.model.parameters()]
    result = linear_eval(
        pre,
        tiny_images(64, 0),
        tiny_images(32, 1),
        mode=mode,
        epochs=2,
        batch_size=16,
        out_dir=tmp_path / "o",
    )
    after = pre.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit-identical, BN buffers included
    assert pre.model.training and [p.requires_grad for p in pre.model.parameters()] == grads_before
    assert result["encoder_frozen_verified"] and result["feature_dim"] == 64  # h of resnet18 x0.125
    assert (result["n_train"], result["n_test"], result["epochs"], result["batch_size"]) == (64, 32, 2, 16)
    if mode == "fast":  # brightness classes: the probe on the frozen random encoder's h is far above chance
        assert result["top1"] > 75 and result["train_top1"] > 75
    else:  # two epochs of SGD from a zero classifier (lr 0.1 x 16 / 256); each epoch evaluated
        assert [h["epoch"] for h in result["history"]] == [1, 2] and result["history"][-1]["top1"] == result["top1"]
        assert result["lr"] == pytest.approx(0.1 * 16 / 256)
    saved = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert saved["top1"] == result["top1"] and saved["card"]["checkpoint_sha256"] == pre.sha256
    check_card(saved["card"])


# ---------------------------------------------------------------------------------------------- fine-tune
def test_finetune_from_pretrained_and_scratch(tmp_path):
    write_pretrained(tmp_path / "ckpt.pt")
    pre = load_pretrained(tmp_path / "ckpt.pt")
    before = {k: v.clone() for k, v in pre.model.state_dict().items()}
    train, test = tiny_images(64, 0), tiny_images(32, 1)
    out = tmp_path / "ft"
    res = finetune(pre, train, test, labels="50%", epochs=2, batch_size=16, seed=0, out_dir=out)
    assert res["from_head_layer"] == 1 and res["optimizer"] == "sgd"  # v2 head, small batch: v1 recipe
    assert res["n_labelled"] == 32 and len(res["history"]) == 2 and "top1" in res["history"][0]
    assert all(torch.equal(before[k], v) for k, v in pre.model.state_dict().items())  # caller's model untouched
    saved = json.loads((out / "metrics.json").read_text())
    check_card(saved["card"])
    assert saved["card"]["label_fraction"] == 0.5 and saved["card"]["subset_hash"] == res["subset_hash"]
    idx, meta = load_subset(out / "label_subset.json")
    assert meta["hash"] == res["subset_hash"] and torch.equal(idx, select_labels(train.labels, "50%", 0))

    net = load_classifier(out / "finetuned.pt")
    assert not net.training and net.from_head_layer == 1 and net.num_classes == CLASSES
    logits = net(net.eval_transform()(test.images))
    assert logits.shape == (32, CLASSES)
    assert topk_accuracy(logits, test.labels)[0] == pytest.approx(res["top1"])

    scratch = finetune(None, train, test, labels="50%", epochs=2, batch_size=16, config=pre.config.model)
    assert scratch["init"] == "scratch" and scratch["from_head_layer"] == 0 and scratch["optimizer"] == "sgd"
    assert scratch["subset_hash"] == res["subset_hash"]  # same labels, side by side
    assert scratch["card"]["checkpoint_sha256"] is None


def test_finetune_defaults_scale_to_small_subsets(tmp_path):
    from simclr.eval.features import scaled_batch_size
    from simclr.eval.finetune import default_epochs, default_recipe

    assert scaled_batch_size(600, 1024) == 120 and scaled_batch_size(128_116, 1024) == 1024
    assert scaled_batch_size(64, 1024) == 32 and scaled_batch_size(10, 1024) == 10
    assert default_epochs(600, 60_000, 120) == 60  # 5 steps x 60 = the 300-step floor
    assert default_epochs(130, 60_000, 32) == 75
    assert default_epochs(12_811, 1_281_167, 1024) == 60 and default_epochs(128_116, 1_281_167, 1024) == 30
    v2 = tiny_config(3)
    assert default_recipe(v2, False, None, 1024) == ("lars", pytest.approx(0.16), 0.0)
    assert default_recipe(tiny_config(2), False, None, 4096) == ("sgd", pytest.approx(0.8), 0.0)
    assert default_recipe(v2, False, None, 120) == ("sgd", pytest.approx(0.05 * 120 / 256), 0.0)
    assert default_recipe(v2, True, None, 256) == ("sgd", pytest.approx(0.4), 5e-4)
    assert default_recipe(v2, False, "lars", 120)[1] == pytest.approx(0.005 * math.sqrt(120))


def test_finetune_rejects_bad_inputs(tmp_path):
    write_pretrained(tmp_path / "ckpt.pt", head_layers=2)
    pre = load_pretrained(tmp_path / "ckpt.pt")
    train, test = tiny_images(32, 0), tiny_images(8, 1)
    with pytest.raises(SimCLRError, match="from_head_layer=3"):
        finetune(pre, train, test, labels="100%", from_head_layer=3, epochs=1)
    with pytest.raises(SimCLRError, match="not a fine-tuned classifier"):
        load_classifier(tmp_path / "ckpt.pt")


@pytest.mark.slow
def test_finetune_learns_from_pretrained_and_scratch(tmp_path):
    write_pretrained(tmp_path / "ckpt.pt")
    pre = load_pretrained(tmp_path / "ckpt.pt")
    train, test = tiny_images(800, 0), tiny_images(400, 1)
    for init in (pre, None):  # default recipes: 80 labels -> batch 32, 150 epochs = 300 steps
        res = finetune(init, train, test, labels="10%", seed=0, eval_every=50, config=pre.config)
        assert res["steps"] == 300 and res["top1"] > 90.0, res["history"]


# ---------------------------------------------------------------------------------------------- commands
def write_npz_run(tmp_path, **config_changes) -> str:
    train, test = tiny_images(48, 0), tiny_images(24, 1)
    npz = tmp_path / "tiny.npz"
    np.savez(
        npz,
        images=train.images.numpy(),
        labels=train.labels.numpy(),
        test_images=test.images.numpy(),
        test_labels=test.labels.numpy(),
    )
    run = tmp_path / "run"
    write_pretrained(run / "checkpoints" / "last.pt", data__dataset="npz", data__path=str(npz), **config_changes)
    return str(run)


def test_commands_write_metrics_with_cards(tmp_path, capsys):
    run = write_npz_run(tmp_path)
    knn = knn_command(run, k=5, device="cpu")
    lin = linear_eval_command(run, mode="fast", device="cpu", epochs=3)
    ft = finetune_command(run, labels="2-per-class", epochs=1, device="cpu")
    base = finetune_command(
        None,
        data=str(tmp_path / "tiny.npz"),
        dataset="npz",
        labels="2-per-class",
        init="scratch",
        epochs=1,
        device="cpu",
        arch="resnet18",
        out=str(tmp_path / "b"),
    )
    printed = capsys.readouterr().out
    assert "knn" in printed and "linear eval" in printed and printed.count("\nfinetune (") == 2
    for result, folder in ((knn, "knn-"), (lin, "linear-fast-"), (ft, "finetune-pretrained-2-per-class-")):
        # non-default settings (k 5, 3 epochs, 1 epoch): a folder of their own, keyed by a hash of them
        out = Path(result["out_dir"])
        assert out.parent == tmp_path / "run" / "eval" and out.name.startswith(folder), out
        saved = json.loads((out / "metrics.json").read_text())
        assert saved["top1"] == result["top1"]
        check_card(saved["card"])
        assert saved["card"]["dataset"] == "npz"
    assert ft["subset_hash"] == base["subset_hash"] and base["card"]["checkpoint_sha256"] is None


def test_evaluation_card_and_atomic_write(tmp_path):
    card = evaluation_card("knn", "cifar10", "test", 1.0, None, 0, None, 512, "ab" * 32, "cpu", 1.23456, k=200)
    check_card(card)
    assert card["k"] == 200 and card["wall_clock_s"] == 1.235 and card["device"] == "cpu"
    write_metrics(tmp_path, {"top1": float("nan"), "card": card})
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left behind
    assert json.loads((tmp_path / "metrics.json").read_text())["top1"] == "nan"
    with pytest.raises(ValueError):
        write_metrics(tmp_path, {"top1": 1.0})


def test_random_baseline_calibrates_batchnorm_to_the_data():
    """The random-encoder baseline sets BN running statistics to the data's, leaving weights untouched."""
    from torch import nn as _nn

    from simclr.eval.linear import _calibrate_batchnorm

    torch.manual_seed(0)
    net = _nn.Sequential(_nn.Conv2d(3, 4, 3, bias=False), _nn.BatchNorm2d(4))
    weight = net[0].weight.detach().clone()
    images = torch.randint(0, 256, (1024, 3, 8, 8), dtype=torch.uint8)  # two equal batches of 512

    def transform(x):
        return x.float() / 255.0

    _calibrate_batchnorm(net, images, transform, "cpu", seed=0)
    with torch.no_grad():
        out = net[0](transform(images))
    expected_mean = out.mean(dim=(0, 2, 3))
    assert torch.allclose(net[1].running_mean, expected_mean, atol=1e-4)
    assert torch.equal(net[0].weight, weight)
    assert not net.training


def test_raw_pixel_baseline_reads_the_stored_side_not_the_upsampled_views(tmp_path, monkeypatch):
    """With model.input_size above the stored side, the encoder sees upsampled views but the raw-pixel
    probe is fitted on the stored pixels (SIZE x SIZE), the stronger reference."""
    import simclr.eval.linear as lin

    write_pretrained(tmp_path / "p.pt", image_size=2 * SIZE, model__input_size=2 * SIZE)
    pre = load_pretrained(tmp_path / "p.pt")
    assert pre.image_size == 2 * SIZE
    dims: list[int] = []
    fit = lin.fit_linear

    def spy(feats, *args, **kwargs):
        dims.append(feats.shape[1])
        return fit(feats, *args, **kwargs)

    monkeypatch.setattr(lin, "fit_linear", spy)
    out = lin.fast_baselines(pre, tiny_images(32, 0), tiny_images(16, 1))
    assert dims[-1] == 3 * SIZE * SIZE  # stored side (grey replicated to the encoder's 3 channels)
    assert out["raw_pixels"]["top1"] > 100 / CLASSES  # the pixels carry the class brightness: above chance


def test_finetune_recipe_options(tmp_path):
    """probe_init starts from the linear probe, bn=frozen keeps running statistics, augment modes, smoothing."""
    from simclr.eval.finetune import FinetuneOptions, training_augment

    write_pretrained(tmp_path / "ckpt.pt")
    pre = load_pretrained(tmp_path / "ckpt.pt")
    train, test = tiny_images(64, 0), tiny_images(32, 1)
    # one epoch at a vanishing learning rate: what is measured is the starting point
    still = FinetuneOptions(labels="100%", epochs=1, batch_size=16, lr=1e-12)
    zero = finetune(pre, train, test, still)
    # frozen BN: the untrained test model's running statistics would move, so evaluation sees the probe as fitted
    probed = finetune(pre, train, test, still, probe_init=True, bn="frozen", out_dir=tmp_path / "p")
    assert zero["top1"] <= 100 / CLASSES + 15  # a zero classifier: all classes tie
    assert probed["top1"] > 75 and probed["recipe"]["probe_init"] is True  # brightness classes: the probe is good
    assert load_classifier(tmp_path / "p").classifier.weight.abs().sum() > 0

    frozen = dict(pre.model.encoder.state_dict())
    res = finetune(pre, train, test, still, bn="frozen", out_dir=tmp_path / "f")
    after = load_classifier(tmp_path / "f").encoder.state_dict()
    stats = [k for k in frozen if k.endswith("running_mean")]
    assert stats and all(torch.equal(frozen[k], after[k]) for k in stats)  # frozen BN: running stats unchanged
    moved = finetune(pre, train, test, still, out_dir=tmp_path / "t")
    after_t = load_classifier(tmp_path / "t").encoder.state_dict()
    assert any(not torch.equal(frozen[k], after_t[k]) for k in stats)  # train-mode BN updates them
    assert res["recipe"]["bn"] == "frozen" and moved["recipe"]["bn"] == "train"

    base = pre.config.augment
    assert (
        training_augment(base, "crop_flip", None).crop and training_augment(base, "crop_flip", 0.5).crop_scale[0] == 0.5
    )
    assert not training_augment(base, "flip", None).crop and training_augment(base, "flip", None).flip
    none = training_augment(base, "none", None)
    assert not none.crop and not none.flip and none.color_jitter_prob == 0 and none.blur_prob == 0
    smooth = finetune(pre, train, test, still, label_smoothing=0.2, augment="none", warmup_epochs=0.5)
    assert smooth["recipe"]["label_smoothing"] == 0.2 and smooth["recipe"]["augment"] == "none"
    with pytest.raises(SimCLRError, match="label_smoothing"):
        finetune(pre, train, test, still, label_smoothing=1.0)
    with pytest.raises(SimCLRError, match="bn"):
        finetune(pre, train, test, still, bn="sometimes")


def test_finetune_backbone_lr_scale_zero_trains_only_the_classifier(tmp_path):
    from simclr.eval.finetune import FinetuneOptions

    write_pretrained(tmp_path / "ckpt.pt")
    pre = load_pretrained(tmp_path / "ckpt.pt")
    train, test = tiny_images(64, 0), tiny_images(32, 1)
    o = FinetuneOptions(labels="100%", epochs=1, batch_size=16, backbone_lr_scale=0.0, bn="frozen")
    finetune(pre, train, test, o, out_dir=tmp_path / "ft")
    net = load_classifier(tmp_path / "ft")
    before = pre.model.encoder.state_dict()
    assert all(torch.equal(before[k], v) for k, v in net.encoder.state_dict().items())
    assert net.classifier.weight.abs().sum() > 0


def test_finetune_label_smoothing_and_warmup_reach_the_step(tmp_path, monkeypatch):
    """Smoothing changes the loss of confident logits; warmup_epochs become warmup steps of the schedule."""
    import simclr.optim
    from simclr.eval.finetune import FinetuneOptions

    write_pretrained(tmp_path / "ckpt.pt")
    pre = load_pretrained(tmp_path / "ckpt.pt")
    train, test = tiny_images(64, 0), tiny_images(32, 1)
    # the probe's classifier gives confident logits; at a vanishing lr both runs see the same logits
    still = FinetuneOptions(labels="100%", epochs=1, batch_size=16, lr=1e-12, probe_init=True, bn="frozen")
    plain = finetune(pre, train, test, still)["history"][0]["loss"]
    smooth = finetune(pre, train, test, still, label_smoothing=0.3)["history"][0]["loss"]
    assert smooth > plain + 0.05, (plain, smooth)  # smoothing penalises confident correct predictions

    warmups = []
    real = simclr.optim.lr_at

    def recording(step, total, warmup, peak, *args):
        warmups.append((total, warmup))
        return real(step, total, warmup, peak, *args)

    monkeypatch.setattr(simclr.optim, "lr_at", recording)
    finetune(pre, train, test, still, warmup_epochs=0.5)
    finetune(pre, train, test, still)
    assert set(warmups) == {(4, 2), (4, 0)}  # 64 images / batch 16 = 4 steps; half an epoch = 2 steps
