"""Headless Debian chromium with the network off, shared by the browser tests.

`offline_page` opens a page in a fresh offline context that records (and aborts) every
http(s) request, every failed local load and every JavaScript error.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from repro.paths import project_root

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
REMOTE = re.compile(r"^(https?:)?//", re.I)
SHOTS = project_root() / "book" / "_build" / "screenshots"


def launch_chromium():
    """Generator for a module-scoped fixture: a launched browser, closed afterwards.

    Skips when chromium is missing, except in CI (CI=true), where that is a failure.
    """
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium; .ci/run does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@dataclass
class OfflinePage:
    page: object
    context: object
    attempted: list = field(default_factory=list)
    """External (http/https) requests the page tried: must stay empty."""
    missing: list = field(default_factory=list)
    """Local files that failed to load."""
    errors: list = field(default_factory=list)
    """JavaScript errors on the page."""
    console: list = field(default_factory=list)
    """Errors the page wrote to the console (failed loads, widget-manager complaints, ...)."""


def offline_page(browser, width: int = 1280, height: int = 900) -> OfflinePage:
    SHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(offline=True, viewport={"width": width, "height": height})
    result = OfflinePage(page=None, context=context)

    def refuse(route):
        result.attempted.append(route.request.url)
        route.abort()

    context.route(re.compile(r"^https?://"), refuse)
    page = context.new_page()
    page.on("requestfailed", lambda r: None if REMOTE.match(r.url) else result.missing.append(r.url))
    # sphinx-thebe (always loaded by jupyter-book 1) writes its `const THEBE_JS_URL` script
    # twice on every page; harmless here (thebe is never started), so not ours to fail on.
    page.on("pageerror", lambda e: None if "THEBE_JS_URL" in str(e) else result.errors.append(str(e)))
    page.on("console", lambda m: result.console.append(f"{m.text} ({m.location.get('url', '')})")
            if m.type == "error" and "THEBE_JS_URL" not in m.text else None)
    result.page = page
    return result


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
