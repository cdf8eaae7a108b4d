"""The in-process measurements of the GPU check (benchmarks/gpu_check.py): training-step rates, streamed
views, NT-Xent precision, SK under autocast, and the NCCL child run under torchrun.

Every function takes the check's ``sizes`` (full ResNet-50 sizes on CUDA, tiny ones for ``--cpu-dry``) and a
``deadline`` (time.monotonic()) that timed loops respect, and returns a dict of figures.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import sys
import time
from pathlib import Path

import torch

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

from simclr.augment import Augment  # noqa: E402
from simclr.config import AugmentConfig, ModelConfig, OptimConfig  # noqa: E402
from simclr.loss import nt_xent  # noqa: E402
from simclr.models.build import build_model  # noqa: E402
from simclr.optim import build_optimizer  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, matched on the device name in order.
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756), ("H100 NVL", 835), ("H100", 989), ("H200", 989), ("GH200", 989), ("B200", 2250),
    ("A100", 312), ("L40S", 362), ("L4", 121), ("A10", 125),
)  # fmt: skip
# torchvision's reference recipe for supervised ResNet-50: 2,470 images/s on one A100 with AMP.
REFERENCE = {"images_per_s": 2470, "device": "A100", "peak_tflops": 312}


def bf16_peak(name: str) -> float | None:
    """Dense bf16 peak FLOP/s of the GPU called ``name``, or None when unknown."""
    for key, tflops in BF16_PEAK_TFLOPS:
        if key in name:
            return tflops * 1e12
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_flops_per_view(arch: str, width: float, side: int) -> float:
    """Forward + backward FLOPs of one view: 3 x 2 x multiply-adds of encoder and head (meta device)."""
    from simclr.models.zoo import count_macs

    with torch.device("meta"):
        model = build_model(ModelConfig(arch=arch, width_multiplier=width), side)
    return 6.0 * count_macs(model, (1, 3, side, side))


class Trainer:
    """ResNet + head, LARS, bf16 autocast on CUDA, channels_last, NT-Xent at tau 0.1: the method's step."""

    def __init__(self, sizes: dict, device: torch.device) -> None:
        torch.manual_seed(0)
        cfg = ModelConfig(arch=sizes["arch"], width_multiplier=sizes["width"])
        self.model = build_model(cfg, sizes["side"]).to(device).to(memory_format=torch.channels_last)
        self.opt = build_optimizer(self.model, OptimConfig(), sizes["batch"])[0]
        self.device = device
        cuda = device.type == "cuda"
        self.autocast = torch.autocast("cuda", torch.bfloat16) if cuda else contextlib.nullcontext()

    def step(self, views: torch.Tensor) -> torch.Tensor:
        with self.autocast:
            _, z = self.model(views.contiguous(memory_format=torch.channels_last))
        z_a, z_b = z.float().chunk(2)
        loss = nt_xent(z_a, z_b, 0.1)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()


def _rate(fn, views_per_call: int, warmup: int, steps: int, device, deadline: float) -> dict:
    """Views/s of ``fn()`` over up to ``steps`` timed calls after ``warmup`` (fewer when the deadline nears)."""
    for _ in range(warmup):
        fn()
    sync(device)
    start, done = time.perf_counter(), 0
    while done < steps and (done == 0 or time.monotonic() < deadline):
        fn()
        done += 1
    sync(device)
    elapsed = time.perf_counter() - start
    return {"views_per_s": views_per_call * done / elapsed, "step_s": elapsed / done, "steps": done}


def views_of(augment: Augment, batch, generator, side: int):
    """Two views of a Batch: with ``sizes`` when Augment takes them, else a square crop of each image."""
    if "sizes" in inspect.signature(augment.two_views).parameters:
        return augment.two_views(batch.images, generator, sizes=batch.sizes)
    from bench_stream import square_crops  # the stand-in lives with the benchmark

    return augment.two_views(square_crops(batch.images, batch.sizes, side), generator)


def forever(source):
    epoch = 0
    while True:
        source.set_epoch(epoch)
        yield from source
        epoch += 1


