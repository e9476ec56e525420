"""Feature pages in a browser: the kernel side answers the front-end's file requests; the
static site (written by FeatureSite, shown by its standalone page with the widget's own
code) opens a feature by its link `#block/feature`, draws the histogram, the quantile
samples and the neighbours, follows a neighbour link and goes back, shows RIEBench's counts
(or says RIEBench has not run, when the counts file says so or is missing), with no console
error and no request leaving the page. With a kernel the same code takes its files from
messages and shows the live controls and their result. Screenshots go to
book/_build/screenshots/."""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import pytest
import torch

from benchmark_script import load
from offline_browser import SHOTS, launch_chromium, offline_page
from repro.features.records import BlockFeatures
from repro.features.riebench_counts import RIEBenchCounts
from repro.features.site import FeatureSite
from repro.widgets.pages import FeaturePages, write_standalone

_synthetic = load("_synthetic_features")  # shared with benchmarks/feature_pages.py
synthetic_blocks, synthetic_image = _synthetic.synthetic_blocks, _synthetic.synthetic_image


def synthetic_riebench(blocks: Mapping[str, BlockFeatures], edits: int = 12, seed: int = 0) -> RIEBenchCounts:
    """Random selection counts of two categories for `blocks`."""
    rng = np.random.default_rng(seed)
    cats = ("change colour", "change style")
    counts = {b: {c: torch.from_numpy(np.minimum(rng.poisson(0.3, bf.n_features), edits)) for c in cats}
              for b, bf in blocks.items()}
    return RIEBenchCounts(counts=counts, edits={c: edits for c in cats}, k=32, sae="saes (synthetic)")


@pytest.fixture(scope="module")
def site():
    blocks = synthetic_blocks(("down.2.1", "up.0.1"), n_features=90, m=6, grid=8, n_images=60, sample=12)
    f0 = int(blocks["down.2.1"].live()[0])
    blocks["down.2.1"].icons = {f0: {s: synthetic_image(500 + i, 96) for i, s in enumerate((0.5, 1.0, 1.5))}}
    blocks["down.2.1"].painted = {f0: {"prompt": "a cat", "region": "centre", "plain": synthetic_image(1, 96),
                                       "edited": synthetic_image(2, 96)}}
    counts = synthetic_riebench(blocks)
    only_up = RIEBenchCounts(counts={"up.0.1": counts.counts["up.0.1"]}, edits=counts.edits, k=counts.k, sae=counts.sae)
    return FeatureSite(blocks, lambda i: synthetic_image(i, 96), page_size=32, thumb=48, riebench=only_up)


def test_kernel_side_serves_the_files(site):
    w = FeaturePages(site, src="x.files", title="t")
    state = w.get_state()
    assert state["src"] == "x.files" and state["live"] is False and "export default" in state["_esm"]
    assert w.answer("manifest")["data"]["blocks"]["up.0.1"]["n_features"] == 90
    assert w.answer("down.2.1/p0")["data"] == site.page("down.2.1", 0)
    f = int(site.blocks["down.2.1"].live()[0])
    assert w.answer(f"down.2.1/icon/{f}-0.5.webp")["b64"]
    assert "error" in w.answer("mid.0/index")


@pytest.fixture(scope="module")
def chromium():
    yield from launch_chromium()


@pytest.mark.slow
def test_feature_link_opens_its_page(chromium, site, tmp_path_factory):
    from playwright.sync_api import expect

    folder = tmp_path_factory.mktemp("pages") / "05_features.files"
    site.write(folder)
    page_file = write_standalone(folder, title="Feature pages (synthetic)")
    f0 = int(site.blocks["down.2.1"].live()[0])
    f1 = int(site.blocks["up.0.1"].live()[3])
    view = offline_page(chromium, 1280, 1400)
    page = view.page
    try:
        page.goto(page_file.as_uri() + f"#up.0.1/{f1}")
        card = page.locator(".repro-fp-card")
        expect(card).to_have_attribute("data-feature", str(f1), timeout=15_000)
        expect(page.locator(".repro-fp-block")).to_have_value("up.0.1")
        assert page.locator(".repro-fp-hist rect").count() > 3
        expect(page.locator(".repro-fp-band")).to_have_count(3)
        assert page.locator(".repro-fp-bands canvas").count() >= 3
        expect(page.locator(".repro-fp-nbr")).to_have_count(2)
        expect(page.locator(".repro-fp-nbr a")).to_have_count(10)
        expect(page.locator(".repro-fp-steps polyline")).to_have_count(3)
        times = sum(int(c[f1]) for c in site.riebench.counts["up.0.1"].values())
        expect(page.locator(".repro-fp-rie-total")).to_have_attribute("data-total", str(times))
        expect(page.locator(".repro-fp-rie-total")).to_contain_text("in 24 edits (joint transport, k = 32")
        expect(page.locator(".repro-fp-riebench tr")).to_have_count(3)  # a header and two categories
        # heatmaps drawn over the top images and the weakest samples (file:// pixels cannot be read)
        expect(page.locator(".repro-fp-top canvas[data-drawn=heat]").first).to_be_attached()
        expect(page.locator(".repro-fp-band").last.locator("canvas[data-drawn=heat]").first).to_be_attached()
        page.screenshot(path=SHOTS / "feature-page.png", full_page=True)

        link = page.locator(".repro-fp-nbr").nth(0).locator("a").first  # a neighbour in down.2.1
        target = link.inner_text().lstrip("#")
        link.click()
        expect(card).to_have_attribute("data-feature", target)
        assert page.url.endswith(f"#down.2.1/{target}")
        page.go_back()
        expect(card).to_have_attribute("data-feature", str(f1))
        page.go_forward()
        expect(card).to_have_attribute("data-feature", target)

        page.goto(page_file.as_uri() + f"#down.2.1/{f0}")  # icons at three strengths and a painted example
        expect(page.locator(".repro-fp-on img")).to_have_count(5)
        expect(page.locator(".repro-fp-rie-note")).to_have_text("RIEBench ran without an SAE of down.2.1")
        page.locator(".repro-fp-search").fill("style=")  # search by label
        expect(page.locator(".repro-fb-item").first).to_contain_text("style=")
        page.locator(".repro-fp-search").fill("")
        page.locator(".repro-fp-sort").select_option("purity")  # sort by purity
        got = page.locator(".repro-fb-item-freq").all_inner_texts()
        assert [float(x) for x in got] == sorted((float(x) for x in got), reverse=True)
        page.locator(".repro-fp-sort").select_option("causal")
        expect(page.locator(".repro-fb-item").first).to_have_attribute("data-feature", re.compile(r"^\d+$"))
        page.screenshot(path=SHOTS / "feature-page-2.png", full_page=True)

        (folder / "up.0.1" / "riebench.js").unlink()  # no counts file at all (a site from before)
        page.goto(page_file.as_uri() + f"#up.0.1/{f1}")
        page.reload()
        expect(card).to_have_attribute("data-feature", str(f1), timeout=15_000)
        expect(page.locator(".repro-fp-rie-note")).to_contain_text("RIEBench has not run")
        expect(page.locator(".repro-fp-hist")).to_have_count(1)  # the rest of the page is unharmed
    finally:
        view.context.close()
    assert not view.attempted, f"the page tried the network: {view.attempted}"
    gone = [m for m in view.missing if not m.endswith("up.0.1/riebench.js")]
    assert len(gone) < len(view.missing) and not gone, f"files the page loads are missing: {view.missing}"
    assert not view.errors, f"JavaScript errors: {view.errors}"
    console = [m for m in view.console if "up.0.1/riebench.js" not in m]
    assert not console, f"console errors: {view.console}"


