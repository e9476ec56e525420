"""Every code cell of every chapter is valid Python: a typo fails here in seconds, not after the
chapters before it have run for half an hour."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CHAPTERS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9]*.md"))


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_every_code_cell_parses(chapter):
    import jupytext

    nb = jupytext.read(chapter)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    assert cells
    for i, cell in enumerate(cells):
        source = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))
        try:
            ast.parse(source)
        except SyntaxError as exc:
            pytest.fail(f"{chapter.name}, code cell {i + 1}, line {exc.lineno}: {exc.msg}")


def test_the_check_catches_a_broken_cell(tmp_path):
    broken = tmp_path / "99_broken.md"  # the first chapter with one badly indented cell added
    broken.write_text(CHAPTERS[0].read_text() + "\n```{code-cell} ipython3\nif True:\n    x = 1\n        y = 2\n```\n")
    with pytest.raises(pytest.fail.Exception, match="line 3: unexpected indent"):
        test_every_code_cell_parses(broken)