def stream_source(folder: Path, sizes: dict, device, decode: str):
    from simclr.data import make_batch_source
    from simclr.data.decode import cpu_count
    from simclr.data.stream import ImageStream

    stream = ImageStream(folder, sizes["stored_side"], max_bad_fraction=0.05)
    return make_batch_source(stream, sizes["batch"], device, seed=0, threads=cpu_count(), decode=decode)


def resnet_steps(sizes: dict, device: torch.device, folder: Path, deadline: float) -> dict:
    """Bare step on pre-made views, the step with the in-memory source + Augment, and with the streamed JPEGs."""
    b, side = sizes["batch"], sizes["side"]
    trainer = Trainer(sizes, device)
    augment = Augment(AugmentConfig(), side, (0.45, 0.45, 0.4), (0.25, 0.25, 0.25)).to(device)
    gen = torch.Generator(device).manual_seed(0)
    views = torch.randn(2 * b, 3, side, side, device=device)
    images = torch.randint(0, 256, (b, 3, sizes["memory_side"], sizes["memory_side"]), dtype=torch.uint8,
                           device=device)  # fmt: skip
    w, n = sizes["warmup"], sizes["steps"]
    out: dict = {"batch": b, "side": side, "arch": sizes["arch"], "views_per_step": 2 * b}
    out["bare"] = _rate(lambda: trainer.step(views), 2 * b, w, n, device, deadline)

    def with_augment():
        v1, v2 = augment.two_views(images, gen)
        trainer.step(torch.cat([v1, v2]))

    out["in_memory_augment"] = _rate(with_augment, 2 * b, w, n, device, deadline)
    aug = _rate(lambda: augment.two_views(images, gen), 2 * b, 1, n, device, deadline)
    out["augment_share"] = aug["step_s"] / out["in_memory_augment"]["step_s"]
    out["in_memory_ratio_to_bare"] = out["in_memory_augment"]["views_per_s"] / out["bare"]["views_per_s"]
    if folder is not None:
        decoders = ["auto"]
        for decode in decoders:
            source = stream_source(folder, sizes, device, decode)
            batches = forever(source)

            def streamed(batches=batches):
                v1, v2 = views_of(augment, next(batches), gen, sizes["stored_side"])
                trainer.step(torch.cat([v1, v2]))

            key = "streamed" if decode == "auto" else "streamed_cpu_decode"
            out[key] = _rate(streamed, 2 * b, w, n, device, deadline)
            out[key]["decoder"] = source.decoder
            out[f"{key}_ratio_to_bare"] = out[key]["views_per_s"] / out["bare"]["views_per_s"]
            if source.decoder == "gpu":
                decoders.append("cpu")  # and the same with the CPU decoder, for comparison
            batches.close()
            source.close()
    flops = train_flops_per_view(sizes["arch"], sizes["width"], side)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = bf16_peak(name)
    out["train_gflops_per_view"] = flops / 1e9
    out["bf16_peak_tflops"] = peak / 1e12 if peak else None
    for key in ("bare", "in_memory_augment", "streamed", "streamed_cpu_decode"):
        if key in out and peak:
            out[key]["mfu"] = out[key]["views_per_s"] * flops / peak
    out["reference"] = {**REFERENCE, "mfu": REFERENCE["images_per_s"] * flops / (REFERENCE["peak_tflops"] * 1e12)}
    out["targets"] = {"streamed_ratio_to_bare >= 0.85": out.get("streamed_ratio_to_bare", 0) >= 0.85,
                      "augment_share <= 0.05": out["augment_share"] <= 0.05}  # fmt: skip
    return out


def stream_views(sizes: dict, device: torch.device, folder: Path, deadline: float) -> dict:
    """Views/s of the streamed source + Augment alone (no model), per decoder available on ``device``."""
    from simclr.data.decode import gpu_decode_available

    augment = Augment(AugmentConfig(), sizes["side"]).to(device)
    gen = torch.Generator(device).manual_seed(0)
    out = {"gpu_decode_available": gpu_decode_available(device)}
    for decode in ["gpu", "cpu"] if out["gpu_decode_available"] else ["cpu"]:
        source = stream_source(folder, sizes, device, decode)
        batches = forever(source)

        def views(batches=batches):
            return views_of(augment, next(batches), gen, sizes["stored_side"])

        out[decode] = _rate(views, 2 * sizes["batch"], 1, sizes["stream_batches"], device, deadline)
        batches.close()
        source.close()
    return out


