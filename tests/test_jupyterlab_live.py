"""The feature pages' live mode, clicked in a real JupyterLab.

A `jupyter lab` server is started on 127.0.0.1 inside the test (own config, runtime and
settings folders; a random port and token), a one-cell notebook shows FeaturePages in live
mode on the tiny random pipeline with an SAE whose feature 0 fires everywhere, and
Debian's chromium (Playwright) runs the cell. In JupyterLab the pages must take the
kernel's side (their files come through widget messages, not from a folder beside the
page); picking feature 0 and clicking "generate" for the icon and for "switch off" must
each time bring a new image from the kernel that differs from the unedited one. No request
may leave 127.0.0.1. Screenshots go to book/_build/screenshots/lab-*.png. Everything is
bounded in time and the server is stopped (its process group) at the end.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from offline_browser import SHOTS, launch_chromium

pytestmark = pytest.mark.slow

STARTUP_S = 120  # server up; kernel started and the widget shown (2 busy cores)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CELL = """\
import sys
import torch
sys.path.insert(0, {benchmarks!r})
from repro.features.site import FeatureSite
from repro.models.loading import load_pipeline
from repro.sae import SAEConfig, TopKSAE
from repro.widgets.pages import FeaturePages
from _synthetic_features import synthetic_blocks, synthetic_image

torch.set_num_threads(1)
pipe = load_pipeline("tiny-random", device="cpu")  # down.2.1: 64 channels, 4x4 positions
sae = TopKSAE(SAEConfig(d_model=64, n_features=32, k=4, k_aux=0), seed=0)
with torch.no_grad():
    sae.b_lat[0] = 50.0  # feature 0 fires at every position: switching it off changes the image
blocks = synthetic_blocks(("down.2.1",), n_features=32, m=4, grid=4, n_images=12, sample=4, dead=0.0)
site = FeatureSite(blocks, lambda i: synthetic_image(i, 48), page_size=16, thumb=48)
FeaturePages(site, src="nowhere.files", pipe=pipe, saes={{"down.2.1": sae}}, prompt="a red circle", title="live pages")
"""


def _notebook(folder: Path, name: str, cell: str) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(cell)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """(base url, token) of a JupyterLab serving a folder with pages.ipynb; stopped afterwards."""
    root = tmp_path_factory.mktemp("lab")
    _notebook(root, "pages", CELL.format(benchmarks=str(Path(__file__).parents[1] / "benchmarks")))
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_RUNTIME_DIR", "runtime"),
                     ("JUPYTERLAB_SETTINGS_DIR", "settings"), ("JUPYTERLAB_WORKSPACES_DIR", "workspaces")):
        env[var] = str(root / f".{sub}")
    log = open(root / ".server.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--port-retries=0",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.terminals_enabled=False",
         "--allow-root", "--LabApp.extension_manager=readonly", "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + STARTUP_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"jupyter lab exited with {server.returncode}: {(root / '.server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"jupyter lab did not answer within {STARTUP_S} s: {(root / '.server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield base, token
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)  # the server and the kernels it started
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=15)
        log.close()


@pytest.fixture(scope="module")
def browser():
    yield from launch_chromium()


def _result(page, caption: str, timeout: float = 60_000) -> tuple[str, str]:
    """(plain, edited) image sources of the live result once its caption reads `caption`."""
    from playwright.sync_api import expect

    result = page.locator(".repro-fb-live .repro-fb-result")
    expect(result.locator("figcaption").nth(1)).to_have_text(caption, timeout=timeout)
    plain, edited = (result.locator("img").nth(i).get_attribute("src") for i in (0, 1))
    assert plain.startswith("data:image/") and edited.startswith("data:image/")
    return plain, edited


def _local_page(browser, base: str, height: int):
    """A page whose requests may reach only the lab server: (context, page, outside requests,
    page errors, console errors naming repro)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": height})
    outside, errors, console = [], [], []

    def only_the_server(route):
        if route.request.url.startswith(base):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route(re.compile(r"^https?://"), only_the_server)
    page = context.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: console.append(m.text) if m.type == "error" and "repro" in m.text else None)
    return context, page, outside, errors, console


def _run_all(page, base: str, token: str, notebook: str) -> None:
    """Open `notebook` in JupyterLab and run its cells once the kernel is idle (a run sent
    before the kernel is connected is lost)."""
    from playwright.sync_api import expect

    page.goto(f"{base}/lab/tree/{notebook}?token={token}&reset", timeout=STARTUP_S * 1000)
    expect(page.locator(".jp-Notebook .jp-CodeCell").first).to_be_visible(timeout=STARTUP_S * 1000)
    expect(page.get_by_text(re.compile(r"Python 3 \(ipykernel\) \| Idle"))).to_be_visible(timeout=STARTUP_S * 1000)
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name=re.compile(r"^Run All Cells")).click()


def test_live_feature_pages_in_jupyterlab(lab, browser):
    from playwright.sync_api import expect

    base, token = lab
    context, page, outside, errors, console = _local_page(browser, base, 1200)
    try:
        _run_all(page, base, token, "pages.ipynb")
        widget = page.locator(".repro-fp")
        expect(widget).to_be_visible(timeout=STARTUP_S * 1000)
        # kernel mode: the files come from the kernel (the folder `nowhere.files` does not exist)
        expect(widget.locator(".repro-fp-hist rect").first).to_be_attached(timeout=60_000)
        widget.locator(".repro-fp-search").fill("0")
        card = widget.locator(".repro-fp-card")
        expect(card).to_have_attribute("data-feature", "0")
        expect(widget.locator(".repro-fp-top canvas[data-drawn=heat]").first).to_be_attached()
        expect(widget.locator(".repro-fp-rie-note")).to_contain_text("has not run")  # served placeholder
        live = widget.locator(".repro-fb-live")
        expect(live).to_be_visible()
        expect(live.locator(".repro-fb-result img")).to_have_count(0)
        live.locator(".repro-fb-action").select_option("icon")
        live.locator(".repro-fb-go").click()
        plain_icon, icon = _result(page, "icon: feature 0", timeout=STARTUP_S * 1000)
        assert icon != plain_icon, "the icon is the unedited image"
        expect(live.locator(".repro-fb-status")).to_have_text("")
        widget.screenshot(path=SHOTS / "lab-pages-icon.png")

        live.locator(".repro-fb-action").select_option("off")
        live.locator(".repro-fb-go").click()
        plain, off = _result(page, "off: feature 0")
        assert off != plain, "switching feature 0 off left the image unchanged"
        assert plain != plain_icon  # "off" keeps the prompt; the icon comes from the empty prompt
        expect(live.locator(".repro-fb-status")).to_have_text("")
        widget.screenshot(path=SHOTS / "lab-pages-off.png")
    finally:
        page.screenshot(path=SHOTS / "lab-pages-last.png")
        context.close()
    assert not outside, f"JupyterLab or the widget tried to leave 127.0.0.1: {outside}"
    assert not [e for e in errors if "repro" in e], errors
    assert not console, console
