"""Feature pages (anywidget) over a `FeatureSite`: in the static book it loads the files the
site wrote beside the page (`src`, a path relative to the page); in a notebook with a kernel
the same files are served from memory through widget messages, and the live controls of
`FeatureBrowser` (icon, paint, modulate, switch off) are there when `pipe=` and `saes=` are.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anywidget
import traitlets as t

from repro.errors import ReproError
from repro.features.site import FeatureSite
from repro.widgets.browser import HERE, FeatureBrowser, esm


class FeaturePages(FeatureBrowser):
    """`FeaturePages(site, src="05_features.features")`; live: `..., pipe=pipe, saes={block: sae}`."""

    _esm = esm("pages.js")
    _css = HERE / "browser.css"

    src = t.Unicode("", help="the site's folder, relative to the page that shows the widget").tag(sync=True)
    sort = t.Unicode("id", help="list order: id, freq, dens, purity or causal").tag(sync=True)

    def __init__(self, site: FeatureSite, *, src: str = "", pipe=None, saes: Mapping[str, Any] | None = None,
                 prompt: str = "", seed: int = 0, sampling=None, block: str | None = None, page_size: int = 20,
                 title: str = "", sort: str = "id", **kwargs) -> None:
        blocks = list(site.blocks)
        if block is not None:
            site._block(block)
        if page_size < 1:
            raise ReproError(f"page_size must be at least 1, got {page_size}")
        if pipe is not None and not saes:
            raise ReproError("live mode needs the SAEs too: FeaturePages(site, pipe=pipe, saes={block: sae})")
        from repro.blocks import by_short_name

        self.site = site
        self._pipe, self._saes, self._sampling, self._plain = pipe, by_short_name(dict(saes or {})), sampling, {}
        live_blocks = [b for b in blocks if b in self._saes] if pipe is not None else []
        anywidget.AnyWidget.__init__(self, src=src, block=block or blocks[0], page_size=page_size, title=title,
                                     sort=sort, live=bool(live_blocks), live_blocks=live_blocks, prompt=prompt,
                                     seed=seed, **kwargs)
        self.on_msg(self._on_msg)

    def _mean(self, block: str, feature: int) -> float:
        stats = getattr(self._saes[block], "feature_stats", None) or self.site.blocks[block].stats
        return float(stats.mean[feature])

    def answer(self, want: str) -> dict:
        """The reply to the front-end's request for one file: {data} (JSON) or {b64} (an image)."""
        try:
            got = self.site.get(want)
        except (ReproError, KeyError, StopIteration, ValueError) as exc:
            return {"error": f"no {want!r} in the feature pages: {exc}"}
        return {"b64": base64.b64encode(got).decode("ascii")} if isinstance(got, bytes) else {"data": got}

    def _on_msg(self, widget, content, buffers) -> None:
        if isinstance(content, dict) and "want" in content:
            self.send({"id": content.get("id"), **self.answer(str(content["want"]))})

    def _repr_mimebundle_(self, **kwargs):
        """The widget (JupyterLab: live, from the kernel) and a static `text/html` twin.

        The twin is the widget's own code inline with a model that cannot sync, reading the
        site from `src` as the static book does: the built book shows it instead of the
        widget (`nb_mime_priority_overrides` in _config.yml), so the page needs no widget
        manager (3.6 MB of `embed-amd.js`, loaded before the first interaction)."""
        bundle = super()._repr_mimebundle_(**kwargs)
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        if data is not None and not self.live:
            data["text/html"] = static_html(self._static_state(), f"repro-fp-{self.model_id}")
        return bundle

    def _static_state(self) -> dict:
        return {"src": self.src, "block": self.block, "feature": -1, "page_size": self.page_size,
                "title": self.title, "alpha": self.alpha, "live": False, "live_blocks": [], "prompt": "",
                "seed": 0, "result": {}, "busy": False, "sort": self.sort}


STATIC = """<div id="{id}"></div><style>{css}</style>
<script>
(function () {{
{js}
const state = {state};
const model = {{
  get: (k) => state[k], set: () => {{}}, on: () => {{}}, send: () => {{}},
  save_changes: () => {{ throw new Error("a static page has no kernel"); }},
}};
window.__reproPages.render({{ model, el: document.getElementById("{id}") }});
}})();
</script>
"""


def static_html(state: dict, element_id: str) -> str:
    """The feature pages as an HTML fragment with no widget manager: a div, the widget's css and
    code inline, and a model holding `state` that cannot sync (the static side of pages.js)."""
    import json

    js = FeaturePages._esm.replace("export default { render };", "window.__reproPages = { render };")
    return STATIC.format(id=element_id, css=(HERE / "browser.css").read_text(), js=js,
                         state=json.dumps(state).replace("</", "<\\/"))


STANDALONE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body {{ margin: 1em; }}</style></head>
<body>{pages}</body></html>
"""


def write_standalone(folder, title: str = "Feature pages", page_size: int = 20, sort: str = "id") -> Path:
    """An `index.html` inside a written site folder that shows its pages with no notebook and
    no book: the static twin (`static_html`) reading the site from its own folder."""
    import html

    folder = Path(folder)
    state = {"src": ".", "block": "", "feature": -1, "page_size": page_size, "title": title, "alpha": 0.6,
             "live": False, "live_blocks": [], "prompt": "", "seed": 0, "result": {}, "busy": False, "sort": sort}
    page = STANDALONE.format(title=html.escape(title), pages=static_html(state, "feature-pages"))
    (folder / "index.html").write_text(page)
    return folder / "index.html"
