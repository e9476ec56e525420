"""The feature pages in a built book: a throwaway one-page book (the project's widget
settings, its vendored widget JavaScript) whose page shows FeaturePages over a site written
beside it, executed by nbclient so the widget state is saved, built by jupyter-book and
opened from disk in Debian's chromium with the network off. The book's widget manager
cannot sync, so the pages must take the static side and load the files by <script> tags;
paging, switching block, searching by id and clicking a feature must change the feature
shown, with no kernel and no request leaving the page.
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
import sys
sys.path.insert(0, {benchmarks!r})
from repro.features.site import FeatureSite
from repro.widgets.pages import FeaturePages
from _synthetic_features import synthetic_blocks, synthetic_image

site = FeatureSite(synthetic_blocks(("down.2.1", "up.0.1"), n_features=40, m=4, grid=8, n_images=30, sample=8),
                   lambda i: synthetic_image(i, 48), page_size=16, thumb=48)
site.write("browser.files")
FeaturePages(site, src="browser.files", title="Feature pages (synthetic data)", page_size=12)
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
    cell = CELL.format(benchmarks=str(Path(__file__).parents[1] / "benchmarks"))
    nb.cells = [nbformat.v4.new_markdown_cell("# Browser"), nbformat.v4.new_code_cell(cell)]
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
        expect(fp.locator(".repro-fp-page")).to_contain_text("page 1 / ")
        fp.locator(".repro-fp-next").click()  # the next page: its first feature is shown
        expect(fp.locator(".repro-fp-page")).to_contain_text("page 2 / ")
        expect(card).not_to_have_attribute("data-feature", target)
        fp.locator(".repro-fp-block").select_option("up.0.1")  # another block
        expect(card).to_have_attribute("data-block", "up.0.1")
        expect(fp.locator(".repro-fb-stats")).to_contain_text("up.0.1")
        ids = [int(x) for x in fp.locator(".repro-fb-item").evaluate_all("els => els.map(e => e.dataset.feature)")]
        fp.locator(".repro-fp-search").fill(str(ids[-1]))  # search by id
        expect(fp.locator(".repro-fb-item")).to_have_count(1)
        expect(card).to_have_attribute("data-feature", str(ids[-1]))
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
