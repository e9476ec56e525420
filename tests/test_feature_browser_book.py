"""The feature browser in a built book: a throwaway one-page book (the project's widget
settings, its vendored widget JavaScript) whose page shows a FeatureBrowser over synthetic
data, executed by nbclient so the widget state is saved, built by jupyter-book and opened
from disk in Debian's chromium with the network off. Switching block, paging and searching
must change the feature shown, with no kernel and no request leaving the page. The same
page shows FeaturePages over a site written beside it: the book's widget manager cannot
sync, so the pages must take the static side and load the files by <script> tags.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from offline_browser import SHOTS, launch_chromium, offline_page
from repro.paths import project_root

ROOT = project_root()

CELL = """\
from repro.features.browser_data import build_browser_data, synthetic_analyses, synthetic_image
from repro.widgets.browser import FeatureBrowser

analyses = synthetic_analyses(("down.2.1", "up.0.1"), n_features=40, m=8, n_images=80, dead=0.1)
labels = {block: [f"{block} concept {f}" for f in range(40)] for block in analyses}
icons = {"down.2.1": {f: synthetic_image(1000 + f, 128) for f in range(40)}}
data = build_browser_data(analyses, lambda i: synthetic_image(i, 96), labels=labels, icons=icons, thumb_size=64)
FeatureBrowser(data, title="Feature browser (synthetic data)")
"""

PAGES_CELL = """\
from repro.features.site import FeatureSite, synthetic_blocks
from repro.widgets.pages import FeaturePages

site = FeatureSite(synthetic_blocks(("down.2.1",), n_features=40, m=4, grid=8, n_images=30, sample=8),
                   lambda i: synthetic_image(i, 48), page_size=16, thumb=48)
site.write("browser.files")
FeaturePages(site, src="browser.files", title="Feature pages (synthetic data)")
"""


def _tiny_book(folder: Path) -> Path:
    """Write the book's sources into `folder`: config with the project's widget settings."""
    import nbformat

    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["title"] = "Feature browser test"
    config.pop("exclude_patterns", None)
    config["only_build_toc_files"] = True
    config["sphinx"]["config"]["html_static_path"] = ["static"]  # a copy of book/static
    shutil.copytree(ROOT / "book" / "static", folder / "static")
    (folder / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    (folder / "_toc.yml").write_text(yaml.safe_dump({"format": "jb-book", "root": "index",
                                                     "chapters": [{"file": "browser"}]}))
    (folder / "index.md").write_text("# Feature browser test\n\nOne page: [the browser](browser.ipynb).\n")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Browser"), nbformat.v4.new_code_cell(CELL),
                nbformat.v4.new_code_cell(PAGES_CELL)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder / "browser.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def browser_book(tmp_path_factory) -> Path:
    """The built throwaway book's html folder."""
    import nbformat
    from nbclient import NotebookClient

    folder = tmp_path_factory.mktemp("browser-book")
    path = _tiny_book(folder)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(folder)}}).execute()
    assert "application/vnd.jupyter.widget-state+json" in nb.metadata.get("widgets", {}), "no widget state saved"
    nbformat.write(nb, path)
    cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(folder)]
    done = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    shutil.copytree(folder / "browser.files", folder / "_build" / "html" / "browser.files")  # as build_book does
    return folder / "_build" / "html"


@pytest.fixture(scope="module")
def chromium():
    yield from launch_chromium()


