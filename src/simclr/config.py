"""One configuration tree of dataclasses, read from YAML presets and overridden from the command line.

``load_config(preset=..., path=..., overrides=["optim.base_lr=0.5", ...])`` resolves, in order: the
dataclass defaults, a named preset (``src/simclr/presets/NAME.yaml``), a user YAML file, then ``key=value``
overrides. Unknown keys are an error that lists the valid ones; values are checked against the field types.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from simclr.errors import SimCLRError
from simclr.options import check, option

# The kNN protocol's constants (InstDisc; solo-learn), shared by the monitor and `simclr knn`.
KNN_K, KNN_TEMPERATURE = 200, 0.1


DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "stl10", "folder", "npz", "auto")
_SEED = {"ge": 0, "lt": 2**63}


def _device_problem(value: str) -> str | None:
    """Why ``value`` is not a device name (``auto``, ``cpu``, ``cuda``, ``cuda:N``), or None."""
    if value == "auto":
        return None
    import torch

    try:
        torch.device(value)
    except (RuntimeError, ValueError):
        return "unknown device; use auto, cpu, cuda or cuda:N"
    return None


@dataclass
class DataConfig:
    """Where the images come from and how they are held."""

    dataset: str = option("fashion-mnist", choices=DATASETS)
    path: str | None = None  # root folder or file; None = the dataset's default location
    train_split: str = "train"  # train | unlabeled | train+unlabeled (stl10)
    test_split: str = "test"
    # stored side: array datasets are resized to image_size x image_size; folder images keep their aspect
    # ratio with the shorter side image_size (default 224); None = native size (arrays)
    image_size: int | None = option(None, ge=1)
    in_memory: bool | None = None  # folders and tar shards: None = in memory when they fit (8 GiB), else streamed
    workers: int = option(2, ge=0)  # decode threads of streamed folders and tar shards (0: one per core)
    download: bool = False  # fetch known datasets from their official addresses (needs a network)
    max_bad_fraction: float = option(0.01, ge=0, le=1)  # undecodable images allowed before the run fails


@dataclass
class AugmentConfig:
    """The SimCLR augmentation (v1 section 3, appendix A). Every op can be retuned or switched off."""

    crop: bool = True
    crop_sampler: str = option("tf", choices=("tf", "torchvision"))  # tf: the official (sample_distorted_bounding_box)
    crop_scale: tuple[float, float] = option((0.08, 1.0), pair=(1e-6, 1.0))  # area fraction (tf: also >= 10 %)
    crop_ratio: tuple[float, float] = option((3 / 4, 4 / 3), pair=(1e-6, 1e6))  # aspect (w / h) of the crop
    flip: bool = True
    color_strength: float = option(1.0, ge=0)  # s: brightness/contrast/saturation 0.8 s, hue 0.2 s
    color_jitter_prob: float = option(0.8, ge=0, le=1)
    brightness_mode: str = option("v2", choices=("v1", "v2"))  # v2: multiplicative; v1: additive (the v1 code)
    grayscale_prob: float = option(0.2, ge=0, le=1)
    blur_prob: float | None = option(None, ge=0, le=1)  # None = auto: 0.5 above 32 px, 0 otherwise
    blur_sigma: tuple[float, float] = option((0.1, 2.0), pair=(1e-6, 1e6))
    normalize: bool = True  # per-channel mean/std of the dataset (harmless; official code feeds [0, 1])
    eval_crop_fraction: float | None = option(None, gt=0, le=1)  # None = auto: 0.875 above 32 px, else 1.0
    # resize of the evaluation crop; None = bicubic, the official resize
    eval_interpolation: str | None = option(None, choices=("bilinear", "bicubic"))


@dataclass
class ModelConfig:
    """Encoder (a ResNet) and projection head."""

    arch: str = "resnet18"  # resnet18/34/50/101/152 or r50_2x_sk1-style names
    width_multiplier: float = option(1.0, gt=0)
    sk_ratio: float = option(0.0, ge=0, lt=1)  # 0.0625 turns on Selective Kernels (v2)
    cifar_stem: bool | None = None  # None = auto: 3x3 stride-1 stem, no max-pool, for small views (below)
    cifar_stem_max_side: int = option(32, ge=1)  # auto picks the CIFAR stem up to this side: 32, the official rule
    # the first block of every group projects its shortcut (official code); false: only where the shape
    # changes (ResNet-18/34 of runs saved before this key, which load with false)
    first_block_projection: bool = True
    input_size: int | None = option(None, ge=1)  # side of the views fed to the encoder; None = stored side
    head_layers: int = option(2, ge=0)  # 2 for v1, 3 for v2; 0 = no head (the loss on h)
    head_hidden_dim: int | None = option(None, ge=1)  # None = encoder output width
    projection_dim: int = option(128, ge=1)


@dataclass
class LossConfig:
    """NT-Xent (v1 section 2.1) and the optional MoCo-style memory of negatives (v2)."""

    temperature: float = option(0.5, gt=0)
    chunk_size: int | None = option(None, ge=1)  # rows of the similarity matrix per block; None = plain
    memory_size: int = option(0, ge=0)  # queued negatives from a momentum encoder; 0 = off
    memory_momentum: float = option(0.999, ge=0, le=1)


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (v1 section B.1)."""

    name: str = option("lars", choices=("lars", "sgd", "adamw"))
    base_lr: float = option(0.3, gt=0)  # scaled by lr_scaling from the global batch size
    lr_scaling: str = option("linear", choices=("linear", "sqrt", "none"))  # x B/256 | x sqrt(B) | as is
    weight_decay: float = option(1e-6, ge=0)
    momentum: float = option(0.9, ge=0, lt=1)
    trust_coefficient: float = option(0.001, gt=0)  # LARS eta
    nesterov: bool = False
    warmup_epochs: float = option(10.0, ge=0)
    schedule: str = option("cosine", choices=("cosine", "constant"))


