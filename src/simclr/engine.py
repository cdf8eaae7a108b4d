"""The SimCLR pretraining loop: data, two views, forward, NT-Xent, backward, step, log, checkpoint.

Readable top to bottom (nanoGPT-style). Everything method-specific lives elsewhere: views in
:mod:`simclr.augment`, the networks in :mod:`simclr.models`, the loss in :mod:`simclr.loss`, LARS and the
schedule in :mod:`simclr.optim`, the memory queue in :mod:`simclr.memory`, gathering across ranks in
:mod:`simclr.distributed`.

Loss scale: ``metrics.jsonl`` logs the paper's NT-Xent (mean over the 2N views). The gradient is taken of
twice that value, the official code's scale, so that weight decay inside LARS is balanced as in the paper.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from simclr import __version__
from simclr.augment import Augment, EvalTransform
from simclr.channels_last import to_channels_last
from simclr.checkpoint import load_checkpoint, load_state_strict, save_checkpoint
from simclr.config import Config, config_from_dict, config_to_dict, dump_config, micro_batch_images, resume_config
from simclr.data import ImageData, load_dataset, make_batch_source
from simclr.data.base import channel_stats
from simclr.distributed import (
    DistInfo,
    all_gather_nograd,
    all_reduce_max,
    all_reduce_mean,
    barrier,
    cleanup,
    convert_sync_batchnorm,
    init_distributed,
)
from simclr.errors import SimCLRError
from simclr.files import folder_lock, make_folder, write_text
from simclr.gradcache import grad_cache_two_views, pair_micro_batches, unpair
from simclr.loss import nt_xent
from simclr.memory import MemoryQueue, MomentumEncoder
from simclr.models.build import build_model
from simclr.monitor import KnnMonitor
from simclr.optim import build_optimizer, lr_at, param_groups
from simclr.runtime import autocast as runtime_autocast
from simclr.runtime import progress as runtime_progress
from simclr.runtime import resolve_device


def load_training_data(cfg: Config) -> ImageData:
    """The pretraining images (labels kept, if any, for the online probe only)."""
    d = cfg.data
    return load_dataset(
        d.dataset,
        d.path,
        split=d.train_split,
        image_size=d.image_size,
        download=d.download,
        max_bad_fraction=d.max_bad_fraction,
    )


class _Stop:
    """Turns SIGTERM / SIGINT into a flag read at step boundaries, so a checkpoint is saved first."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self) -> _Stop:
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


@dataclass
class RunState:
    """Counters that a checkpoint restores."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already consumed
    bad_steps: int = 0  # non-finite losses in a row
    skipped_steps: int = 0  # non-finite losses in total


class PretrainModule(nn.Module):
    """Encoder + projection head, plus the online linear probe on stop-gradient h (TF2 default)."""

    def __init__(self, model: nn.Module, num_classes: int | None):
        super().__init__()
        self.model = model
        self.probe = nn.Linear(model.encoder.out_dim, num_classes) if num_classes else None

    def forward(self, x: torch.Tensor):
        h, z = self.model(x)
        logits = self.probe(h.detach()) if self.probe is not None else None
        return h, z, logits


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


class MetricsWriter:
    """Appends one JSON object per line to ``metrics.jsonl`` (and TensorBoard when installed)."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except Exception:  # tensorboard is optional
                self.tb = None

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
            saved = _load_for_resume(ckpt_path)
            try:
                cfg = resume_config(config_from_dict(saved["config"]), cfg, overrides)
            except SimCLRError as e:
                raise SimCLRError(f"{ckpt_path}: --resume: {e}") from None
        elif ckpt_path.exists():
            raise SimCLRError(f"{run_dir}: already holds a run; pass --resume to continue it or choose another --out")
        dist = init_distributed(device=cfg.train.device)
        try:
            return _pretrain(cfg, run_dir, saved, dist)
        finally:
            cleanup()


def _load_for_resume(ckpt_path: Path) -> dict:
    saved = load_checkpoint(ckpt_path)
    missing = [k for k in ("config", "module", "optimizer", "run_state", "rng") if k not in saved]
    if saved.get("kind") != "pretrain" or missing:
        raise SimCLRError(f"{ckpt_path}: not a pretraining checkpoint (kind {saved.get('kind')!r}, lacks {missing})")
    return saved


