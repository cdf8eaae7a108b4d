"""Data-parallel scaling: images/s of ``simclr pretrain`` with 1, 2, ... processes on the same global batch.

Each process count runs the real command under ``torchrun --standalone`` for ``--steps`` optimizer steps
(kNN monitor off, in a temporary run folder) and reports the median ``images_per_sec`` of its
``metrics.jsonl`` lines after the first (which holds start-up). The global batch is fixed (strong scaling),
so efficiency = rate(P) / (P x rate(1)). On CPU every process gets ``--threads`` threads (default 1), so
P processes use P cores; on GPUs each process gets one card. Everything after ``--`` goes to
``simclr pretrain``::

    python benchmarks/scaling.py --nproc 1 2 --steps 60 -- --preset fashion-mnist \\
        --data /usr/share/datasets/fashion-mnist --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def measure(nproc: int, steps: int, log_every: int, threads: int, pretrain_args: list[str], out: Path) -> float:
    """Median images/s (global, all processes together) of a ``steps``-step run on ``nproc`` processes."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "simclr", "pretrain", *pretrain_args, "--out", str(out),
           "--set", f"train.max_steps={steps}", "--set", f"train.log_every={log_every}",
           "--set", "monitor.knn=false"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    rates = [json.loads(line)["images_per_sec"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r for r in rates if r is not None]
    return statistics.median(rates[1:] or rates)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, pretrain_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nproc", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    p.add_argument("--log-every", type=int, default=10, help="steps per metrics line (one rate each)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every process (CPU)")
    args = p.parse_args(ours)
    rows = []
    with tempfile.TemporaryDirectory(prefix="simclr-scaling-") as tmp:
        for n in args.nproc:
            rate = measure(n, args.steps, args.log_every, args.threads, pretrain_args, Path(tmp) / f"p{n}")
            rows.append((n, rate))
            print(f"{n} process(es): {rate:.1f} images/s", flush=True)
    base = dict(rows).get(1)
    print("\n| processes | images/s | speedup | efficiency |\n|---:|---:|---:|---:|")
    for n, rate in rows:
        speedup = f"{rate / base:.2f}x" if base else "-"
        efficiency = f"{rate / (n * base):.0%}" if base else "-"
        print(f"| {n} | {rate:.1f} | {speedup} | {efficiency} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
