"""What a pretraining run keeps between steps and on disk: counters, signals, the log, the checkpoint.

:class:`RunState` (the counters a checkpoint restores), :class:`StopSignals` (SIGTERM / SIGINT become a flag
read at step boundaries), :class:`MetricsLog` (``metrics.jsonl``: sums on the device, one host read-back per
log line, averaged over ranks), :func:`save_run` / :func:`restore_run` (everything an exact resume needs,
every rank's augmentation stream included) and :func:`write_summary`.
"""

from __future__ import annotations

import hashlib
import json
import platform
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from simclr import __version__
from simclr.checkpoint import load_checkpoint, load_state_strict, save_checkpoint
from simclr.config import Config, config_to_dict
from simclr.distributed import DistInfo, all_gather_nograd, all_reduce_mean
from simclr.errors import SimCLRError
from simclr.files import write_text
from simclr.step import StepStats, TrainParts


@dataclass
class RunState:
    """Counters that a checkpoint restores."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already consumed
    bad_steps: int = 0  # non-finite losses in a row
    skipped_steps: int = 0  # non-finite losses in total


class StopSignals:
    """Turns SIGTERM / SIGINT into a flag read at step boundaries, so a checkpoint is saved first."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:  # second signal: give up waiting
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class MetricsLog:
    """``metrics.jsonl`` (and TensorBoard when installed): one JSON object per log interval or event.

    Step statistics are summed on the device (:meth:`add`) and read back once per :meth:`record`, averaged
    over ranks (the global batch's loss; probe hits and counts keep their ratio).
    """

    def __init__(self, run_dir: Path, enabled: bool, device: torch.device):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.sums = torch.zeros(4, device=device)  # loss, contrastive acc, probe hits, probe count
        self.steps = self.images = 0
        self.t0 = time.perf_counter()
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except Exception:  # tensorboard is optional
                self.tb = None

    def add(self, stats: StepStats, images: int) -> None:
        """Count one step of ``images`` images (all ranks together)."""
        with torch.no_grad():
            self.sums[0] += stats.loss
            self.sums[1] += stats.contrastive_acc
            if stats.probe_correct is not None:
                self.sums[2] += stats.probe_correct
                self.sums[3] += stats.probe_count
        self.steps += 1
        self.images += images

    def record(self, step: int, epoch: float, lr: float, skipped_steps: int) -> dict[str, Any]:
        """The interval's means (a collective: every rank calls it), written by rank 0; the sums restart."""
        sums = all_reduce_mean(self.sums).tolist()
        n = max(self.steps, 1)
        record = {
            "step": step,
            "epoch": epoch,
            "loss": sums[0] / n,
            "contrastive_acc": sums[1] / n,
            "lr": lr,
            "images_per_sec": self.images / max(time.perf_counter() - self.t0, 1e-9),
        }
        if sums[3] > 0:
            record["online_probe_acc"] = sums[2] / sums[3]
        if skipped_steps:
            record["skipped_steps"] = skipped_steps
        self.write(record)
        self.restart()
        return record

    def restart(self) -> None:
        """Start a new interval (also after an epoch's end work, which is not training time)."""
        self.sums.zero_()
        self.steps = self.images = 0
        self.t0 = time.perf_counter()

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:  # full disk, folder gone: one line, the checkpoint of the last step is intact
            raise SimCLRError(f"{self.path}: cannot append metrics ({e.strerror or e})") from None
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, int | float) and k not in ("step", "epoch"):
                    self.tb.add_scalar(k, v, record["step"])

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint's step (they will be logged again)."""
        if not (self.enabled and self.path.exists()):
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
        write_text(self.path, "".join(line + "\n" for line in keep), "metrics log")


def load_for_resume(ckpt_path: Path) -> dict:
    """A pretraining checkpoint with everything :func:`restore_run` needs, or one line naming what it lacks."""
    saved = load_checkpoint(ckpt_path)
    missing = [k for k in ("config", "module", "optimizer", "run_state", "rng") if k not in saved]
    if saved.get("kind") != "pretrain" or missing:
        raise SimCLRError(f"{ckpt_path}: not a pretraining checkpoint (kind {saved.get('kind')!r}, lacks {missing})")
    return saved


