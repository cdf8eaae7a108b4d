"""The configuration tree: presets, YAML files and overrides; every bad key, type or value is one clear line."""

from __future__ import annotations

from dataclasses import fields, is_dataclass

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from simclr.config import (
    Config,
    available_presets,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
)
from simclr.errors import SimCLRError


def one_line_error(fn, *expect: str) -> str:
    with pytest.raises(SimCLRError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, message
    for text in expect:
        assert text in message, message
    return message


def test_defaults_presets_and_overrides():
    cfg = load_config(overrides=["optim.base_lr=0.5", "augment.crop_scale=[0.2, 1.0]", "data.image_size=null"])
    assert cfg.optim.base_lr == 0.5 and cfg.augment.crop_scale == (0.2, 1.0) and cfg.data.image_size is None
    assert load_config(overrides=["optim.base_lr=1"]).optim.base_lr == 1.0  # ints widen to floats
    for name in available_presets():
        preset = load_config(preset=name)
        assert preset.name != "custom"
        assert config_from_dict(config_to_dict(preset)) == preset  # round trip through a checkpoint's dict
        assert preset.augment.crop_sampler == "tf" and preset.model.first_block_projection  # the official code
    # v1's code adds a brightness delta, v2's multiplies (SPEC-DETAILS 1.3)
    assert load_config(preset="imagenet-v1").augment.brightness_mode == "v1"
    assert load_config(preset="imagenet-v2").augment.brightness_mode == "v2"
    one_line_error(lambda: load_config(overrides=["augment.crop_sampler=pil"]), "augment.crop_sampler", "tf")


def test_scientific_notation_is_a_number(tmp_path):
    # PyYAML (YAML 1.1) reads `1e-6` as a string; the config must still take it as the number it means
    cfg = load_config(overrides=["optim.weight_decay=1e-6", "optim.base_lr=1E30", "loss.temperature=5e-1"])
    assert cfg.optim.weight_decay == 1e-6 and cfg.optim.base_lr == 1e30 and cfg.loss.temperature == 0.5
    (tmp_path / "c.yaml").write_text("optim:\n  weight_decay: 1e-6\n")
    assert load_config(path=tmp_path / "c.yaml").optim.weight_decay == 1e-6
    one_line_error(lambda: load_config(overrides=["optim.base_lr=1e"]), "optim.base_lr", "expected a number")
    one_line_error(lambda: load_config(overrides=["optim.base_lr=1e5x"]), "optim.base_lr", "expected a number")
    one_line_error(lambda: load_config(overrides=["train.epochs=1e3"]), "train.epochs", "expected an integer")


def test_yaml_file_round_trip(tmp_path):
    cfg = load_config(overrides=["train.epochs=7", "model.arch=resnet50"])
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path=path) == cfg


@pytest.mark.parametrize(
    "override, expect",
    [
        ("optim.base_rate=0.5", ["optim.base_rate", "base_lr"]),  # the valid keys are listed
        ("trian.epochs=3", ["trian", "train"]),
        ("model.arch.depth=3", ["model.arch", "expected a string"]),
        ("train=5", ["train", "expected a mapping"]),
    ],
)  # fmt: skip
def test_unknown_keys_name_the_key_and_list_the_valid_ones(override, expect):
    one_line_error(lambda: load_config(overrides=[override]), *expect)


@pytest.mark.parametrize(
    "override, expect",
    [
        ("train.epochs=1.5", "expected an integer"),
        ("train.epochs=ten", "expected an integer"),
        ("train.epochs=true", "expected an integer"),
        ("optim.base_lr=fast", "expected a number"),
        ("optim.base_lr=true", "expected a number"),
        ("train.compile=1", "expected true or false"),
        ("train.compile=maybe", "expected true or false"),
        ("model.arch=18", "expected a string"),
        ("augment.crop_scale=0.5", "expected a list of 2 numbers"),
        ("augment.crop_scale=[0.1, 0.5, 1.0]", "expected a list of 2 numbers"),
        ("augment.crop_scale=[a, b]", "expected a number"),
        ("data.image_size=big", "expected an integer"),
    ],
)
def test_wrong_types_name_the_key(override, expect):
    key = override.split("=")[0]
    one_line_error(lambda: load_config(overrides=[override]), key, expect)


