"""Imported checkpoints against TensorFlow itself (optional: needs the ``tf`` extra; ``pytest -m tf``).

TensorFlow builds the official network (tests/tf_reference.py), fills it with random weights and BN
statistics, saves it with tf.compat.v1.train.Saver and computes h, z and logits; our importer reads the
checkpoint without TensorFlow and must agree to 1e-4 relative (max |ours - TF| / max |TF|) in float32.
Sizes 224 (even maps: TF 'SAME' pads the stem max pool bottom/right only) and 97 (odd maps).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.tf


@pytest.mark.parametrize(
    "name, size",
    [("r50_1x_sk0", 224), ("r50_1x_sk0", 97), ("r50_1x_sk1", 224), ("r50_1x_sk1", 97), ("r50_2x_sk1", 160)],
)
def test_imported_outputs_match_tensorflow(tmp_path, name, size):
    pytest.importorskip("tf_keras")
    tf_reference = pytest.importorskip("tf_reference")
    from simclr.tfimport import load_tf_checkpoint

    depth, width, sk = int(name[1:].split("_")[0]), int(name.split("_")[1][:-1]), name.endswith("sk1")
    images = np.random.default_rng(1).random((2, size, size, 3), dtype=np.float32)  # RGB in [0, 1]
    prefix = tmp_path / "model.ckpt-250228"
    want = tf_reference.write_checkpoint(prefix, depth, width, sk, size, images)
    ck = load_tf_checkpoint(prefix)
    assert ck.arch.name == name and ck.step == 250228
    with torch.no_grad():
        h = ck.encoder(torch.from_numpy(images).permute(0, 3, 1, 2))
        got = [h, ck.head(h), ck.classifier(h)]
    for label, ours, ref in zip(("h", "z", "logits"), got, want, strict=True):
        rel = float(np.abs(ours.numpy() - ref).max() / np.abs(ref).max())
        print(f"{name} {size}px {label}: max relative difference {rel:.2e} (max |TF| {np.abs(ref).max():.3g})")
        assert rel < 1e-4, (label, rel)
    if size == 224:  # the check can fail: PyTorch's symmetric max-pool padding shifts the map by one pixel
        ck.encoder.stem[-1] = torch.nn.MaxPool2d(3, 2, padding=1)
        with torch.no_grad():
            shifted = ck.encoder(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
        rel = float(np.abs(shifted - want[0]).max() / np.abs(want[0]).max())
        print(f"{name} {size}px h with MaxPool2d(padding=1): max relative difference {rel:.2e}")
        assert rel > 1e-3
