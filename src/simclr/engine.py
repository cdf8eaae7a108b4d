"""The SimCLR pretraining loop: data, the step, log, checkpoint, resume, signals (nanoGPT-style).

The step itself (views, forward, NT-Xent, backward, optimizer, memory) is :func:`simclr.step.train_step`;
the run folder's pieces (counters, signals, ``metrics.jsonl``, checkpoints, summary) are in
:mod:`simclr.runfolder`. What stays here is the order of things: one epoch after another, a checkpoint every
``train.checkpoint_every`` steps and at each epoch's end, the kNN monitor after each epoch, a clean stop on a
signal or too many non-finite steps, and the same decisions on every rank under torchrun.

Loss scale: ``metrics.jsonl`` logs the paper's NT-Xent (mean over the 2N views). The gradient is taken of
twice that value, the official code's scale, so that weight decay inside LARS is balanced as in the paper.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch

from simclr.augment import EvalTransform
from simclr.config import Config, config_from_dict, dump_config, flatten_dict, micro_batch_images, resume_config
from simclr.data.access import Data, batches, data_stats, open_split, stored_side
from simclr.distributed import DistInfo, all_reduce_max, barrier, cleanup, init_distributed
from simclr.errors import SimCLRError
from simclr.files import folder_lock, make_folder, write_text
from simclr.monitor import KnnMonitor
from simclr.runfolder import (
    MetricsLog,
    RunState,
    StopSignals,
    load_for_resume,
    restore_run,
    save_run,
    write_summary,
)
from simclr.runtime import progress as runtime_progress
from simclr.runtime import resolve_device, set_kernel_flags
from simclr.step import PretrainModule, StepStats, TrainParts, build_parts, step_objective, train_step


def load_training_data(cfg: Config) -> Data:
    """The pretraining images (labels kept, if any, for the online probe only): in memory, or streamed when
    a folder is too large (``data.in_memory``)."""
    d = cfg.data
    return open_split(
        d.dataset, d.path, d.train_split, d.image_size, in_memory=d.in_memory, download=d.download,
        max_bad_fraction=d.max_bad_fraction,
    )  # fmt: skip


def pretrain(
    cfg: Config | None, out: str | os.PathLike, resume: bool = False, overrides: list[str] | tuple[str, ...] = ()
) -> dict:
    """Run SimCLR pretraining (v1 section 2; v2 section 2.1 with ``model.head_layers=3``).

    Writes ``out/config.yaml``, ``out/metrics.jsonl``, ``out/checkpoints/last.pt`` and ``out/summary.json``;
    returns the summary. ``resume=True`` continues exactly from ``out/checkpoints/last.pt`` with the run's
    own configuration; ``cfg`` (may be None) and ``key=value`` ``overrides`` are then checked against it
    (:func:`simclr.config.resume_config`).
    """
    if cfg is None and not resume:
        raise SimCLRError("pretrain: a config is needed to start a new run")
    run_dir = Path(out)
    ckpt_path = run_dir / "checkpoints" / "last.pt"
    if resume and not ckpt_path.is_file():
        raise SimCLRError(f"{ckpt_path}: nothing to resume (no checkpoint in {run_dir})")
    # One writer per run folder: a second run or --resume on it is refused while this one lives. Rank 0
    # (torchrun's RANK, read before the group exists) holds the lock; the other ranks write nothing.
    main_rank = int(os.environ.get("RANK", "0")) == 0
    with folder_lock(run_dir, "run folder") if main_rank else nullcontext():
        saved = None
        if resume:
            saved = load_for_resume(ckpt_path)
            try:
                stored = set(flatten_dict(saved["config"]))  # keys added since the run was saved keep its own
                cfg = resume_config(config_from_dict(saved["config"]), cfg, overrides, stored_keys=stored)
            except SimCLRError as e:
                raise SimCLRError(f"{ckpt_path}: --resume: {e}") from None
        elif ckpt_path.exists():
            raise SimCLRError(f"{run_dir}: already holds a run; pass --resume to continue it or choose another --out")
        dist = init_distributed(device=cfg.train.device)
        try:
            return _train(cfg, run_dir, saved, dist)
        finally:
            cleanup()


def _setup(cfg: Config, dist: DistInfo) -> torch.device:
    """Check what the loop needs of ``cfg`` and set the process's seed and kernels; returns the device."""
    t = cfg.train
    if t.accumulate != 1:
        raise SimCLRError(
            "train.accumulate: plain gradient accumulation would shrink the contrastive batch; it is not "
            "supported (gradient caching, train.micro_batch, is the exact alternative)"
        )
    if t.batch_size % dist.world_size:
        raise SimCLRError(f"train.batch_size={t.batch_size} is not divisible by the {dist.world_size} ranks")
    micro_batch_images(t, dist.world_size)  # gradient caching's settings, checked before any data is read
    device = resolve_device(t.device, dist)
    set_kernel_flags(device, t.deterministic)
    torch.manual_seed(t.seed)
    return device


