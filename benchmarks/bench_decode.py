"""Decode + resize speed of each CPU JPEG backend (images/s) on a folder of JPEGs, one run, same files.

For every stored side S: each backend decodes every file and resizes its shorter side to S (what the
streamed source does per image), single-threaded and in a thread pool. Backends take turns within each
round (a loaded machine slows them alike); the figures are medians over ``--rounds`` rounds: images/s
(wall clock) and CPU milliseconds per image (process CPU time, less sensitive to other processes' load).
``simplejpeg-full`` decodes at full size with simplejpeg, then resizes: the ``simplejpeg`` backend without
its DCT scaling, to show what the scaling gives.

    python benchmarks/make_photo_folder.py /tmp/photos --count 4000
    python benchmarks/bench_decode.py /tmp/photos --sides 224 160 112 --json decode.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from simclr.data.decode import _finish, decode_image_bytes, simplejpeg  # noqa: E402
from simclr.data.folder import scan_folder  # noqa: E402


def _simplejpeg_full(data: bytes, side: int) -> np.ndarray:
    from PIL import Image

    rgb = simplejpeg.decode_jpeg(data, colorspace="RGB")
    return _finish(Image.fromarray(rgb), side, 2.0)


def measure(pool: ThreadPoolExecutor, datas: list[bytes], fn) -> tuple[float, float]:
    """(images/s, CPU ms per image) of ``fn`` over ``datas`` in ``pool``."""
    wall, cpu = time.perf_counter(), time.process_time()
    list(pool.map(fn, datas, chunksize=8))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return len(datas) / wall, 1e3 * cpu / len(datas)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--limit", type=int, default=1000, help="files to decode per round (default 1000)")
    p.add_argument("--sides", type=int, nargs="+", default=[224, 160])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    files = scan_folder(args.folder)[0][: args.limit]
    datas = [f.read_bytes() for f in files]
    backends = {"pil": None, "draft": None}
    if simplejpeg is not None:
        backends.update({"simplejpeg": None, "simplejpeg-full": None})
    results = []
    for side in args.sides:
        fns = {}
        for name in backends:
            if name == "simplejpeg-full":
                fns[name] = lambda d, s=side: _simplejpeg_full(d, s)  # noqa: E731
            else:
                fns[name] = lambda d, s=side, b=name: decode_image_bytes(d, s, 2.0, b)  # noqa: E731
        for threads in args.threads:
            runs: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
            with ThreadPoolExecutor(threads) as pool:
                for fn in fns.values():  # warm-up
                    list(pool.map(fn, datas[: 4 * threads]))
                for _ in range(args.rounds):
                    for name, fn in fns.items():
                        runs[name].append(measure(pool, datas, fn))
            for name, rs in runs.items():
                rate, cpu_ms = statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs)
                results.append({"side": side, "backend": name, "threads": threads, "images_per_s": round(rate, 1),
                                "cpu_ms_per_image": round(cpu_ms, 3)})  # fmt: skip
                print(f"S={side:4d} {name:15s} threads={threads}: {rate:7.1f} images/s, {cpu_ms:5.2f} CPU ms/image",
                      flush=True)  # fmt: skip
    summary = {"folder": str(args.folder), "files": len(datas), "mean_bytes": float(np.mean([len(d) for d in datas])),
               "results": results}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
