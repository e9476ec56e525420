"""The committed ShapesWorld oracle reads held-out renders back correctly."""

import numpy as np
import pytest
import torch

from repro.errors import ReproError
from repro.shapes import Scene, ShapeObject, compare, degrade, load_oracle, render_batch, split_scenes
from repro.shapes.oracle_train import attribute_accuracy


def reading_to_scene(reading: dict) -> Scene | None:
    """The Scene a reading describes, or None if it holds no object or more than two."""
    objs = [ShapeObject(position=p, **o) for p, o in reading["slots"].items() if o is not None]
    if not 1 <= len(objs) <= 2:
        return None
    return Scene(tuple(objs), reading["background"], reading["style"])


@pytest.fixture(scope="module")
def held_out():
    scenes = split_scenes("test", 300, seed=123)
    return scenes, render_batch(scenes, workers=1, with_masks=False).images


@pytest.fixture(scope="module")
def oracle():
    return load_oracle()  # fails loudly if models/oracle is missing


def test_oracle_clean(oracle, held_out):
    scenes, images = held_out
    readings = oracle.read(images)
    acc = attribute_accuracy(readings, scenes)
    assert min(v for k, v in acc.items() if k != "all") >= 0.98, acc
    assert acc["all"] >= 0.95, acc
    right = [compare(r, s) for r, s in zip(readings, scenes)]
    assert np.mean([c["all"] for c in right]) >= 0.95
    assert sum(reading_to_scene(r) == s for r, s in zip(readings, scenes)) >= 0.95 * len(scenes)


def test_oracle_degraded(oracle, held_out):
    scenes, images = held_out
    bad = degrade(torch.from_numpy(images), torch.Generator().manual_seed(0))
    acc = attribute_accuracy(oracle.read(bad), scenes)
    assert min(v for k, v in acc.items() if k != "all") >= 0.97, acc


def test_compare_flags_wrong_attributes(oracle, held_out):
    scenes, images = held_out
    s = next(s for s in scenes if len(s.objects) == 1)
    reading = oracle.read(images[scenes.index(s)])[0]
    assert compare(reading, s)["all"]
    other = "red" if s.objects[0].colour != "red" else "blue"
    res = compare(reading, s.replace_object(0, colour=other))
    assert not res["colour"] and not res["all"] and res["shape"]


def test_missing_oracle_is_a_clear_error(tmp_path):
    with pytest.raises(ReproError, match="--train"):
        load_oracle(tmp_path)
    with pytest.raises(ReproError, match="uint8"):
        load_oracle().read(np.zeros((1, 128, 128, 3), np.float32))


# --- the damaged head ------------------------------------------------------------------


def test_damaged_head_flags_damage_not_renders(oracle, held_out):
    from repro.shapes.degrade import damage

    scenes, images = held_out
    x = torch.from_numpy(images)
    gen = torch.Generator().manual_seed(5)
    flagged = lambda imgs: np.array([r["damaged"] for r in oracle.read(imgs)], dtype=float)  # noqa: E731
    clean, mild = flagged(images), flagged(degrade(x, gen))
    grainy = np.array([s.style == "grainy" for s in scenes])
    wrecked = flagged(damage(degrade(x, gen), gen))
    assert grainy.sum() > 50
    assert clean.mean() <= 0.02 and clean[grainy].mean() <= 0.02, (clean.mean(), clean[grainy].mean())
    assert mild.mean() <= 0.03, mild.mean()
    assert wrecked.mean() >= 0.9, wrecked.mean()
    r = oracle.read(images[:2])[0]
    assert 0.0 <= r["damaged_p"] <= 1.0 and r["damaged"] == (r["damaged_p"] > oracle.damage_threshold)


def test_reads_value_refuses_a_damaged_reading(oracle, held_out):
    from repro.features.causality import preserved, reads_value
    from repro.shapes.degrade import damage

    scenes, images = held_out
    i = next(i for i, s in enumerate(scenes) if s.style == "flat")
    s = scenes[i]
    reading = oracle.read(images[i])[0]
    labels = [f"background={s.background}", f"colour={s.objects[0].colour}", f"shape={s.objects[0].shape}"]
    assert all(reads_value(reading, s, lab) for lab in labels) and not reading["damaged"]
    assert all(not reads_value({**reading, "damaged": True}, s, lab) for lab in labels)
    assert preserved(reading, reading, labels[0]) and not preserved(reading, {**reading, "damaged": True}, labels[0])
    # A real wreck: noise and blotches over the image read as damaged, so no value is read.
    gen = torch.Generator().manual_seed(1)
    wrecks = oracle.read(damage(torch.from_numpy(images[i : i + 1]).repeat(8, 1, 1, 1), gen))
    assert sum(w["damaged"] for w in wrecks) >= 7
    assert sum(any(reads_value(w, s, lab) for lab in labels) for w in wrecks) <= 1


def test_v1_oracle_without_damaged_head_still_loads(tmp_path):
    from repro.shapes.oracle import ARCHES, OracleNet, save_oracle

    save_oracle(OracleNet(32, damage_head=False), {"arch": ARCHES[0], "width": 32}, tmp_path)
    r = load_oracle(tmp_path).read(np.zeros((128, 128, 3), np.uint8))[0]
    assert r["damaged"] is None and np.isnan(r["damaged_p"]) and set(r) >= {"background", "style", "slots"}
