"""channels_last with a guard for convolutions that crash this torch build (issue: SIGSEGV on CPU)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from simclr import channels_last as cl
from simclr.config import load_config
from simclr.models.build import build_model


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMCLR_CACHE", str(tmp_path / "cache"))


def test_signatures_cover_every_convolution_with_its_input_size():
    model = build_model(load_config("cifar10", overrides=["model.width_multiplier=0.125"]).model, 64)
    sigs = cl.conv_signatures(model, (2, 3, 64, 64))
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert sorted(sigs) == sorted(convs)
    # the strided 1x1 shortcut of group 2 sees group 1's 64 x 64 maps of 8 channels (CIFAR stem, no pooling)
    assert sigs["encoder.block_group2.0.shortcut.0"] == (8, 16, 1, 2, 0, 1, 1, 64, 64)
    assert all(p.device.type == "cpu" for p in model.parameters())  # the real model is untouched


def test_probe_marks_the_signature_that_kills_the_child_and_goes_on(monkeypatch):
    # A child that dies with SIGSEGV on one signature stands in for the torch bug, on any build.
    crash_on = [5, 5, 1, 1, 0, 1, 1, 7, 7]
    child = (
        "import json, os, signal, sys\n"
        "for i, s in enumerate(json.loads(sys.stdin.read())):\n"
        f"    if s == {crash_on}: os.kill(os.getpid(), signal.SIGSEGV)\n"
        "    print('ok', i, flush=True)\n"
    )
    monkeypatch.setattr(cl, "_CHILD", child)
    sigs = [(1, 1, 1, 1, 0, 1, 1, 4, 4), tuple(crash_on), (2, 2, 3, 1, 1, 1, 1, 4, 4)]
    assert cl.probe_convolutions(sigs) == {sigs[0]: True, sigs[1]: False, sigs[2]: True}
    monkeypatch.setattr(cl, "_CHILD", "raise SystemExit(3)")  # the cache answers without a child
    assert cl.probe_convolutions(sigs)[sigs[1]] is False


def test_guarded_convolution_runs_nchw_and_the_model_computes_the_same(monkeypatch):
    torch.manual_seed(0)
    model = build_model(load_config("cifar10", overrides=["model.width_multiplier=0.125"]).model, 32)
    reference = build_model(load_config("cifar10", overrides=["model.width_multiplier=0.125"]).model, 32)
    reference.load_state_dict(model.state_dict())
    bad = cl.conv_signatures(model, (2, 3, 32, 32))["encoder.block_group2.0.shortcut.0"]
    monkeypatch.setattr(cl, "probe_convolutions", lambda sigs: {s: s != bad for s in sigs})
    kept = cl.to_channels_last(model, (2, 3, 32, 32), torch.device("cpu"))
    assert kept == ["encoder.block_group2.0.shortcut.0"]
    weight = model.encoder.block_group2[0].shortcut[0].weight
    assert weight.stride() == (8, 1, 1, 1)  # default strides: not the channels_last ones of a 1x1 kernel
    assert model.encoder.block_group2[0].conv1[0].weight.is_contiguous(memory_format=torch.channels_last)
    seen = []
    model.encoder.block_group2[0].shortcut[0].register_forward_pre_hook(lambda m, i: seen.append(i[0].stride()))
    x = torch.randn(4, 3, 32, 32)
    h, z = model(x.contiguous(memory_format=torch.channels_last))
    assert seen and seen[0] == torch.empty(4, 8, 32, 32).stride()  # NCHW input
    h_ref, z_ref = reference(x)
    torch.testing.assert_close(z, z_ref, rtol=1e-3, atol=1e-4)  # layouts round differently


def test_on_cuda_nothing_is_probed(monkeypatch):
    monkeypatch.setattr(cl, "probe_convolutions", lambda sigs: pytest.fail("probed on cuda"))
    model = nn.Sequential(nn.Conv2d(3, 4, 1))
    assert cl.to_channels_last(model, (2, 3, 8, 8), torch.device("cuda")) == []
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_the_configuration_that_segfaulted_now_trains(tmp_path):
    """Issue 15.1: cifar10 preset, a folder at 64 px, width 0.125, batch 16 died with SIGSEGV on torch 2.13.

    Run in a subprocess, so a crash fails this test instead of killing the suite.
    """
    for c in "ab":
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(10):
            pixels = np.random.default_rng(i).integers(0, 256, (70, 80, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / c / f"{i}.png")
    sets = ["data.image_size=64", "model.width_multiplier=0.125", "train.batch_size=16", "train.max_steps=2"]
    cmd = [sys.executable, "-m", "simclr", "pretrain", "--preset", "cifar10", "--dataset", "folder",
           "--data", str(tmp_path / "imgs"), "--out", str(tmp_path / "run")]  # fmt: skip
    cmd += [arg for s in sets for arg in ("--set", s)]
    env = {**os.environ, "SIMCLR_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
