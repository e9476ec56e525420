"""The feature browser: its payload (live features, one copy of each image, heatmaps that
come back within 1/255 of their maximum, a bounded size) and its live request handler."""

import json
import time

import numpy as np
import pytest
import torch

from repro.errors import ReproError
from repro.features.browser_data import (
    build_browser_data, decode_heatmaps, payload_size, synthetic_analyses, synthetic_image,
)
from repro.widgets.browser import FeatureBrowser, region_mask
from repro.widgets.encode import decode_image


@pytest.fixture(scope="module")
def analyses():
    return synthetic_analyses(("down.2.1", "up.0.1"), n_features=40, m=8, grid=16, n_images=60, dead=0.25)


@pytest.fixture(scope="module")
def images():
    return np.stack([synthetic_image(i, 96) for i in range(60)])


@pytest.fixture(scope="module")
def data(analyses, images):
    return build_browser_data(analyses, images, thumb_size=48)


def test_only_live_features_kept_most_frequent_first(analyses, data):
    for block, a in analyses.items():
        b = data["blocks"][block]
        live = set(np.flatnonzero(a.stats.count.numpy() > 0).tolist())
        assert 0 < len(live) < 40 and set(b["ids"]) == live and b["n_live"] == len(live)
        assert b["freq"] == sorted(b["freq"], reverse=True) and all(f > 0 for f in b["freq"])
        assert len(b["top"]) == len(b["heat"]) == len(b["mean"]) == len(b["ids"])
    assert json.loads(json.dumps(data)) == data  # JSON only


def test_images_deduplicated_into_one_pool(analyses, data):
    pool_ids = data["pool_ids"]
    assert len(pool_ids) == len(set(pool_ids)) == len(data["pool"])
    used = {int(i) for a in analyses.values() for i in a.top.image_ids.flatten() if i >= 0}
    assert set(pool_ids) == used
    slots = sum(len(t) for b in data["blocks"].values() for t in b["top"])
    assert slots > 2 * len(pool_ids)  # popular images recur: stored once, referenced many times
    for block, a in analyses.items():  # every feature's top list points at its own images, best first
        b = data["blocks"][block]
        for row, f in enumerate(b["ids"]):
            assert [pool_ids[k] for k in b["top"][row]] == [i for i in a.top.image_ids[f].tolist() if i >= 0]
    thumb = decode_image(data["pool"][0])
    assert thumb.shape == (48, 48, 3) and data["mime"] == "image/webp" and data["thumb"] == 48


def test_heatmaps_round_trip_within_1_over_255(analyses, data):
    for block, a in analyses.items():
        for f in data["blocks"][block]["ids"]:
            got = decode_heatmaps(data, block, f)
            want = a.top.maps[f].float().numpy()
            assert got.shape == want.shape == (8, 16, 16)
            assert np.abs(got - want).max() <= want.max() / 255 + 1e-6


def test_heatmaps_shrink_to_heat_size(analyses, images):
    small = build_browser_data(analyses, images, heat_size=8, max_features_per_block=5)
    b = small["blocks"]["down.2.1"]
    assert b["shape"] == [8, 8] and len(b["ids"]) == 5
    f = b["ids"][0]
    want = analyses["down.2.1"].top.maps[f].float().reshape(8, 8, 2, 8, 2).mean((2, 4)).numpy()
    np.testing.assert_allclose(decode_heatmaps(small, "down.2.1", f), want, atol=want.max() / 255 + 1e-6)


def test_labels_icons_and_pool_cap(analyses):
    labels = {"down.2.1": [f"concept {i}" for i in range(40)]}
    icon = synthetic_image(7, 64)
    live = int(np.flatnonzero(analyses["down.2.1"].stats.count.numpy() > 0)[0])
    data = build_browser_data(analyses, lambda i: synthetic_image(i, 64), labels=labels,
                              purity={"down.2.1": np.linspace(0, 1, 40)}, icons={"down.2.1": {live: icon, 0: icon}},
                              max_images=10, format="png")
    b = data["blocks"]["down.2.1"]
    assert b["label"] == [f"concept {f}" for f in b["ids"]] and len(b["purity"]) == len(b["ids"])
    assert "label" not in data["blocks"]["up.0.1"]
    assert str(live) in b["icon"] and decode_image(b["icon"][str(live)]).shape == (64, 64, 3)
    assert len(data["pool"]) == 10
    assert all(len(t) >= 1 for blk in data["blocks"].values() for t in blk["top"][:4])  # best images kept first
    with pytest.raises(ReproError, match="give one per feature"):
        build_browser_data(analyses, lambda i: icon, labels={"down.2.1": ["a"]})
    with pytest.raises(ReproError, match="only 5 images were given"):
        build_browser_data(analyses, np.zeros((5, 8, 8, 3), np.uint8))


def test_payload_size_bound_moderate():
    """2 blocks x 500 features x 16 images out of 2000: a few MB, mostly the thumbnails."""
    a = synthetic_analyses(("down.2.1", "up.0.1"), n_features=500, m=16, n_images=2000, dead=0.1)
    started = time.perf_counter()
    data = build_browser_data(a, synthetic_image, thumb_size=48)
    seconds = time.perf_counter() - started
    size = payload_size(data)
    pool = sum(map(len, data["pool"]))
    per_feature = (size - pool) / sum(len(b["ids"]) for b in data["blocks"].values())
    print(f"payload {size / 1e6:.2f} MB ({len(data['pool'])} images {pool / 1e6:.2f} MB, "
          f"{per_feature:.0f} B per feature) in {seconds:.1f} s")
    assert size < 5e6 and per_feature < 2500 and pool / len(data["pool"]) < 2000