@dataclass
class TrainConfig:
    """The training loop."""

    epochs: int = option(100, ge=1)
    batch_size: int = option(256, ge=1)  # global batch over all ranks
    accumulate: int = option(1, ge=1)  # gradient accumulation steps per optimizer step
    seed: int = option(0, **_SEED)
    precision: str = option("auto", choices=("auto", "bf16", "fp32"))  # auto: bf16 on GPU, fp32 on CPU
    channels_last: bool | None = None  # None = on (1.1-1.2x faster than NCHW on CPU too: benchmarks/)
    compile: bool = False
    global_bn: bool = True  # SyncBatchNorm when distributed
    deterministic: bool = False
    log_every: int = option(20, ge=1)  # steps between metric read-backs and JSONL lines
    checkpoint_every: int = option(500, ge=1)  # steps between checkpoints (also at each epoch end)
    max_bad_steps: int = option(5, ge=1)  # non-finite losses in a row before the run stops
    max_steps: int | None = option(None, ge=1)  # stop early after this many optimizer steps (smoke tests)
    device: str = option("auto", check=_device_problem)  # auto | cpu | cuda | cuda:N
    # Gradient caching (simclr/gradcache.py): images per forward pass, each with both its views; must divide
    # the per-rank batch. NT-Xent, its negatives and its gradient stay those of the whole batch, for one extra
    # forward pass without autograd; but BatchNorm normalises each micro-batch with its own statistics (as
    # per-device BN), so the step equals the full-batch one only without batch-dependent layers.
    # None = off: the whole per-rank batch at once.
    micro_batch: int | None = option(None, ge=1)
    # Encoder stages under torch.utils.checkpoint (recomputed in backward: less memory, more compute); with
    # or without micro_batch (alone: one micro-batch of the whole batch through gradient caching). Not with compile.
    activation_checkpointing: bool = False


@dataclass
class MonitorConfig:
    """Online monitors during pretraining (not evaluation protocols: see `simclr linear-eval`)."""

    online_probe: bool = True  # linear classifier on stop-gradient h, trained alongside
    knn: bool = True  # kNN accuracy of the encoder on held-out images each epoch
    knn_k: int = option(KNN_K, ge=1)
    knn_temperature: float = option(KNN_TEMPERATURE, gt=0)
    knn_train_size: int = option(10000, ge=1)  # bank images taken from the train split (labelled datasets only)
    knn_test_size: int = option(2000, ge=1)


