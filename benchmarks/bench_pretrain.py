"""Pretraining speed and memory: the same as ``simclr bench`` (see :mod:`simclr.bench` for what is measured).

Examples::

    python benchmarks/bench_pretrain.py --preset cifar10 --steps 20 --warmup 5 --repeats 3 --out-json bench.json
    python benchmarks/bench_pretrain.py --preset cifar10 --compile both --channels-last both
    python benchmarks/bench_pretrain.py --loss-memory            # plain vs chunked NT-Xent, 2N = 8192
"""

from __future__ import annotations

import sys

from simclr.bench import main

if __name__ == "__main__":
    sys.exit(main())
