"""The run report: one self-contained HTML page (``RUN/report/index.html``) with its figures as PNG files.

``write_report(RUN)`` accepts a pretraining run folder or a pipeline folder (whose ``pretrain/`` is the run)
and shows, each section skipped with a note when its input is missing:

- training curves from ``metrics.jsonl``: NT-Xent loss, contrastive accuracy, learning rate, and the online
  probe / kNN monitor accuracies;
- a 2-D map of test-image representations h coloured by class: PCA (SVD) always, t-SNE when scikit-learn is
  installed, UMAP when umap-learn is installed;
- nearest-neighbour retrieval: test queries and their 8 most cosine-similar train images (by h);
- pairs of augmented views drawn with the run's own augmentation settings;
- representation health on two augmented views of test images (Wang & Isola 2020): alignment
  E ||f(x) - f(x')||^2 and uniformity log E exp(-2 ||f(x) - f(y)||^2) of the L2-normalised embeddings, the
  standard deviation of every dimension (collapse shows as near-zero stds) and the effective rank
  (exp of the entropy of the normalised singular values), for h and z;
- the results table (``results.json`` of a pipeline) and the evaluation card of every ``metrics.json``.

Figures are drawn with matplotlib's Agg canvas (no display needed) and embedded in the page as base64 PNG.
The HTML tables (run facts, results, evaluation cards) and the style sheet are in :mod:`simclr.report_html`.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from simclr.errors import SimCLRError
from simclr.files import folder_lock, write_text
from simclr.health import health_summary, interpret
from simclr.preview import (
    augmentation_figure,
    curves_figure,
    health_figure,
    map_figure,
    retrieval_figure,
    save_figure,
)
from simclr.report_html import STYLE, escape, results_html, run_facts

# ---- inputs ------------------------------------------------------------------------------------------------


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` (lines cut by a kill are skipped)."""
    records = []
    p = Path(path)
    if not p.is_file():
        return records
    for line in p.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "step" in rec:
            records.append(rec)
    return records


@torch.no_grad()
def _embed(model, images: Tensor, transform, device, batch: int = 256) -> tuple[Tensor, Tensor]:
    """(h, z) of uint8 images after ``transform``, model in eval mode, on the CPU."""
    hs, zs = [], []
    for i in range(0, len(images), batch):
        h, z = model(transform(images[i : i + batch].to(device)))
        hs.append(h.float().cpu())
        zs.append(z.float().cpu())
    return torch.cat(hs), torch.cat(zs)


def _png(fig, folder: Path, name: str) -> tuple[str, Path]:
    path = save_figure(fig, folder / name)
    return base64.b64encode(path.read_bytes()).decode("ascii"), path


# ---- embedding maps ---------------------------------------------------------------------------------------


def pca_2d(x: Tensor) -> tuple[Tensor, float]:
    """Projection of x (N, D) on its first two principal axes (SVD of the centred data), variance share."""
    xc = x.double() - x.double().mean(0)
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)
    share = float(s[:2].pow(2).sum() / s.pow(2).sum().clamp_min(1e-12))
    return (xc @ vh[:2].T).float(), share


def embedding_maps(h: Tensor, seed: int) -> list[tuple[str, Tensor, str]]:
    """(method, 2-D points, caption): PCA always; t-SNE and UMAP when their packages are installed."""
    pts, share = pca_2d(h)
    maps = [("pca", pts, f"PCA of h: the first two principal components ({share:.0%} of the variance).")]
    x = F.normalize(h, dim=1).numpy()
    if len(x) < 10:  # too few points for a neighbour embedding
        return maps
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        pass
    else:
        perplexity = float(max(2.0, min(30.0, (len(x) - 1) / 3)))
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
        maps.append(
            (
                "tsne",
                torch.from_numpy(tsne.fit_transform(x)).float(),
                f"t-SNE of normalised h (perplexity {perplexity:g}).",
            )
        )
    try:
        import umap
    except ImportError:
        pass
    else:
        reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(x) - 1), random_state=seed)
        maps.append(("umap", torch.from_numpy(reducer.fit_transform(x)).float(), "UMAP of normalised h."))
    return maps


# ---- the page ----------------------------------------------------------------------------------------------


def can_draw() -> bool:
    """matplotlib is installed (without it the page has every table but no figure)."""
    return importlib.util.find_spec("matplotlib") is not None


