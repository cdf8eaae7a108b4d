"""What a GPU machine changes, tested on the CPU (GPU-RISKS.md items that need no GPU to check).

Device choice under torchrun, resuming a checkpoint written on another device type, gradient caching's BN
statistics under our SyncBatchNorm, and the one error line for a device that does not exist.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import simclr.distributed as distributed
import simclr.engine as engine
import simclr.gradcache as gradcache
from simclr.checkpoint import load_checkpoint, save_checkpoint
from simclr.cli import main
from simclr.errors import SimCLRError
from simclr.runtime import resolve_device


def write_npz(path, n=32, side=8):
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8), labels=np.arange(n) % 4)
    return path


ARGS = ["--set", "model.width_multiplier=0.125", "--set", "train.batch_size=16", "--set", "monitor.knn=false",
        "--set", "train.epochs=2"]  # fmt: skip


def test_device_flag_reaches_the_distributed_setup(tmp_path, monkeypatch):
    """GPU-RISKS 1: `--device cpu` under torchrun on a GPU host must not pick NCCL and cuda:LOCAL_RANK."""
    seen = {}
    real = engine.init_distributed

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "init_distributed", spy)
    data = write_npz(tmp_path / "d.npz")
    assert main(["pretrain", "--dataset", "npz", "--data", str(data), "--device", "cpu", "--out",
                 str(tmp_path / "run"), *ARGS, "--set", "train.max_steps=1"]) == 0  # fmt: skip
    assert seen["device"] == "cpu"


def test_more_ranks_than_gpus_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: pytest.fail("set_device on a missing GPU"))
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(SimCLRError, match="1 CUDA device.*nproc_per_node=1.*--device cpu"):
        distributed.init_distributed(device="auto")
    # --device cpu on the same host: the CPU, whatever the GPUs
    assert distributed.init_distributed(device="cpu").device == torch.device("cpu")


@pytest.mark.parametrize("name, expect", [("tpu", "unknown"), ("cuda:7", "CUDA"), ("meta", "only cpu and cuda")])
def test_a_device_that_does_not_exist_here_is_one_line(name, expect):
    with pytest.raises(SimCLRError, match=expect):
        resolve_device(name)


def test_resuming_a_checkpoint_whose_augmentation_stream_was_on_another_device(tmp_path, capsys):
    """GPU-RISKS 2: a CUDA generator's state (16 bytes) cannot be set on a CPU generator: reseed, say so."""
    data = write_npz(tmp_path / "d.npz")
    run = tmp_path / "run"
    base = ["pretrain", "--dataset", "npz", "--data", str(data), "--device", "cpu", "--out", str(run), *ARGS]
    assert main(base + ["--set", "train.max_steps=1"]) == 0
    path = run / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    assert state["rng"]["augment_device"] == "cpu"
    state["rng"]["augment"] = [torch.arange(16, dtype=torch.uint8)]  # what a CUDA run saves
    state["rng"]["augment_device"] = "cuda"
    save_checkpoint({k: v for k, v in state.items() if k not in ("format", "version")}, path)
    capsys.readouterr()
    assert main(["pretrain", "--out", str(run), "--resume", "--set", "train.max_steps=2"]) == 0
    out = capsys.readouterr().out
    assert "1 cuda process(es) on 1 cpu process(es)" in out and "re-seeded" in out
    assert load_checkpoint(path)["run_state"]["step"] == 2


def test_gradient_caching_counts_every_rank_under_our_sync_batchnorm(monkeypatch):
    """GPU-RISKS 6: the micro-batch BN statistics weigh a SyncBatchNorm layer's count by the world size."""
    monkeypatch.setattr(gradcache.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(gradcache.dist, "get_world_size", lambda: 2)
    for bn in (distributed.SyncBatchNorm(3), torch.nn.SyncBatchNorm(3), torch.nn.BatchNorm2d(3)):
        bn.train()
        stats = gradcache._RunningStatsOnce(torch.nn.Sequential(bn))
        with stats:
            x = torch.randn(4, 3, 5, 5)
            stats._hook(0)(bn, (x,), x)  # the hook alone: no collective needed
        count = stats.sums[0][0]
        assert count == (2 * 4 * 25 if type(bn) is not torch.nn.BatchNorm2d else 4 * 25), type(bn)
