"""Prompt following, speed and block ablation of ShapesWorld generators (repro.shapes.scoring)."""

import numpy as np
import pytest

from repro.blocks import PAPER_BLOCKS
from repro.generate import Sampling
from repro.shapes import load_oracle, render_batch
from repro.shapes.scoring import (
    ATTRIBUTES,
    block_ablation,
    heldout_captions,
    pipeline_generator,
    prompt_following,
    score_readings,
    speed_from_batches,
    targets_met,
)
from repro.shapes.splits import split_of
from repro.shapes.world import POSITIONS, Scene


def reading_of(scene: Scene) -> dict:
    """The reading a perfect oracle would return for `scene` (as `Oracle.read` lays it out)."""
    slots: dict[str, dict | None] = {p: None for p in POSITIONS}
    for o in scene.objects:
        d = o.to_dict()
        del d["position"]
        slots[o.position] = d
    return {"background": scene.background, "style": scene.style, "slots": slots}


@pytest.fixture(scope="module")
def oracle():
    return load_oracle()


@pytest.fixture(scope="module")
def heldout():
    return heldout_captions(8, seed=0)


def test_heldout_captions_are_test_split_and_deterministic(heldout):
    scenes, captions = heldout
    assert len(scenes) == len(captions) == 8
    assert all(split_of(s) == "test" for s in scenes)
    assert len({s.key() for s in scenes}) == 8
    s5, c5 = heldout_captions(5, seed=0)
    assert s5 == scenes[:5] and c5 == captions[:5]
    # one stream (repro toy eval's captions): the same scenes, other captions, the same prefix rule
    s1, c1 = heldout_captions(8, seed=0, one_stream=True)
    assert s1 == scenes and c1 != captions and c1[:5] == heldout_captions(5, seed=0, one_stream=True)[1]


def test_score_readings_against_truth(heldout):
    scenes, _ = heldout
    truth = [reading_of(s) for s in scenes]
    scores = score_readings(truth, scenes)
    assert all(v == 1.0 for v in scores.values()), scores
    # Wrong background on 2 of 8 images: background and all drop to 0.75, nothing else moves.
    bad = [dict(r) for r in truth]
    for r in bad[:2]:
        r["background"] = next(b for b in ("white", "black") if b != r["background"])
    scores = score_readings(bad, scenes)
    assert scores["background"] == scores["all"] == 0.75
    assert all(scores[a] == 1.0 for a in ATTRIBUTES if a != "background")
    # An extra object in an empty slot breaks the layout only.
    extra = [dict(r, slots=dict(r["slots"])) for r in truth]
    empty = next(p for p, o in extra[0]["slots"].items() if o is None)
    extra[0]["slots"][empty] = {"shape": "circle", "orientation": None, "colour": "red", "texture": "solid", "size": "small"}
    scores = score_readings(extra, scenes)
    assert scores["layout"] == scores["all"] == 7 / 8 and scores["colour"] == 1.0


def test_renders_as_generator_follow_prompts_perfectly(oracle, heldout):
    """The metric, end to end: a "generator" that returns the renders scores 1.0 on every attribute."""
    scenes, captions = heldout
    by_caption = dict(zip(captions, render_batch(scenes, workers=1, with_masks=False).images))

    def renders(caps, seeds):
        return np.stack([by_caption[c] for c in caps])

    pf = prompt_following(renders, oracle, scenes, captions, range(8), batch_size=3)
    assert pf.images.shape == (8, 128, 128, 3)
    assert all(v == 1.0 for v in pf.scores.values()), pf.scores
    assert targets_met(pf.scores)["met"]
    # Renders of the wrong scenes (shifted by one) do not follow the prompts.
    shifted = prompt_following(lambda caps, seeds: np.roll(renders(caps, seeds), 1, axis=0),
                               oracle, scenes, captions, range(8), batch_size=8)
    assert shifted.scores["all"] < 0.5
    assert not targets_met(shifted.scores)["met"]


def test_prompt_following_tiny_pipeline(tiny_pipe, oracle, heldout):
    scenes, captions = heldout
    pf = prompt_following(pipeline_generator(tiny_pipe, Sampling(steps=1)), oracle, scenes[:4], captions[:4],
                          range(4), batch_size=2)
    assert pf.images.shape == (4, 64, 64, 3) and pf.images.dtype == np.uint8
    assert set(pf.scores) == {*ATTRIBUTES, "all"}
    assert all(0.0 <= v <= 1.0 for v in pf.scores.values() if not np.isnan(v))
    assert pf.speed.warm and pf.speed.timed_images == 2 and pf.speed.images_per_second > 0
    d = pf.to_dict()
    assert d["n"] == 4 and d["speed"]["batch_size"] == 2


def test_speed_from_batches():
    sp = speed_from_batches([9.0, 1.0, 0.5], n_images=5, batch_size=2)
    assert sp.timed_images == 3 and sp.images_per_second == pytest.approx(3 / 1.5) and sp.warm
    single = speed_from_batches([2.0], n_images=2, batch_size=4)
    assert not single.warm and single.images_per_second == pytest.approx(1.0)


