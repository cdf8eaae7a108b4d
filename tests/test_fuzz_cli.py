"""Property tests: random valid and invalid settings, fed to every command, never give a traceback or a signal.

Two levels:

- every configuration key (the whole tree, read from the dataclasses, so a new key is covered without a test
  change) with values drawn by hypothesis around its declared range, of the wrong type, NaN, out of its
  choices: ``load_config`` returns a config whose values all obey their declared rules, or raises one
  :class:`SimCLRError` line naming the key;
- the real commands (``pretrain``, ``show-augmentations``, ``linear-eval``, ``knn``, ``finetune``, ``distill``,
  ``embed``, ``report``, ``export``, ``pipeline``) run in one child process over a few dozen random cases,
  valid ones doing real (tiny) work: each case ends with exit status 0, or 2 and one ``error:`` line (argparse
  usage errors: its own ``error:`` line), and the child is never killed by a signal.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from dataclasses import fields

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simclr.config import Config, flatten, load_config
from simclr.errors import SimCLRError
from simclr.options import check

# Keys whose valid values cannot run in a unit test: a network download, a minutes-long compile.
NOT_RUN = {"data.download", "train.compile"}


def _meta() -> dict[str, dict]:
    out = {}
    for section in fields(Config):
        if section.name == "name":
            continue
        for f in fields(getattr(Config(), section.name)):
            out[f"{section.name}.{f.name}"] = dict(f.metadata)
    return out


META = _meta()
KEYS = sorted(k for k in flatten(Config()) if k != "name")  # name: any string


def _bounds(meta: dict) -> list[float]:
    return [meta[k] for k in ("ge", "gt", "le", "lt") if meta.get(k) is not None]


def value_strategy(key: str) -> st.SearchStrategy:
    meta = META.get(key, {})
    edges = [b + d for b in _bounds(meta) for d in (-1, -0.5, 0, 0.5, 1)]
    return st.one_of(
        st.sampled_from(edges or [0]),
        st.integers(-5, 5),
        st.floats(allow_nan=True, allow_infinity=True, width=32),
        st.sampled_from(["abc", "", "[1, 2]", "[0.5, 0.2]", "null", "true", "-1e-3", "1e400"]),
        st.sampled_from(list(meta.get("choices") or ["x"]) + ["bogus"]),
        st.booleans(),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_config_key_accepts_only_values_inside_its_rules(data):
    key = data.draw(st.sampled_from(KEYS), label="key")
    value = data.draw(value_strategy(key), label="value")
    text = f"{key}={value}"
    try:
        cfg = load_config(overrides=[text])
    except SimCLRError as e:
        message = str(e)
        assert "\n" not in message and key in message, message
        return
    got = flatten(cfg)[key]
    check(got, META[key], key)  # accepted values obey the declared rule (raises otherwise; NaN never passes)


@pytest.mark.parametrize("key", KEYS)
def test_every_key_parses_its_default_and_refuses_a_wrong_type(key):
    default = flatten(Config())[key]
    text = json.dumps(list(default)) if isinstance(default, tuple) else json.dumps(default)
    assert flatten(load_config(overrides=[f"{key}={text}"]))[key] == default  # a valid value parses
    wrong = "[[1]]" if not isinstance(default, str) else "[1, 2]"
    if default is None or isinstance(default, str) and not META[key].get("choices"):
        return  # optional keys and free strings take many types
    with pytest.raises(SimCLRError, match=key.replace(".", r"\.")):
        load_config(overrides=[f"{key}={wrong}"])


# ---- the real commands, in a child process ---------------------------------------------------------------------

DRIVER = textwrap.dedent(
    """
    import contextlib, io, json, sys, traceback
    import torch
    torch.set_num_threads(1)
    from simclr.cli import main

    for i, argv in enumerate(json.loads(open(sys.argv[1]).read())):
        print(json.dumps({"start": i}), flush=True)
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = main(argv)
        except SystemExit as e:  # argparse: usage + its own error line
            code = e.code
        except BaseException:
            code, err = "traceback", io.StringIO(traceback.format_exc())
        print(json.dumps({"case": i, "code": code, "stderr": err.getvalue()[-3000:]}), flush=True)
    """
)


def _write_data(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(48) % 4
    np.savez(
        tmp_path / "d.npz",
        images=rng.integers(0, 256, (48, 8, 8, 3), dtype=np.uint8),
        labels=labels,
        test_images=rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8),
        test_labels=labels[:16],
    )
    return tmp_path / "d.npz"


TINY = ["--set", "model.width_multiplier=0.125", "--set", "train.batch_size=16", "--set", "monitor.knn=false",
        "--set", "train.epochs=1", "--set", "train.max_steps=1"]  # fmt: skip


def _valid_small(rnd: random.Random, key: str):
    """A valid value for ``key`` that keeps a run tiny (bounds and small numbers, never huge ones)."""
    meta, default = META[key], flatten(Config())[key]
    if meta.get("choices"):
        return rnd.choice(meta["choices"])
    if meta.get("pair"):
        a, b = sorted(rnd.uniform(max(meta["pair"][0], 0.05), min(meta["pair"][1], 1.0)) for _ in range(2))
        return f"[{a:.3f}, {b:.3f}]"
    if isinstance(default, bool) or (default is None and not _bounds(meta)):
        return rnd.choice(["true", "false", "null"])
    low = next((v for v in (meta.get("ge"), meta.get("gt")) if v is not None), 0)
    high = next((v for v in (meta.get("le"), meta.get("lt")) if v is not None), low + 3)
    high = min(high, low + 3)
    if isinstance(default, float):
        value = rnd.uniform(low, high)
        return round(value if value > low or meta.get("gt") is None else low + 1e-3, 4)
    return rnd.randint(int(low) + (meta.get("gt") is not None), int(high) - (meta.get("lt") == high))


def _invalid(rnd: random.Random, key: str):
    meta = META[key]
    options = ["abc", "[[1]]", "nan"]
    options += [b - 1 for b in (meta.get("ge"), meta.get("gt")) if b is not None]
    options += [b + 1 for b in (meta.get("le"), meta.get("lt")) if b is not None]
    if meta.get("choices"):
        options.append("bogus")
    return rnd.choice(options)


def _cases(rnd: random.Random, data, run, teacher, out) -> list[list[str]]:
    runnable = [k for k in KEYS if k not in NOT_RUN and not k.startswith(("data.path", "data.dataset"))]
    cases = []
    for i in range(14):
        key = rnd.choice(runnable)
        value = _valid_small(rnd, key) if i % 2 == 0 else _invalid(rnd, key)
        cases.append(["pretrain", "--dataset", "npz", "--data", str(data), "--device", "cpu", "--out",
                      f"{out}/p{i}", *TINY, "--set", f"{key}={value}"])  # fmt: skip
    for i in range(3):
        key = rnd.choice([k for k in runnable if k.startswith(("augment.", "model.input_size"))])
        value = _valid_small(rnd, key) if i % 2 == 0 else _invalid(rnd, key)
        cases.append(["show-augmentations", "--dataset", "npz", "--data", str(data), "-n", "2", "--out",
                      f"{out}/a{i}.png", "--set", f"{key}={value}"])  # fmt: skip
    flag_values = {
        "linear-eval": {"--epochs": ["1", "0", "-2", "x"], "--batch-size": ["8", "0"], "--mode": ["paper", "nope"],
                        "--from-head-layer": ["1", "-1", "9"], "--seed": ["3", "-1"]},
        "knn": {"--k": ["1", "0", "1000"], "--temperature": ["0.5", "0", "-1", "nan"], "--batch-size": ["4", "0"]},
        "finetune": {"--labels": ["50%", "0%", "200%", "2-per-class", "abc", "-1"], "--epochs": ["1", "0"],
                     "--lr": ["0.01", "-1", "0"], "--batch-size": ["4", "0", "1000"], "--weight-decay": ["-1"]},
        "embed": {"--batch-size": ["3", "0", "-5"], "--which": ["z", "q"]},
        "report": {"--max-images": ["4", "0", "-3"]},
    }  # fmt: skip
    for command, flags in flag_values.items():
        for _ in range(3):
            flag = rnd.choice(sorted(flags))
            value = rnd.choice(flags[flag])
            argv = [command, str(run), "--device", "cpu", flag, value]
            if command == "embed":
                argv += ["--out", f"{out}/e{len(cases)}"]
            if command == "finetune" and flag != "--epochs":
                argv += ["--epochs", "1"]
            if command == "report":
                argv += ["--out", f"{out}/r{len(cases)}"]
            if command in ("linear-eval", "knn", "finetune"):
                argv += ["--out", f"{out}/v{len(cases)}"]
            cases.append(argv)
    for flag, value in (("--alpha", "1.5"), ("--temperature", "0"), ("--epochs", "1"), ("--batch-size", "0")):
        cases.append(["distill", "--teacher", str(teacher), "--device", "cpu", "--out", f"{out}/d{len(cases)}",
                      "--max-unlabeled", "16", "--epochs", "1", flag, value])  # fmt: skip
    cases.append(["export", str(run), "--out", f"{out}/x"])
    for flag, value in (("--distill-alpha", "-0.1"), ("--fractions", "0%"), ("--pretrain-epochs", "0")):
        cases.append(["pipeline", "--dataset", "npz", "--data", str(data), "--out", f"{out}/pl", flag, value])
    rnd.shuffle(cases)
    return cases


def test_random_settings_to_every_command_never_give_a_traceback_or_a_signal(tmp_path):
    from simclr.cli import main

    data = _write_data(tmp_path)
    run = tmp_path / "run"
    assert main(["pretrain", "--dataset", "npz", "--data", str(data), "--device", "cpu", "--out", str(run),
                 *TINY[:-2], "--set", "train.max_steps=2"]) == 0  # fmt: skip
    assert main(["finetune", str(run), "--labels", "50%", "--epochs", "1", "--device", "cpu", "--out",
                 str(tmp_path / "ft")]) == 0  # fmt: skip
    rnd = random.Random(int(os.environ.get("SIMCLR_FUZZ_SEED", "20261207")))
    cases = _cases(rnd, data, run, tmp_path / "ft", tmp_path / "out")
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(tmp_path / "cases.json")], capture_output=True, text=True, timeout=900
    )
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    started = [r["start"] for r in records if "start" in r]
    assert proc.returncode == 0, f"child died ({proc.returncode}) in case {cases[started[-1]]}: {proc.stderr[-2000:]}"
    done = [r for r in records if "case" in r]
    assert len(done) == len(cases)
    bad = []
    for r in done:
        lines = [line for line in r["stderr"].splitlines() if line.strip()]
        one_line = r["code"] == 0 or (r["code"] == 2 and lines and "error:" in lines[-1])
        if not one_line or "Traceback" in r["stderr"]:
            bad.append((cases[r["case"]], r["code"], r["stderr"][-600:]))
    assert not bad, "\n\n".join(map(str, bad))
    ok = sum(r["code"] == 0 for r in done)
    assert 0 < ok < len(cases)  # both kinds were exercised
