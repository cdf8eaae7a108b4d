"""Export a pretrained encoder f(.) for use outside this library, and load it back without running code.

``simclr export RUN`` writes, into ``RUN/export/`` (or ``--out DIR``):

- ``encoder.safetensors`` — the encoder's ``state_dict`` (when the ``safetensors`` package is installed);
- ``encoder.pt`` — the same tensors, always written: ``torch.save({"format": "simclr-checkpoint",
  "kind": "encoder", "state_dict": ..., "meta": ...})``, readable with ``torch.load(weights_only=True)``;
- ``encoder.json`` — what is needed to rebuild and feed the network: the :func:`~simclr.models.create_encoder`
  keywords (``architecture``), the output width, and the preprocessing (input side, mean, std, centre-crop
  fraction, input value range), plus the SHA-256 of each weights file and where they came from;
- ``encoder.onnx`` — with ``onnx=True`` when the ``onnx`` package is installed: input ``images``
  float32 (B, 3, S, S) already normalised, output ``h`` (B, out_dim), dynamic batch axis.

:func:`load_encoder` reads the JSON and the safetensors file (or, when ``safetensors`` is not installed or the
file is absent, ``encoder.pt`` with ``weights_only=True``). Neither JSON, safetensors nor a weights-only
unpickler can execute code: a ``.pt`` file whose unpickling would call a Python function is refused with a
:class:`~simclr.errors.SimCLRError`, and weights whose SHA-256 differs from the JSON's are refused too.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from simclr.errors import SimCLRError
from simclr.files import atomic_path, folder_lock, make_folder

FORMAT = "simclr-encoder"
VERSION = 1
JSON_NAME, SAFETENSORS_NAME, PT_NAME, ONNX_NAME = "encoder.json", "encoder.safetensors", "encoder.pt", "encoder.onnx"


def resolve_run(path: str | os.PathLike) -> Path:
    """The pretraining run behind ``path``: a run folder, a pipeline folder (``DIR/pretrain``) or a ``.pt``."""
    p = Path(path)
    if p.is_dir() and not (p / "checkpoints" / "last.pt").is_file() and (p / "pretrain").is_dir():
        return p / "pretrain"
    if not p.exists():
        raise SimCLRError(f"{p}: no such run folder, pipeline folder or checkpoint file")
    return p


def default_crop_fraction(image_size: int, crop_fraction: float | None) -> float:
    """``augment.eval_crop_fraction`` resolved as :class:`~simclr.augment.EvalTransform` does."""
    if crop_fraction is not None:
        return float(crop_fraction)
    return 0.875 if image_size > 32 else 1.0


def _recipe(stored: int, crop: float, size: int, normalize: bool) -> str:
    """The evaluation preprocessing in words, for users feeding the encoder without this library."""
    from simclr.augment import eval_crop_side

    steps = [f"resize the shorter side to {stored} px and centre-crop {stored}x{stored}"]
    if crop < 1:
        steps.append(f"centre-crop {crop:g} of the side ({eval_crop_side(stored, crop)} px)")
    steps.append("scale pixels to [0, 1]")
    if crop < 1 or stored != size:
        steps.append(f"resize to {size}x{size} (bicubic, Keys a = -0.5, antialiased when shrinking; clip to [0, 1])")
    steps.append("subtract mean and divide by std, per channel" if normalize else "no mean/std normalisation")
    return "; ".join(s for s in steps if s)


def _readable(paths: list[Path]) -> None:
    """Exported files are meant to be shared: ordinary permissions (the atomic writers create them 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    for path in paths:
        os.chmod(path, 0o666 & ~mask)


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def save_encoder(
    encoder: nn.Module,
    out: str | os.PathLike,
    *,
    image_size: int,
    mean: tuple[float, ...] = (0.5, 0.5, 0.5),
    std: tuple[float, ...] = (0.5, 0.5, 0.5),
    eval_crop_fraction: float | None = None,
    normalize: bool = True,
    stored_image_size: int | None = None,
    source: dict[str, Any] | None = None,
    onnx: bool = False,
) -> Path:
    """Write ``encoder`` (a :class:`~simclr.models.ResNet`) to the folder ``out``; returns ``out/encoder.json``.

    ``image_size`` is the side S of the views the encoder was trained on; ``mean`` / ``std`` (1 or 3 values,
    [0, 1] units) and ``eval_crop_fraction`` (None: 0.875 above 32 px, else 1.0) describe the evaluation
    preprocessing; ``stored_image_size`` is the side images were resized to before that crop (the run's
    ``data.image_size``, default S). ``onnx=True`` also writes ``encoder.onnx`` (needs the ``onnx`` package).
    """
    from simclr import __version__
    from simclr.checkpoint import file_sha256, save_checkpoint
    from simclr.eval.card import write_json_atomic
    from simclr.models import encoder_spec

    if not hasattr(encoder, "arch_name"):
        raise SimCLRError(f"export: expected a ResNet from create_encoder, got {type(encoder).__name__}")
    out = make_folder(out, "export folder")
    state = {k: v.detach().to("cpu").contiguous() for k, v in encoder.state_dict().items()}
    mean3 = [float(m) for m in tuple(mean) * (3 // len(mean))]
    std3 = [float(s) for s in tuple(std) * (3 // len(std))]
    crop = default_crop_fraction(image_size, eval_crop_fraction)
    stored = int(stored_image_size or image_size)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "architecture": encoder_spec(encoder),
        "out_dim": int(encoder.out_dim),
        "output": "h: (B, out_dim) global-average-pooled representation of the encoder (no projection head)",
        "preprocessing": {
            "image_size": int(image_size),
            "stored_image_size": stored,
            "eval_crop_fraction": crop,
            "mean": mean3,
            "std": std3,
            "normalize": bool(normalize),
            "input_value_range": [0.0, 1.0],
            "channels": "RGB, 3 channels (grayscale repeated to 3)",
            "recipe": _recipe(stored, crop, image_size, normalize),
        },
        "source": dict(source or {}),
        "library_version": __version__,
        "weights": {},
    }
    save_checkpoint({"kind": "encoder", "state_dict": state, "meta": json.loads(json.dumps(meta))}, out / PT_NAME)
    meta["weights"]["pt"] = {"file": PT_NAME, "sha256": file_sha256(out / PT_NAME)}
    if _has("safetensors"):
        from safetensors.torch import save_file

        with atomic_path(out / SAFETENSORS_NAME, "safetensors file") as tmp:
            save_file(state, str(tmp), metadata={"format": FORMAT, "version": str(VERSION)})
        meta["weights"]["safetensors"] = {"file": SAFETENSORS_NAME, "sha256": file_sha256(out / SAFETENSORS_NAME)}
    if onnx:
        with atomic_path(out / ONNX_NAME, "ONNX file") as tmp:
            export_onnx(encoder, tmp, image_size)
        meta["onnx"] = {"file": ONNX_NAME, "input": "images", "output": "h"}
    path = write_json_atomic(out / JSON_NAME, meta)
    _readable([out / w["file"] for w in meta["weights"].values()] + [path])
    return path


def export_onnx(encoder: nn.Module, path: str | os.PathLike, image_size: int, opset: int = 17) -> str:
    """Write ``encoder`` as ONNX: ``images`` float32 (B, 3, S, S), normalised -> ``h`` (B, out_dim).

    Uses torch's TorchScript-based exporter (``dynamo=False``), which needs only the ``onnx`` package.
    """
    if not _has("onnx"):
        raise SimCLRError("export --onnx: the onnx package is not installed (pip install onnx)")
    import copy
    import warnings

    net = copy.deepcopy(encoder).to("cpu").float().eval()
    x = torch.zeros(2, 3, image_size, image_size)
    with warnings.catch_warnings():  # deprecation notices of the TorchScript exporter
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (x,),
            os.fspath(path),
            dynamo=False,
            input_names=["images"],
            output_names=["h"],
            dynamic_axes={"images": {0: "batch"}, "h": {0: "batch"}},
            opset_version=opset,
        )
    return Path(path).name


def export_encoder(run: str | os.PathLike, out: str | os.PathLike | None = None, onnx: bool = False) -> Path:
    """Export the encoder of a pretraining run (folder, pipeline folder or checkpoint) to ``out``.

    ``out`` defaults to ``RUN/export``. Returns the path of ``encoder.json``.
    """
    from simclr.checkpoint import load_pretrained

    run = resolve_run(run)
    pre = load_pretrained(run)
    a = pre.config.augment
    if out is None:
        out = (run if run.is_dir() else run.parent) / "export"
    state = pre.state
    source = {
        "checkpoint": os.fspath(pre.path),
        "checkpoint_sha256": pre.sha256,
        "config_name": pre.config.name,
        "arch": pre.config.model.arch,
        "step": (state.get("run_state") or {}).get("step"),
        "dataset": pre.config.data.dataset,
    }
    return save_encoder(
        pre.model.encoder,
        out,
        image_size=pre.image_size,
        mean=pre.mean,
        std=pre.std,
        eval_crop_fraction=a.eval_crop_fraction,
        normalize=a.normalize,
        stored_image_size=pre.config.data.image_size,
        source=source,
        onnx=onnx,
    )


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SimCLRError(f"{path}: not a readable encoder description ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SimCLRError(f"{path}: not a simclr encoder description (no '{FORMAT}' format marker)")
    if meta.get("version", 0) > VERSION:
        raise SimCLRError(f"{path}: encoder format version {meta.get('version')} is newer than this library's")
    return meta


def _weights_entry(json_path: Path, entry: Any) -> dict[str, Any] | None:
    """A ``weights`` entry of the JSON: a plain file name in the same folder (no path), and its SHA-256."""
    if entry is None:
        return None
    name = entry.get("file") if isinstance(entry, dict) else None
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise SimCLRError(f"{json_path}: a weights entry must name a file in the same folder, got {entry!r}")
    return entry


def _architecture(path: Path, arch: Any) -> dict[str, Any]:
    """The create_encoder keywords of the description, checked key by key and type by type."""
    types = {
        "name": (str,),
        "width": (int, float),
        "sk_ratio": (int, float),
        "cifar_stem": (bool,),
        "se_ratio": (int, float),
        "first_block_projection": (bool,),
    }
    flags = ("cifar_stem", "first_block_projection")
    ok = isinstance(arch, dict) and "name" in arch and set(arch) <= set(types)
    if ok:
        ok = all(isinstance(v, types[k]) and (k in flags or not isinstance(v, bool)) for k, v in arch.items())
    if not ok:
        raise SimCLRError(f"{path}: 'architecture' must hold create_encoder keywords {', '.join(types)}, got {arch!r}")
    return arch


def _check_sha(path: Path, entry: dict[str, Any]) -> None:
    from simclr.checkpoint import file_sha256

    want = entry.get("sha256")
    if want and file_sha256(path) != want:
        raise SimCLRError(f"{path}: SHA-256 differs from the one in {JSON_NAME}; the file was changed or damaged")


def _load_pt(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    from simclr.checkpoint import load_checkpoint

    saved = load_checkpoint(path)  # weights_only=True: a pickle referencing code is refused here
    if saved.get("kind") != "encoder" or not isinstance(saved.get("state_dict"), dict):
        raise SimCLRError(f"{path}: not an exported encoder (kind {saved.get('kind')!r}); use `simclr export`")
    return saved["state_dict"], saved.get("meta")


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(os.fspath(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise SimCLRError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0][:160]})") from None


def load_encoder(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild an exported encoder; returns it in eval mode, with its ``preprocessing`` dict attached.

    ``path``: the export folder, its ``encoder.json``, or an ``encoder.safetensors`` / ``encoder.pt`` file
    (a ``.pt`` alone carries its own description). Weights come from safetensors when the package is
    installed and the file is there, else from ``encoder.pt`` loaded with ``torch.load(weights_only=True)``.
    Nothing in the files is executed; a tampered or malicious file raises :class:`SimCLRError`.

    >>> import tempfile, torch, simclr
    >>> from simclr.export import save_encoder
    >>> folder = tempfile.mkdtemp()
    >>> _ = save_encoder(simclr.create_encoder("resnet18", width=0.125, cifar_stem=True), folder, image_size=32)
    >>> encoder = simclr.load_encoder(folder)
    >>> encoder.preprocessing["image_size"], encoder.out_dim
    (32, 64)
    >>> encoder(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 64])
    """
    from simclr.checkpoint import load_state_strict
    from simclr.models import encoder_from_spec

    p = Path(path)
    if p.is_dir():
        p = p / JSON_NAME
    if not p.exists():
        raise SimCLRError(f"{p}: no exported encoder here (run `simclr export RUN` first)")
    state: dict[str, torch.Tensor] | None = None
    if p.suffix == ".pt":
        state, meta = _load_pt(p)
        if meta is None or meta.get("format") != FORMAT:
            raise SimCLRError(f"{p}: exported encoder without its description")
        source: Path = p
    else:
        json_path = p if p.suffix == ".json" else p.with_suffix(".json")
        if not json_path.is_file():
            raise SimCLRError(f"{json_path}: encoder description not found next to {p.name}")
        meta = _read_meta(json_path)
        weights = meta.get("weights") or {}
        folder = json_path.parent
        st, pt = (_weights_entry(json_path, weights.get(k)) for k in ("safetensors", "pt"))
        if p.suffix == ".safetensors" or (st and _has("safetensors") and (folder / st["file"]).is_file()):
            if not _has("safetensors"):
                raise SimCLRError(f"{p}: the safetensors package is not installed; load {PT_NAME} instead")
            source = p if p.suffix == ".safetensors" else folder / st["file"]
            _check_sha(source, st or {})
            state = _load_safetensors(source)
        elif pt and (folder / pt["file"]).is_file():
            source = folder / pt["file"]
            _check_sha(source, pt)
            state, _ = _load_pt(source)
        else:
            raise SimCLRError(f"{json_path}: none of its weights files ({SAFETENSORS_NAME}, {PT_NAME}) is present")
    encoder = encoder_from_spec(_architecture(p, meta.get("architecture")))  # older specs: older layout
    load_state_strict(encoder, state, source)
    encoder.preprocessing = dict(meta.get("preprocessing") or {})
    return encoder.to(map_location).eval()


def export_command(run: str, out: str | None = None, onnx: bool = False) -> int:
    """``simclr export RUN [--out DIR] [--onnx]``: print what was written."""
    if onnx and not _has("onnx"):
        raise SimCLRError("export --onnx: the onnx package is not installed (pip install onnx)")
    run_path = resolve_run(run)
    folder = Path(out) if out else (run_path if run_path.is_dir() else run_path.parent) / "export"
    with folder_lock(folder, "export folder"):
        path = export_encoder(run_path, folder, onnx=onnx)
    meta = json.loads(path.read_text())
    files = [w["file"] for w in meta["weights"].values()] + ([meta["onnx"]["file"]] if "onnx" in meta else [])
    arch = meta["architecture"]
    print(
        f"simclr export: {arch['name']} x{arch['width']:g} (h: {meta['out_dim']}-d, input "
        f"{meta['preprocessing']['image_size']} px) -> {path.parent}: {JSON_NAME}, {', '.join(files)}"
    )
    if "safetensors" not in meta["weights"]:
        print("simclr export: note: safetensors is not installed; only encoder.pt was written")
    return 0


__all__ = ["export_command", "export_encoder", "export_onnx", "load_encoder", "resolve_run", "save_encoder"]