def test_block_ablation_tiny_pipeline(tiny_pipe, oracle, heldout):
    scenes, captions = heldout
    ab = block_ablation(tiny_pipe, oracle, scenes[:2], captions[:2], range(2), Sampling(steps=1), batch_size=2)
    t = ab.table
    assert len(t) == 11 and list(t.index)[:1] == ["down.1.0"]
    assert set(t.index[t["in_paper"]]) == set(PAPER_BLOCKS)
    assert (t["pixel_change"] >= 0).all() and (t["pixel_change"] <= 1).all()
    assert t["pixel_change"].max() > 0  # removing a block of a random UNet changes its image
    for a in (*ATTRIBUTES, "all"):
        assert t[f"d_{a}"].dropna().between(-1, 1).all()
    assert sorted(ab.ranking()) == sorted(t.index)
    d = ab.to_dict()
    assert set(d["blocks"]) == set(t.index) and d["n"] == 2


def test_quality_targets_read_all_right_with_wilson_intervals():
    from repro.intervals import wilson
    from repro.shapes.scoring import QUALITY_TARGETS, all_right_rate, quality_targets

    hits = [{"all": i < 96, "colour": True} for i in range(100)]  # 96 of 100 all right
    r = all_right_rate(hits)
    assert (r["hits"], r["n"], r["rate"]) == (96, 100, 0.96)
    assert (r["lo"], r["hi"]) == wilson(96, 100)
    table = quality_targets({"turbo_1_step": r, "base": all_right_rate(hits[4:] + hits[:4])})
    assert table.loc["turbo_1_step", "met"] and not table.loc["turbo_1_step", "interval above target"]  # lo < 0.95
    assert table.loc["turbo_1_step", "target"] == QUALITY_TARGETS["turbo_1_step"] == 0.95
    low = all_right_rate([{"all": i < 80} for i in range(100)])
    assert not quality_targets({"base": low}).loc["base", "met"]


def test_the_ablation_ranking_bootstrap_is_paired_over_images():
    """`BlockAblation.bootstrap`: the change's mean equals the table's d_all; a block that costs every
    image is ranked first in every resample; a block that changes nothing never makes the top 1."""
    import numpy as np
    import pandas as pd

    from repro.shapes.scoring import BlockAblation

    n, cols = 40, len(ATTRIBUTES) + 1
    rng = np.random.default_rng(0)
    changes = {"a": -np.ones((n, cols), np.int8), "b": np.zeros((n, cols), np.int8),
               "c": -(rng.random((n, cols)) < 0.3).astype(np.int8)}
    table = pd.DataFrame({"d_all": {b: float(c[:, -1].mean()) for b, c in changes.items()}})
    boot = BlockAblation(table, {}, n, changes).bootstrap(top=1, n_boot=500)
    assert boot.loc["a", "change"] == -1 and boot.loc["a", "P(top 1)"] == 1 and boot.loc["a", "median rank"] == 1
    assert boot.loc["b", "P(top 1)"] == 0 and boot.loc["b", "lo"] == boot.loc["b", "hi"] == 0
    assert boot.loc["c", "change"] == pytest.approx(table.loc["c", "d_all"])
    assert boot.loc["c", "lo"] < boot.loc["c", "change"] < boot.loc["c", "hi"]
    with pytest.raises(ValueError, match="per-image"):
        BlockAblation(table, {}, n).bootstrap()


def test_ablation_claims_read_the_bootstrap():
    """The block claims of 01: a paper block that changes nothing fails the 'matters most' claim and
    its role claim is undecidable (nothing to read); a block whose ablation costs its role's attributes
    and nothing else passes its role claim."""
    import numpy as np
    import pandas as pd

    from repro.blocks import PAPER_BLOCKS
    from repro.claims import verdict
    from repro.shapes.scoring import ROLES, BlockAblation, ablation_claims

    n = 30
    idx = {a: i for i, a in enumerate((*ATTRIBUTES, "all"))}
    changes = {b: np.zeros((n, len(idx)), np.int8) for b in (*PAPER_BLOCKS, "down.1.0")}
    for a in (*ROLES["up.0.1"][1], "all"):
        changes["up.0.1"][:, idx[a]] = -1
    changes["down.1.0"][:, idx["all"]] = -1
    table = pd.DataFrame({"d_all": {b: float(c[:, -1].mean()) for b, c in changes.items()}})
    claims = {c.claim: c for c in ablation_claims(BlockAblation(table, {}, n, changes), n_boot=200)}
    assert verdict(claims["The paper's four blocks are the ones whose ablation matters most"])[0] == "does not reproduce"
    assert verdict(claims["up.0.1 writes style (colour, texture, style)"])[0] == "reproduces"
    assert verdict(claims["down.2.1 writes composition (layout, shape, size)"])[0] == "undecidable"
