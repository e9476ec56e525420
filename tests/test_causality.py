"""Causality and locality on a fixture whose answer is known (issue 15, defect 9).

The "oracle" here sees only whether an image changed: on the scenes that lack the value
(`BLUE` ones, 3 of them) it reads red exactly when the image differs from the unedited
one; on the scenes that have it (`RED` ones, 2) it reads red exactly when the image is
unchanged. A planted feature that fires everywhere with a large activation must then
switch on in every scene at a working strength, in none at strength 0, and switch off in
every scene; a feature that never fires switches off nowhere.
"""

import numpy as np
import pytest
import torch

from repro.evaluate.in_loop import generate_with
from repro.features.causality import causal_test, has_value, locality_curve, preserved, reads_value, scene_prompts
from repro.features.controls import random_direction_twin, random_sae_like
from repro.features.interventions import FeatureAdd, FeatureIcon
from repro.generate import Sampling
from repro.hooks import Edit, capture_updates, intervene
from repro.sae.config import SAEConfig
from repro.sae.model import TopKSAE
from repro.sae.stats import FeatureStats
from repro.shapes.world import Scene, ShapeObject

RED = Scene((ShapeObject("square", "red", "large", "solid", "left"),), background="white")
BLUE = Scene((ShapeObject("circle", "blue", "large", "dotted", "right"),), background="pink", style="grainy")
ON = [BLUE, BLUE, BLUE]
OFF = [RED, RED]
PLANTED, DEAD = 3, 7


def _reading(colour, background="white"):
    return {"background": background, "style": "flat",
            "slots": {"left": {"shape": "square", "orientation": None, "colour": colour, "texture": "solid", "size": "large"},
                      "right": {"shape": "circle", "orientation": None, "colour": colour, "texture": "dotted", "size": "small"},
                      "top": None, "bottom": None, "centre": None}}


def test_reading_rules():
    assert reads_value(_reading("red"), RED, "colour=red") and not reads_value(_reading("blue"), RED, "colour=red")
    assert reads_value(_reading("red", "pink"), RED, "background=pink")
    assert has_value(RED, "colour=red") and has_value(BLUE, "style=grainy") and not has_value(RED, "texture=dotted")


def test_preservation_ignores_only_the_labels_own_attribute():
    assert preserved(_reading("red"), _reading("blue"), "colour=red")
    assert not preserved(_reading("red"), _reading("blue"), "texture=dotted")
    assert not preserved(_reading("red"), _reading("red", "pink"), "colour=red")
    assert preserved(_reading("red"), _reading("red", "pink"), "background=pink")


class ChangeOracle:
    """Knows the unedited images of the ON and OFF scenes; reads red as described above."""

    def __init__(self, pipe, sampling, seed):
        self.plain = {}
        for scenes, s in ((ON, seed), (OFF, seed + 10_000)):
            prompts, seeds = scene_prompts(scenes, s)
            self.plain[len(scenes)] = generate_with(pipe, prompts, seeds, sampling).astype(np.float32)

    def read(self, images):
        ref = self.plain[len(images)]
        changed = np.abs(images.astype(np.float32) - ref).mean(axis=(1, 2, 3)) > 0.5
        if len(images) == len(ON):
            return [_reading("red" if c else "blue") for c in changed]
        return [_reading("blue" if c else "red") for c in changed]


def _planted_sae():
    """Feature PLANTED fires on every token at 30; feature DEAD never fires."""
    sae = TopKSAE(SAEConfig(d_model=64, n_features=128, k=4, k_aux=8), seed=0)
    with torch.no_grad():
        sae.b_lat.fill_(-1.0)
        sae.b_lat[PLANTED] = 30.0
        sae.b_lat[DEAD] = -1e6
        sae.W_enc.mul_(1e-3)
    sae.feature_stats = FeatureStats(mean=torch.full((128,), 30.0), std=torch.ones(128))
    return sae


@pytest.fixture(scope="module")
def answers(pipe):
    sampling = Sampling()
    oracle = ChangeOracle(pipe, sampling, seed=5)
    sae = _planted_sae()
    run = lambda f, strengths: causal_test(pipe, sae, "down.2.1", f, "colour=red", ON, OFF, oracle,  # noqa: E731
                                           sampling, grid=4, strengths=strengths, seed=5, batch_size=2)
    return run(PLANTED, (0.0, 1.0)), run(DEAD, (0.0,))


