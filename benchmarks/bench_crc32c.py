"""CRC-32C speed of the TensorFlow checkpoint reader on a large synthetic checkpoint.

    python benchmarks/bench_crc32c.py [--mb 400]

Writes a bundle with one float32 tensor of MB megabytes (random bytes) in a temporary folder, then times
``crc32c_numpy`` and the ``crc32c`` package (when installed) on the raw bytes, and ``TensorBundle.read``
(file read + checksum) with each.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import simclr.tfimport.crc32c as crc  # noqa: E402
from simclr.tfimport import TensorBundle  # noqa: E402
from tfbundle_writer import write_bundle  # noqa: E402


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=400)
    args = ap.parse_args()
    n = args.mb * 1_000_000 // 4
    data = np.random.default_rng(0).integers(0, 1 << 32, n, dtype=np.uint32).view(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = write_bundle(Path(tmp) / "big", {"big/kernel": data})
        pkg = crc._crc32c_pkg
        rows = [("crc32c_numpy, raw bytes", timed(lambda: crc.crc32c_numpy(data)))]
        if pkg is not None:
            rows.append(("crc32c package, raw bytes", timed(lambda: pkg.crc32c(data))))
            rows.append(("TensorBundle.read, crc32c package", timed(lambda: TensorBundle(prefix).read("big/kernel"))))
        crc._crc32c_pkg = None
        rows.append(("TensorBundle.read, numpy CRC", timed(lambda: TensorBundle(prefix).read("big/kernel"))))
        crc._crc32c_pkg = pkg
    for label, sec in rows:
        print(f"{label:36s} {args.mb} MB: {sec:6.2f} s  ({args.mb / sec:7.0f} MB/s)")


if __name__ == "__main__":
    main()
