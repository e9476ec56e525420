"""A page that shows a written feature site with no notebook and no book, for the browser
tests and the benchmarks (feature_pages.py opens it, site_pack.py packs it)."""

from __future__ import annotations

import html
from pathlib import Path

from repro.widgets.pages import static_html

STANDALONE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body {{ margin: 1em; }}</style></head>
<body>{pages}</body></html>
"""


def write_standalone(folder, title: str = "Feature pages", page_size: int = 20, sort: str = "id") -> Path:
    """`index.html` inside a written site folder: the widget's static twin (`static_html`)
    reading the site from its own folder."""
    folder = Path(folder)
    state = {"src": ".", "block": "", "feature": -1, "page_size": page_size, "title": title, "alpha": 0.6,
             "live": False, "live_blocks": [], "prompt": "", "seed": 0, "result": {}, "busy": False, "sort": sort}
    page = STANDALONE.format(title=html.escape(title), pages=static_html(state, "feature-pages"))
    (folder / "index.html").write_text(page)
    return folder / "index.html"
