"""The feature browser (anywidget): feature pages over a `FeatureSite`.

In the static book it loads the files the site wrote beside the page (`src`, a path
relative to the page); in a notebook with a kernel the same files are served from memory
through widget messages. With a pipeline and the SAEs (`pipe=`, `saes=`) a feature's page
also gets live controls: the front-end writes a `request`, `handle_request` generates the
image with the feature turned on (icon), painted into a region, modulated or switched off,
and writes `result`. Without them `live` is False and the controls stay hidden.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import torch
import traitlets as t

from repro.errors import ReproError, choices_hint
from repro.features.site import FeatureSite
from repro.hooks import Edit
from repro.io import write_bytes_atomic

HERE = Path(__file__).parent
ACTIONS = ("icon", "paint", "modulate", "off")


class FeaturePages(anywidget.AnyWidget):
    """`FeaturePages(site, src="05_features.features")`; live: `..., pipe=pipe, saes={block: sae}`."""

    _esm = (HERE / "pages.js").read_text()
    _css = (HERE / "pages.css").read_text()

    src = t.Unicode("", help="the site's folder, relative to the page that shows the widget").tag(sync=True)
    sort = t.Unicode("id", help="list order: id, freq, dens, purity or causal").tag(sync=True)
    block = t.Unicode("", help="block shown").tag(sync=True)
    feature = t.Int(-1, help="feature shown (-1: the first of the page)").tag(sync=True)
    page_size = t.Int(20, help="features listed per page").tag(sync=True)
    title = t.Unicode("", help="text above the pages").tag(sync=True)
    alpha = t.Float(0.6, help="heatmap opacity at its maximum").tag(sync=True)
    live = t.Bool(False, help="whether live controls are shown (a pipeline and SAEs were given)").tag(sync=True)
    live_blocks = t.List(t.Unicode(), help="blocks with an SAE for live generation").tag(sync=True)
    prompt = t.Unicode("", help="prompt for paint / modulate / off").tag(sync=True)
    seed = t.Int(0, help="seed of the live generations").tag(sync=True)
    request = t.Dict(help="set by the front-end: what to generate").tag(sync=True)
    result = t.Dict(help="set by the kernel: the generated image (or an error)").tag(sync=True)
    busy = t.Bool(False, help="a live generation is running").tag(sync=True)

    def __init__(self, site: FeatureSite, *, src: str = "", pipe=None, saes: Mapping[str, Any] | None = None,
                 prompt: str = "", seed: int = 0, sampling=None, block: str | None = None, page_size: int = 20,
                 title: str = "", sort: str = "id", **kwargs) -> None:
        blocks = list(site.blocks)
        if block is not None:
            site.block(block)  # raises, naming the blocks, on one the site lacks
        if page_size < 1:
            raise ReproError(f"page_size must be at least 1, got {page_size}")
        if pipe is not None and not saes:
            raise ReproError("live mode needs the SAEs too: FeaturePages(site, pipe=pipe, saes={block: sae})")
        from repro.blocks import by_short_name

        self.site = site
        self._pipe, self._saes, self._sampling = pipe, by_short_name(dict(saes or {})), sampling
        self._plain: dict[tuple[str, int], np.ndarray] = {}
        live_blocks = [b for b in blocks if b in self._saes] if pipe is not None else []
        super().__init__(src=src, block=block or blocks[0], page_size=page_size, title=title, sort=sort,
                         live=bool(live_blocks), live_blocks=live_blocks, prompt=prompt, seed=seed, **kwargs)
        self.on_msg(self._on_msg)

    # ------------------------------------------------------------------ the site's files
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

    # ------------------------------------------------------------------ live generation
    @t.observe("request")
    def _on_request(self, change) -> None:
        if change["new"]:
            self.handle_request(change["new"])

    def _mean(self, block: str, feature: int) -> float:
        """mean_f: the SAE's feature stats, else the site's."""
        stats = getattr(self._saes[block], "feature_stats", None) or self.site.blocks[block].stats
        return float(stats.mean[feature])

    def edit_for(self, request: Mapping[str, Any]) -> tuple[str, Edit]:
        """(prompt, edit) of a request {block, feature, action, strength, region, factor}."""
        from repro.features.interventions import FeatureAdd, FeatureIcon, FeatureModulate, FeatureOff, InRegion

        block, feature, action = request.get("block"), int(request.get("feature", -1)), request.get("action")
        if block not in self._saes:
            raise ReproError(f"no SAE for block {block!r}: live blocks are {choices_hint(self._saes)}")
        sae = self._saes[block]
        if not 0 <= feature < sae.cfg.n_features:
            raise ReproError(f"feature {feature} is out of range: {block}'s SAE has {sae.cfg.n_features} features")
        strength = float(request.get("strength", 1.0))
        mean = self._mean(block, feature)
        prompt = str(request.get("prompt", self.prompt))
        if action == "icon":  # the paper's icon: the empty prompt, the update replaced everywhere
            return "", FeatureIcon(sae=sae, features=feature, strength=strength, mean=torch.tensor([mean]))
        if action == "paint":
            add = FeatureAdd(sae=sae, features=feature, strength=strength * mean * sae.cfg.k)
            return prompt, InRegion(inner=add, region=str(request.get("region", "all")))
        if action == "modulate":
            return prompt, FeatureModulate(sae=sae, features=feature, factor=float(request.get("factor", 5.0)))
        if action == "off":
            return prompt, FeatureOff(sae=sae, features=feature)
        raise ReproError(f"unknown action {action!r}: use {choices_hint(ACTIONS)}")

    def _generate(self, prompt: str, seed: int, edits: dict) -> np.ndarray:
        from repro.generate import Sampling, generate
        from repro.hooks import intervene

        sampling = self._sampling or Sampling()
        with intervene(self._pipe.unet, edits, cfg=sampling.cfg):
            return generate(self._pipe, [prompt], [seed], sampling)[0]

    def handle_request(self, request: Mapping[str, Any]) -> dict:
        """Generate what `request` asks for; sets and returns `result`.

        result: {id, block, feature, action, prompt, mime, image (b64, edited), plain (b64,
        same prompt and seed, no edit)} or {id, error} if the request was bad.
        """
        from repro.widgets.encode import encode_images

        out: dict[str, Any] = {"id": request.get("id", 0)}
        if self._pipe is None:
            out["error"] = "no pipeline: construct FeaturePages(site, pipe=..., saes=...) for live generation"
            self.result = out
            return out
        self.busy = True
        try:
            prompt, edit = self.edit_for(request)
            seed = int(request.get("seed", self.seed))
            if (prompt, seed) not in self._plain:
                self._plain[(prompt, seed)] = self._generate(prompt, seed, {})
            image = self._generate(prompt, seed, {request["block"]: edit})
            plain, edited = encode_images(np.stack([self._plain[(prompt, seed)], image]))
            out.update(block=request["block"], feature=int(request["feature"]), action=request["action"],
                       prompt=prompt, seed=seed, mime="image/png", image=edited, plain=plain)
        except ReproError as exc:
            out["error"] = str(exc)
        finally:
            self.busy = False
        self.result = out
        return out

    # ------------------------------------------------------------------ the static twin
    def _repr_mimebundle_(self, **kwargs):
        """The widget (JupyterLab: live, from the kernel) and a static `text/html` twin.

        The twin is the widget's own code inline with a model that cannot sync, reading the
        site from `src` as the static book does: the built book shows it instead of the
        widget (`nb_mime_priority_overrides` in _config.yml), so the page needs no widget
        manager (3.6 MB of `embed-amd.js`, loaded before the first interaction)."""
        bundle = super()._repr_mimebundle_(**kwargs)
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        if data is not None and not self.live:
            state = _static_state(self.src, self.block, self.page_size, self.title, self.alpha, self.sort)
            data["text/html"] = static_html(state, f"repro-fp-{self.model_id}")
        return bundle


def _static_state(src: str, block: str, page_size: int, title: str, alpha: float, sort: str) -> dict:
    """The widget's synced state as a page with no kernel sees it: no live controls."""
    return {"src": src, "block": block, "feature": -1, "page_size": page_size, "title": title, "alpha": alpha,
            "live": False, "live_blocks": [], "prompt": "", "seed": 0, "result": {}, "busy": False, "sort": sort}


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
    js = FeaturePages._esm.replace("export default { render };", "window.__reproPages = { render };")
    return STATIC.format(id=element_id, css=FeaturePages._css, js=js, state=json.dumps(state).replace("</", "<\\/"))


STANDALONE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body {{ margin: 1em; }}</style></head>
<body>{pages}</body></html>
"""


def write_standalone(folder, title: str = "Feature pages", page_size: int = 20, sort: str = "id") -> Path:
    """`folder/index.html`: the feature pages of the site `FeatureSite.write` wrote in `folder`,
    opened with no notebook and no book (`index.html#block/feature` opens that feature)."""
    if not Path(folder).is_dir():
        raise ReproError(f"no feature site at {folder}: write one there first (FeatureSite.write, or 05_features)")
    state = _static_state(".", "", page_size, title, FeaturePages.alpha.default_value, sort)
    page = STANDALONE.format(title=html.escape(title), pages=static_html(state, "feature-pages"))
    return write_bytes_atomic(Path(folder) / "index.html", page.encode())


__all__ = ["FeaturePages", "static_html", "write_standalone"]