@pytest.mark.slow
def test_feature_browser_works_offline(chromium, browser_book):
    from playwright.sync_api import expect

    view = offline_page(chromium, 1280, 1000)
    page, context, attempted, missing, errors = view.page, view.context, view.attempted, view.missing, view.errors
    try:
        page.goto((browser_book / "browser.html").as_uri())
        fb = page.locator(".repro-fb:not(.repro-fp)")
        expect(fb).to_have_count(1, timeout=30_000)  # rendered from saved state, no kernel
        card, fid = fb.locator(".repro-fb-card"), fb.locator(".repro-fb-fid")
        expect(fid).to_have_text(re.compile(r"^feature \d+$"))
        expect(fb.locator(".repro-fb-live")).to_be_hidden()  # no kernel: no live controls
        expect(fb.locator(".repro-fb-item")).to_have_count(12)
        expect(fb.locator(".repro-fb-top canvas")).to_have_count(8)  # one per top image
        expect(fb.locator(".repro-fb-icon img")).to_have_count(1)
        expect(fb.locator(".repro-fb-page")).to_contain_text("page 1 / 3")
        # the heatmap was drawn: some pixel of the first canvas is not the plain image's
        page.wait_for_function(
            """() => { const c = document.querySelector('.repro-fb-top canvas');
                       const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                       for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] > 0) return true;
                       return false; }""", timeout=10_000)
        first = card.get_attribute("data-feature")
        fb.screenshot(path=SHOTS / "feature-browser.png")

        fb.locator(".repro-fb-next").click()  # next page: its first feature is shown
        expect(fb.locator(".repro-fb-page")).to_contain_text("page 2 / 3")
        expect(card).not_to_have_attribute("data-feature", first)
        second = card.get_attribute("data-feature")

        fb.locator(".repro-fb-item").nth(3).click()  # a feature from the list
        expect(card).not_to_have_attribute("data-feature", second)

        fb.locator(".repro-fb-block").select_option("up.0.1")  # another block
        expect(fb.locator(".repro-fb-stats")).to_contain_text("up.0.1")
        expect(fb.locator(".repro-fb-label")).to_contain_text("up.0.1 concept")
        expect(fb.locator(".repro-fb-icon img")).to_have_count(0)  # no icons given for up.0.1

        ids = [int(x) for x in fb.locator(".repro-fb-item").evaluate_all("els => els.map(e => e.dataset.feature)")]
        target = ids[-1]
        fb.locator(".repro-fb-search").fill(str(target))  # search by id
        expect(fid).to_have_text(f"feature {target}")
        expect(fb.locator(".repro-fb-item")).to_have_count(1)
        fb.locator(".repro-fb-search").fill(f"concept {ids[1]}")  # by label substring
        expect(fb.locator(".repro-fb-item").first).to_have_attribute("data-feature", str(ids[1]))
        fb.locator(".repro-fb-search").fill("")
        fb.locator(".repro-fb-sort").select_option("id")
        expect(fb.locator(".repro-fb-item").first).to_have_attribute("data-feature", re.compile(r"^[0-3]$"))
        shown = [int(x) for x in fb.locator(".repro-fb-item").evaluate_all("els => els.map(e => e.dataset.feature)")]
        assert shown == sorted(shown), shown
        fb.screenshot(path=SHOTS / "feature-browser-2.png")
    finally:
        context.close()
    assert not attempted, f"the page tried the network: {attempted}"
    assert not missing, f"files the page loads are missing from the site: {missing}"
    assert not errors, f"JavaScript errors: {errors}"
    assert not view.console, f"console errors: {view.console}"


@pytest.mark.slow
def test_feature_pages_take_the_static_side_in_the_book(chromium, browser_book):
    from playwright.sync_api import expect

    view = offline_page(chromium, 1280, 1400)
    page = view.page
    try:
        page.goto((browser_book / "browser.html").as_uri())
        fp = page.locator(".repro-fp")
        expect(fp).to_have_count(1, timeout=30_000)
        card = fp.locator(".repro-fp-card")
        expect(card).to_have_attribute("data-feature", re.compile(r"^\d+$"), timeout=30_000)
        assert fp.locator(".repro-fp-hist rect").count() > 3  # loaded from browser.files/ by script tags
        expect(fp.locator(".repro-fb-live")).to_be_hidden()
        expect(fp.locator(".repro-fp-rie-note")).to_contain_text("has not run")
        target = fp.locator(".repro-fb-item").nth(2).get_attribute("data-feature")
        fp.locator(".repro-fb-item").nth(2).click()  # a static page links features by its hash
        expect(card).to_have_attribute("data-feature", target)
        assert page.url.endswith(f"#down.2.1/{target}")
        fp.screenshot(path=SHOTS / "feature-pages-book.png")
        # a feature opened by its link, on a fresh load of the built page
        page.goto((browser_book / "browser.html").as_uri() + f"#down.2.1/{target}")
        fp = page.locator(".repro-fp")
        expect(fp.locator(".repro-fp-card")).to_have_attribute("data-feature", target, timeout=30_000)
        assert fp.locator(".repro-fp-hist rect").count() > 3  # the activation histogram
        expect(fp.locator(".repro-fp-band")).to_have_count(3)  # samples from 3 lower quantiles
        assert fp.locator(".repro-fp-bands canvas").count() >= 3
        assert fp.locator(".repro-fp-nbr a").count() > 0  # nearest features by decoder cosine
        fp.screenshot(path=SHOTS / "feature-pages-book-link.png")
    finally:
        view.context.close()
    assert not view.attempted, f"the page tried the network: {view.attempted}"
    assert not view.missing, f"files the page loads are missing from the site: {view.missing}"
    assert not view.errors, f"JavaScript errors: {view.errors}"
    assert not view.console, f"console errors: {view.console}"