@dataclass
class Config:
    """The whole configuration tree."""

    name: str = "custom"
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)


def available_presets() -> list[str]:
    """Names of the YAML presets shipped with the package."""
    root = resources.files("simclr") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def _preset_text(name: str) -> str:
    path = resources.files("simclr") / "presets" / f"{name}.yaml"
    if not path.is_file():
        raise SimCLRError(f"unknown preset {name!r}; available: {', '.join(available_presets())}")
    return path.read_text()


_SCIENTIFIC = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (converting lists to tuples, ints to floats)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except SimCLRError as e:
                errors.append(str(e))
        raise SimCLRError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise SimCLRError(f"config key {key}: expected a list of {len(args)} numbers, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=True))
    if tp is float:
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):  # YAML 1.1 reads `1e-6` as a string
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SimCLRError(f"config key {key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SimCLRError(f"config key {key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise SimCLRError(f"config key {key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise SimCLRError(f"config key {key}: expected a string, got {value!r}")
        return value
    return value


def micro_batch_images(train: TrainConfig, world_size: int = 1) -> int | None:
    """Images per forward pass of a gradient-cached step on each of ``world_size`` ranks; None = plain step.

    ``train.activation_checkpointing`` without ``train.micro_batch`` is one micro-batch of the whole per-rank
    batch. Raises :class:`SimCLRError` when ``train.micro_batch`` does not divide the per-rank batch.
    """
    per_rank = train.batch_size // world_size
    if train.micro_batch is not None and (train.micro_batch > per_rank or per_rank % train.micro_batch):
        where = f" ({train.batch_size} over {world_size} ranks)" if world_size > 1 else ""
        raise SimCLRError(
            f"config key train.micro_batch: {train.micro_batch} does not divide the per-rank batch of "
            f"{per_rank} images{where}"
        )
    if train.activation_checkpointing and train.compile:
        raise SimCLRError("config key train.activation_checkpointing: not supported with train.compile=true")
    return train.micro_batch or (per_rank if train.activation_checkpointing else None)


def _merge(obj: Any, data: dict, prefix: str = "") -> None:
    if not isinstance(data, dict):
        raise SimCLRError(f"config section {prefix.rstrip('.') or '<root>'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(type(obj))
    valid = [f.name for f in fields(obj)]
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in valid:
            raise SimCLRError(f"unknown config key {full!r}; valid keys here: {', '.join(valid)}")
        current = getattr(obj, key)
        if is_dataclass(current):
            _merge(current, value, prefix=f"{full}.")
        else:
            meta = next(f.metadata for f in fields(obj) if f.name == key)
            setattr(obj, key, check(_coerce(value, hints[key], full), meta, f"config key {full}"))


def _parse_override(text: str) -> dict:
    if "=" not in text:
        raise SimCLRError(f"override {text!r}: expected key=value, e.g. optim.base_lr=0.5")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    nested: dict = {}
    node = nested
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def load_config(
    preset: str | None = None, path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Resolve a :class:`Config` from defaults, a preset, a YAML file and ``key=value`` overrides."""
    cfg = Config()
    if preset:
        _merge(cfg, yaml.safe_load(_preset_text(preset)) or {})
        if cfg.name == "custom":
            cfg.name = preset
    if path:
        p = Path(path)
        if not p.is_file():
            raise SimCLRError(f"{p}: config file not found")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            first = str(e).splitlines()[0] if str(e) else "invalid YAML"
            raise SimCLRError(f"{p}: not valid YAML ({first})") from None
        try:
            _merge(cfg, data)
        except SimCLRError as e:
            raise SimCLRError(f"{p}: {e}") from None
    for text in overrides:
        _merge(cfg, _parse_override(text))
    return cfg


# What a resumed run may change: where it stops, where it runs, how often it logs, where its data now live.
# Everything else (model, loss, schedule, batch, augmentation, data source) is the run's own.
RESUME_MAY_CHANGE = frozenset(
    {"train.max_steps", "train.device", "train.log_every", "train.checkpoint_every", "train.max_bad_steps",
     "data.path", "data.workers", "data.download"}
)  # fmt: skip


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train.epochs": 100, ...}``: every leaf of a config tree under its dotted key."""
    flat: dict[str, Any] = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            flat.update(flatten(value, f"{prefix}{f.name}."))
        else:
            flat[f"{prefix}{f.name}"] = value
    return flat


def _set_key(cfg: Config, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = cfg
    for part in parents:
        node = getattr(node, part)
    setattr(node, leaf, value)


def flatten_dict(data: dict, prefix: str = "") -> dict[str, Any]:
    """A nested dict (e.g. a stored config) as ``{"train.epochs": 100, ...}``."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten_dict(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def resume_config(
    saved: Config,
    given: Config | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    stored_keys: set[str] | None = None,
) -> Config:
    """The configuration a resumed run continues with: the run's own, ``saved`` (from its checkpoint).

    ``given`` (a preset or config file resolved by the user, or the caller's :class:`Config`) and the
    ``key=value`` ``overrides`` are checked against it: a key of :data:`RESUME_MAY_CHANGE` takes the given
    value (a ``None`` in ``given`` keeps the run's), any other difference is one line naming the key and
    both values. Nothing but the run folder is needed to resume. ``train.max_steps`` is per invocation:
    unless given, the resumed run goes on to the end of its schedule. ``stored_keys``: the keys the run's
    stored config has; ``given`` is not compared on keys added since (the run keeps the value
    :func:`config_from_dict` filled in for them).
    """
    cfg = copy.deepcopy(saved)
    cfg.train.max_steps = None  # where the earlier invocation stopped is not where this one stops
    run = flatten(saved)
    wanted: list[tuple[str, Any, str]] = []
    if given is not None:
        wanted += [
            (k, v, "given")
            for k, v in flatten(given).items()
            if k != "name" and (stored_keys is None or k in stored_keys)
        ]
    for text in overrides:
        probe = copy.deepcopy(saved)
        _merge(probe, _parse_override(text))  # checks the key, the type and the range
        key = text.split("=", 1)[0].strip()
        wanted.append((key, flatten(probe)[key], f"--set {key}"))
    differ: dict[str, str] = {}
    for key, value, origin in wanted:
        if key in RESUME_MAY_CHANGE:
            if value is not None or origin != "given":
                _set_key(cfg, key, value)
        elif value != run[key]:
            differ[key] = f"{key}: the run has {run[key]!r}, {origin} {value!r}"
    if differ:
        order = [f.name for f in fields(Config)]  # model first: the most telling difference
        keys = sorted(differ, key=lambda k: (k.split(".")[0] != "model", order.index(k.split(".")[0]), k))
        raise SimCLRError(
            f"a different {keys[0].split('.')[0]} config than the run's ({'; '.join(differ[k] for k in keys[:3])}"
            f"{'; ...' if len(keys) > 3 else ''}); a resumed run keeps its own config, only "
            f"{', '.join(sorted(RESUME_MAY_CHANGE))} may change"
        )
    return cfg


def config_to_dict(cfg: Any) -> dict:
    """A plain dict (tuples as lists) suitable for YAML/JSON."""

    def fix(v: Any) -> Any:
        if isinstance(v, tuple):
            return [fix(x) for x in v]
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        return v

    return fix(asdict(cfg))


# Keys added after runs were first saved, with the value a stored config without them meant.
_STORED_BEFORE = {"model": {"first_block_projection": False, "cifar_stem_max_side": 64}}


def config_from_dict(data: dict) -> Config:
    """Rebuild a :class:`Config` from :func:`config_to_dict` output (a checkpoint's or run's stored config).

    A key the stored config lacks takes the default, except the keys of ``_STORED_BEFORE``, which take the
    value that reproduces what the config meant when it was saved (e.g. the older ResNet shortcut layout).
    """
    cfg = Config()
    _merge(cfg, _STORED_BEFORE)
    _merge(cfg, data)
    return cfg


def dump_config(cfg: Config) -> str:
    """The resolved configuration as YAML text."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def replace(cfg: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` re-exported for convenience."""
    return dataclasses.replace(cfg, **changes)