@pytest.mark.parametrize(
    "override",
    [
        "train.log_every=0",  # was a ZeroDivisionError traceback in the training loop
        "train.checkpoint_every=0",  # same
        "train.batch_size=0",
        "train.batch_size=-8",
        "train.max_bad_steps=0",
        "train.max_steps=0",
        "train.epochs=-1",
        "model.projection_dim=0",  # was an IndexError traceback in the first step
        "loss.temperature=0",  # was NaN losses until the run stopped
        "loss.temperature=-0.5",
        "loss.memory_size=-1",
        "data.workers=-1",
        "data.max_bad_fraction=1.5",
        "augment.grayscale_prob=2",
        "train.precision=fp8",  # was silently fp32
        "optim.schedule=linear",  # was an error only after the warmup, possibly hours in
        "optim.lr_scaling=log",
        "train.device=tpu",  # was a RuntimeError traceback from torch
        # issue 15: accepted silently before
        "optim.weight_decay=-1",
        "optim.momentum=5",
        "optim.momentum=-1",
        "optim.base_lr=-1",  # was a traceback
        "monitor.knn_k=0",
        "train.epochs=0",  # was a "finished" run of 0 steps
        "data.image_size=0",  # was refused without naming the key
        "loss.memory_momentum=1.5",
        "model.width_multiplier=0",
        "augment.color_strength=-1",
        "augment.crop_scale=[0.5, 0.2]",
        "data.dataset=imagenet",
        "train.seed=-3",
    ],
)
def test_out_of_range_values_name_the_key(override):
    key, value = override.split("=")
    one_line_error(lambda: load_config(overrides=[override]), key, value)


def test_valid_edge_values_are_accepted():
    cfg = load_config(
        overrides=["train.epochs=1", "data.max_bad_fraction=0", "train.max_steps=null", "train.device=cuda:1"]
    )
    assert cfg.train.epochs == 1 and cfg.train.max_steps is None and cfg.train.device == "cuda:1"


def test_override_syntax_and_presets():
    one_line_error(lambda: load_config(overrides=["optim.base_lr"]), "optim.base_lr", "key=value")
    one_line_error(lambda: load_config(preset="imagenet-v9"), "imagenet-v9", "available")


@pytest.mark.parametrize(
    "text, expect",
    [
        ("train:\n  epochs: [1, 2\n", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping"),
        ("train: 5\n", "expected a mapping"),
        ("train:\n  epoch: 5\n", "unknown config key 'train.epoch'"),
        ("optim:\n  base_lr: abc\n", "expected a number"),
    ],
)
def test_bad_yaml_files_name_the_file(tmp_path, text, expect):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    one_line_error(lambda: load_config(path=path), "bad.yaml", expect)


def test_missing_yaml_file(tmp_path):
    one_line_error(lambda: load_config(path=tmp_path / "nope.yaml"), "nope.yaml", "not found")


def test_stored_config_with_unknown_key():
    data = config_to_dict(Config())
    data["train"]["warp_speed"] = 9
    one_line_error(lambda: config_from_dict(data), "train.warp_speed")


# ---- fuzzing: any override text parses or is one line naming the key; every preset's values parse -----------

_DEFAULT = Config()
LEAF_KEYS = sorted(
    f"{section.name}.{f.name}" if is_dataclass(getattr(_DEFAULT, section.name)) else section.name
    for section in fields(Config)
    for f in (fields(getattr(_DEFAULT, section.name)) if is_dataclass(getattr(_DEFAULT, section.name)) else [section])
)
VALUE_TEXT = st.one_of(
    st.text(max_size=12),
    st.integers(-(10**6), 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["true", "false", "null", "[]", "[1, 2]", "[0.1, 0.5]", "[a, 1]", "{a: 1}", "1e-3", "-1", ""]),
)


def _value(cfg: Config, key: str):
    section, _, name = key.partition(".")
    return getattr(getattr(cfg, section), name) if name else getattr(cfg, section)


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(LEAF_KEYS), text=VALUE_TEXT)
def test_fuzz_overrides(key, text):
    """``key=text`` either gives a config that survives the trip through a run's config.yaml, or one line
    naming the key."""
    try:
        cfg = load_config(overrides=[f"{key}={text}"])
    except SimCLRError as e:
        message = str(e)
        assert "\n" not in message and key in message, message
    else:
        assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg


@pytest.mark.parametrize("preset", available_presets())
def test_every_preset_value_parses_as_an_override(preset):
    """Valid inputs parse: each value of each preset, given back as ``key=value`` text, gives that value."""
    cfg = load_config(preset=preset)
    for key in LEAF_KEYS:
        value = _value(cfg, key)
        text = yaml.safe_dump(list(value) if isinstance(value, tuple) else value, default_flow_style=True)
        text = text.strip().removesuffix("...").strip()
        assert _value(load_config(overrides=[f"{key}={text}"]), key) == value, (key, text)