def test_planted_feature_switches_on_and_off_everywhere(answers):
    planted, _ = answers
    assert planted.baseline_on == 0 and planted.baseline_off == 0
    assert [(r.strength, r.hits, r.n) for r in planted.on] == [(0.0, 0, 3), (1.0, 3, 3)]
    assert planted.off_hits == planted.n_off == 2
    assert all(r.preserved == r.n for r in planted.on)  # this oracle reads nothing else
    # per-scene outcomes, in scene order, for paired tests against a control on the same scenes
    assert planted.on[0].success == (False,) * 3 and planted.on[1].joint == (True,) * 3


def test_a_feature_that_never_fires_cannot_be_switched_off(answers):
    _, dead = answers
    assert dead.off_hits == 0 and dead.on[0].hits == 0


def test_random_direction_twin_keeps_the_encoder_and_the_norm():
    sae = _planted_sae()
    twin = random_direction_twin(sae, PLANTED, seed=1)
    assert torch.equal(twin.W_enc, sae.W_enc) and twin.feature_stats is sae.feature_stats
    assert not torch.allclose(twin.W_dec[:, PLANTED], sae.W_dec[:, PLANTED])
    assert float(twin.W_dec[:, PLANTED].detach().norm()) == pytest.approx(float(sae.W_dec[:, PLANTED].detach().norm()), rel=1e-6)
    others = [f for f in range(128) if f != PLANTED]
    assert torch.equal(twin.W_dec[:, others], sae.W_dec[:, others])
    rand = random_sae_like(sae)
    assert rand.cfg.k == sae.cfg.k and torch.equal(rand.b_pre, sae.b_pre)
    assert torch.allclose(rand.W_enc, rand.W_dec.T)


def test_steps_from_a_generator_act_at_every_listed_step():
    edit = Edit(steps=(s for s in (0, 2)))
    assert [edit.active(s) for s in range(4)] == [True, False, True, False]
    assert [edit.active(s) for s in range(4)] == [True, False, True, False]  # not consumed by the first pass


def test_a_per_image_mask_is_sliced_per_batch(pipe):
    """Masks [N, H, W] for N = 3 prompts in batches of 2: the same images as one batch of 3."""
    sae = _planted_sae()
    masks = torch.zeros(3, 4, 4)
    masks[0, :2] = 1.0
    masks[2, :, 2:] = 1.0
    prompts, seeds = ["a", "b", "c"], [0, 1, 2]
    edit = FeatureAdd(sae=sae, features=PLANTED, strength=30.0, mask=masks)
    whole = generate_with(pipe, prompts, seeds, Sampling(), {"down.2.1": edit}, batch_size=3)
    split = generate_with(pipe, prompts, seeds, Sampling(), {"down.2.1": edit}, batch_size=2)
    assert np.abs(whole.astype(int) - split.astype(int)).max() <= 1
    plain = generate_with(pipe, prompts, seeds, Sampling(), None, batch_size=3)
    assert np.abs(whole[1].astype(int) - plain[1].astype(int)).max() <= 1  # image 1's mask is empty


def test_icon_replaces_only_the_conditional_half_under_guidance(pipe):
    sae = _planted_sae()
    icon = FeatureIcon(sae=sae, features=PLANTED)
    sampling = Sampling(steps=1, guidance=3.0)
    with intervene(pipe.unet, {"mid.0": icon}, cfg=True), capture_updates(pipe.unet, ["mid.0"], cfg=True) as cap:
        generate_with(pipe, ["a"], [0], sampling)
    cond, uncond = cap.updates("mid.0", "cond")[0, 0], cap.updates("mid.0", "uncond")[0, 0]  # [C, H, W]
    want = 30.0 * sae.cfg.k * sae.W_dec[:, PLANTED]
    assert torch.allclose(cond, want[:, None, None].expand_as(cond), atol=1e-3)
    assert not torch.allclose(uncond, want[:, None, None].expand_as(uncond), atol=1e-1)


def test_locality_curve_covers_every_distance(pipe):
    curve = locality_curve(pipe, _planted_sae(), "up.0.1", PLANTED, ["a red circle", "a cat"], [0, 1], Sampling(),
                           grid=4, strengths=[2.0]).change[0].mean(axis=0)
    assert curve.ndim == 1 and len(curve) >= 3 and (curve >= 0).all() and curve.max() > 0


def test_causality_paints_with_the_papers_rule_s_times_mean():
    """Issue 15, defect 7: the intervention adds s * mean_f * W_dec[:, f] (no factor k)."""
    from repro.features.causality import painting_edit

    sae = _planted_sae()
    update = torch.zeros(1, 64, 4, 4)
    added = painting_edit(sae, PLANTED, 2.0).apply(update, 0, "all")  # [1, C, H, W]
    want = 2.0 * 30.0 * sae.W_dec[:, PLANTED].detach()
    assert torch.allclose(added[0, :, 1, 2], want, atol=1e-5)


