"""The browser tests' chromium: benchmarks/_offline_chromium.py (shared with the feature pages
benchmark), skipped where chromium is missing, with a folder for screenshots.

`offline_page` opens a page in a fresh offline context that records (and aborts) every
http(s) request, every failed local load and every JavaScript error.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from benchmark_script import load

from repro.paths import project_root

_chromium = load("_offline_chromium")
REMOTE, OfflinePage, offline_page = _chromium.REMOTE, _chromium.OfflinePage, _chromium.offline_page
SHOTS = project_root() / "book" / "_build" / "screenshots"


def launch_chromium():
    """Generator for a module-scoped fixture: a launched browser, closed afterwards.

    Skips when chromium is missing, except in CI (CI=true), where that is a failure.
    """
    if not _chromium.CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(_chromium.MISSING)
        pytest.skip(_chromium.MISSING)
    SHOTS.mkdir(parents=True, exist_ok=True)
    with _chromium.headless_chromium() as browser:
        yield browser


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def open_widget_page(view: OfflinePage, path: Path, timeout: float = 30_000) -> int:
    """Open a built page and wait until every widget view saved in it is rendered (from its
    saved state, no kernel); returns how many there are."""
    n = path.read_text().count(WIDGET_VIEW)
    view.page.goto(path.as_uri())
    # The embed manager puts each view in a .widget-subarea next to its <script> tag.
    view.page.wait_for_function("n => document.querySelectorAll('.widget-subarea > *').length >= n", arg=n,
                                timeout=timeout)
    return n