def ntxent_precision(device: torch.device, n: int = 512, dim: int = 128) -> dict:
    """NT-Xent and its gradient on ``device`` (float32) against a CPU float64 reference, plain and chunked."""
    g = torch.Generator().manual_seed(0)
    z64 = torch.randn(2, n, dim, generator=g, dtype=torch.float64)
    out = {"tf32_matmul_flag": torch.backends.cuda.matmul.allow_tf32}
    for name, chunk in (("plain", None), ("chunked", max(8, n // 4))):
        ref = z64.clone().requires_grad_()
        loss_ref = nt_xent(ref[0], ref[1], 0.1, chunk_size=chunk)
        loss_ref.backward()
        z = z64.float().to(device).requires_grad_()
        loss = nt_xent(z[0], z[1], 0.1, chunk_size=chunk)
        loss.backward()
        out[name] = {
            "loss_abs_err": abs(float(loss.detach()) - float(loss_ref.detach())),
            "grad_max_abs_err": float((z.grad.double().cpu() - ref.grad).abs().max()),
            "grad_max_abs": float(ref.grad.abs().max()),
        }
    out["pass"] = all(out[k]["loss_abs_err"] < 1e-4 and out[k]["grad_max_abs_err"] < 1e-6 for k in ("plain", "chunked"))
    return out


def sk_autocast(device: torch.device, arch: str, batch: int, side: int) -> dict:
    """An SK ResNet forward under bf16 autocast: output dtype and peak memory, against fp32."""
    from simclr.models import create_encoder

    encoder = create_encoder(arch).to(device).eval()
    x = torch.randn(batch, 3, side, side, device=device)
    out = {"arch": arch, "batch": batch, "side": side}
    for name, ctx in (
        ("fp32", contextlib.nullcontext()),
        ("bf16_autocast", torch.autocast(device.type, torch.bfloat16)),
    ):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with torch.no_grad(), ctx:
            h = encoder(x)
        sync(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        out[name] = {"dtype": str(h.dtype), "shape": list(h.shape), "peak_mib": peak}
    return out


def nccl_child(out_path: str, backend: str) -> None:
    """Run under torchrun: a process group on ``backend``, collectives, and a few DDP steps with global BN."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from simclr.distributed import _convert, all_gather_nograd, all_reduce_mean, init_distributed

    info = init_distributed(device="cuda" if backend == "nccl" else "cpu")
    if not dist.is_initialized():  # the project joins a group only for WORLD_SIZE > 1: make one of 1 here
        dist.init_process_group(backend, init_method="env://", rank=info.rank, world_size=int(os.environ["WORLD_SIZE"]))
    device = info.device
    t = torch.arange(4.0, device=device)
    gathered = all_gather_nograd(t)
    mean = all_reduce_mean(t.clone())
    torch.manual_seed(0)
    model = _convert(build_model(ModelConfig(arch="resnet18", width_multiplier=0.25), 32)).to(device)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                  broadcast_buffers=False)  # fmt: skip
    opt = build_optimizer(ddp, OptimConfig(), 32)[0]
    losses = []
    x = torch.randn(32, 3, 32, 32, device=device)
    for _ in range(3):
        _, z = ddp(x)
        loss = nt_xent(*z.float().chunk(2), 0.5, gather=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(all_reduce_mean(loss.detach())))
    result = {"backend": dist.get_backend(), "world_size": dist.get_world_size(), "device": str(device),
              "all_gather_ok": bool(torch.equal(gathered.cpu(), t.cpu().repeat(dist.get_world_size()))),
              "all_reduce_ok": bool(torch.equal(mean.cpu(), t.cpu())), "ddp_losses": losses}  # fmt: skip
    if info.rank == 0:
        Path(out_path).write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":  # torchrun entry: gpu_steps.py OUT.json BACKEND
    nccl_child(sys.argv[1], sys.argv[2])
