"""The committed ShapesWorld oracle reads held-out renders back correctly."""

import numpy as np
import pytest
import torch

from repro.errors import ReproError
from repro.shapes import compare, degrade, load_oracle, reading_to_scene, render_batch, split_scenes
from repro.shapes.oracle_train import attribute_accuracy


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