def test_locality_summary_knows_a_local_and_a_global_change():
    """near / far / spread on images whose answer is known: a change inside the edited cell
    only (spread 0) and the same change everywhere (spread 1)."""
    from repro.features.causality import LocalityCurve, _change_by_distance, _distance_bins

    grid, side = 4, 32
    bins = _distance_bins(side, side, grid, (2, 2))
    plain = np.zeros((3, side, side, 3), np.uint8)
    local = plain.copy()
    local[:, 16:24, 16:24] = 51  # the cell (2, 2), 0.2 of full scale
    everywhere = plain + np.uint8(51)
    curve = LocalityCurve([0.0, 1.0, 2.0], np.stack([_change_by_distance(plain, plain, bins),
                                                     _change_by_distance(plain, local, bins),
                                                     _change_by_distance(plain, everywhere, bins)]))
    assert curve.change.shape[:2] == (3, 3)
    summary = curve.summary(n_boot=50)
    assert summary[0.0]["near"]["value"] == 0 and summary[0.0]["far"]["value"] == 0
    # distance 0 is the disc of radius one cell around the cell's centre: the cell is ~1/3 of it
    assert summary[1.0]["near"]["value"] > 0.05 and summary[1.0]["far"]["value"] == 0
    assert summary[1.0]["spread"]["value"] == 0
    assert summary[2.0]["spread"]["value"] == pytest.approx(1.0)
    assert summary[2.0]["near"]["lo"] <= summary[2.0]["near"]["value"] <= summary[2.0]["near"]["hi"]


def test_locality_curve_at_the_causality_strengths(pipe):
    """One plain generation, one edited per strength; s = 0 changes nothing; a curve of one strength
    is the longer curve's row at that strength."""
    prompts, seeds = ["a red circle", "a cat"], [0, 1]
    curve = locality_curve(pipe, _planted_sae(), "up.0.1", PLANTED, prompts, seeds, Sampling(), grid=4,
                           strengths=[0.0, 2.0])
    assert curve.change.shape[:2] == (2, 2) and curve.change[0].max() == 0 and curve.change[1].max() > 0
    single = locality_curve(pipe, _planted_sae(), "up.0.1", PLANTED, prompts, seeds, Sampling(), grid=4, strengths=[2.0])
    # the same images up to uint8 rounding: a batch of other variants beside them may round a pixel apart
    assert np.allclose(single.change[0], curve.change[1], atol=1e-4)
    assert set(curve.to_dict(n_boot=20)["summary"]) == {0.0, 2.0}
    assert np.allclose(curve.to_dict(n_boot=0)["mean_change"], curve.change.mean(axis=1))


def test_timing_acts_only_at_the_listed_steps(pipe):
    """On 2-step sampling, an edit restricted to no step changes nothing (0 of 3 switch on),
    one acting at step 0 changes every image (3 of 3), one at step 1 alone changes the images
    less (the last step's noise prediction is scaled by the smallest sigma) and differently
    from both steps: the steps are honoured, not every step edited."""
    from repro.features.causality import causal_timing, pooled_timing, window_name

    sampling = Sampling(steps=2)

    class Recorder(ChangeOracle):
        def __init__(self):
            prompts, seeds = scene_prompts(ON, 5)
            self.plain = {len(ON): generate_with(pipe, prompts, seeds, sampling).astype(np.float32)}
            self.seen = []

        def read(self, images):
            self.seen.append(images)
            return super().read(images)

    oracle = Recorder()
    res = causal_timing(pipe, _planted_sae(), "down.2.1", PLANTED, "colour=red", ON, oracle, sampling, grid=4,
                        strength=1.0, windows=[[], [0], [1], [0, 1]], seed=5, batch_size=2)
    assert res.baseline == 0 and list(res.windows) == ["none", "0", "1", "0-1"]
    hits = {w: r.hits for w, r in res.windows.items()}
    assert (hits["none"], hits["0"], hits["0-1"]) == (0, 3, 3)
    plain, none, first, last, both = (im.astype(np.float32) for im in oracle.seen)
    assert np.array_equal(none, plain)
    assert 0 < np.abs(last - plain).mean() < np.abs(first - plain).mean()
    assert not np.array_equal(first, both)
    pooled = pooled_timing([res, res])
    assert pooled["on"]["0"]["hits"] == 6 and pooled["on"]["1"]["n"] == 6 and pooled["baseline_on"]["n"] == 6
    assert window_name([2, 3]) == "2-3" and window_name([0, 2]) == "0,2" and window_name([1]) == "1"
