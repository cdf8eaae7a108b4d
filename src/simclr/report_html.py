"""The HTML pieces of the run report (:mod:`simclr.report`): escaping, the page's style sheet, the run's facts
table and the results section (a pipeline's results table and every evaluation card under the folder).
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from simclr.eval.card import SUMMARY_FIELDS

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
img{max-width:100%;border:1px solid #eee}table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}th{background:#f6f6f6}
.note{color:#666;font-style:italic}code{background:#f3f3f3;padding:0 .2em}pre{font-size:.8em;overflow:auto}
summary{cursor:pointer;color:#555;font-size:.85em}"""


# ---- results and cards -------------------------------------------------------------------------------------

_CARD_COLUMNS = SUMMARY_FIELDS


def escape(x: Any) -> str:
    """``str(x)`` (empty for None) escaped for HTML text and attributes."""
    return html.escape("" if x is None else str(x))


def results_html(root: Path, page_dir: Path) -> str:
    """The pipeline's results table (if any) and one row per ``metrics.json`` with its evaluation card."""
    parts = []
    rel = os.path.relpath(root, page_dir)
    table_path = root / "results.json"
    if table_path.is_file():
        t = json.loads(table_path.read_text())
        head = "".join(f"<th>{escape(c)} labels</th>" for c in t.get("columns", []))
        rows = []
        for row in t.get("rows", []):
            cells = []
            for col in t.get("columns", []):
                c = row.get("cells", {}).get(col)
                link = f"{rel}/{c['metrics']}" if c else ""
                cells.append(
                    f"<td><a href='{escape(link)}'>{c['top1']:.2f} ({c['top5']:.2f})</a></td>" if c else "<td>-</td>"
                )
            rows.append(f"<tr><td>{escape(row.get('name'))}</td>{''.join(cells)}</tr>")
        parts.append(
            f"<p>{escape(t.get('metric', ''))}; dataset {escape(t.get('dataset'))}.</p>"
            f"<table><tr><th>model</th>{head}</tr>{''.join(rows)}</table>"
        )
    elif (root / "results.md").is_file():
        parts.append(f"<pre>{escape((root / 'results.md').read_text())}</pre>")
    found = sorted(p for p in root.rglob("metrics.json") if page_dir not in p.parents)
    cards = []
    for p in found:
        try:
            m = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        card = m.get("card", {}) if isinstance(m, dict) else {}
        where = p.relative_to(root).parent.as_posix() or "."
        top = [f"{m[k]:.2f}" if isinstance(m.get(k), int | float) else "" for k in ("top1", "top5")]
        values = [
            str(card.get(k))[:12] if k == "checkpoint_sha256" and card.get(k) else card.get(k) for k in _CARD_COLUMNS
        ]
        cells = "".join(f"<td>{escape(v)}</td>" for v in values)
        full = html.escape(json.dumps(card, indent=1))
        cards.append(
            f"<tr><td><a href='{escape(rel + '/' + p.relative_to(root).as_posix())}'>{escape(where)}</a>"
            f"<details><summary>card</summary><pre>{full}</pre></details></td>"
            f"<td>{top[0]}</td><td>{top[1]}</td>{cells}</tr>"
        )
    if cards:
        head = "".join(f"<th>{escape(c.replace('_', ' '))}</th>" for c in _CARD_COLUMNS)
        parts.append(
            f"<h3>Evaluation cards</h3><table><tr><th>result</th><th>top-1</th><th>top-5</th>{head}</tr>"
            f"{''.join(cards)}</table>"
        )
    if not parts:
        return (
            "<p class='note'>No evaluation yet: run <code>simclr linear-eval RUN</code>, <code>simclr knn RUN"
            "</code> or <code>simclr finetune RUN</code>, or the whole <code>simclr pipeline</code>.</p>"
        )
    return "".join(parts)


def run_facts(run: Path, cfg) -> str:
    summary = {}
    if (run / "summary.json").is_file():
        try:
            summary = json.loads((run / "summary.json").read_text())
        except json.JSONDecodeError:
            summary = {}
    steps = summary.get("steps", "?")
    if summary.get("total_steps") is not None:  # e.g. "3 of 8": a run stopped at train.max_steps
        steps = f"{steps} of {summary['total_steps']}"
    m, t, a = cfg.model, cfg.train, cfg.augment
    rows = [
        ("run folder", run),
        ("config", f"{cfg.name}: {cfg.data.dataset} {cfg.data.path or ''}"),
        (
            "encoder",
            f"{m.arch} x{m.width_multiplier:g}, sk_ratio {m.sk_ratio:g}, {m.head_layers}-layer head, "
            f"z {m.projection_dim}-d",
        ),
        (
            "training",
            f"batch {t.batch_size}, {t.epochs} epochs, {cfg.optim.name} base lr {cfg.optim.base_lr:g} "
            f"({cfg.optim.lr_scaling}), temperature {cfg.loss.temperature:g}, memory {cfg.loss.memory_size}",
        ),
        (
            "augmentation",
            f"crop scale {list(a.crop_scale)}, colour strength {a.color_strength:g}, "
            f"blur p {a.blur_prob if a.blur_prob is not None else 'auto'}",
        ),
        (
            "status",
            f"{summary.get('status', 'unknown')}, {steps} steps on "
            f"{summary.get('device', '?')} x {summary.get('world_size', '?')}",
        ),
    ]
    return "<table>" + "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows) + "</table>"