def test_widget_state(data):
    w = FeatureBrowser(data, title="t")
    state = w.get_state()
    assert state["block"] == "down.2.1" and state["live"] is False and state["live_blocks"] == []
    assert "export default" in state["_esm"] and ".repro-fb" in state["_css"]
    json.dumps(state)
    assert w.handle_request({"id": 1, "block": "down.2.1", "feature": 0, "action": "off"})["error"].startswith("no pipeline")
    with pytest.raises(ReproError, match="not in the payload"):
        FeatureBrowser(data, block="mid.0")
    with pytest.raises(ReproError, match="needs the SAEs"):
        FeatureBrowser(data, pipe=object())


def test_saes_keyed_by_the_release_block_names_are_live(data):
    # The original release names its SAEs by module path (unet.down_blocks.2.attentions.1).
    from repro.sae.config import SAEConfig
    from repro.sae.model import TopKSAE

    sae = TopKSAE(SAEConfig(d_model=64, n_features=128, k=8, k_aux=8), seed=0)
    w = FeatureBrowser(data, pipe=object(), saes={"unet.down_blocks.2.attentions.1": sae})
    assert w.live and w.live_blocks == ["down.2.1"]


def test_region_masks():
    assert region_mask("left", 4, 4)[:, :2].all() and not region_mask("left", 4, 4)[:, 2:].any()
    assert region_mask("centre", 4, 4).sum() == 4 and region_mask("all", 4, 4).sum() == 16
    assert region_mask("bottom", 4, 4)[2:].all() and region_mask("top", 1, 1).sum() == 1
    with pytest.raises(ReproError, match="unknown region 'middle'"):
        region_mask("middle", 4, 4)


# --- live mode: the request handler with a tiny pipeline -------------------------------------

BLOCK = "down.2.1"  # 4x4 positions, 64 channels in the tiny pipeline


@pytest.fixture(scope="module")
def live_browser(tiny_pipe, data):
    from repro.generate import Sampling
    from repro.sae.config import SAEConfig
    from repro.sae.model import TopKSAE
    from repro.sae.stats import FeatureStats

    sae = TopKSAE(SAEConfig(d_model=64, n_features=128, k=8, k_aux=8), seed=0)
    sae.feature_stats = FeatureStats(mean=torch.full((128,), 2.0), std=torch.ones(128))
    return FeatureBrowser(data, pipe=tiny_pipe, saes={BLOCK: sae}, prompt="a red circle", seed=3,
                          sampling=Sampling(steps=1))


@pytest.fixture(scope="module")
def firing(live_browser, tiny_pipe):
    """A feature that fires on the plain prompt's update (so modulating it changes something)."""
    from repro.generate import generate
    from repro.hooks import capture_updates

    with capture_updates(tiny_pipe.unet, [BLOCK]) as cap:
        generate(tiny_pipe, [live_browser.prompt], [live_browser.seed])
    z = live_browser._saes[BLOCK].encode(cap.updates(BLOCK)[0].permute(0, 2, 3, 1))
    return int(z.sum((0, 1, 2)).argmax())


@pytest.mark.parametrize("action, extra", [
    ("icon", {"strength": 1.5}), ("paint", {"strength": 1.0, "region": "left"}),
    ("modulate", {"factor": 10}), ("off", {}),
])
def test_live_request_changes_the_image(live_browser, firing, action, extra):
    assert live_browser.live and live_browser.live_blocks == [BLOCK]
    feature = firing
    request = {"id": 7, "block": BLOCK, "feature": feature, "action": action, "prompt": "a red circle", "seed": 3, **extra}
    result = live_browser.handle_request(request)
    assert "error" not in result, result
    assert result["id"] == 7 and live_browser.result == result and not live_browser.busy
    image, plain = decode_image(result["image"]), decode_image(result["plain"])
    assert image.shape == plain.shape == (64, 64, 3)
    assert np.abs(image.astype(int) - plain.astype(int)).max() > 0, f"{action} left the image unchanged"
    if action == "icon":
        assert result["prompt"] == ""  # icons come from the empty prompt


def test_live_request_through_the_trait(live_browser):
    """What the front-end does: set `request`; the observer answers in `result`."""
    live_browser.request = {"id": 11, "block": BLOCK, "feature": 5, "action": "modulate", "factor": -5}
    assert live_browser.result["id"] == 11 and "image" in live_browser.result
    live_browser.request = {"id": 12, "block": "up.0.1", "feature": 5, "action": "off"}
    assert "no SAE for block 'up.0.1'" in live_browser.result["error"]
    live_browser.request = {"id": 13, "block": BLOCK, "feature": 500, "action": "off"}
    assert "out of range" in live_browser.result["error"]
    live_browser.request = {"id": 14, "block": BLOCK, "feature": 1, "action": "explode"}
    assert "unknown action 'explode'" in live_browser.result["error"]


@pytest.mark.slow
def test_paper_scale_payload_size():
    """4 blocks x 5120 features x 16 top images from 10,000 images: the figures for the book."""
    blocks = ("down.2.1", "mid.0", "up.0.0", "up.0.1")
    a = synthetic_analyses(blocks, n_features=5120, m=16, grid=16, n_images=10_000, dead=0.05)
    data = build_browser_data(a, lambda i: synthetic_image(i, 64), thumb_size=48, heat_size=8)
    size, pool = payload_size(data), sum(map(len, data["pool"]))
    print(f"paper scale: {size / 1e6:.1f} MB, pool {len(data['pool'])} images {pool / 1e6:.1f} MB")
    assert size < 40e6
