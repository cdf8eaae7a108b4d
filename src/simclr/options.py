"""Settings written once: a dataclass field carries its default, its allowed range and its help text.

Every numeric setting of the configuration tree (:mod:`simclr.config`) and of the stages' options
dataclasses (linear evaluation, kNN, fine-tuning, distillation, the pipeline, ...) is declared with
:func:`option`; :func:`check` enforces the declared range or choices, so a bad value is refused with one line
naming the key (``optim.weight_decay``) or the flag (``--epochs``) before any work starts. :func:`add_flags`
generates a command's flags from a dataclass and :func:`from_args` builds the validated dataclass back from
the parsed arguments, so a default, a range or a help text is never written twice.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

from simclr.errors import SimCLRError

_RANGE_KEYS = ("ge", "gt", "le", "lt")


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Iterable[Any] | None = None,
    pair: tuple[float, float] | None = None,
    check: Callable[[Any], str | None] | None = None,
    flag: str | None = None,
    parse: Callable[[str], Any] | None = None,
    cli: bool = True,
) -> Any:
    """A dataclass field with its rules.

    ``ge`` / ``gt`` / ``le`` / ``lt``: bounds of a number (None passes for optional fields). ``choices``: the
    allowed values. ``pair``: a (min, max) tuple with ``pair[0] <= min <= max <= pair[1]``. ``check``: any
    other rule, a function returning an error text or None. ``flag``: the command-line name (default
    ``--field-name``); ``parse``: how to read the flag's text; ``cli=False``: no flag.
    """
    metadata = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt, "pair": pair, "check": check}
    metadata.update(choices=tuple(choices) if choices is not None else None, flag=flag, parse=parse, cli=cli)
    if isinstance(default, list | dict | set):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _fmt(x: float) -> str:
    if isinstance(x, int) and x >= 2**32 and (x & (x - 1)) == 0:  # a power of two: 2^63, not 19 digits
        return f"2^{x.bit_length() - 1}"
    return f"{x:g}" if isinstance(x, float) else str(x)


def range_text(meta: typing.Mapping[str, Any]) -> str:
    """The rule of a field in words, e.g. ``>= 0``, ``> 0 and < 1``, ``one of fast, paper``."""
    if meta.get("choices"):
        return "one of " + ", ".join(str(c) for c in meta["choices"])
    if meta.get("pair"):
        lo, hi = meta["pair"]
        return f"a pair [min, max] with {_fmt(lo)} <= min <= max <= {_fmt(hi)}"
    ops = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    return " and ".join(f"{ops[k]} {_fmt(meta[k])}" for k in _RANGE_KEYS if meta.get(k) is not None)


def check(value: Any, meta: typing.Mapping[str, Any], name: str) -> Any:
    """Return ``value`` if it obeys the rules in ``meta`` (a field's metadata), else raise one line naming ``name``.

    None passes (optional settings); NaN never passes a numeric bound.
    """
    if value is None:
        return value
    if meta.get("choices") and value not in meta["choices"]:
        raise SimCLRError(f"{name}: unknown value {value!r}; use {', '.join(str(c) for c in meta['choices'])}")
    if meta.get("pair"):
        lo, hi = meta["pair"]
        a, b = value
        if not (lo <= a <= b <= hi):
            raise SimCLRError(f"{name}: expected {range_text(meta)}, got {list(value)}")
    bad = [
        k
        for k in _RANGE_KEYS
        if meta.get(k) is not None
        and isinstance(value, int | float)
        and not {"ge": value >= meta[k], "gt": value > meta[k], "le": value <= meta[k], "lt": value < meta[k]}[k]
    ]
    if bad or (isinstance(value, float) and math.isnan(value) and range_text(meta)):
        raise SimCLRError(f"{name}: must be {range_text(meta)}, got {value!r}")
    if meta.get("check"):
        problem = meta["check"](value)
        if problem:
            raise SimCLRError(f"{name}: {problem}, got {value!r}")
    return value


def validate(obj: Any, prefix: str = "") -> Any:
    """Check every field of dataclass ``obj`` (recursively); errors name ``prefix + field``. Returns ``obj``."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            validate(value, f"{prefix}{f.name}.")
        else:
            check(value, f.metadata, f"{prefix}{f.name}")
    return obj


def flag_name(f: dataclasses.Field) -> str:
    """The command-line flag of a field: ``metadata['flag']`` or ``--field-name``."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _base_type(tp: Any) -> Any:
    """``int | None`` -> int; ``tuple[str, ...]`` -> tuple; plain types unchanged."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else str
    return typing.get_origin(tp) or tp


def add_flags(parser: argparse.ArgumentParser, cls: type, exclude: Iterable[str] = ()) -> None:
    """One flag per field of dataclass ``cls`` (except ``exclude`` and ``cli=False`` fields).

    Flags left out keep the dataclass default (argparse sees ``SUPPRESS``), so :func:`from_args` can tell a
    value the user gave from a default. Booleans become ``--name`` (default False) or ``--no-name`` (True).
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude or not f.metadata.get("cli", True):
            continue
        meta, tp = f.metadata, _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = meta.get("help", "") or ""
        rule = range_text(meta)
        if rule and not meta.get("choices"):
            help_text = f"{help_text} ({rule})".strip()
        if tp is bool:
            name = flag_name(f)
            if default is True and not meta.get("flag"):
                name = "--no-" + f.name.replace("_", "-")
            action = "store_false" if default is True else "store_true"
            parser.add_argument(name, dest=f.name, action=action, default=argparse.SUPPRESS, help=help_text)
            continue
        kind = meta.get("parse") or (tp if tp in (int, float) else str)
        if default is not None and default != "" and "default" not in help_text:
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            help_text = f"{help_text} [default {shown}]".strip()
        parser.add_argument(
            flag_name(f),
            dest=f.name,
            type=kind,
            choices=meta.get("choices"),
            default=argparse.SUPPRESS,
            help=help_text.replace("%", "%%"),
            metavar=f.name.upper() if not meta.get("choices") else None,
        )


def from_args(cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    """``cls`` built from the flags :func:`add_flags` made (absent ones keep their defaults), then checked.

    ``fixed`` sets fields directly. A value out of range is one line naming the flag, e.g.
    ``--epochs: must be >= 1, got 0``.
    """
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values.update(fixed)
    obj = cls(**values)
    for f in dataclasses.fields(cls):
        name = flag_name(f) if f.name in values and f.name not in fixed else f.name
        check(getattr(obj, f.name), f.metadata, name)
    return obj


__all__ = ["add_flags", "check", "flag_name", "from_args", "option", "range_text", "validate"]
