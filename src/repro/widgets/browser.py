"""The feature browser (anywidget): blocks, pages of features, a card per feature.

Everything it shows comes from one payload (`repro.features.browser_data`) in its state,
so the static book browses features with no kernel. With a pipeline and the SAEs
(`pipe=`, `saes=`) the card also gets live controls: the front-end writes a `request`,
`handle_request` generates the image with the feature turned on (icon), painted into a
region, modulated or switched off, and writes `result`. Without them `live` is False and
the controls stay hidden (as in the static book).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import torch
import traitlets as t

from repro.errors import ReproError, choices_hint
from repro.hooks import Edit

HERE = Path(__file__).parent


def esm(name: str) -> str:
    """A widget's front-end code: common.js (helpers, heatmap, live controls, shared by the
    widgets) followed by the widget's own file `name`, as one module (anywidget loads one)."""
    return f"{(HERE / 'common.js').read_text()}\n{(HERE / name).read_text()}"

ACTIONS = ("icon", "paint", "modulate", "off")
STRENGTHS = (0.5, 1.0, 1.5)
"""Icon and paint strengths, in units of mean_f * k (the paper's icon strengths)."""
FACTORS = (-10.0, -5.0, 5.0, 10.0)
"""Modulation factors s: add s * z_f(pos) * W_dec[:, f] where the feature fires."""
REGIONS = ("all", "left", "right", "top", "bottom", "centre")


def region_mask(region: str, h: int, w: int) -> torch.Tensor:
    """A fixed [h, w] 0/1 mask: all, left/right/top/bottom half, or the centre (middle half)."""
    m = torch.zeros(h, w)
    if region == "all":
        m[:] = 1
    elif region == "left":
        m[:, : max(1, w // 2)] = 1
    elif region == "right":
        m[:, w // 2:] = 1
    elif region == "top":
        m[: max(1, h // 2)] = 1
    elif region == "bottom":
        m[h // 2:] = 1
    elif region == "centre":
        m[h // 4: max(h // 4 + 1, h - h // 4), w // 4: max(w // 4 + 1, w - w // 4)] = 1
    else:
        raise ReproError(f"unknown region {region!r}: use {choices_hint(REGIONS)}")
    return m


@dataclass
class InRegion(Edit):
    """Apply `inner` only inside a named region, the mask made at the block's own size."""

    inner: Edit | None = None
    region: str = "all"

    def apply(self, update, step, half):
        new = self.inner.apply(update, step, half)
        mask = region_mask(self.region, *update.shape[-2:]).to(device=update.device, dtype=update.dtype)
        return update + mask[None, None] * (new - update)


class FeatureBrowser(anywidget.AnyWidget):
    """Browse SAE features: `FeatureBrowser(build_browser_data(...))`.

    Live mode: `FeatureBrowser(data, pipe=pipe, saes={block: sae}, prompt="a cat", seed=0)`.
    """

    _esm = esm("browser.js")
    _css = HERE / "browser.css"

    data = t.Dict(help="the payload of build_browser_data").tag(sync=True)
    block = t.Unicode("", help="block shown").tag(sync=True)
    feature = t.Int(-1, help="feature shown (-1: the first of the page)").tag(sync=True)
    page_size = t.Int(12, help="features listed per page").tag(sync=True)
    title = t.Unicode("", help="text above the browser").tag(sync=True)
    alpha = t.Float(0.6, help="heatmap opacity at its maximum").tag(sync=True)
    live = t.Bool(False, help="whether live controls are shown (a pipeline and SAEs were given)").tag(sync=True)
    live_blocks = t.List(t.Unicode(), help="blocks with an SAE for live generation").tag(sync=True)
    prompt = t.Unicode("", help="prompt for paint / modulate / off").tag(sync=True)
    seed = t.Int(0, help="seed of the live generations").tag(sync=True)
    request = t.Dict(help="set by the front-end: what to generate").tag(sync=True)
    result = t.Dict(help="set by the kernel: the generated image (or an error)").tag(sync=True)
    busy = t.Bool(False, help="a live generation is running").tag(sync=True)

    def __init__(self, data: dict, *, pipe=None, saes: Mapping[str, Any] | None = None, prompt: str = "",
                 seed: int = 0, sampling=None, block: str | None = None, page_size: int = 12,
                 title: str = "", **kwargs) -> None:
        blocks = list(data.get("blocks", {}))
        if not blocks:
            raise ReproError("the browser payload holds no blocks: build it with build_browser_data(...)")
        if block is not None and block not in blocks:
            raise ReproError(f"block {block!r} is not in the payload: use {choices_hint(blocks)}")
        if page_size < 1:
            raise ReproError(f"page_size must be at least 1, got {page_size}")
        if pipe is not None and not saes:
            raise ReproError("live mode needs the SAEs too: FeatureBrowser(data, pipe=pipe, saes={block: sae})")
        from repro.blocks import by_short_name

        self._pipe, self._saes = pipe, by_short_name(dict(saes or {}))
        self._sampling = sampling
        self._plain: dict[tuple[str, int], np.ndarray] = {}
        live_blocks = [b for b in blocks if b in self._saes] if pipe is not None else []
        super().__init__(data=data, block=block or blocks[0], page_size=page_size, title=title,
                         live=bool(live_blocks), live_blocks=live_blocks, prompt=prompt, seed=seed, **kwargs)

    @t.observe("request")
    def _on_request(self, change) -> None:
        if change["new"]:
            self.handle_request(change["new"])

    # ------------------------------------------------------------------ live generation
    def _mean(self, block: str, feature: int) -> float:
        """mean_f: the SAE's feature stats, else the payload's."""
        stats = getattr(self._saes[block], "feature_stats", None)
        if stats is not None and getattr(stats, "mean", None) is not None:
            return float(stats.mean[feature])
        b = self.data["blocks"][block]
        return float(b["mean"][b["ids"].index(feature)]) if feature in b["ids"] else 1.0

    def edit_for(self, request: Mapping[str, Any]) -> tuple[str, Edit]:
        """(prompt, edit) of a request {block, feature, action, strength, region, factor}."""
        from repro.features.interventions import FeatureAdd, FeatureIcon, FeatureModulate, FeatureOff

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
            out["error"] = "no pipeline: construct FeatureBrowser(data, pipe=..., saes=...) for live generation"
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