def _pretrain(cfg: Config, run_dir: Path, saved: dict | None, dist: DistInfo) -> dict:
    ckpt_path = run_dir / "checkpoints" / "last.pt"
    t, a = cfg.train, cfg.augment
    device = resolve_device(t.device, dist)
    if t.accumulate != 1:
        raise SimCLRError(
            "train.accumulate: plain gradient accumulation would shrink the contrastive batch; it is not "
            "supported (gradient caching, train.micro_batch, is the exact alternative)"
        )
    if t.batch_size % dist.world_size:
        raise SimCLRError(f"train.batch_size={t.batch_size} is not divisible by the {dist.world_size} ranks")
    micro_batch = micro_batch_images(t, dist.world_size)  # images per forward pass; None: the plain step
    if t.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(t.seed)
    if device.type == "cuda":
        # TF32 for convolutions only: matmul TF32 would also reach NT-Xent's logits (10 mantissa bits, about
        # 1e-2 logit error at tau 0.1) and every later stage of the process.
        torch.backends.cudnn.benchmark = not t.deterministic
        torch.backends.cudnn.allow_tf32 = True

    # ---- data: uint8 images, held on the device when they fit ------------------------------------------
    data = load_training_data(cfg)
    image_size = cfg.model.input_size or data.images.shape[-1]
    mean, std = channel_stats(data.images)
    num_classes = int(data.labels.max()) + 1 if data.labels is not None else None
    source = make_batch_source(
        data,
        t.batch_size,
        device,
        shuffle=True,
        drop_last=True,
        seed=t.seed,
        rank=dist.rank,
        world_size=dist.world_size,
        workers=cfg.data.workers,
    )
    steps_per_epoch = len(source)
    if steps_per_epoch == 0:
        raise SimCLRError(f"{data.source}: {len(data.images)} images are fewer than one batch of {t.batch_size}")
    total_steps = t.epochs * steps_per_epoch
    warmup_steps = round(cfg.optim.warmup_epochs * steps_per_epoch)

    # ---- model, optimizer, augmentation ---------------------------------------------------------------
    model = build_model(cfg.model, image_size)
    module = PretrainModule(model, num_classes if cfg.monitor.online_probe else None).to(device)
    channels_last = t.channels_last is not False  # None (default) = on: faster on CPU as well as on GPU
    if channels_last:
        kept = to_channels_last(module, (2, 3, image_size, image_size), device)
        if kept and dist.is_main:
            print(
                f"simclr pretrain: {len(kept)} convolution(s) kept in NCHW: this torch build crashes on them "
                f"in channels_last ({', '.join(kept[:3])}{', ...' if len(kept) > 3 else ''})",
                flush=True,
            )
    # The online probe is trained by the same optimizer but, as `head_supervised` in the official code,
    # without LARS adaptation or weight decay.
    groups = param_groups(module.model, cfg.optim.weight_decay)
    if module.probe is not None:
        groups.append({"params": list(module.probe.parameters()), "weight_decay": 0.0, "lars_exclude": True})
    optimizer, peak_lr = build_optimizer(groups, cfg.optim, t.batch_size)
    momentum_model = MomentumEncoder(model) if cfg.loss.memory_size > 0 else None
    queue = MemoryQueue(cfg.loss.memory_size, cfg.model.projection_dim).to(device) if momentum_model else None
    augment = Augment(a, image_size, mean=mean, std=std).to(device)
    generator = torch.Generator(device=device)
    generator.manual_seed(t.seed * 1000 + dist.rank)  # each rank draws different views

    state = RunState()
    if saved is not None:
        load_state_strict(module, saved["module"], ckpt_path)
        optimizer.load_state_dict(saved["optimizer"])
        if momentum_model is not None:
            momentum_model.load_state_dict(saved["momentum_model"])
            queue.load_state_dict(saved["memory"])
        state = RunState(**saved["run_state"])
        gen_states = saved["rng"]["augment"]  # one per rank of the run that saved it
        # A CPU generator's state is 5,056 bytes, a CUDA one's 16: older checkpoints did not record the type.
        saved_type = saved["rng"].get("augment_device") or ("cuda" if gen_states[0].numel() == 16 else "cpu")
        if len(gen_states) == dist.world_size and saved_type == device.type:
            generator.set_state(gen_states[dist.rank])
        else:  # a new stream per rank (sharing one would repeat views across ranks), derived from the saved one
            digest = hashlib.sha256(gen_states[0].numpy().tobytes()).digest()
            generator.manual_seed(int.from_bytes(digest[:7], "little") + dist.rank)
            if dist.is_main:
                was = f"{len(gen_states)} {saved_type} process(es)"
                print(
                    f"simclr pretrain: resuming a checkpoint of {was} on {dist.world_size} {device.type} "
                    "process(es): augmentation streams re-seeded from the saved ones (same data order and "
                    "weights; the views differ from an uninterrupted run's)",
                    flush=True,
                )
        torch.set_rng_state(saved["rng"]["torch"])
        del saved

    train_module: nn.Module = module
    if dist.world_size > 1:
        if t.global_bn:
            train_module = convert_sync_batchnorm(train_module)
        train_module = nn.parallel.DistributedDataParallel(
            train_module, device_ids=[device.index] if device.type == "cuda" else None
        )
    if t.compile:
        train_module = torch.compile(train_module)
    autocast = runtime_autocast(device, t.precision)

    # ---- run folder ------------------------------------------------------------------------------------
    writer = MetricsWriter(run_dir, dist.is_main)
    if dist.is_main:
        make_folder(run_dir / "checkpoints", "run folder")
        write_text(run_dir / "config.yaml", dump_config(cfg), "run config")
    # Resuming drops lines logged after the checkpoint; a fresh start drops those of a run killed before
    # its first checkpoint (they would be logged twice, one of them possibly cut in half).
    writer.truncate_after(state.step)
    knn = None
    if dist.is_main and cfg.monitor.knn:
        knn = KnnMonitor.from_config(
            cfg, data, EvalTransform(image_size, a.eval_crop_fraction, mean, std, normalize=a.normalize), device
        )

    def checkpoint() -> None:
        # Every rank's augmentation stream (a collective, so all ranks call this), so that a resumed run
        # draws the same views on each rank as the uninterrupted one would have.
        gen_state = generator.get_state().to(device).unsqueeze(0)
        gen = [g.cpu() for g in all_gather_nograd(gen_state)]
        if not dist.is_main:
            return
        save_checkpoint(
            {
                "kind": "pretrain",
                "config": config_to_dict(cfg),
                "image_size": image_size,
                "data_stats": {"mean": list(mean), "std": list(std)},
                "model": model.state_dict(),
                "module": module.state_dict(),
                "optimizer": optimizer.state_dict(),
                "momentum_model": momentum_model.state_dict() if momentum_model else None,
                "memory": queue.state_dict() if queue is not None else None,
                "run_state": vars(state).copy(),
                "rng": {"augment": gen, "augment_device": device.type, "torch": torch.get_rng_state()},
                "num_classes": num_classes,
                "library_version": __version__,
            },
            ckpt_path,
        )

    if dist.is_main:
        n_params = sum(p.numel() for p in model.encoder.parameters()) / 1e6
        print(
            f"simclr pretrain: {len(data.images)} images {tuple(data.images.shape[1:])} from {data.source}, "
            f"{cfg.model.arch} x{cfg.model.width_multiplier} ({n_params:.2f}M "
            f"encoder params), batch {t.batch_size}, {t.epochs} epochs = {total_steps} steps, peak lr {peak_lr:.4g}, "
            f"device {device}, run folder {run_dir}",
            flush=True,
        )
    progress = runtime_progress(total=total_steps, initial=state.step, unit="step", enabled=dist.is_main)
    # The step's two decisions, the same on every rank (see skip_step): skip it, and the signal to stop on.
    agreed = {"skip": False, "signal": 0}

    def skip_step(total: torch.Tensor) -> bool:
        """Whether any rank's loss is non-finite; every rank calls it once per step, at the same point.

        Under torchrun each step's decisions must be the same on every rank, else their collectives pair
        up wrongly and the run hangs: a rank skipping backward alone leaves the others in DDP's gradient
        all-reduce, and a rank stopping alone (its signal seen a step before the others saw theirs) meets
        their next step with its checkpoint's all-gather. So the signal this rank has seen (its number, 0 for
        none) rides in the same all-reduce as the loss test: one 2-element MAX per step, where the loss is
        read on the host anyway (microseconds on gloo, one tiny NCCL call on GPUs). Single process: no
        collective, and the end of the step reads the signal flag itself, as before.
        """
        flags = torch.stack([(~torch.isfinite(total.detach())).float(), total.new_tensor(float(stop.signal or 0))])
        bad, sig = all_reduce_max(flags).tolist()
        agreed.update(skip=bad > 0, signal=int(sig))
        return agreed["skip"]

    log_sums = torch.zeros(4, device=device)  # loss, contrastive acc, probe acc, probe count
    log_images, log_t0 = 0, time.perf_counter()
    stopped_by: int | None = None
    max_steps = t.max_steps if t.max_steps is not None else total_steps
    train_module.train()
    # The forward pass updates BN running statistics before the loss is known to be finite: a copy of them
    # after the last good step is what a skipped step restores.
    bn_stats = list(module.buffers())
    bn_stats_good = [b.detach().clone() for b in bn_stats]

    with _Stop() as stop, progress:  # the bar is closed (its line ended) before any error is printed
        while state.epoch < t.epochs and state.step < max_steps and stopped_by is None:
            source.set_epoch(state.epoch, start_batch=state.batch_in_epoch)
            for images, labels, *_ in source:
                lr = lr_at(state.step, total_steps, warmup_steps, peak_lr, cfg.optim.schedule)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)

                # Two views of every image, made on the device (v1 section 3): rows [0, B) and [B, 2B).
                with torch.no_grad():
                    v1, v2 = augment.two_views(images, generator)
                    views = torch.cat([v1, v2])  # (2B, 3, S, S); BN statistics over both views as in the paper
                    if channels_last:
                        views = views.contiguous(memory_format=torch.channels_last)
                optimizer.zero_grad(set_to_none=True)
                logged: dict = {}
                negatives = queue.negatives() if queue is not None else None
                # The loss over the whole batch; detached values for the logs go into `logged`.
                objective = partial(
                    step_objective, labels=labels, negatives=negatives, loss_cfg=cfg.loss, logged=logged
                )
                if micro_batch is None:
                    with autocast:
                        out = train_module(views)
                    total = objective(out)
                    skip_step(total)
                else:  # gradient caching: forward and backward here, the loss still over the whole batch
                    with autocast:
                        total = grad_cache_two_views(
                            train_module,
                            views,
                            objective,
                            micro_batch,
                            checkpoint=t.activation_checkpointing,
                            skip_nonfinite=skip_step,  # backward only when no rank's loss is non-finite
                        )
                loss, z_a, z_b = logged["loss"], logged["z_a"], logged["z_b"]
                if "probe_count" in logged:
                    log_sums[2] += logged["probe_correct"]
                    log_sums[3] += logged["probe_count"]

                if agreed["skip"]:  # skipped, counted; the run stops after too many in a row
                    state.bad_steps += 1
                    state.skipped_steps += 1
                else:
                    if micro_batch is None:
                        total.backward()
                    # One fused norm over all gradients: non-finite if any element is (a single host sync).
                    # Under DDP the gradients are the all-reduced ones, the same on every rank, and so is this.
                    grads = [p.grad for p in module.parameters() if p.grad is not None]
                    grads_ok = bool(torch.stack(torch._foreach_norm(grads)).isfinite().all())
                    if grads_ok:
                        optimizer.step()
                        state.bad_steps = 0
                        if momentum_model is not None:
                            momentum_model.update(model, cfg.loss.memory_momentum)
                            with torch.no_grad(), autocast:
                                if micro_batch is None:
                                    _, z_m = momentum_model(views)
                                else:  # in the online step's micro-batches (memory, BN statistics)
                                    chunks = pair_micro_batches(views, micro_batch).split(2 * micro_batch)
                                    z_m = unpair(torch.cat([momentum_model(c)[1] for c in chunks]), micro_batch)
                            queue.enqueue(F.normalize(z_m.float(), dim=1))
                    else:
                        state.bad_steps += 1
                        state.skipped_steps += 1
                if state.bad_steps:  # a skipped step leaves no trace, BN statistics included
                    torch._foreach_copy_(bn_stats, bn_stats_good)
                    if state.bad_steps >= t.max_bad_steps:
                        kept = f"the last good checkpoint {ckpt_path} is intact" if ckpt_path.exists() else (
                            "no checkpoint was written yet")  # fmt: skip
                        raise SimCLRError(
                            f"{run_dir}: non-finite loss or gradient at step {state.step + 1} (lr {lr:.4g}), "
                            f"{state.bad_steps} steps in a row (train.max_bad_steps); {kept}"
                        )
                else:
                    torch._foreach_copy_(bn_stats_good, bn_stats)
                with torch.no_grad():
                    log_sums[0] += loss.detach()
                    log_sums[1] += _contrastive_accuracy(z_a.detach(), z_b.detach())
                state.step += 1
                state.batch_in_epoch += 1
                log_images += images.shape[0] * dist.world_size
                progress.update(1)

                if state.step % t.log_every == 0 or state.step == max_steps:
                    # The only host read-back, once per log interval; the mean over ranks is the global
                    # batch's loss (each rank's is over its own views) and keeps probe sums' ratio.
                    sums = all_reduce_mean(log_sums).tolist()
                    n = t.log_every if state.step % t.log_every == 0 else state.step % t.log_every
                    elapsed = time.perf_counter() - log_t0
                    record = {
                        "step": state.step,
                        "epoch": state.epoch + state.batch_in_epoch / steps_per_epoch,
                        "loss": sums[0] / n,
                        "contrastive_acc": sums[1] / n,
                        "lr": lr,
                        "images_per_sec": log_images / max(elapsed, 1e-9),
                    }
                    if sums[3] > 0:
                        record["online_probe_acc"] = sums[2] / sums[3]
                    if state.skipped_steps:
                        record["skipped_steps"] = state.skipped_steps
                    writer.write(record)
                    progress.set_postfix(
                        loss=f"{record['loss']:.3f}",
                        acc=f"{record['contrastive_acc']:.2f}",
                        lr=f"{lr:.3g}",
                        img_s=f"{record['images_per_sec']:.0f}",
                    )
                    log_sums.zero_()
                    log_images, log_t0 = 0, time.perf_counter()
                if state.step % t.checkpoint_every == 0:
                    checkpoint()
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
                    top1 = knn.evaluate(model.encoder)
                    model.train()
                    writer.write({"step": state.step, "epoch": state.epoch, "knn_monitor_top1": top1})
                    progress.write(f"epoch {state.epoch}: kNN monitor top-1 {top1:.4f}")
                checkpoint()
                log_t0 = time.perf_counter()
                log_images = 0
        checkpoint()
    progress.close()

    if stopped_by is not None:
        status = "interrupted"
    elif state.epoch < t.epochs:
        status = "stopped_at_max_steps"  # train.max_steps before the schedule's end: --resume continues it
    else:
        status = "finished"
    summary = {
        "run_dir": str(run_dir),
        "status": status,
        "steps": state.step,
        "total_steps": total_steps,
        "epochs": state.epoch,
        "skipped_steps": state.skipped_steps,
        "checkpoint": str(ckpt_path),
        "device": _hardware(device),
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
    # The other ranks wait until rank 0 has written the checkpoint and summary: under torchrun, the first
    # worker to exit makes the launcher stop the others, which must not cut rank 0's writing short.
    barrier()
    if stopped_by is not None:
        summary["signal"] = stopped_by
    return summary


def step_objective(out, labels, negatives, loss_cfg, logged: dict) -> torch.Tensor:
    """The step's loss from the whole batch's ``(h, z, logits)``, rows [view 1; view 2] (2B rows).

    2 x NT-Xent (the official code's scale, see the module docstring; gathered across ranks, with the
    memory queue's ``negatives`` (K, D) when given) plus the online probe's cross-entropy on ``labels`` (B,).
    Float32 with autocast off, also when a gradient-cached step calls it inside its autocast. Detached values
    for logging go into ``logged``: ``loss`` (the paper's NT-Xent), ``z_a`` and ``z_b`` (B, D), and
    ``probe_correct`` / ``probe_count`` when the probe runs.
    """
    _, z, logits = out
    with torch.autocast(z.device.type, enabled=False):
        z_a, z_b = z.float().chunk(2)
        loss = nt_xent(z_a, z_b, loss_cfg.temperature, queue=negatives, chunk_size=loss_cfg.chunk_size)
        total = 2.0 * loss
        logged.update(loss=loss.detach(), z_a=z_a.detach(), z_b=z_b.detach())
        if logits is not None and labels is not None:
            targets = torch.cat([labels, labels])
            total = total + F.cross_entropy(logits.float(), targets)
            logged["probe_correct"] = (logits.detach().argmax(1) == targets).float().sum()
            logged["probe_count"] = targets.numel()
    return total


def _contrastive_accuracy(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """Fraction of view-a anchors whose most similar view-b row is their own positive (official metric)."""
    sim = F.normalize(z_a, dim=1) @ F.normalize(z_b, dim=1).T
    return (sim.argmax(1) == torch.arange(len(z_a), device=z_a.device)).float().mean()


__all__ = ["pretrain", "PretrainModule", "RunState"]