class _Page:
    """The sections of the page and the PNGs written for it."""

    def __init__(self, folder: Path):
        self.folder, self.parts, self.images = folder, [], []
        self.draw = can_draw()

    def section(self, title: str, body: str) -> None:
        self.parts.append(f"<h2>{escape(title)}</h2>{body}")

    def figure(self, draw: Callable[[], Any], name: str, caption: str = "") -> str:
        """``draw()`` makes the figure: saved as ``name``, embedded as base64; a note without matplotlib."""
        if not self.draw:
            return f"<p class='note'>{escape(name)}: figures need matplotlib (pip install matplotlib).</p>"
        data, path = _png(draw(), self.folder, name)
        self.images.append(path)
        return (
            f"<figure><img alt='{escape(name)}' src='data:image/png;base64,{data}'><figcaption>{escape(caption)}"
            "</figcaption></figure>"
        )

    def note(self, title: str, text: str) -> None:
        self.section(title, f"<p class='note'>{escape(text)}</p>")


def _load_split(cfg, split: str, n: int, seed: int):
    from simclr.data.access import open_images, sample_indices, take_square

    data = open_images(cfg.data.dataset, cfg.data.path, split, cfg.data.image_size)
    images, labels = take_square(data, sample_indices(len(data), n, seed))  # folders: each centre square
    return images, labels, data.classes, data.source


def write_report(
    run_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    device: str = "auto",
    max_images: int = 1000,
    seed: int = 0,
) -> Path:
    """Write the report of a run (or pipeline) folder; returns the path of the HTML page.

    ``out``: the report folder (default ``RUN/report``; a path ending in ``.html`` names the page itself,
    its figures go beside it). ``max_images``: size of the seeded test sample used for the map and the
    health figures; the retrieval bank is twice that many train images.
    """
    from simclr.export import resolve_run

    root = Path(run_dir)
    if not root.is_dir():
        raise SimCLRError(f"{root}: no such run folder or pipeline folder")
    run = resolve_run(root)
    out = Path(out) if out is not None else root / "report"
    page_path = out if out.suffix == ".html" else out / "index.html"
    with folder_lock(page_path.parent, "report folder"):
        return _write_page(root, run, page_path, device, max_images, seed)


def _write_page(root: Path, run: Path, page_path: Path, device: str, max_images: int, seed: int) -> Path:
    from simclr.checkpoint import load_pretrained
    from simclr.runtime import resolve_device

    folder = page_path.parent
    page = _Page(folder)
    facts = ""

    records = read_metrics(run / "metrics.jsonl")
    if records:
        page.section(
            "Training",
            page.figure(
                lambda: curves_figure(records),
                "training.png",
                "From metrics.jsonl. The online probe is trained on augmented training views alongside "
                "pretraining; the kNN monitor classifies a fixed test sample each epoch. Both are monitors, "
                "not evaluation protocols.",
            ),
        )
    else:
        page.note("Training", f"{run / 'metrics.jsonl'}: no metrics logged.")

    dev = resolve_device(device)
    if (run / "checkpoints" / "last.pt").exists() or run.is_file():
        pre = load_pretrained(run, dev)  # a refused or damaged checkpoint is an error, not a quiet note
    else:
        page.note("Representation", f"no model to inspect: {run} has no checkpoints/last.pt yet")
        pre = None
    if pre is not None:
        facts = run_facts(run, pre.config)
        _model_sections(page, pre, dev, max_images, seed)
    page.section("Results", results_html(root, folder))

    title = f"SimCLR report: {root.name}"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    body = "".join(page.parts)
    return write_text(
        page_path,
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title><style>{STYLE}</style>"
        f"</head><body><h1>{escape(title)}</h1>{facts}{body}<p class='note'>Written {stamp}.</p></body></html>\n",
        "report page",
    )


