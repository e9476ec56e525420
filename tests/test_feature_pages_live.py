"""The feature pages' kernel side: their state, the blocks that go live, the painting regions
and the live request handler on a tiny pipeline (icon, paint, modulate, switch off)."""

import json

import numpy as np
import pytest
from benchmark_script import load
import torch

from repro.errors import ReproError
from repro.features.interventions import region_mask
from repro.features.site import FeatureSite
from repro.widgets.pages import FeaturePages
from test_widgets import decode_image

_synthetic = load("_synthetic_features")  # shared with benchmarks/feature_pages.py
synthetic_blocks, synthetic_image = _synthetic.synthetic_blocks, _synthetic.synthetic_image

BLOCK = "down.2.1"  # 4x4 positions, 64 channels in the tiny pipeline


@pytest.fixture(scope="module")
def site():
    blocks = synthetic_blocks((BLOCK, "up.0.1"), n_features=128, m=4, grid=4, n_images=20, sample=4)
    return FeatureSite(blocks, lambda i: synthetic_image(i, 48), page_size=32, thumb=48)


def test_widget_state(site):
    w = FeaturePages(site, title="t")
    state = w.get_state()
    assert state["block"] == BLOCK and state["live"] is False and state["live_blocks"] == []
    assert "export default" in state["_esm"] and ".repro-fb" in state["_css"]
    json.dumps(state)
    assert w.handle_request({"id": 1, "block": BLOCK, "feature": 0, "action": "off"})["error"].startswith("no pipeline")
    with pytest.raises(ReproError, match="no block 'mid.0'"):
        FeaturePages(site, block="mid.0")
    with pytest.raises(ReproError, match="needs the SAEs"):
        FeaturePages(site, pipe=object())
    with pytest.raises(ReproError, match="page_size must be at least 1"):
        FeaturePages(site, page_size=0)


def _sae(mean: float | None = None):
    from repro.sae.config import SAEConfig
    from repro.sae.model import TopKSAE
    from repro.sae.stats import FeatureStats

    sae = TopKSAE(SAEConfig(d_model=64, n_features=128, k=8, k_aux=8), seed=0)
    if mean is not None:
        sae.feature_stats = FeatureStats(mean=torch.full((128,), mean), std=torch.ones(128))
    return sae


def test_saes_keyed_by_the_release_block_names_are_live(site):
    # The original release names its SAEs by module path (unet.down_blocks.2.attentions.1).
    w = FeaturePages(site, pipe=object(), saes={"unet.down_blocks.2.attentions.1": _sae()})
    assert w.live and w.live_blocks == [BLOCK]


def test_mean_comes_from_the_sae_else_the_site(site):
    f = int(site.blocks[BLOCK].live()[0])
    with_stats = FeaturePages(site, pipe=object(), saes={BLOCK: _sae(mean=2.5)})
    without = FeaturePages(site, pipe=object(), saes={BLOCK: _sae()})
    assert with_stats._mean(BLOCK, f) == 2.5
    assert without._mean(BLOCK, f) == pytest.approx(float(site.blocks[BLOCK].stats.mean[f]))


def test_region_masks():
    assert region_mask("left", 4, 4)[:, :2].all() and not region_mask("left", 4, 4)[:, 2:].any()
    assert region_mask("centre", 4, 4).sum() == 4 and region_mask("all", 4, 4).sum() == 16
    assert region_mask("bottom", 4, 4)[2:].all() and region_mask("top", 1, 1).sum() == 1
    with pytest.raises(ReproError, match="unknown region 'middle'"):
        region_mask("middle", 4, 4)


# --- live mode: the request handler with a tiny pipeline -------------------------------------

@pytest.fixture(scope="module")
def live_pages(tiny_pipe, site):
    from repro.generate import Sampling

    return FeaturePages(site, pipe=tiny_pipe, saes={BLOCK: _sae(mean=2.0)}, prompt="a red circle", seed=3,
                        sampling=Sampling(steps=1))


@pytest.fixture(scope="module")
def firing(live_pages, tiny_pipe):
    """A feature that fires on the plain prompt's update (so modulating it changes something)."""
    from repro.generate import generate
    from repro.hooks import capture_updates

    with capture_updates(tiny_pipe.unet, [BLOCK]) as cap:
        generate(tiny_pipe, [live_pages.prompt], [live_pages.seed])
    z = live_pages._saes[BLOCK].encode(cap.updates(BLOCK)[0].permute(0, 2, 3, 1))
    return int(z.sum((0, 1, 2)).argmax())


@pytest.mark.parametrize("action, extra", [
    ("icon", {"strength": 1.5}), ("paint", {"strength": 1.0, "region": "left"}),
    ("modulate", {"factor": 10}), ("off", {}),
])
def test_live_request_changes_the_image(live_pages, firing, action, extra):
    assert live_pages.live and live_pages.live_blocks == [BLOCK]
    request = {"id": 7, "block": BLOCK, "feature": firing, "action": action, "prompt": "a red circle", "seed": 3, **extra}
    result = live_pages.handle_request(request)
    assert "error" not in result, result
    assert result["id"] == 7 and live_pages.result == result and not live_pages.busy
    image, plain = decode_image(result["image"]), decode_image(result["plain"])
    assert image.shape == plain.shape == (64, 64, 3)
    assert np.abs(image.astype(int) - plain.astype(int)).max() > 0, f"{action} left the image unchanged"
    if action == "icon":
        assert result["prompt"] == ""  # icons come from the empty prompt


def test_paint_stays_in_its_region(live_pages, firing):
    """Painting into the left half of the block's update: the edit is the unrestricted one there,
    nothing elsewhere (checked on the edit itself, at the block's 4x4 size)."""
    _, edit = live_pages.edit_for({"block": BLOCK, "feature": firing, "action": "paint", "region": "left"})
    update = torch.randn(2, 64, 4, 4, generator=torch.Generator().manual_seed(0))
    full = edit.inner.apply(update, 0, "cond")
    got = edit.apply(update, 0, "cond")
    assert torch.equal(got[..., :2], full[..., :2]) and torch.equal(got[..., 2:], update[..., 2:])
    assert edit.inner.strength == pytest.approx(1.0 * 2.0 * 8)  # strength * mean_f * k


def test_live_request_through_the_trait(live_pages):
    """What the front-end does: set `request`; the observer answers in `result`."""
    live_pages.request = {"id": 11, "block": BLOCK, "feature": 5, "action": "modulate", "factor": -5}
    assert live_pages.result["id"] == 11 and "image" in live_pages.result
    live_pages.request = {"id": 12, "block": "up.0.1", "feature": 5, "action": "off"}
    assert "no SAE for block 'up.0.1'" in live_pages.result["error"]
    live_pages.request = {"id": 13, "block": BLOCK, "feature": 500, "action": "off"}
    assert "out of range" in live_pages.result["error"]
    live_pages.request = {"id": 14, "block": BLOCK, "feature": 1, "action": "explode"}
    assert "unknown action 'explode'" in live_pages.result["error"]
