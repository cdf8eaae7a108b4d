"""Linear evaluation, kNN and fine-tuning read h, or the projection-head layer asked for (v1 4, v2 2).

The pretrained model here has a distinct width at every point: h is 64-d, the two hidden head layers 48-d,
z 16-d. Every ``nn.Linear`` that runs is recorded by its (in, out) features through a global forward hook,
so a protocol's classifier tells which representation it was given (in = 64, 48 or 16, out = the 4
classes) and the head layers that ran tell how far into the head the features were taken. kNN, whose only
learned part is the bank, is also compared with a kNN computed here from h.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook

from simclr.augment import EvalTransform
from simclr.checkpoint import load_pretrained
from simclr.eval.finetune import finetune, load_classifier
from simclr.eval.knn import knn_command, knn_eval
from simclr.eval.linear import linear_eval
from test_eval import CLASSES, tiny_images, write_npz_run, write_pretrained

H, HIDDEN, Z = 64, 48, 16  # resnet18 x0.125; model.head_hidden_dim; model.projection_dim
HEAD = {1: (H, HIDDEN), 2: (HIDDEN, HIDDEN), 3: (HIDDEN, Z)}  # head layer -> its Linear's (in, out)
FEATURE_DIM = {0: H, 1: HIDDEN, 2: HIDDEN}
WIDTHS = {"model__head_hidden_dim": HIDDEN}


class LinearCalls:
    """Counts the forward calls of every nn.Linear by its (in_features, out_features)."""

    def __enter__(self) -> Counter:
        self.calls: Counter = Counter()

        def hook(module, args, output):
            if isinstance(module, nn.Linear):
                self.calls[(module.in_features, module.out_features)] += 1

        self.handle = register_module_forward_hook(hook)
        return self.calls

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def head_layers_run(calls: Counter) -> set[int]:
    return {k for k, shape in HEAD.items() if calls[shape] > 0}


@pytest.fixture
def pretrained(tmp_path):
    write_pretrained(tmp_path / "ckpt.pt", head_layers=3, **WIDTHS)
    return load_pretrained(tmp_path / "ckpt.pt")


@pytest.mark.parametrize("mode", ["fast", "paper"])
@pytest.mark.parametrize("layer", [0, 1, 2])
def test_linear_eval_classifies_h_or_the_head_layer_asked_for(pretrained, mode, layer):
    with LinearCalls() as calls:
        result = linear_eval(
            pretrained,
            tiny_images(64, 0),
            tiny_images(32, 1),
            mode=mode,
            epochs=1,
            batch_size=16,
            from_head_layer=layer,
        )
    assert result["feature_dim"] == FEATURE_DIM[layer] and result["from_head_layer"] == layer
    assert head_layers_run(calls) == set(range(1, layer + 1))  # never z's layer, nor deeper than asked
    classifiers = {shape for shape in calls if shape[1] == CLASSES}
    assert classifiers == {(FEATURE_DIM[layer], CLASSES)}


@pytest.mark.parametrize("layer", [0, 1])
def test_knn_reads_h_or_the_head_layer_asked_for(tmp_path, layer):
    run = write_npz_run(tmp_path, **WIDTHS)
    with LinearCalls() as calls:
        result = knn_command(run, k=5, device="cpu", from_head_layer=layer, out=str(tmp_path / f"knn{layer}"))
    assert head_layers_run(calls) == set(range(1, layer + 1))
    # the same kNN on features computed here: the evaluation crop (none at 16 px), the run's mean / std
    pre = load_pretrained(run)
    train, test = tiny_images(48, 0), tiny_images(24, 1)
    transform = EvalTransform(pre.image_size, None, pre.mean, pre.std)
    model = pre.model.eval()
    with torch.no_grad():
        feats = [model.head(model.encoder(transform(d.images)), layers=layer) for d in (train, test)]
    assert feats[0].shape[1] == FEATURE_DIM[layer]
    top1, top5 = knn_eval(feats[0], train.labels, feats[1], test.labels, k=5, temperature=0.1)
    assert (result["top1"], result["top5"]) == (pytest.approx(top1), pytest.approx(top5))


@pytest.mark.parametrize("layer", [0, 1, 2, None])
def test_finetuning_starts_from_h_or_the_head_layer_asked_for(pretrained, tmp_path, layer):
    """None: v2's default for a 3-layer head, its first layer (v2 2)."""
    want = 1 if layer is None else layer
    with LinearCalls() as calls:
        result = finetune(
            pretrained, tiny_images(32, 0), tiny_images(16, 1), labels="100%", from_head_layer=layer, epochs=1,
            batch_size=16, out_dir=tmp_path / "ft",
        )  # fmt: skip
    assert result["from_head_layer"] == want
    assert head_layers_run(calls) == set(range(1, want + 1))
    assert {shape for shape in calls if shape[1] == CLASSES} == {(FEATURE_DIM[want], CLASSES)}
    net = load_classifier(tmp_path / "ft")
    assert len(net.head_layers) == want and net.classifier.in_features == FEATURE_DIM[want]
    # the kept layers are the pretrained ones (trained for one epoch from them: same shapes, same kinds)
    for kept, pre_layer in zip(net.head_layers, pretrained.model.head.layers, strict=False):
        assert [type(m) for m in kept] == [type(m) for m in pre_layer]


def test_finetuning_a_v1_model_starts_from_h(tmp_path):
    write_pretrained(tmp_path / "v1.pt", head_layers=2)
    result = finetune(
        load_pretrained(tmp_path / "v1.pt"),
        tiny_images(32, 0),
        tiny_images(16, 1),
        labels="100%",
        epochs=1,
        batch_size=16,
    )
    assert result["from_head_layer"] == 0