def _model_sections(page: _Page, pre, dev, max_images: int, seed: int) -> None:
    """Map, retrieval, augmentations and health: everything that needs the model and some images."""
    from simclr.eval.features import eval_transform_for

    cfg = pre.config
    try:  # the labelled train split when there is one (STL-10 pretrains on train+unlabeled)
        bank = _load_split(cfg, "train", 2 * max_images, seed)
    except SimCLRError:
        try:
            bank = _load_split(cfg, cfg.data.train_split, 2 * max_images, seed)
        except SimCLRError as e:
            page.note("Representation", f"the run's images could not be read ({e}); no map, retrieval or health")
            return
    try:
        test = _load_split(cfg, cfg.data.test_split, max_images, seed + 1)
    except SimCLRError:  # e.g. an unlabelled folder has no test split: queries come from the bank itself
        test = (bank[0][:max_images], bank[1][:max_images] if bank[1] is not None else None, bank[2], bank[3])
    classes = test[2] or bank[2]
    model = pre.model.eval()
    transform = eval_transform_for(cfg, pre.image_size, pre.mean, pre.std).to(dev)
    h_test, _ = _embed(model, test[0], transform, dev)
    h_bank, _ = _embed(model, bank[0], transform, dev)

    figs = "".join(
        page.figure(
            lambda pts=pts, method=method: map_figure(
                pts, test[1], classes, f"{method.upper()}: {len(pts)} images from {test[3]}"
            ),
            f"embedding_{method}.png",
            caption,
        )
        for method, pts, caption in embedding_maps(h_test, seed)
    )
    missing = [name for name, mod in (("t-SNE", "sklearn"), ("UMAP", "umap")) if importlib.util.find_spec(mod) is None]
    extra = f" Install scikit-learn / umap-learn for {' and '.join(missing)}." if missing else ""
    page.section("Embedding map", figs + f"<p class='note'>Representations h, coloured by class.{extra}</p>")

    same = test[3] == bank[3]  # queries drawn from the bank: each must not find itself
    n_q, k = min(6, len(h_test)), min(8, len(h_bank) - int(same))
    if n_q > 0 and k > 0:
        sims = F.normalize(h_test[:n_q], dim=1) @ F.normalize(h_bank, dim=1).T  # (n_q, N_bank) cosine
        if same:
            sims[torch.arange(n_q), torch.arange(n_q)] = -2.0
        top = sims.topk(k, dim=1)
        caption = (
            f"Each row: a test image and its {k} most cosine-similar images (by h) among {len(h_bank)} "
            "train images, similarity above each; green frame = same class, red = different."
        )
        draw = partial(retrieval_figure, test[0][:n_q], test[1], bank[0], bank[1], top.indices, top.values, classes)
        page.section("Nearest neighbours", page.figure(draw, "retrieval.png", caption))

    caption = "Two views per image with the run's augmentation settings, shown before mean/std normalisation."
    draw = partial(augmentation_figure, bank[0][:8], cfg.augment, pre.image_size, seed, per_row=2)
    page.section("Augmented views", page.figure(draw, "augmentations.png", caption))
    if len(test[0]) >= 2:
        _health_section(page, pre, test[0], dev, seed)


def _health_section(page: _Page, pre, images: Tensor, dev, seed: int) -> None:
    """Alignment / uniformity / per-dimension std of h and z on two training-style views of ``images``."""
    from simclr.augment import Augment

    aug = Augment(pre.config.augment, pre.image_size, mean=pre.mean, std=pre.std).to(dev)
    g = torch.Generator(device=dev).manual_seed(seed)
    views: list[list[Tensor]] = [[], [], [], []]  # h of view 1, z of view 1, h of view 2, z of view 2
    with torch.no_grad():
        for i in range(0, len(images), 256):
            a, b = aug.two_views(images[i : i + 256].to(dev), g)
            for out, t in zip(views, (*pre.model(a), *pre.model(b)), strict=True):
                out.append(t.float().cpu())
    h1, z1, h2, z2 = (torch.cat(v) for v in views)
    stats = {"h": health_summary(h1, h2), "z": health_summary(z1, z2)}
    head = "".join(
        f"<th>{c}</th>"
        for c in (
            "representation",
            "D",
            "alignment",
            "uniformity",
            "effective rank",
            "near-zero dims",
            "total variance",
        )
    )
    rows = "".join(
        f"<tr><td>{n}</td><td>{s['dim']}</td><td>{s['alignment']:.4f}</td><td>{s['uniformity']:.3f}</td>"
        f"<td>{s['effective_rank']:.1f}</td><td>{s['near_zero']}</td><td>{s['total_variance']:.3f}</td></tr>"
        for n, s in stats.items()
    )
    lines = "".join(f"<p>{escape(interpret(n, s))}</p>" for n, s in stats.items())
    note = (
        f"<p class='note'>Measured on two augmented views of each of {len(images)} sampled test images, network "
        "in eval mode. h follows a ReLU, so its entries are non-negative and its uniformity cannot reach that of "
        "z; compare runs rather than absolute values. Lower alignment and lower uniformity are both better "
        "(Wang &amp; Isola, 2020). Near-zero: a std below a tenth of 1/sqrt(D), the std of a uniform spread.</p>"
    )
    figure = page.figure(lambda: health_figure(stats), "health.png")
    page.section("Representation health", f"<table><tr>{head}</tr>{rows}</table>{lines}{figure}{note}")


def report_command(run: str, out: str | None = None, device: str = "auto", max_images: int = 1000) -> int:
    """``simclr report RUN [--out DIR]``: write the page and print where it is."""
    path = write_report(run, out, device=device, max_images=max_images)
    n = len(list(path.parent.glob("*.png")))
    print(f"simclr report: {path} ({n} figures in {path.parent})")
    return 0


__all__ = ["read_metrics", "report_command", "write_report"]
