"""channels_last memory format, with a guard for the convolutions this torch build crashes on.

channels_last is the faster layout for ResNets on CPU as on GPU, but some CPU builds of torch crash
(SIGSEGV, no Python error) in the backward pass of particular convolutions in that layout: torch 2.13's
oneDNN path does so for a strided 1x1 convolution with few input channels on large maps, which a narrow
ResNet-18 with the CIFAR stem reaches. Such a crash cannot be caught in-process, so before a CPU run the
distinct convolution shapes of the model are tried once, forward and backward, in a child process
(:func:`probe_convolutions`); a shape that kills the child is marked bad, and :func:`to_channels_last`
leaves those convolutions in the default (NCHW) layout, converting their input and output around them.
Results are cached per torch version and CPU in ``$SIMCLR_CACHE`` (default ``~/.cache/simclr``).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

# The child: reads conv signatures (JSON list) on stdin, runs each forward + backward in channels_last
# and prints "ok <index>" after each, so the parent knows which one killed it.
_CHILD = r"""
import json, sys, torch
torch.set_num_threads(int(sys.argv[1]))
sigs = json.loads(sys.stdin.read())
for i, (cin, cout, k, s, p, d, g, h, w) in enumerate(sigs):
    conv = torch.nn.Conv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=g, bias=False)
    conv = conv.to(memory_format=torch.channels_last)
    x = torch.randn(2, cin, h, w).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = conv(x)
    y.backward(torch.randn_like(y))  # a dense channels_last gradient, as a following BatchNorm gives
    print("ok", i, flush=True)
"""


def cache_dir() -> Path:
    """``$SIMCLR_CACHE``, else ``$XDG_CACHE_HOME/simclr``, else ``~/.cache/simclr``."""
    if os.environ.get("SIMCLR_CACHE"):
        return Path(os.environ["SIMCLR_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "simclr"


def _signature(conv: nn.Conv2d, height: int, width: int) -> tuple[int, ...]:
    return (
        conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0], conv.padding[0],
        conv.dilation[0], conv.groups, height, width,
    )  # fmt: skip


def conv_signatures(module: nn.Module, input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Name -> (in, out, kernel, stride, padding, dilation, groups, H, W) of every Conv2d for ``input_shape``.

    Found with one forward pass of a copy of ``module`` on the meta device (no memory, no compute).
    """
    memo: dict[int, torch.Tensor] = {}  # deepcopy takes these instead of copying the real tensors
    for t in itertools.chain(module.parameters(), module.buffers()):
        empty = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(empty, t.requires_grad) if isinstance(t, nn.Parameter) else empty
    meta = copy.deepcopy(module, memo)
    names = {id(m): n for n, m in meta.named_modules()}
    found: dict[str, tuple[int, ...]] = {}

    def hook(conv, inputs, _output):
        found[names[id(conv)]] = _signature(conv, *inputs[0].shape[-2:])

    handles = [m.register_forward_hook(hook) for m in meta.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            meta(torch.empty(input_shape, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return found


def _cache_file() -> Path:
    cpu = torch.backends.cpu.get_cpu_capability()
    return cache_dir() / f"channels-last-probe-torch{torch.__version__}-{cpu}.json"


def _read_cache(path: Path) -> dict[str, bool]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return {str(k): bool(v) for k, v in data.items()}
    return {}


def _write_cache(path: Path, results: dict[str, bool]) -> None:
    with contextlib.suppress(OSError):  # a cache that cannot be written only costs a probe next time
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(results, indent=0, sort_keys=True))
        os.replace(tmp, path)


def _run_child(sigs: list[tuple[int, ...]], timeout: float) -> tuple[int, bool]:
    """Run ``sigs`` in one child; returns (how many passed, whether the child died on the next one)."""
    threads = str(max(1, torch.get_num_threads()))
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, threads],
            input=json.dumps(sigs), capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return sum(line.startswith("ok ") for line in out.splitlines()), True
    passed = sum(line.startswith("ok ") for line in proc.stdout.splitlines())
    return passed, proc.returncode != 0


def probe_convolutions(sigs: list[tuple[int, ...]], timeout: float = 120.0) -> dict[tuple[int, ...], bool]:
    """Whether each convolution signature survives forward + backward in channels_last on this CPU.

    Runs the unknown ones in child processes (a crash restarts the child after the crashing signature);
    results are cached on disk. Returns signature -> True (safe) / False (crashes).
    """
    path = _cache_file()
    cache = _read_cache(path)
    todo = [s for s in dict.fromkeys(sigs) if json.dumps(s) not in cache]
    while todo:
        passed, died = _run_child(todo, timeout)
        for s in todo[:passed]:
            cache[json.dumps(s)] = True
        if died and passed < len(todo):
            cache[json.dumps(todo[passed])] = False
            passed += 1
        todo = todo[passed:]
        _write_cache(path, cache)
    return {s: cache[json.dumps(s)] for s in sigs}


def _to_nchw_input(_module, inputs):
    return tuple(x.contiguous() if isinstance(x, torch.Tensor) else x for x in inputs)


def _to_channels_last_output(_module, _inputs, output):
    return output.contiguous(memory_format=torch.channels_last)


def to_channels_last(module: nn.Module, input_shape: tuple[int, ...], device: torch.device) -> list[str]:
    """Convert ``module`` to channels_last in place, except convolutions that crash on this CPU build.

    ``input_shape`` is the (B, C, H, W) shape the module will see (only C, H, W matter). On CUDA every
    layer is converted. Returns the names of the convolutions kept in NCHW (empty when all are safe);
    those run on a contiguous input and hand a channels_last output to the next layer.
    """
    module.to(memory_format=torch.channels_last)
    if torch.device(device).type != "cpu":
        return []
    sigs = conv_signatures(module, input_shape)
    safe = probe_convolutions(list(sigs.values()))
    kept = [name for name, sig in sigs.items() if not safe[sig]]
    convs = dict(module.named_modules())
    for name in kept:
        conv = convs[name]
        # Fresh default strides: for a 1x1 kernel the channels_last strides also pass is_contiguous(), so
        # .contiguous() would keep them and torch would still pick the channels_last kernel.
        w = conv.weight.data
        conv.weight.data = torch.empty(w.shape, dtype=w.dtype, device=w.device).copy_(w)
        conv.register_forward_pre_hook(_to_nchw_input)
        conv.register_forward_hook(_to_channels_last_output)
    return kept


__all__ = ["cache_dir", "conv_signatures", "probe_convolutions", "to_channels_last"]
