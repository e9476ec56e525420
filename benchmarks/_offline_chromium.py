"""Headless Debian chromium with the network off, for benchmarks/feature_pages.py and the browser
tests (which load this file with tests/benchmark_script.py: the benchmark must not import from tests/).

`offline_page` opens a page in a fresh offline context that records (and aborts) every
http(s) request, every failed local load and every JavaScript error.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
REMOTE = re.compile(r"^(https?:)?//", re.I)
MISSING = f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium; .ci/run does)"


@contextmanager
def headless_chromium() -> Iterator[object]:
    """A launched playwright browser (Debian's chromium), closed on leaving."""
    if not CHROMIUM.exists():
        raise FileNotFoundError(MISSING)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
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