def save_run(parts: TrainParts, state: RunState, path: Path, dist: DistInfo, meta: dict[str, Any]) -> None:
    """Write the checkpoint (rank 0) after gathering every rank's augmentation stream (a collective).

    ``meta``: ``image_size``, ``data_stats``, ``num_classes``. With each rank's stream saved, a resumed run
    draws the same views on each rank as the uninterrupted one would have.
    """
    gen = [g.cpu() for g in all_gather_nograd(parts.generator.get_state().to(parts.device).unsqueeze(0))]
    if not dist.is_main:
        return
    save_checkpoint(
        {
            "kind": "pretrain",
            "config": config_to_dict(parts.cfg),
            **meta,
            "model": parts.model.state_dict(),
            "module": parts.module.state_dict(),
            "optimizer": parts.optimizer.state_dict(),
            "momentum_model": parts.momentum_model.state_dict() if parts.momentum_model else None,
            "memory": parts.queue.state_dict() if parts.queue is not None else None,
            "run_state": vars(state).copy(),
            "rng": {"augment": gen, "augment_device": parts.device.type, "torch": torch.get_rng_state()},
            "library_version": __version__,
        },
        path,
    )


def restore_run(parts: TrainParts, saved: dict, path: Path, dist: DistInfo) -> RunState:
    """Load a checkpoint of :func:`save_run` into ``parts``; returns its counters.

    Augmentation streams are restored per rank; a checkpoint of another world size or device type (a CUDA
    generator's state is 16 bytes, a CPU one's 5,056) re-seeds new streams from the saved ones, with a
    notice: same data order and weights, other views.
    """
    load_state_strict(parts.module, saved["module"], path)
    parts.optimizer.load_state_dict(saved["optimizer"])
    if parts.momentum_model is not None:
        parts.momentum_model.load_state_dict(saved["momentum_model"])
        parts.queue.load_state_dict(saved["memory"])
    gen_states = saved["rng"]["augment"]  # one per rank of the run that saved it
    saved_type = saved["rng"].get("augment_device") or ("cuda" if gen_states[0].numel() == 16 else "cpu")
    if len(gen_states) == dist.world_size and saved_type == parts.device.type:
        parts.generator.set_state(gen_states[dist.rank])
    else:  # a new stream per rank (sharing one would repeat views across ranks), derived from the saved one
        digest = hashlib.sha256(gen_states[0].numpy().tobytes()).digest()
        parts.generator.manual_seed(int.from_bytes(digest[:7], "little") + dist.rank)
        if dist.is_main:
            print(
                f"simclr pretrain: resuming a checkpoint of {len(gen_states)} {saved_type} process(es) on "
                f"{dist.world_size} {parts.device.type} process(es): augmentation streams re-seeded from the "
                "saved ones (same data order and weights; the views differ from an uninterrupted run's)",
                flush=True,
            )
    torch.set_rng_state(saved["rng"]["torch"])
    return RunState(**saved["run_state"])


def hardware(device: torch.device) -> str:
    """The GPU's name, or the CPU and its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def write_summary(
    cfg: Config, run_dir: Path, state: RunState, total_steps: int, stopped_by: int | None, dist: DistInfo, device
) -> dict:
    """``summary.json`` (rank 0) with the run's status, and one line saying how to go on."""
    if stopped_by is not None:
        status = "interrupted"
    elif state.epoch < cfg.train.epochs:
        status = "stopped_at_max_steps"  # train.max_steps before the schedule's end: --resume continues it
    else:
        status = "finished"
    ckpt_path = run_dir / "checkpoints" / "last.pt"
    summary = {
        "run_dir": str(run_dir),
        "status": status,
        "steps": state.step,
        "total_steps": total_steps,
        "epochs": state.epoch,
        "skipped_steps": state.skipped_steps,
        "checkpoint": str(ckpt_path),
        "device": hardware(device),
        "world_size": dist.world_size,
        "library_version": __version__,
    }
    if dist.is_main:
        write_text(run_dir / "summary.json", json.dumps(summary, indent=2), "run summary")
        note = {
            "interrupted": "interrupted by signal; resume with --resume",
            "stopped_at_max_steps": f"stopped at step {state.step} of {total_steps} (train.max_steps); "
            "--resume continues to the end",
            "finished": "finished",
        }[status]
        print(f"simclr pretrain: {note}; checkpoint {ckpt_path}", flush=True)
    return summary


__all__ = [
    "MetricsLog",
    "RunState",
    "StopSignals",
    "hardware",
    "load_for_resume",
    "restore_run",
    "save_run",
    "write_summary",
]