def _nchw_notice(is_main: bool, kept: list[str]) -> None:
    """The main rank says which convolutions :func:`~simclr.step.build_parts` kept in NCHW."""
    if is_main:
        names = ", ".join(kept[:3]) + (", ..." if len(kept) > 3 else "")
        print(f"simclr pretrain: {len(kept)} convolution(s) kept in NCHW: this torch build crashes on them "
              f"in channels_last ({names})", flush=True)  # fmt: skip


def _knn_monitor(cfg: Config, data: Data, image_size: int, mean, std, device) -> KnnMonitor:
    """The kNN monitor on the run's evaluation view (centre crop at ``image_size``)."""
    a = cfg.augment
    evaluate = EvalTransform(image_size, a.eval_crop_fraction, mean, std, a.normalize, a.eval_interpolation)
    return KnnMonitor.from_config(cfg, data, evaluate, device)


def _announce(cfg: Config, data: Data, parts: TrainParts, device, run_dir: Path) -> None:
    """The run's one-line summary: data, encoder, batch, schedule, device, folder."""
    t = cfg.train
    n_params = sum(p.numel() for p in parts.model.encoder.parameters()) / 1e6
    print(
        f"simclr pretrain: {len(data)} images (stored side {stored_side(data)}) from {data.source}, "
        f"{cfg.model.arch} x{cfg.model.width_multiplier} ({n_params:.2f}M encoder params), batch "
        f"{t.batch_size}, {t.epochs} epochs = {parts.total_steps} steps, peak lr {parts.peak_lr:.4g}, "
        f"device {device}, run folder {run_dir}",
        flush=True,
    )


def _count_skipped(state: RunState, stats: StepStats, max_bad_steps: int, run_dir: Path, ckpt_path: Path) -> None:
    """Counts a step the guard skipped (non-finite loss or gradient); too many in a row stop the run."""
    if stats.applied:
        state.bad_steps = 0
        return
    state.bad_steps += 1
    state.skipped_steps += 1
    if state.bad_steps >= max_bad_steps:
        kept = f"the last good checkpoint {ckpt_path} is intact" if ckpt_path.exists() else (
            "no checkpoint was written yet")  # fmt: skip
        raise SimCLRError(
            f"{run_dir}: non-finite loss or gradient at step {state.step + 1} (lr {stats.lr:.4g}), "
            f"{state.bad_steps} steps in a row (train.max_bad_steps); {kept}"
        )


