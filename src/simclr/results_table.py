"""The pipeline's results table: rows = models, columns = label fractions, cells = top-1 (top-5) on the
test split, each linked to the ``metrics.json`` (and evaluation card) it comes from; ``results.json`` holds
the same with the encoder, the pretraining and the time of every stage."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from simclr.files import write_text

ROWS = (  # (key, row name), in the table's order
    ("scratch", "supervised (scratch)"),
    ("linear_fast", "linear eval (fast proxy)"),
    ("linear", "linear eval (paper protocol)"),
    ("finetune", "SimCLR fine-tune"),
    ("distill", "SimCLR distilled"),
)
FOLDERS = {"scratch": "scratch-{}", "linear_fast": "linear-eval", "linear": "linear-eval-paper",
           "finetune": "finetune-{}", "distill": "distill-{}"}  # fmt: skip


def fraction_tag(spec: str) -> str:
    """Folder-safe name of a label spec: ``1%`` -> ``1pct``, ``13-per-class`` unchanged, a file -> its stem."""
    spec = spec.strip()
    if spec.endswith("%"):
        return spec[:-1].strip() + "pct"
    if Path(spec).is_file():
        spec = Path(spec).stem
    return re.sub(r"[^A-Za-z0-9.-]+", "_", spec).strip("_")


def _cell(result: dict[str, Any], metrics: str) -> dict[str, Any]:
    from simclr.eval.card import SUMMARY_FIELDS

    card = result.get("card", {})
    keep = [k for k in SUMMARY_FIELDS if k not in ("dataset", "split")]  # the table's own header says those
    return {"top1": result["top1"], "top5": result["top5"], "metrics": metrics, "card": {k: card.get(k) for k in keep}}


def write_results(
    out: Path,
    results: dict[str, dict[str, dict[str, Any]]],
    fractions: tuple[str, ...],
    pre: Any,
    dataset: str,
    summary: dict[str, Any],
    wall_clock_s: float,
    stage_seconds: dict[str, float] | None = None,
) -> dict[str, Any]:
    """``results.json`` and ``results.md``: rows = models, columns = label fractions, top-1 (top-5)."""
    from simclr.eval.card import write_json_atomic

    columns = list(fractions) + ([] if "100%" in fractions else ["100%"])
    rows = []
    for key, label in ROWS:
        cells = {}
        for col, result in results[key].items():
            metrics = f"{FOLDERS[key].format(fraction_tag(col))}/metrics.json"
            cells[col] = _cell(result, metrics)
        rows.append({"key": key, "name": label, "cells": cells})
    m = pre.config.model
    table = {
        "dataset": dataset,
        "preset": pre.config.name,
        "encoder": {
            "arch": m.arch,
            "width_multiplier": m.width_multiplier,
            "sk_ratio": m.sk_ratio,
            "head_layers": m.head_layers,
        },
        "pretrain": {k: summary.get(k) for k in ("status", "steps", "epochs", "device")},
        "pretrain_checkpoint_sha256": pre.sha256,
        "columns": columns,
        "rows": rows,
        "metric": "top-1 (top-5) accuracy, percent, test split",
        "wall_clock_s": round(wall_clock_s, 1),
        "stage_seconds": stage_seconds or {},
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json_atomic(out / "results.json", table)
    write_text(out / "results.md", format_results(table), "results table")
    return table


def format_results(table: dict[str, Any]) -> str:
    """The Markdown table of ``results.json``: each cell links to the ``metrics.json`` holding its card."""
    enc = table["encoder"]
    lines = [
        f"# SimCLR pipeline: {table['dataset']} ({table['preset']})",
        "",
        f"Encoder {enc['arch']} x{enc['width_multiplier']:g}, {enc['head_layers']}-layer projection head; "
        f"pretraining {table['pretrain']['epochs']} epochs ({table['pretrain']['steps']} steps). "
        f"Cells: top-1 (top-5) accuracy in % on the test split; columns: share of the train labels used "
        f"(linear eval uses all of them). Each cell links to its metrics.json and evaluation card.",
        "",
        "| model | " + " | ".join(f"{c} labels" for c in table["columns"]) + " |",
        "|---|" + "---:|" * len(table["columns"]),
    ]
    for row in table["rows"]:
        cells = []
        for col in table["columns"]:
            c = row["cells"].get(col)
            cells.append(f"[{c['top1']:.2f} ({c['top5']:.2f})]({c['metrics']})" if c else "-")
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    lines += ["", "## Evaluation cards", ""]
    for row in table["rows"]:
        for col, c in row["cells"].items():
            card = c["card"]
            sha = (card.get("checkpoint_sha256") or "none")[:12]
            lines.append(
                f"- {row['name']}, {col}: [{c['metrics']}]({c['metrics']}): protocol {card.get('protocol')}, "
                f"label fraction {card.get('label_fraction')}, subset {card.get('subset_hash')}, "
                f"seed {card.get('seed')}, {card.get('epochs')} epochs, batch {card.get('batch_size')}, "
                f"checkpoint {sha}, {card.get('device')}, {card.get('wall_clock_s')} s"
            )
    if table.get("stage_seconds"):
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in table["stage_seconds"].items())
        lines += ["", f"Stage times (of the run that made each stage): {stages}."]
    lines += [
        "",
        f"This run of the pipeline took {table['wall_clock_s']:.0f} s (stages done before were skipped); "
        f"written {table['date_utc']}.",
        "",
    ]
    return "\n".join(lines)


__all__ = ["FOLDERS", "ROWS", "format_results", "fraction_tag", "write_results"]
