"""Checkpoints: written atomically, loaded without executing code.

A checkpoint is a dict of tensors and plain Python values saved with ``torch.save`` and loaded with
``torch.load(weights_only=True)``, so a malicious pickle is refused rather than run. Writes go to a temporary
file in the same folder, are fsync'ed, then ``os.replace``'d over the old file: a crash, a full disk or a
kill at any moment leaves either the old checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from simclr.errors import SimCLRError
from simclr.files import atomic_write

FORMAT = "simclr-checkpoint"
VERSION = 1


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically; on failure the previous file at ``path`` is left intact."""
    state = {"format": FORMAT, "version": VERSION, **state}
    path = atomic_write(path, lambda f: torch.save(state, f), what="checkpoint")
    _remove_stale_temps(path)
    return path


def _remove_stale_temps(path: Path) -> None:
    """Delete ``.NAME.*.tmp`` files a killed writer (SIGKILL, power loss) left next to ``path``."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``."""
    path = Path(path)
    if path.is_dir():
        raise SimCLRError(f"{path}: is a folder, not a checkpoint file")
    if not path.is_file():
        raise SimCLRError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise SimCLRError(f"{path}: empty file (0 bytes), not a checkpoint")
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4": the one error line below says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's text is a long advice paragraph; the line naming the forbidden global is what matters
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        code = next((line for line in lines if "GLOBAL" in line), None)
        if code is not None:
            raise SimCLRError(f"{path}: refused to load: it references Python code ({code[:160]})") from None
        why = next((line for line in lines if line.startswith("Unsupported")), lines[0] if lines else "")
        raise SimCLRError(f"{path}: not a readable checkpoint (not a torch.save file: {why[:120]})") from None
    except Exception as e:  # torch.load raises many types on damaged input (KeyError, IndexError, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SimCLRError(f"{path}: not a readable checkpoint ({first[:160]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise SimCLRError(f"{path}: not a simclr checkpoint (no '{FORMAT}' marker)")
    return state


def resolve_checkpoint(run_or_file: str | os.PathLike) -> Path:
    """A run folder resolves to ``RUN/checkpoints/last.pt``; a file is returned as is."""
    p = Path(run_or_file)
    if p.is_dir():
        cand = p / "checkpoints" / "last.pt"
        if not cand.is_file():
            raise SimCLRError(f"{p}: run folder has no checkpoints/last.pt")
        return cand
    if not p.exists():
        raise SimCLRError(f"{p}: no such run folder or checkpoint file")
    return p


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """``load_state_dict`` that reports an architecture mismatch as one line naming ``source``."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        text = str(e)
        detail = "shapes or parameter names differ"
        for line in text.splitlines():
            line = line.strip()
            if line.startswith(("Missing key", "Unexpected key", "size mismatch")):
                detail = line[:200]
                break
        raise SimCLRError(f"{source}: checkpoint does not match this architecture ({detail})") from None


def file_sha256(path: str | os.PathLike, limit: int | None = None) -> str:
    """Hex SHA-256 of a file (for evaluation cards)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:limit] if limit else h.hexdigest()


class Pretrained:
    """A model rebuilt from a checkpoint: ``model`` (SimCLRModel), ``config``, ``image_size``, ``mean``,
    ``std``, ``path``, ``sha256``, and the raw ``state`` dict."""

    def __init__(self, model, config, image_size: int, mean, std, path: Path, state: dict):
        self.model = model
        self.config = config
        self.image_size = image_size
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.path = path
        self.state = state
        self._sha: str | None = None

    @property
    def sha256(self) -> str:
        if self._sha is None:
            self._sha = file_sha256(self.path)
        return self._sha


def load_pretrained(run_or_file: str | os.PathLike, device: str | torch.device = "cpu") -> Pretrained:
    """Rebuild the encoder + head of a pretraining run (or checkpoint file) with its weights."""
    from simclr.config import config_from_dict
    from simclr.models.build import build_model

    path = resolve_checkpoint(run_or_file)
    state = load_checkpoint(path)
    for key in ("config", "model", "image_size"):
        if key not in state:
            raise SimCLRError(f"{path}: checkpoint lacks '{key}'")
    try:
        cfg = config_from_dict(state["config"])
    except SimCLRError as e:
        raise SimCLRError(f"{path}: stored config is invalid ({e})") from None
    model = build_model(cfg.model, int(state["image_size"]))
    load_state_strict(model, state["model"], path)
    model.to(device)
    stats = state.get("data_stats", {})
    return Pretrained(
        model,
        cfg,
        int(state["image_size"]),
        stats.get("mean", (0.5, 0.5, 0.5)),
        stats.get("std", (0.5, 0.5, 0.5)),
        path,
        state,
    )
