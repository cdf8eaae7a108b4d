"""Watch the real pretraining step from outside: the one place the wiring tests look into a run.

:class:`StepProbe` observes ``simclr.engine.pretrain`` through two public torch hooks and nothing else:

- a global module forward hook on every :class:`~simclr.models.SimCLRModel`: the online model's views, h and
  z (and, through tensor hooks, the gradients the step back-propagates into h and z); the momentum
  encoder's keys and weights (its copy of the model has no trainable parameter);
- global optimizer step pre/post hooks: the param groups the step is taken with, the weights and gradients
  before it and the weights after it.

No engine function is patched, so moving the step to another module (``simclr/step.py``) leaves these
tests as they are; if the step stops calling the model as ``SimCLRModel.__call__`` or stops stepping a
``torch.optim.Optimizer``, this file is the one to update.

Also here: the tiny runs the wiring tests share (:func:`tiny_config`, :func:`write_id_images`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from simclr.config import Config, load_config
from simclr.models.heads import SimCLRModel


@dataclass
class GroupRecord:
    """One optimizer param group as the step saw it (hyper-parameters and its parameters' names)."""

    names: list[str]  # online-model parameter names; "probe.*" for parameters outside the SimCLRModel
    hyper: dict  # lr, weight_decay, momentum, eta, lars_exclude, ... as in the group


@dataclass
class StepRecord:
    """What one optimizer step of the online model looked like from outside."""

    views: Tensor | None = None  # (2B, 3, S, S) the online model's input
    h: Tensor | None = None  # (2B, out_dim)
    z: Tensor | None = None  # (2B, projection_dim)
    grad_h: Tensor | None = None  # d loss / d h that the step back-propagated
    grad_z: Tensor | None = None  # d loss / d z
    groups: list[GroupRecord] = field(default_factory=list)
    params_before: dict[str, Tensor] = field(default_factory=dict)  # online model, before optimizer.step
    grads: dict[str, Tensor] = field(default_factory=dict)  # every stepped parameter's, "probe.i" included
    params_after: dict[str, Tensor] = field(default_factory=dict)
    buffers_after: dict[str, Tensor] = field(default_factory=dict)
    keys: Tensor | None = None  # (2B, D) the momentum encoder's z of this step's views (its keys)
    ema_params: dict[str, Tensor] = field(default_factory=dict)  # momentum encoder after this step's update
    ema_buffers: dict[str, Tensor] = field(default_factory=dict)


def _clone(named) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in named}


class StepProbe:
    """Context manager recording every step of the runs made inside it (``probe.steps``, in order)."""

    def __init__(self) -> None:
        self.steps: list[StepRecord] = []
        self.model: SimCLRModel | None = None  # the online model of the current run
        self._handles: list = []

    # ---- hooks ---------------------------------------------------------------------------------------------
    def _forward(self, module: nn.Module, args, output) -> None:
        if not isinstance(module, SimCLRModel):
            return
        params = list(module.parameters())
        online = any(p.requires_grad for p in params)
        if online and torch.is_grad_enabled() and module.training:
            if self.model is not module:
                self.model = module
            rec = StepRecord(views=args[0].detach().clone())
            h, z = output
            rec.h, rec.z = h.detach().clone(), z.detach().clone()
            if h.requires_grad:
                h.register_hook(lambda g, rec=rec: setattr(rec, "grad_h", g.detach().clone()))
                z.register_hook(lambda g, rec=rec: setattr(rec, "grad_z", g.detach().clone()))
            self.steps.append(rec)
        elif not online and self.steps:  # the momentum encoder, after this step's update
            self.steps[-1].keys = output[1].detach().float().clone()

    def _pre_forward(self, module: nn.Module, args) -> None:
        if isinstance(module, SimCLRModel) and self.steps and not any(p.requires_grad for p in module.parameters()):
            # the momentum encoder as its update left it (its own forward may then move BN statistics)
            rec = self.steps[-1]
            rec.ema_params = _clone(module.named_parameters())
            rec.ema_buffers = _clone(module.named_buffers())

    def _names(self) -> dict[int, str]:
        return {id(p): n for n, p in self.model.named_parameters()}

    def _pre_step(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        if not self.steps or self.model is None:
            return
        rec = self.steps[-1]
        names = self._names()
        rec.groups, rec.grads = [], {}
        extra = 0
        for g in optimizer.param_groups:
            group_names = []
            for p in g["params"]:
                if id(p) not in names:  # the online probe (or any parameter outside the SimCLRModel)
                    names[id(p)] = f"probe.{extra}"
                    extra += 1
                group_names.append(names[id(p)])
                if p.grad is not None:
                    rec.grads[names[id(p)]] = p.grad.detach().clone()
            rec.groups.append(GroupRecord(group_names, {k: v for k, v in g.items() if k != "params"}))
        rec.params_before = _clone(self.model.named_parameters())

    def _post_step(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        if not self.steps or self.model is None:
            return
        rec = self.steps[-1]
        rec.params_after = _clone(self.model.named_parameters())
        rec.buffers_after = _clone(self.model.named_buffers())

    def __enter__(self) -> StepProbe:
        self._handles = [
            register_module_forward_pre_hook(self._pre_forward),
            register_module_forward_hook(self._forward),
            register_optimizer_step_pre_hook(self._pre_step),
            register_optimizer_step_post_hook(self._post_step),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


# ---- tiny runs -------------------------------------------------------------------------------------------------

# 32 images of 16 x 16 in batches of 8: 4 steps per epoch; two epochs are 8 steps, about a second on one core.
TINY = [
    "data.dataset=npz",
    "train.device=cpu",
    "model.arch=resnet18",
    "model.width_multiplier=0.0625",
    "model.projection_dim=16",
    "train.batch_size=8",
    "train.epochs=2",
    "train.log_every=1",
    "monitor.knn=false",
]


def write_id_images(path: Path, n: int = 32, side: int = 16, classes: int = 4) -> Path:
    """An .npz of RGB images whose red channel is a constant unique to the image (its identity) and whose
    green and blue channels are ramps (so that two crops or a flip of one image differ)."""
    ramp = np.linspace(0, 255, side)
    images = np.zeros((n, side, side, 3), np.uint8)
    images[..., 0] = (np.arange(n) * (250 // n) + 3)[:, None, None]  # 3, 10, 17, ...: distinct per image
    images[..., 1] = ramp[None, None, :].round()
    images[..., 2] = ramp[None, :, None].round()
    labels = np.arange(n) % classes
    np.savez(path, images=images, labels=labels, test_images=images[:8], test_labels=labels[:8])
    return path


def tiny_config(data: Path, *overrides: str) -> Config:
    return load_config(overrides=[*TINY, f"data.path={data}", *overrides])
