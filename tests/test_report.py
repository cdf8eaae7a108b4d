"""The run report and show-augmentations: pages and PNGs are produced from a real (tiny) run, and the
representation-health numbers match plain references and flag collapse.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from simclr.config import load_config
from simclr.errors import SimCLRError
from simclr.health import alignment, dimension_std, effective_rank, health_summary, interpret, uniformity
from simclr.report import read_metrics, report_command, write_report

PNG = b"\x89PNG\r\n\x1a\n"


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    images = rng.integers(0, 60, (n, 16, 16, 3), dtype=np.uint8)
    for i, c in enumerate(labels):
        images[i, :, :, c % 3] += 150
        if c == 3:
            images[i, 4:12, 4:12] = 250  # class 3: a white square
    return images, labels


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    """A pipeline-shaped folder whose ``pretrain/`` is a real 3-step run (an epoch and a step: one kNN monitor)."""
    from simclr.engine import pretrain

    root = tmp_path_factory.mktemp("report")
    train, train_labels = _images(32, 0)
    test, test_labels = _images(16, 1)
    np.savez(root / "d.npz", images=train, labels=train_labels, test_images=test, test_labels=test_labels,
             classes=np.array(["red", "green", "blue", "square"]))  # fmt: skip
    cfg = load_config(
        overrides=[f"data.path={root / 'd.npz'}", "data.dataset=npz", "model.arch=resnet18",
                   "model.width_multiplier=0.125", "model.projection_dim=16", "train.batch_size=16",
                   "train.epochs=2", "train.max_steps=3", "train.log_every=1", "train.device=cpu", "monitor.knn_k=5",
                   "monitor.knn_train_size=32", "monitor.knn_test_size=16"]
    )  # fmt: skip
    pretrain(cfg, root / "pipe" / "pretrain")
    return root / "pipe"


def _check_page(page: Path, names: list[str]) -> str:
    text = page.read_text()
    embedded = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    assert len(embedded) == len(names)
    assert all(base64.b64decode(e).startswith(PNG) for e in embedded)
    for name in names:
        data = (page.parent / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 2000, name
    return text


def test_report_of_a_run_folder(pipeline, capsys):
    run = pipeline / "pretrain"
    assert report_command(str(run), max_images=16, device="cpu") == 0
    assert "index.html" in capsys.readouterr().out
    page = run / "report" / "index.html"
    # t-SNE and UMAP maps come with their optional packages (scikit-learn is in the dev extra)
    maps = [f"embedding_{m}.png" for m, mod in (("tsne", "sklearn"), ("umap", "umap")) if importlib.util.find_spec(mod)]
    names = ["training.png", "embedding_pca.png", *maps, "retrieval.png", "augmentations.png", "health.png"]
    text = _check_page(page, names)
    for title in ("Training", "Embedding map", "Nearest neighbours", "Augmented views", "Representation health"):
        assert f"<h2>{title}</h2>" in text
    assert "uniformity" in text and "alignment" in text and "No evaluation yet" in text
    keys = set().union(*(r.keys() for r in read_metrics(run / "metrics.jsonl")))
    assert {"loss", "contrastive_acc", "lr", "online_probe_acc", "knn_monitor_top1"} <= keys


def test_report_of_a_pipeline_folder_shows_results_and_cards(pipeline, tmp_path):
    from simclr.eval.card import evaluation_card, write_metrics

    card = evaluation_card("linear-eval/fast", "npz", "test", 1.0, None, 0, 5, 16, "ab" * 32, "cpu", 1.5)
    write_metrics(pipeline / "linear-eval", {"top1": 41.25, "top5": 90.0, "card": card})
    cell = {"top1": 41.25, "top5": 90.0, "metrics": "linear-eval/metrics.json", "card": {"protocol": "linear-eval"}}
    table = {"dataset": "npz", "columns": ["100%"], "metric": "top-1 (top-5) accuracy, percent, test split",
             "rows": [{"key": "linear", "name": "linear eval", "cells": {"100%": cell}}]}  # fmt: skip
    (pipeline / "results.json").write_text(json.dumps(table))
    page = write_report(pipeline, out=tmp_path / "rep" / "page.html", max_images=8, device="cpu")
    assert page == tmp_path / "rep" / "page.html"
    text = page.read_text()
    assert "41.25 (90.00)" in text and "linear-eval/fast" in text and "abababababab" in text
    assert (tmp_path / "rep" / "training.png").is_file()


def test_report_without_matplotlib_keeps_the_tables(pipeline, tmp_path, monkeypatch):
    import simclr.report as report_mod

    monkeypatch.setattr(report_mod, "can_draw", lambda: False)
    page = write_report(pipeline / "pretrain", out=tmp_path / "rep", max_images=8, device="cpu")
    text = page.read_text()
    assert "figures need matplotlib" in text and "uniformity" in text and "data:image/png" not in text
    assert list(page.parent.glob("*.png")) == []


def test_report_without_a_run_is_a_clear_error(tmp_path):
    with pytest.raises(SimCLRError, match="no such run"):
        write_report(tmp_path / "missing")


def test_read_metrics_skips_lines_cut_by_a_kill(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo\n')
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": 2.0}]
    assert read_metrics(tmp_path / "none.jsonl") == []


def test_show_augmentations_writes_a_grid(pipeline, tmp_path, capsys):
    from simclr.preview import show_augmentations_command

    out = tmp_path / "aug.png"
    data = pipeline.parent / "d.npz"
    show_augmentations_command(data=str(data), dataset="npz", out=str(out), n=3,
                               overrides=["augment.color_strength=0.5"])  # fmt: skip
    assert out.read_bytes().startswith(PNG) and "3 images" in capsys.readouterr().out
    with pytest.raises(SimCLRError, match="-n"):
        show_augmentations_command(data=str(data), dataset="npz", out=str(out), n=0)


# ---- representation health: against plain references ------------------------------------------------------


def _unit(rows: list[list[float]]) -> list[list[float]]:
    return [[c / math.sqrt(sum(c * c for c in row)) for c in row] for row in rows]


def test_alignment_and_uniformity_match_plain_loops():
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    uu, vv = _unit(u.tolist()), _unit(v.tolist())
    align = sum(sum((a - b) ** 2 for a, b in zip(p, q, strict=True)) for p, q in zip(uu, vv, strict=True)) / 7
    assert alignment(u, v) == pytest.approx(align, rel=1e-9)
    pairs = [(i, j) for i in range(7) for j in range(i + 1, 7)]
    mean = sum(math.exp(-2 * sum((a - b) ** 2 for a, b in zip(uu[i], uu[j], strict=True))) for i, j in pairs)
    assert uniformity(u) == pytest.approx(math.log(mean / len(pairs)), rel=1e-9)
    col = [[row[d] for row in uu] for d in range(5)]
    std = [math.sqrt(sum((c - sum(cs) / 7) ** 2 for c in cs) / 6) for cs in col]
    assert dimension_std(u).tolist() == pytest.approx(std, rel=1e-9)


def test_health_flags_collapse_and_spread():
    g = torch.Generator().manual_seed(0)
    spread = torch.randn(300, 256, generator=g)
    s = health_summary(spread, spread + 0.01 * torch.randn(300, 256, generator=g))
    assert s["uniformity"] < -3.8 and s["alignment"] < 1e-3 and s["near_zero"] == 0
    assert "no sign of collapse" in interpret("z", s)

    same = torch.ones(50, 16) + 1e-4 * torch.randn(50, 16, generator=g)
    s = health_summary(same, same)
    assert s["uniformity"] > -0.01 and "complete collapse" in interpret("z", s)

    low = torch.zeros(100, 64)
    low[:, :3] = torch.randn(100, 3, generator=g)  # only 3 of 64 dimensions used
    s = health_summary(low, low)
    assert s["near_zero"] == 61 and "dimensional collapse" in interpret("h", s)
    assert effective_rank(low) <= 3.0 + 1e-6
    assert effective_rank(torch.randn(500, 8, generator=g)) > 7.5