def _train(cfg: Config, run_dir: Path, saved: dict | None, dist: DistInfo) -> dict:
    t = cfg.train
    device = _setup(cfg, dist)
    ckpt_path = run_dir / "checkpoints" / "last.pt"

    # ---- data: uint8 images, held on the device when they fit ------------------------------------------
    data = load_training_data(cfg)
    image_size = cfg.model.input_size or stored_side(data)
    mean, std = data_stats(data)
    num_classes = int(data.labels.max()) + 1 if data.labels is not None else None
    source = batches(
        data, t.batch_size, device, shuffle=True, drop_last=True, seed=t.seed, rank=dist.rank,
        world_size=dist.world_size, threads=cfg.data.workers or None,
    )  # fmt: skip
    steps_per_epoch = len(source)
    if steps_per_epoch == 0:
        raise SimCLRError(f"{data.source}: {len(data)} images are fewer than one batch of {t.batch_size}")

    # ---- the trainable parts (model, optimizer, augmentation, memory), restored on resume --------------
    parts = build_parts(
        cfg, image_size, num_classes, device, steps_per_epoch=steps_per_epoch, mean=mean, std=std,
        rank=dist.rank, world_size=dist.world_size, on_nchw=partial(_nchw_notice, dist.is_main),
    )  # fmt: skip
    state = restore_run(parts, saved, ckpt_path, dist) if saved is not None else RunState()
    del saved
    meta = {"image_size": image_size, "data_stats": {"mean": list(mean), "std": list(std)}, "num_classes": num_classes}

    # ---- run folder ------------------------------------------------------------------------------------
    log = MetricsLog(run_dir, dist.is_main, device)
    if dist.is_main:
        make_folder(run_dir / "checkpoints", "run folder")
        write_text(run_dir / "config.yaml", dump_config(cfg), "run config")
    # Resuming drops lines logged after the checkpoint; a fresh start drops those of a run killed before
    # its first checkpoint (they would be logged twice, one of them possibly cut in half).
    log.truncate_after(state.step)
    knn = _knn_monitor(cfg, data, image_size, mean, std, device) if dist.is_main and cfg.monitor.knn else None
    if dist.is_main:
        _announce(cfg, data, parts, device, run_dir)

    progress = runtime_progress(total=parts.total_steps, initial=state.step, unit="step", enabled=dist.is_main)
    max_steps = t.max_steps if t.max_steps is not None else parts.total_steps
    stopped_by: int | None = None
    with StopSignals() as stop, progress:  # the bar is closed (its line ended) before any error is printed
        agreed = {"signal": 0}

        def agree(total: torch.Tensor) -> bool:
            """Skip the step? The same answer on every rank (one 2-element MAX all-reduce per step).

            Under torchrun each step's decisions must be the same on every rank, else their collectives pair
            up wrongly and the run hangs: a rank skipping backward alone leaves the others in DDP's gradient
            all-reduce, and a rank stopping alone meets their next step with its checkpoint's all-gather. So
            the signal this rank has seen rides in the same all-reduce as the loss test.
            """
            flags = torch.stack([(~torch.isfinite(total.detach())).float(), total.new_tensor(float(stop.signal or 0))])
            bad, sig = all_reduce_max(flags).tolist()
            agreed["signal"] = int(sig)
            return bad > 0

        while state.epoch < t.epochs and state.step < max_steps and stopped_by is None:
            source.set_epoch(state.epoch, start_batch=state.batch_in_epoch)
            for batch in source:
                images, labels = batch.images, batch.labels
                stats = train_step(parts, images, labels, state.step, batch.sizes, agree=agree)
                _count_skipped(state, stats, t.max_bad_steps, run_dir, ckpt_path)
                log.add(stats, images.shape[0] * dist.world_size)
                state.step += 1
                state.batch_in_epoch += 1
                progress.update(1)
                if state.step % t.log_every == 0 or state.step == max_steps:
                    epoch = state.epoch + state.batch_in_epoch / steps_per_epoch
                    r = log.record(state.step, epoch, stats.lr, state.skipped_steps)
                    progress.set_postfix(loss=f"{r['loss']:.3f}", acc=f"{r['contrastive_acc']:.2f}",
                                         lr=f"{stats.lr:.3g}", img_s=f"{r['images_per_sec']:.0f}")  # fmt: skip
                if state.step % t.checkpoint_every == 0:
                    save_run(parts, state, ckpt_path, dist, meta)
                signalled = agreed["signal"] if dist.world_size > 1 else stop.signal
                if signalled:  # on every rank at the same step
                    stopped_by = signalled
                    break
                if state.step >= max_steps and state.batch_in_epoch < steps_per_epoch:
                    break  # mid-epoch stop; at an epoch's last batch the epoch-end work below must still run
            else:  # epoch finished
                state.epoch += 1
                state.batch_in_epoch = 0
                if knn is not None:
                    top1 = knn.evaluate(parts.model.encoder)
                    parts.model.train()
                    log.write({"step": state.step, "epoch": state.epoch, "knn_monitor_top1": top1})
                    progress.write(f"epoch {state.epoch}: kNN monitor top-1 {top1:.4f}")
                save_run(parts, state, ckpt_path, dist, meta)
                log.restart()
        save_run(parts, state, ckpt_path, dist, meta)
    progress.close()
    summary = write_summary(cfg, run_dir, state, parts.total_steps, stopped_by, dist, device)
    # The other ranks wait until rank 0 has written the checkpoint and summary: under torchrun, the first
    # worker to exit makes the launcher stop the others, which must not cut rank 0's writing short.
    barrier()
    if stopped_by is not None:
        summary["signal"] = stopped_by
    return summary


__all__ = ["PretrainModule", "load_training_data", "pretrain", "step_objective"]
