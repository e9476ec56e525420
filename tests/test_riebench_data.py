"""RIEBench data: the ShapesWorld benchmark, the published format, masks and bad edits."""

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from repro.errors import ReproError
from repro.riebench.data import CATEGORIES, RIEEdit, attach_masks, grid_mask, load_edits, normalise_category
from repro.riebench.shapes import COMMITTED, generate_shapes_riebench, shapes_riebench, to_json
from repro.shapes.captions import parse_caption
from repro.shapes.render import object_mask
from repro.shapes.splits import split_of


@pytest.fixture(scope="module")
def toy():
    return generate_shapes_riebench()


def test_toy_benchmark_covers_nine_categories_from_held_out_scenes(toy):
    counts = Counter(e.category for e in toy)
    assert set(counts) == set(CATEGORIES) and min(counts.values()) >= 30
    assert len({e.id for e in toy}) == len(toy)
    for e in toy:
        assert split_of(e.original_scene) == "riebench" and split_of(e.edit_scene) == "riebench"
        assert parse_caption(e.original_prompt) == e.original_scene
        assert parse_caption(e.edit_prompt) == e.edit_scene
        e.validate(resolution=128)


def test_committed_json_is_what_the_generator_gives(toy):
    assert json.loads(COMMITTED.read_text()) == to_json(toy)
    loaded = shapes_riebench()
    assert [e.to_dict() for e in loaded] == [e.to_dict() for e in toy]
    assert all(np.array_equal(a.source_mask, b.source_mask) for a, b in zip(loaded, toy))


def test_toy_masks_come_from_the_renderer(toy):
    by_cat = {c: next(e for e in toy if e.category == c) for c in CATEGORIES}
    style = by_cat["change_style"]
    assert style.source_mask.all() and style.target_mask.all()
    bg = by_cat["change_background"]
    fg = np.any([object_mask(o) for o in bg.original_scene.objects], axis=0)
    assert np.array_equal(bg.target_mask, ~fg)
    col = by_cat["change_colour"]
    obj = next(o for o in col.original_scene.objects if o.position == col.slot)
    assert np.array_equal(col.target_mask, object_mask(obj))
    add = by_cat["add_object"]  # the empty slot of the original: where the object will appear
    new = next(o for o in add.edit_scene.objects if o.position == add.slot)
    assert np.array_equal(add.source_mask, object_mask(new)) and np.array_equal(add.target_mask, object_mask(new))
    dele = by_cat["delete_object"]
    assert len(dele.edit_scene.objects) == len(dele.original_scene.objects) - 1


def test_grid_mask_pools_and_dilates():
    m = np.zeros((128, 128), bool)
    m[0:16, 0:16] = True  # exactly cell (0, 0) of an 8x8 grid
    g = grid_mask(m, 8)
    assert g.shape == (8, 8) and g.sum() == 1 and g[0, 0]
    assert grid_mask(m, 8, dilate_px=1).sum() == 4  # spills one pixel into the neighbours
    m2 = np.zeros((64, 64), bool)
    m2[0:2, 0:2] = True
    assert grid_mask(m2, 4).sum() == 1 and grid_mask(m2, 4, threshold=0.5).sum() == 0


def test_published_format_with_key_variants_and_mask_dir(tmp_path):
    records = [
        {"id": "a", "source_prompt": "a cat", "target_prompt": "a dog", "editing_type": "Change Object",
         "mask_prompts": ["cat"]},
        {"edit_id": "b", "original_prompt": "a red car", "editing_prompt": "a blue car", "category": "change_color",
         "segment_prompts": {"source": "blue car", "target": "red car"}},
        {"id": "c", "original_prompt": "a house", "edit_prompt": "a house at night", "editing_type_id": 8},
        {"id": "d", "original_prompt": "a cat", "edit_prompt": "a cat, van gogh style", "category": "change_style"},
        {"id": "e", "original_prompt": "x"},
    ]
    path = tmp_path / "rie.json"
    path.write_text(json.dumps(records))
    edits = load_edits(path)
    assert [e.category for e in edits[:4]] == ["change_object", "change_colour", "change_background", "change_style"]
    assert edits[1].source_mask_prompts == ("blue car",) and edits[1].target_mask_prompts == ("red car",)
    assert edits[0].original_prompt == "a cat" and edits[0].edit_prompt == "a dog"
    assert "lacks" in edits[4].problem
    masks = tmp_path / "masks"
    masks.mkdir()
    m = np.zeros((64, 64), np.uint8)
    m[10:30, 10:30] = 255
    Image.fromarray(m).save(masks / "a_source.png")
    Image.fromarray(255 - m).save(masks / "a_target.png")
    Image.fromarray(m).save(masks / "c.png")
    edits = attach_masks(edits, masks)
    assert edits[0].source_mask.sum() == 400 and edits[0].target_mask.sum() == 64 * 64 - 400
    assert np.array_equal(edits[2].source_mask, m == 0)  # background: the complement of the named objects
    assert "no mask" in edits[1].problem
    assert edits[3].problem is None and edits[3].source_mask is None  # style: whole image, sized later
    edits[0].validate(resolution=64)
    with pytest.raises(ReproError, match="no mask"):
        edits[1].validate()


def test_bad_edits_raise_clear_errors():
    m = np.ones((64, 64), bool)
    with pytest.raises(ReproError, match="unknown category 'change_weather'"):
        RIEEdit("x", "change_weather", "a", "b", source_mask=m, target_mask=m).validate()
    with pytest.raises(ReproError, match="identical"):
        RIEEdit("x", "change_colour", "a red car", "A red  car", source_mask=m, target_mask=m).validate()
    with pytest.raises(ReproError, match="32x32 px but the images are 64x64"):
        RIEEdit("x", "change_colour", "a", "b", source_mask=m[:32, :32], target_mask=m).validate(resolution=64)
    with pytest.raises(ReproError, match="empty"):
        RIEEdit("x", "change_colour", "a", "b", source_mask=~m, target_mask=m).validate()
    assert normalise_category("Change Attribute Color") == "change_colour" and normalise_category(9) == "change_style"
