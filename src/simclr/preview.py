"""Figures: what the augmentation does to your images (``simclr show-augmentations``), and the report's plots.

``show-augmentations --preset P --data D`` writes a PNG grid, one row per image: the stored image, then two
views drawn by the same
:class:`~simclr.augment.Augment` the training would build from the configuration (crop scale, colour
strength, blur, ...). Views are drawn with ``normalize=False``, i.e. in [0, 1] before the mean/std
normalisation (the only step left out, and the last one), so the colours are the ones the encoder sees
before standardisation. Use it to check that the crop scale keeps the object recognisable and that the
colour strength suits your data before a long run.

The report's figures (:mod:`simclr.report` gathers their data) are drawn here too: training curves, the
embedding map, nearest-neighbour retrieval and the per-dimension std of embeddings. Every figure is a
``matplotlib.figure.Figure`` on the Agg canvas, so nothing needs a display and pyplot's global state is
never touched.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from simclr.config import AugmentConfig
from simclr.errors import SimCLRError

CURVES = (  # (key, panel title, scale to display)
    ("loss", "NT-Xent loss", 1.0),
    ("contrastive_acc", "contrastive accuracy", 1.0),
    ("lr", "learning rate", 1.0),
)


def new_figure(**kwargs):
    """A ``matplotlib.figure.Figure`` on the Agg canvas: no pyplot, no display, no global backend change."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise SimCLRError("figures need matplotlib: pip install matplotlib (or the 'report' extra)") from None
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def to_display(x: Tensor) -> Tensor:
    """uint8 or [0, 1] float (B, C, H, W), C = 1 or 3 -> float (B, H, W, 3) in [0, 1] for ``imshow``."""
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.clamp(0, 1).permute(0, 2, 3, 1).cpu()


def view_pairs(
    images: Tensor, cfg: AugmentConfig, out_size: int, seed: int = 0, sizes: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Two views of each uint8 image (B, C, H, W) (``sizes``: a canvas of images of several sizes),
    un-normalised: float (B, 3, S, S) in [0, 1] each."""
    from simclr.augment import Augment

    aug = Augment(dataclasses.replace(cfg, normalize=False), out_size)
    g = torch.Generator().manual_seed(seed)
    v1, v2 = aug.two_views(images, g, sizes)
    return v1.clamp(0, 1), v2.clamp(0, 1)


def augmentation_figure(
    images: Tensor,
    cfg: AugmentConfig,
    out_size: int,
    seed: int = 0,
    title: str | None = None,
    per_row: int = 1,
    sizes: Tensor | None = None,
):
    """A figure of ``per_row`` (image, view 1, view 2) triples per row, one triple per image of ``images``
    (a canvas with ``sizes`` for images of several sizes: the views come from each whole image)."""
    v1, v2 = view_pairs(images, cfg, out_size, seed, sizes)
    pics = (to_display(images), to_display(v1), to_display(v2))
    names = ("image", "view 1", "view 2")
    n = images.shape[0]
    per_row = max(1, min(per_row, n))
    rows = -(-n // per_row)
    height = rows * 1.9 + 0.7
    fig = new_figure(figsize=(3 * per_row * 1.9, height))
    axes = fig.subplots(rows, 3 * per_row, squeeze=False)
    for i in range(rows * per_row):
        r, slot = divmod(i, per_row)
        for c in range(3):
            ax = axes[r][3 * slot + c]
            ax.set_xticks([])
            ax.set_yticks([])
            if i >= n:
                ax.set_axis_off()
                continue
            ax.imshow(pics[c][i].numpy(), interpolation="nearest")
            if r == 0:
                ax.set_title(names[c], fontsize=10)
    fig.suptitle(title if title is not None else describe(cfg, out_size), fontsize=9)
    fig.tight_layout()
    fig.subplots_adjust(top=1 - 0.55 / height)  # room for the title above the column names
    return fig


def describe(cfg: AugmentConfig, out_size: int) -> str:
    """One line with the settings that shape the views."""
    blur = cfg.blur_prob if cfg.blur_prob is not None else (0.5 if out_size > 32 else 0.0)
    crop = f"crop scale {cfg.crop_scale[0]:g}-{cfg.crop_scale[1]:g}" if cfg.crop else "no crop"
    return (
        f"{crop}, colour strength {cfg.color_strength:g} (p {cfg.color_jitter_prob:g}), "
        f"grayscale p {cfg.grayscale_prob:g}, blur p {blur:g}, flip {'on' if cfg.flip else 'off'}, {out_size} px"
    )


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save ``fig`` as PNG, atomically (a full or read-only disk is one line and leaves no partial file)."""
    from simclr.files import atomic_path

    path = Path(path)
    with atomic_path(path, "figure") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return path


# ---- the report's figures --------------------------------------------------------------------------------------------


def curves_figure(records: list[dict[str, Any]]):
    """Loss, contrastive accuracy, learning rate and monitor accuracies against the optimizer step."""
    fig = new_figure(figsize=(10, 6.4))
    axes = fig.subplots(2, 2).ravel()
    marker = "o" if len(records) < 30 else None
    for ax, (key, title, scale) in zip(axes, CURVES, strict=False):
        pts = [(r["step"], r[key] * scale) for r in records if isinstance(r.get(key), int | float)]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker=marker, ms=3)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    ax = axes[3]
    for key, label, scale in (
        ("online_probe_acc", "online probe (train views)", 100.0),
        ("knn_monitor_top1", "kNN monitor (test sample)", 1.0),
    ):
        pts = [(r["step"], r[key] * scale) for r in records if isinstance(r.get(key), int | float)]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o" if len(pts) < 30 else None, ms=3, label=label)
    ax.set_title("monitor accuracy (%)", fontsize=10)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _class_colors(labels: Tensor | None, n: int):
    from matplotlib import colormaps

    if labels is None:
        return ["tab:blue"] * n, None
    k = int(labels.max()) + 1
    cmap = colormaps["tab10" if k <= 10 else "tab20" if k <= 20 else "turbo"]
    return [cmap(int(c) % cmap.N if k <= 20 else int(c) / max(1, k - 1)) for c in labels.tolist()], cmap


