"""The built book: widgets render offline, no script comes from the network, and the site
is a self-contained folder. The slow tests build the book once (and run the overview
chapter first if needed), then open it from disk in Debian's chromium with the network off.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from offline_browser import REMOTE, SHOTS, WIDGET_VIEW, launch_chromium, offline_page, open_widget_page
from repro.paths import project_root

ROOT = project_root()
BUILD = ROOT / "book" / "_build"
HTML = BUILD / "html"
WIDGET_JS = ROOT / "book" / "static" / "widgets"
OVERVIEW = "00_overview"

ASSET = re.compile(r"<(script|link|img|source|iframe)\b([^>]*)>", re.I)
ATTR = re.compile(r'\b(src|href)\s*=\s*"([^"]*)"', re.I)


# --- fast: the configuration and the vendored files ----------------------------------------

def test_vendored_anywidget_matches_installed():
    installed = Path(os.sys.prefix) / "share" / "jupyter" / "nbextensions" / "anywidget" / "index.js"
    if not installed.exists():
        pytest.skip(f"no anywidget front-end at {installed}")
    assert (WIDGET_JS / "anywidget.js").read_bytes() == installed.read_bytes(), (
        "book/static/widgets/anywidget.js differs from the installed anywidget's front-end: "
        f"cp {installed} {WIDGET_JS / 'anywidget.js'}"
    )


def test_config_loads_widget_js_from_the_book():
    sphinx = yaml.safe_load((ROOT / "_config.yml").read_text())["sphinx"]["config"]
    static = [Path(p) for p in sphinx["html_static_path"]]
    assert all(p.name != "_static" for p in static), "jupyter-book puts every .js of a _static folder on every page"
    scripts = list(sphinx["nb_ipywidgets_js"])
    assert scripts == ["widgets/require.js", "widgets/loader.js", "widgets/embed-amd.js"]
    for script in scripts:
        assert not REMOTE.match(script)
        assert any((ROOT / folder / script).is_file() for folder in static), f"{script} is not in {static}"


# --- slow: build the book, look at it ---------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    yield from launch_chromium()


@pytest.fixture(scope="module")
def built_book() -> Path:
    """book/_build/html, built from scratch (the overview chapter re-run if stale)."""
    from repro.book import build_book
    from repro.notebooks import notebook_file, run_notebook

    chapter = ROOT / "book" / "chapters" / f"{OVERVIEW}.ipynb"
    if not chapter.exists() or chapter.stat().st_mtime < notebook_file(OVERVIEW).stat().st_mtime:
        run_notebook(OVERVIEW, {"profile": "toy"})
    shutil.rmtree(BUILD, ignore_errors=True)  # no stale pages from earlier builds
    build_book(ROOT)
    return HTML


def pages(html: Path) -> list[Path]:
    return [p for p in html.rglob("*.html") if "_static" not in p.relative_to(html).parts]


def assets(page: Path) -> list[tuple[str, str]]:
    """(tag, url) of what a page loads: scripts, stylesheets and icons, images, frames."""
    found = []
    for tag, attrs in ASSET.findall(page.read_text()):
        rel = re.search(r'\brel\s*=\s*"([^"]*)"', attrs)
        if tag.lower() == "link" and not (rel and re.search(r"stylesheet|preload|icon", rel.group(1))):
            continue  # navigation links (next, index, search) load nothing
        found += [(tag.lower(), url) for _, url in ATTR.findall(attrs)]
    return found


def test_lazy_images_marks_each_image_once(tmp_path):
    from repro.book import lazy_images

    page = tmp_path / "a" / "p.html"
    page.parent.mkdir()
    page.write_text('<p><img src="x.png" alt="x"><IMG src="y.png"><img loading="eager" src="z.png"></p>')
    (tmp_path / "b.html").write_text("<p>no images</p>")
    assert lazy_images(tmp_path) == 2
    assert page.read_text() == ('<p><img loading="lazy" src="x.png" alt="x"><img loading="lazy" src="y.png">'
                                '<img loading="eager" src="z.png"></p>')
    assert lazy_images(tmp_path) == 0  # a second pass changes nothing


@pytest.mark.slow
def test_built_pages_load_their_figures_lazily(built_book):
    eager = {p.name: n for p in pages(built_book)
             if (n := len(re.findall(r"<img(?![^>]*\bloading=)", p.read_text(), re.I)))}
    assert not eager, eager
    assert any('loading="lazy"' in p.read_text() for p in pages(built_book))


@pytest.mark.slow
def test_no_script_or_style_from_the_network(built_book):
    remote = [(p.name, url) for p in pages(built_book) for tag, url in assets(p) if REMOTE.match(url)]
    assert not remote, f"pages load from the network: {remote}"
    overview = (built_book / "book" / "chapters" / f"{OVERVIEW}.html").read_text()
    assert "application/vnd.jupyter.widget-state+json" in overview, "no saved widget state in the page"
    assert "_static/widgets/embed-amd.js" in overview


@pytest.mark.slow
def test_site_is_self_contained(built_book):
    problems = []
    for page in pages(built_book):
        text = page.read_text()
        if "file://" in text or re.search(r'(src|href)="' + re.escape(str(ROOT)), text):
            problems.append(f"{page.name}: absolute file path")
        for tag, url in assets(page):
            if REMOTE.match(url) or url.startswith("data:"):
                continue
            target = (page.parent / unquote(urlsplit(url).path)).resolve()
            if not target.is_relative_to(built_book.resolve()) or not target.is_file():
                problems.append(f"{page.name}: <{tag}> {url} is not a file inside the site")
    assert not problems, problems


@pytest.mark.slow
def test_no_repo_paths_in_site(built_book):
    """The folder can be published anywhere: no text in it names this checkout."""
    leaks = {}
    for path in built_book.rglob("*"):
        if path.is_file() and path.suffix in {".html", ".js", ".ipynb", ".json", ".txt", ".md"}:
            found = re.findall(re.escape(str(ROOT)) + r"[^\s\"'<>]*", path.read_text(errors="replace"))
            if found:
                leaks[str(path.relative_to(built_book))] = sorted(set(found))
    assert not leaks, f"absolute paths of the checkout in the site: {leaks}"


@pytest.mark.slow
def test_pages_render_offline_and_carousel_turns(browser, built_book):
    from playwright.sync_api import expect

    view = offline_page(browser, 1280, 900)
    page, context, attempted, missing, errors = view.page, view.context, view.attempted, view.missing, view.errors
    try:
        page.goto((built_book / "index.html").as_uri())  # redirects to book/index.html
        page.wait_for_url("**/book/index.html")
        expect(page.locator("h1").first).to_contain_text("Unpacking SDXL Turbo")
        page.screenshot(path=SHOTS / "index.png")

        page.goto((built_book / "book" / "chapters" / f"{OVERVIEW}.html").as_uri())
        expect(page.locator("h1").first).to_contain_text("Overview")
        gallery = page.locator(".repro-gallery")
        expect(gallery).to_have_count(1, timeout=30_000)  # rendered from saved state, no kernel
        label, caption, image = (gallery.locator(s) for s in (".repro-gallery-label", "figcaption", "img"))
        expect(label).to_have_text(re.compile(r"^1 / [2-9]"))
        before = caption.inner_text(), image.get_attribute("src")
        page.screenshot(path=SHOTS / "overview.png", full_page=True)
        gallery.screenshot(path=SHOTS / "carousel-1.png")

        gallery.locator(".repro-gallery-next").click()
        expect(label).to_have_text(re.compile(r"^2 / "))
        assert (caption.inner_text(), image.get_attribute("src")) != before
        assert caption.inner_text() != before[0] and image.get_attribute("src") != before[1]
        gallery.screenshot(path=SHOTS / "carousel-2.png")
    finally:
        context.close()
    assert not attempted, f"the pages tried the network: {attempted}"
    assert not missing, f"files the pages load are missing from the site: {missing}"
    assert not errors, f"JavaScript errors: {errors}"
    assert not view.console, f"console errors: {view.console}"


@pytest.mark.slow
def test_every_widget_page_renders_without_console_errors(browser, built_book):
    """Every page with saved widgets: all of them render, nothing leaves the page, the console is clean."""
    widget_pages = [p for p in pages(built_book) if WIDGET_VIEW in p.read_text()]
    assert any(p.stem == OVERVIEW for p in widget_pages), "the overview's gallery is not saved in the site"
    problems = {}
    for path in widget_pages:
        view = offline_page(browser, 1280, 900)
        try:
            n = open_widget_page(view, path)
            view.page.wait_for_timeout(500)  # late errors of the widgets' first drawing
            view.page.screenshot(path=SHOTS / f"widgets-{path.stem}.png", full_page=True)
        finally:
            view.context.close()
        found = {"network": view.attempted, "missing": view.missing, "javascript": view.errors, "console": view.console}
        if any(found.values()):
            problems[f"{path.relative_to(built_book)} ({n} widgets)"] = {k: v for k, v in found.items() if v}
    assert not problems, problems