KERNEL_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><style>{css}</style></head>
<body><div id="w"></div>
<script>
{js}
const state = window.__state = {state};
const files = {files};
const handlers = [];
const model = {{
  widget_manager: {{ kernel: {{}} }},
  get: (k) => state[k], set: (k, v) => {{ if (typeof k === "string") state[k] = v; else Object.assign(state, k); }},
  on: (name, fn) => {{ if (name === "msg:custom") handlers.push(fn); }},
  send: (msg) => setTimeout(() => handlers.forEach((fn) => fn({{ id: msg.id, ...files[msg.want] }}))),
  save_changes: () => {{}},
}};
window.__w.render({{ model, el: document.getElementById("w") }});
</script></body></html>
"""


@pytest.mark.slow
def test_kernel_side_pages_show_a_live_result(chromium, tmp_path):
    """The pages with a kernel (a model that syncs and answers file requests with `answer`, as
    the kernel does): the files come through messages, heatmaps are drawn over the top images,
    the live controls show, the kernel's result for the feature shown is put under them, and
    "generate" writes a request."""
    import json

    from playwright.sync_api import expect

    from repro.widgets.encode import encode_images

    site = FeatureSite(synthetic_blocks(("down.2.1",), n_features=20, m=4, grid=4, n_images=12, sample=4, dead=0.0),
                       lambda i: synthetic_image(i, 48), page_size=16, thumb=48)
    w = FeaturePages(site)
    files = {path: w.answer(path) for path in [p for p, _ in site.json_parts()] + list(site.binary_paths())}
    state = {k: v for k, v in w.get_state().items() if not k.startswith("_")}
    f = int(site.blocks["down.2.1"].live()[2])
    plain, image = encode_images(np.stack([synthetic_image(1, 48), synthetic_image(2, 48)]))
    state.update(feature=f, live=True, live_blocks=["down.2.1"], result={
        "id": 1, "block": "down.2.1", "feature": f, "action": "icon", "prompt": "", "seed": 0, "mime": "image/png",
        "image": image, "plain": plain})
    js = FeaturePages._esm.replace("export default { render };", "window.__w = { render };")
    path = tmp_path / "pages.html"
    path.write_text(KERNEL_PAGE.format(css=FeaturePages._css, js=js, state=json.dumps(state), files=json.dumps(files)))
    view = offline_page(chromium, 1280, 1200)
    try:
        view.page.goto(path.as_uri())
        expect(view.page.locator(".repro-fp-card")).to_have_attribute("data-feature", str(f))
        expect(view.page.locator(".repro-fp-top canvas[data-drawn=heat]")).to_have_count(4)
        live = view.page.locator(".repro-fb-live")
        expect(live).to_be_visible()
        expect(live.locator(".repro-fb-result img")).to_have_count(2)
        expect(live.locator(".repro-fb-result figcaption").nth(1)).to_have_text(f"icon: feature {f}")
        expect(live.locator(".repro-fb-opt-region")).to_be_hidden()  # the icon reads no region
        live.locator(".repro-fb-action").select_option("paint")
        expect(live.locator(".repro-fb-opt-region")).to_be_visible()
        live.locator(".repro-fb-region").select_option("left")
        live.locator(".repro-fb-go").click()
        request = view.page.evaluate("window.__state.request")
        assert {k: request[k] for k in ("block", "feature", "action", "region")} == \
            {"block": "down.2.1", "feature": f, "action": "paint", "region": "left"}
        expect(live.locator(".repro-fb-status")).to_have_text("generating…")
    finally:
        view.context.close()
    assert not view.attempted and not view.missing and not view.errors and not view.console, \
        (view.attempted, view.missing, view.errors, view.console)