def map_figure(points: Tensor, labels: Tensor | None, classes: list[str] | None, title: str):
    """Scatter of 2-D points (N, 2) coloured by class, with a legend of class names (up to 20)."""
    fig = new_figure(figsize=(7, 6))
    ax = fig.subplots()
    colors, cmap = _class_colors(labels, len(points))
    ax.scatter(points[:, 0].numpy(), points[:, 1].numpy(), c=colors, s=8, alpha=0.8, linewidths=0)
    if labels is not None and int(labels.max()) < 20:
        from matplotlib.lines import Line2D

        present = sorted(set(labels.tolist()))
        handles = [Line2D([], [], marker="o", ls="", color=cmap(c % cmap.N), ms=5) for c in present]
        names = [classes[c] if classes and c < len(classes) else str(c) for c in present]
        ax.legend(handles, names, fontsize=7, loc="best", markerscale=1.2)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    return fig


def retrieval_figure(q_img, q_lab, bank_img, bank_lab, idx: Tensor, sims: Tensor, classes):
    """One row per query: the query, then its neighbours with similarity; frames green / red by class."""
    n_q, k = idx.shape
    fig = new_figure(figsize=(1.25 * (k + 1), 1.45 * n_q + 0.3))
    axes = fig.subplots(n_q, k + 1, squeeze=False)
    q_pics, b_pics = to_display(q_img), to_display(bank_img)

    def name(lab):
        return "" if lab is None else (classes[lab] if classes and lab < len(classes) else str(lab))

    for r in range(n_q):
        ql = int(q_lab[r]) if q_lab is not None else None
        axes[r][0].imshow(q_pics[r].numpy(), interpolation="nearest")
        axes[r][0].set_title(f"query\n{name(ql)}"[:24], fontsize=7)
        for c in range(k):
            j = int(idx[r, c])
            ax = axes[r][c + 1]
            ax.imshow(b_pics[j].numpy(), interpolation="nearest")
            bl = int(bank_lab[j]) if bank_lab is not None else None
            ax.set_title(f"{float(sims[r, c]):.2f}\n{name(bl)}"[:24], fontsize=7)
            if ql is not None and bl is not None:
                for side in ax.spines.values():
                    side.set_edgecolor("tab:green" if ql == bl else "tab:red")
                    side.set_linewidth(2.5)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return fig


def health_figure(stats: dict[str, dict[str, Any]]):
    """Per-dimension std of the normalised embeddings, sorted, for each representation (log scale)."""
    fig = new_figure(figsize=(10, 3.6))
    axes = fig.subplots(1, len(stats), squeeze=False)[0]
    for ax, (name, s) in zip(axes, stats.items(), strict=True):
        std = s["std"].sort(descending=True).values.clamp_min(1e-8).numpy()
        ax.semilogy(range(1, len(std) + 1), std, lw=1.5)
        ax.axhline(1 / math.sqrt(s["dim"]), color="tab:green", ls="--", lw=1, label="1/sqrt(D): uniform spread")
        ax.axhline(0.1 / math.sqrt(s["dim"]), color="tab:red", ls=":", lw=1, label="near-zero threshold")
        ax.set_title(f"{name}: per-dimension std (sorted), D = {s['dim']}", fontsize=10)
        ax.set_xlabel("dimension rank")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ---- the command -----------------------------------------------------------------------------------------------------


def show_augmentations_command(
    preset: str | None = None,
    config: str | None = None,
    data: str | None = None,
    dataset: str | None = None,
    out: str | None = None,
    n: int = 8,
    overrides: list[str] | tuple[str, ...] = (),
    seed: int = 0,
    split: str = "train",
) -> int:
    """``simclr show-augmentations``: write the image / view 1 / view 2 grid of ``n`` images to ``out``.

    The configuration resolves as for ``pretrain`` (preset, YAML file, ``--data`` / ``--dataset``, then
    ``--set`` overrides), so ``--set augment.color_strength=0.5`` shows what that change does
    (``--set data.download=true`` fetches a known dataset first).
    """
    from simclr.config import load_config
    from simclr.data.access import open_images, sample_indices, stored_side, take

    if n < 1:
        raise SimCLRError(f"show-augmentations: -n must be at least 1, got {n}")
    extra = []
    if data:
        extra.append(f"data.path={data}")
    if dataset:
        extra.append(f"data.dataset={dataset}")
    elif data and not preset and not config:
        extra.append("data.dataset=auto")
    cfg = load_config(preset=preset, path=config, overrides=extra + list(overrides))
    source = open_images(cfg.data.dataset, cfg.data.path, split, cfg.data.image_size, cfg.data.download)
    images, sizes, _ = take(source, sample_indices(len(source), n, seed))
    size = cfg.model.input_size or stored_side(source)
    fig = augmentation_figure(images, cfg.augment, size, seed, sizes=sizes)
    path = save_figure(fig, out or "augmentations.png")
    print(f"simclr show-augmentations: {len(images)} images from {source.source} -> {path}")
    return 0


__all__ = [
    "augmentation_figure",
    "describe",
    "new_figure",
    "save_figure",
    "show_augmentations_command",
    "to_display",
    "view_pairs",
]
