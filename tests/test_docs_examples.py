"""The documented examples run: every ```python block of docs/*.md (in order, one namespace per page, in an
empty folder), and the ``>>>`` examples in the docstrings of the public API's modules.

A block whose first line is ``# not run`` (it needs a real dataset or GPUs) is only compiled.
"""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
_BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SKIP_PAGES = {"ARCHITECTURE.md"}  # contracts written as annotated pseudo-code, not examples


def python_blocks(page: Path) -> list[tuple[int, str]]:
    """(line number, source) of each ```python block of a Markdown page."""
    text = page.read_text()
    return [(text[: m.start()].count("\n") + 2, m.group(1)) for m in _BLOCK.finditer(text)]


PAGES = sorted(p for p in DOCS.glob("*.md") if p.name not in SKIP_PAGES and python_blocks(p))


def test_quickstart_has_examples_of_the_public_api():
    source = "\n".join(code for _, code in python_blocks(DOCS / "quickstart.md"))
    for name in ("simclr.nt_xent", "simclr.create_encoder", "simclr.Augment", "simclr.load_encoder", "simclr.pretrain"):
        assert name + "(" in source, name


def test_presets_table_matches_the_presets():
    from simclr.config import available_presets, load_config

    rows = {}
    for line in (DOCS / "quickstart.md").read_text().splitlines():
        m = re.match(r"^\| `([a-z0-9-]+)` \|(.*)\|$", line)
        if m:
            rows[m.group(1)] = [c.strip() for c in m.group(2).split("|")]
    for name in available_presets():
        assert name in rows, f"preset {name} is missing from the table in docs/quickstart.md"
        cfg = load_config(preset=name)
        cells = rows[name]  # data, encoder, head, batch, epochs, optimizer, tau, colour strength, blur
        assert cells[2] == f"{cfg.model.head_layers} layers", name
        assert (cells[3], cells[4]) == (str(cfg.train.batch_size), str(cfg.train.epochs)), name
        assert cells[6] == f"{cfg.loss.temperature:g}", name
        assert cells[7].startswith(f"{cfg.augment.color_strength:.1f}"), name


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_blocks_of_the_docs_run(page, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for line, code in python_blocks(page):
        compiled = compile(code, f"{page.name}:{line}", "exec")
        if code.lstrip().startswith("# not run"):
            continue
        exec(compiled, namespace)


@pytest.mark.parametrize("module", ["simclr.export"])
def test_docstring_examples(module):
    import importlib

    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0, f"{module} has no >>> examples"
    assert result.failed == 0
