"""The GPU check: everything the project must show on a CUDA machine, in one run, into one JSON.

    bash benchmarks/gpu_check.sh                 # on the GPU machine; JSON to $OUT/gpu_check.json or ./gpu_check.json
    python benchmarks/gpu_check.py --cpu-dry     # the same items with tiny sizes on the CPU (CUDA-only ones skipped)

Items (issue 20's GPU part and docs GPU-RISKS.md's smoke list), most important first; each runs in its own
try block with a time budget, is recorded as ``pass`` / ``fail`` (with the error line) / ``skipped``, and the
JSON is rewritten after each item, so a run cut short still reports what it did. Nothing is installed; the
project runs from ``src/`` (``PYTHONPATH=src python3 -m simclr ...``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import gpu_steps  # noqa: E402

GPU_SIZES = {"arch": "resnet50", "width": 1.0, "side": 224, "batch": 512, "memory_side": 256, "stored_side": 224,
             "warmup": 3, "steps": 10, "stream_batches": 6, "folder_images": 2048, "jpeg": (500, 375),
             "run_side": 64, "run_batch": 128, "sk_batch": 64, "sk_side": 224}  # fmt: skip
DRY_SIZES = {"arch": "resnet18", "width": 0.25, "side": 32, "batch": 8, "memory_side": 40, "stored_side": 32,
             "warmup": 1, "steps": 2, "stream_batches": 2, "folder_images": 32, "jpeg": (80, 60),
             "run_side": 32, "run_batch": 16, "sk_batch": 2, "sk_side": 64}  # fmt: skip
ITEMS: list[tuple[str, float, bool]] = []  # (name, budget in s, CUDA only)


def item(budget: float, cuda_only: bool = False):
    def register(fn):
        ITEMS.append((fn.__name__, budget, cuda_only))
        return fn

    return register


class CommandFailed(RuntimeError):
    pass


class Check:
    def __init__(self, args) -> None:
        self.args, self.dry = args, args.cpu_dry
        self.device = torch.device("cpu" if self.dry else "cuda")
        self.sizes = DRY_SIZES if self.dry else GPU_SIZES
        self.work = Path(tempfile.mkdtemp(prefix="simclr-gpu-check-"))
        self.deadline = time.monotonic() + args.budget
        self.results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "mode": "cpu-dry" if self.dry else "cuda",
                              "items": {}}  # fmt: skip
        self.env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), SIMCLR_CACHE=str(self.work / "cache"))
        self._folder: Path | None = None
        self._npz: Path | None = None

    # ---- helpers -------------------------------------------------------------------------------------------

    def simclr(self, *args: str, timeout: float, torchrun: int = 0, env: dict | None = None) -> str:
        """Run ``python -m simclr ARGS`` (under torchrun with ``torchrun`` processes); its output, or raise."""
        entry = [sys.executable, "-m", "simclr"]
        if torchrun:
            entry = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                     str(torchrun), "-m", "simclr"]  # fmt: skip
        return self.command(entry + list(args), timeout, env)

    def command(self, cmd: list[str], timeout: float, env: dict | None = None) -> str:
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or self.env, cwd=ROOT)
        except subprocess.TimeoutExpired:
            raise CommandFailed(f"timed out after {timeout:.0f} s: {' '.join(cmd[-6:])}") from None
        if p.returncode:
            lines = [x for x in (p.stderr + p.stdout).splitlines() if x.strip()]
            errors = [x for x in lines if x.startswith("error:") or "Error" in x]
            raise CommandFailed(f"exit {p.returncode}: {(errors or lines or ['no output'])[-1][:300]}")
        return p.stdout + p.stderr

    def npz(self) -> Path:
        """A small labelled dataset (10 classes of coloured blobs with noise), train and test splits."""
        if self._npz is None:
            rng = np.random.default_rng(0)
            s, n = self.sizes["run_side"], 1024 if not self.dry else 64
            labels = rng.integers(0, 10, n)
            colours = rng.integers(0, 256, (10, 1, 1, 3))
            images = np.clip(colours[labels] + rng.normal(0, 50, (n, s, s, 3)), 0, 255).astype(np.uint8)
            self._npz = self.work / "data.npz"
            np.savez(
                self._npz, images=images, labels=labels, test_images=images[: n // 4], test_labels=labels[: n // 4]
            )
        return self._npz

    def folder(self) -> Path:
        """A folder of generated JPEG photos (procedural sources: no scikit-image needed)."""
        if self._folder is None:
            from make_photo_folder import build

            from simclr.data.decode import cpu_count

            self._folder = self.work / "photos"
            summary = build(self._folder, self.sizes["folder_images"], threads=cpu_count(), procedural=True,
                            size=self.sizes["jpeg"])  # fmt: skip
            self.results["photo_folder"] = summary
        return self._folder

    def run_args(self, out: Path, steps: int, *extra: str, device: str | None = None) -> list[str]:
        s = self.sizes
        sets = {"model.arch": "resnet18", "model.width_multiplier": 0.5 if not self.dry else 0.125,
                "model.input_size": s["run_side"], "train.batch_size": s["run_batch"], "train.max_steps": steps,
                "train.epochs": 100, "train.log_every": 1, "optim.warmup_epochs": 0, "monitor.knn_train_size": 256,
                "monitor.knn_test_size": 128}  # fmt: skip
        args = ["pretrain", "--dataset", "npz", "--data", str(self.npz()), "--out", str(out),
                "--device", device or self.device.type]  # fmt: skip
        return args + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")] + list(extra)

    def losses(self, run: Path) -> list[float]:
        return [
            json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line
        ]

    # ---- the run -------------------------------------------------------------------------------------------

    def write(self) -> None:
        self.results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        Path(self.args.out).write_text(json.dumps(self.results, indent=1, default=str))

    def run(self) -> dict:
        for name, budget, cuda_only in ITEMS:
            if self.args.only and name not in self.args.only:
                continue
            record: dict = {"status": "skipped"}
            budget *= 3 if self.dry else 1  # the CPU rehearsal is slower than a GPU at everything
            left = self.deadline - time.monotonic()
            if cuda_only and self.dry:
                record["reason"] = "needs CUDA"
            elif left < min(20.0, budget):
                record["reason"] = f"out of time ({left:.0f} s left of the check's budget)"
            else:
                start = time.monotonic()
                try:
                    figures = globals()[name](self, min(budget, left)) or {}
                    ok = figures.pop("pass", True) if isinstance(figures, dict) else True
                    record = {"status": "pass" if ok else "fail", **figures}
                except Exception as e:
                    tb = traceback.format_exc().strip().splitlines()
                    line = str(e).splitlines()[0] if str(e) else ""
                    record = {"status": "fail", "error": f"{type(e).__name__}: {line}"[:400],
                              "where": [x.strip() for x in tb[-6:-1]]}  # fmt: skip
                record["seconds"] = round(time.monotonic() - start, 1)
            self.results["items"][name] = record
            print(f"gpu_check: {name}: {record['status']} {record.get('error', record.get('reason', ''))}", flush=True)
            self.write()
        return self.results


# ---- the items, most important first ---------------------------------------------------------------------


@item(20)
def env(c: Check, budget: float) -> dict:
    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "cpu_count": os.cpu_count(), "cuda_available": torch.cuda.is_available()}  # fmt: skip
    try:
        import torchvision

        out["torchvision"] = torchvision.__version__
    except Exception as e:
        out["torchvision"] = f"unavailable ({type(e).__name__})"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out.update(gpu=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                   bf16_peak_tflops=(gpu_steps.bf16_peak(p.name) or 0) / 1e12 or None,
                   nccl=torch.distributed.is_nccl_available())  # fmt: skip
    if not c.dry and not torch.cuda.is_available():
        out["pass"] = False
    return out


@item(30)
def ntxent_precision(c: Check, budget: float) -> dict:
    torch.backends.cudnn.allow_tf32 = True  # as the engine sets it; matmul TF32 must stay off for the loss
    return gpu_steps.ntxent_precision(c.device, 512 if not c.dry else 16, 128 if not c.dry else 8)


@item(150)
def resnet50_step(c: Check, budget: float) -> dict:
    torch.backends.cudnn.benchmark = True
    return gpu_steps.resnet_steps(c.sizes, c.device, c.folder(), time.monotonic() + budget - 10)


@item(45)
def stream_views(c: Check, budget: float) -> dict:
    return gpu_steps.stream_views(c.sizes, c.device, c.folder(), time.monotonic() + budget - 5)


@item(60)
def torchrun_nccl(c: Check, budget: float) -> dict:
    out = c.work / "nccl.json"
    backend = "gloo" if c.dry else "nccl"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           str(HERE / "gpu_steps.py"), str(out), backend]  # fmt: skip
    c.command(cmd, budget)
    result = json.loads(out.read_text())
    result["pass"] = result["backend"] == backend and result["all_gather_ok"] and result["all_reduce_ok"]
    return result


@item(60)
def pretrain_loss_falls(c: Check, budget: float) -> dict:
    """A short pretraining (no queue: its growing negatives raise the loss) whose loss falls."""
    run = c.work / "run"
    c.simclr(*c.run_args(run, 60 if not c.dry else 30, "--set", "monitor.knn=false"), timeout=budget)
    losses = c.losses(run)
    head, tail = float(np.mean(losses[:5])), float(np.mean(losses[-5:]))
    return {"steps": len(losses), "loss_first5": head, "loss_last5": tail, "pass": tail < head}


@item(90)
def pretrain_queue_resume(c: Check, budget: float) -> dict:
    """GPU-RISKS smoke: 30 steps at 64 px (blur on) with the queue, the probe and the kNN monitor; --resume to 40."""
    run = c.work / "queue-run"
    extra = ["--set", "augment.blur_prob=0.5", "--set", "loss.memory_size=256", "--set", "monitor.knn=true"]
    c.simclr(*c.run_args(run, 30, *extra), timeout=budget / 2)
    first = len(c.losses(run))
    c.simclr(*c.run_args(run, 40, "--resume"), timeout=budget / 2)
    losses = c.losses(run)
    return {"steps_before_resume": first, "steps": len(losses), "loss_last": losses[-1],
            "pass": first == 30 and len(losses) == 40 and bool(np.isfinite(losses).all())}  # fmt: skip


@item(120)
def eval_commands(c: Check, budget: float) -> dict:
    """linear-eval, knn, finetune, embed, export on the CUDA run, with --device cuda."""
    run, data, dev = c.work / "run", str(c.npz()), c.device.type
    if not (run / "checkpoints" / "last.pt").exists():
        c.simclr(*c.run_args(run, 10), timeout=budget / 3)
    common = ["--dataset", "npz", "--data", data, "--device", dev]
    commands = {
        "linear-eval": ["linear-eval", str(run), *common, "--epochs", "2", "--out", str(c.work / "lin")],
        "knn": ["knn", str(run), *common, "--out", str(c.work / "knn")],
        "finetune": ["finetune", str(run), *common, "--epochs", "1", "--labels", "10%", "--out", str(c.work / "ft")],
        "embed": ["embed", str(run), *common, "--out", str(c.work / "emb")],
        "export": ["export", str(run), "--out", str(c.work / "export")],
    }
    out: dict = {}
    for name, args in commands.items():
        start = time.monotonic()
        try:
            c.simclr(*args, timeout=max(10.0, budget / len(commands)))
            out[name] = {"status": "pass"}
        except Exception as e:
            out[name] = {"status": "fail", "error": str(e)[:300]}
        out[name]["seconds"] = round(time.monotonic() - start, 1)
    out["pass"] = all(v["status"] == "pass" for v in out.values())
    return out


@item(40)
def sk_autocast(c: Check, budget: float) -> dict:
    return gpu_steps.sk_autocast(c.device, "r50_1x_sk1", c.sizes["sk_batch"], c.sizes["sk_side"])


@item(60)
def resume_cpu_on_cuda(c: Check, budget: float) -> dict:
    run = c.work / "cpu-run"
    c.simclr(*c.run_args(run, 3, device="cpu"), timeout=budget / 2)
    log = c.simclr(*c.run_args(run, 6, "--resume", device=c.device.type), timeout=budget / 2)
    notice = [x for x in log.splitlines() if "resum" in x.lower()]
    return {
        "steps": len(c.losses(run)),
        "notice": notice[-1][:300] if notice else None,
        "pass": len(c.losses(run)) == 6,
    }


@item(60)
def deterministic_twice(c: Check, budget: float) -> dict:
    runs = [c.work / f"det{k}" for k in (0, 1)]
    for run in runs:
        c.simclr(*c.run_args(run, 8, "--set", "train.deterministic=true"), timeout=budget / 2)
    a, b = (c.losses(r) for r in runs)
    from simclr.checkpoint import load_checkpoint

    wa, wb = (load_checkpoint(r / "checkpoints" / "last.pt")["module"] for r in runs)
    max_diff = max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa if wa[k].is_floating_point())
    return {"losses_equal": a == b, "weights_max_abs_diff": max_diff, "pass": a == b and max_diff == 0.0}


@item(45)
def torchrun_engine(c: Check, budget: float) -> dict:
    """The engine under torchrun, 1 process (the project joins no process group for a world of 1)."""
    run = c.work / "torchrun-run"
    c.simclr(*c.run_args(run, 5), timeout=budget, torchrun=1)
    return {"steps": len(c.losses(run)), "pass": len(c.losses(run)) == 5}


@item(60)
def torchrun_cpu_on_gpu_host(c: Check, budget: float) -> dict:
    """GPU-RISKS 1: two --device cpu processes on a GPU host use gloo and never touch cuda:1."""
    run = c.work / "cpu2-run"
    c.simclr(*c.run_args(run, 3, device="cpu"), timeout=budget, torchrun=2)
    return {"steps": len(c.losses(run)), "pass": len(c.losses(run)) == 3}


@item(45)
def dry_run(c: Check, budget: float) -> dict:
    s = c.sizes
    log = c.simclr("pretrain", "--preset", "imagenet-v1", "--dry-run", "--device", c.device.type, "--set",
                   f"model.arch={s['arch']}", "--set", f"model.width_multiplier={s['width']}", "--set",
                   f"train.batch_size={s['batch']}", "--set", f"model.input_size={s['side']}", "--data",
                   str(c.folder()), timeout=budget)  # fmt: skip
    return {"output_tail": log.strip().splitlines()[-8:]}


@item(120)
def bench_cli(c: Check, budget: float) -> dict:
    """benchmarks/bench_pretrain.py: the engine's step (in-memory source) against the bare ceiling and the PIL
    DataLoader."""
    s, out = c.sizes, c.work / "bench.json"
    from simclr.data.decode import cpu_count

    script = str(Path(__file__).resolve().parent / "bench_pretrain.py")
    c.command([sys.executable, script, "--preset", "imagenet-v1", "--synthetic", "--arch", s["arch"], "--set",
             f"model.width_multiplier={s['width']}", "--resolution", str(s["side"]), "--batch-size", str(s["batch"]),
             "--device", c.device.type, "--steps", str(s["steps"] // 2 + 1), "--warmup", str(s["warmup"]),
             "--repeats", "1", "--workers", str(cpu_count()), "--out-json", str(out)], timeout=budget)  # fmt: skip
    result = json.loads(out.read_text())
    variants = result.get("variants", {})
    return {"ratios": result.get("ratios"),
            **{key: {k: v.get(field) for k, v in variants.items()} for key, field in
               (("views_per_s", "views_per_sec"), ("phases_fraction", "phases_fraction"),
                ("peak_memory_bytes", "peak_memory_bytes"))}}  # fmt: skip


@item(60)
def micro_batch(c: Check, budget: float) -> dict:
    """Gradient caching with activation checkpointing, against the plain step (first losses)."""
    runs = {"plain": [], "micro_batch": ["--set", f"train.micro_batch={c.sizes['run_batch'] // 4}",
                                         "--set", "train.activation_checkpointing=true"]}  # fmt: skip
    losses = {}
    for name, extra in runs.items():
        c.simclr(*c.run_args(c.work / f"mb-{name}", 3, *extra), timeout=budget / 2)
        losses[name] = c.losses(c.work / f"mb-{name}")
    return {"losses": losses, "first_loss_abs_diff": abs(losses["plain"][0] - losses["micro_batch"][0])}


@item(120, cuda_only=True)  # inductor's CPU compile alone outlasts the dry run's budget
def compile_steps(c: Check, budget: float) -> dict:
    """20 steps with compile=true against eager, plain and with micro-batches (GPU-RISKS 4)."""
    mb = ["--set", f"train.micro_batch={c.sizes['run_batch'] // 4}"]
    variants = {"eager": [], "compile": ["--set", "train.compile=true"], "compile_micro_batch":
                ["--set", "train.compile=true", *mb]}  # fmt: skip
    out: dict = {}
    for name, extra in variants.items():
        run = c.work / f"compile-{name}"
        try:
            c.simclr(*c.run_args(run, 20 if not c.dry else 3, *extra), timeout=budget / 3)
            losses = c.losses(run)
            out[name] = {"status": "pass", "loss_first": losses[0], "loss_last": losses[-1]}
        except Exception as e:
            out[name] = {"status": "fail", "error": str(e)[:300]}
    out["pass"] = all(v["status"] == "pass" for v in out.values())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-dry", action="store_true", help="tiny sizes on the CPU; CUDA-only items are skipped")
    p.add_argument("--budget", type=float, help="seconds for all items (default 450; 1500 with --cpu-dry)")
    p.add_argument("--only", nargs="*", help="run only these items")
    p.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gpu_check.json"))
    args = p.parse_args(argv)
    args.budget = args.budget or (1500.0 if args.cpu_dry else 450.0)
    if not args.cpu_dry and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; use --cpu-dry for the CPU rehearsal", file=sys.stderr)
    results = Check(args).run()
    statuses = [r["status"] for r in results["items"].values()]
    print(f"gpu_check: {statuses.count('pass')} passed, {statuses.count('fail')} failed, "
          f"{statuses.count('skipped')} skipped -> {args.out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
