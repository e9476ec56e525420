"""ShapesWorld scenes, rendering, masks and splits."""

import json

import numpy as np
import pytest

from repro.errors import ReproError
from repro.shapes import (
    BACKGROUNDS,
    COLOURS,
    Scene,
    ShapeObject,
    downsample_mask,
    render,
    render_batch,
    sample_scene,
    split_of,
    split_scenes,
)


def test_same_seed_same_pixels():
    a = [render(sample_scene(np.random.default_rng(7))) for _ in range(2)]
    assert a[0].scene == a[1].scene
    assert np.array_equal(a[0].image, a[1].image)
    grainy = sample_scene(3, style="grainy")
    assert np.array_equal(render(grainy).image, render(grainy).image)


def test_render_batch_matches_render_and_workers():
    scenes = [sample_scene(i) for i in range(40)]
    one = render_batch(scenes, workers=1)
    two = render_batch(scenes, workers=2)
    assert one.images.shape == (40, 128, 128, 3) and one.images.dtype == np.uint8
    assert np.array_equal(one.images, two.images) and np.array_equal(one.labels, two.labels)
    for i in (0, 17):
        r = render(scenes[i])
        assert np.array_equal(r.image, one.images[i])
        assert np.array_equal(r.masks, one.masks(i))


def test_scene_dict_round_trip_and_canonical_order():
    rng = np.random.default_rng(0)
    for _ in range(200):
        s = sample_scene(rng)
        assert Scene.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    a, b = sample_scene(1, n_objects=2).objects
    assert Scene((a, b), "white") == Scene((b, a), "white")


def test_impossible_scenes_raise():
    obj = ShapeObject("circle", "red", "small", "solid", "left")
    with pytest.raises(ReproError, match="same slot"):
        Scene((obj, obj), "white")
    with pytest.raises(ReproError, match="1 or 2 objects"):
        Scene(tuple(ShapeObject("circle", "red", "small", "solid", p) for p in ("left", "right", "top")), "white")
    with pytest.raises(ReproError, match="unknown colour"):
        ShapeObject("circle", "mauve", "small", "solid", "left")
    with pytest.raises(ReproError, match="needs an orientation"):
        ShapeObject("triangle", "red", "small", "solid", "left")


def test_masks_match_pixels():
    rng = np.random.default_rng(5)
    for _ in range(100):
        s = sample_scene(rng, style="flat")  # flat: no grain, no outline, colours exact
        r = render(s)
        assert r.masks.shape == (len(s.objects), 128, 128)
        assert not (r.masks.sum(0) > 1).any(), "objects overlap"
        assert np.array_equal(r.background, ~r.masks.any(0))
        assert (r.image[r.background] == BACKGROUNDS[s.background]).all()
        for obj, m in zip(s.objects, r.masks):
            assert m.sum() > 100
            same_colour = r.masks[[o.colour == obj.colour for o in s.objects]].any(0)
            colour_px = (r.image == COLOURS[obj.colour]).all(-1)
            assert (colour_px & m).any() and not (colour_px & ~same_colour).any()
            assert not (r.image[m] == BACKGROUNDS[s.background]).all(-1).any()


def test_downsample_mask():
    m = np.zeros((2, 128, 128), bool)
    m[0, :16, :16] = True
    m[1, :16, :4] = True
    frac = downsample_mask(m, 8)
    assert frac.shape == (2, 8, 8) and frac[0, 0, 0] == 1 and frac[1, 0, 0] == 0.25 and frac.sum() == 1.25
    maj = downsample_mask(m, 16, mode="majority")
    assert maj.dtype == bool and maj[0].sum() == 4 and maj[1].sum() == 0
    with pytest.raises(ReproError, match="one of: fraction, majority"):
        downsample_mask(m, 8, mode="mean")


def test_splits_disjoint_and_deterministic():
    train = split_scenes("train", 3000, seed=0)
    test = split_scenes("test", 300, seed=0)
    rie = split_scenes("riebench", 300, seed=0)
    keys = [{s.key() for s in x} for x in (train, test, rie)]
    assert len(keys[0]) == 3000 and len(keys[1]) == 300
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    assert all(split_of(s) == "test" for s in test)
    assert split_scenes("test", 50, seed=0) == test[:50]
    with pytest.raises(ReproError, match="one of: train, test, riebench"):
        split_scenes("valid", 3)
