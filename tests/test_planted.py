"""Planted directions and the random controls beside them, on inputs whose answer is known
(no model: the real-model known-answer test is tests/test_positive_controls_toy.py)."""

import numpy as np
import pandas as pd
import pytest
import torch

from repro.errors import ReproError
from repro.features.causality import painting_edit
from repro.features.controls import data_shaped_twin, random_direction_twin, update_covariance
from repro.features.planted import (FAMILIES, carrier_sae, family_codes, ground_truth, mean_difference, parse_label,
                                    planted_feature, with_planted)
from repro.features.positive_controls import detection_power, strength_grid
from repro.shapes.world import Scene, ShapeObject

LEFT_RED = Scene((ShapeObject("square", "red", "large", "solid", "left"),), background="pink", style="grainy")
TWO = Scene((ShapeObject("circle", "blue", "large", "dotted", "left"), ShapeObject("square", "red", "large", "striped", "right")),
            background="white", style="flat")


def test_family_codes_follow_the_rendered_objects():
    codes = family_codes([LEFT_RED, TWO], "colour", 8)  # [2, 8, 8]
    red, blue = FAMILIES["colour"].index("red"), FAMILIES["colour"].index("blue")
    assert codes.shape == (2, 8, 8)
    assert (codes[0] == red).sum() >= 4 and set(np.unique(codes[0])) == {-1, red}
    assert (codes[0][:, :4] == red).sum() > (codes[0][:, 4:] == red).sum()  # the object is on the left
    assert {red, blue} <= set(np.unique(codes[1])) and (codes[1][:, :4] == blue).sum() > (codes[1][:, 4:] == blue).sum()
    bg = family_codes([LEFT_RED], "background", 8)[0]
    assert set(np.unique(bg)) == {-1, FAMILIES["background"].index("pink")}
    assert ((bg >= 0) & (codes[0] >= 0)).sum() == 0  # a cell is object or background, never both
    assert (family_codes([LEFT_RED], "style", 8) == FAMILIES["style"].index("grainy")).all()


def test_mean_difference_recovers_a_planted_offset():
    """Updates = noise + a known vector on the value's cells: the mean difference finds the vector."""
    gen = torch.Generator().manual_seed(0)
    codes = family_codes([LEFT_RED, TWO] * 8, "colour", 8)  # [16, 8, 8]
    red = FAMILIES["colour"].index("red")
    v = torch.zeros(32)
    v[3], v[7] = 4.0, -3.0
    updates = 0.1 * torch.randn(1, 16, 8, 8, 32, generator=gen) + 2.0  # [steps, N, H, W, C]
    updates[0][torch.as_tensor(codes == red)] += v
    delta, n_pos, n_neg = mean_difference(updates, codes, red)
    assert torch.allclose(delta, v, atol=0.05)
    assert n_pos == int((codes == red).sum()) and n_neg == int(((codes >= 0) & (codes != red)).sum())
    gt = ground_truth(updates, [LEFT_RED, TWO] * 8, "up.0.1", "colour=red", 8)
    assert gt.scale == pytest.approx(5.0, abs=0.05) and float(gt.direction.norm()) == pytest.approx(1.0)
    with pytest.raises(ReproError):
        ground_truth(updates, [LEFT_RED, TWO] * 8, "up.0.1", "colour=green", 8)  # no green cell
    with pytest.raises(ReproError):
        parse_label("colour=teal")


def test_a_planted_feature_paints_s_times_the_difference():
    sae = carrier_sae(32, seed=3)
    delta = torch.zeros(32)
    delta[5] = 2.0
    delta[9] = -1.0
    planted = with_planted(sae, delta, float(delta.norm()))
    f = planted_feature(planted)
    assert f == 2 and planted.cfg.n_features == 3 and isinstance(planted, type(sae))
    assert torch.equal(planted.W_dec[:, :2], sae.W_dec) and torch.equal(planted.W_enc[:2], sae.W_enc)
    added = painting_edit(planted, f, 3.0).apply(torch.zeros(1, 32, 4, 4), 0, "all")  # [1, C, H, W]
    assert torch.allclose(added[0, :, 2, 1], 3.0 * delta, atol=1e-5)
    with pytest.raises(ReproError):
        with_planted(sae, torch.ones(31), 1.0)
    with pytest.raises(ReproError):
        planted_feature(sae)


def test_data_shaped_direction_follows_the_update_covariance():
    gen = torch.Generator().manual_seed(1)
    c = 64
    basis = torch.linalg.qr(torch.randn(c, c, generator=gen, dtype=torch.float64))[0]
    scales = torch.ones(c, dtype=torch.float64) * 0.01
    scales[:2] = torch.tensor([10.0, 5.0])  # the block writes in a 2-d subspace
    updates = (torch.randn(4000, c, generator=gen, dtype=torch.float64) * scales) @ basis.T
    cov = update_covariance(updates)
    assert torch.allclose(cov, basis @ torch.diag(scales**2) @ basis.T, atol=2.0)
    sae = with_planted(carrier_sae(c), torch.ones(c), 7.0)
    f = planted_feature(sae)
    shaped = [data_shaped_twin(sae, f, cov, seed=s).W_dec[:, f].detach().double() for s in range(20)]
    iso = [random_direction_twin(sae, f, seed=s).W_dec[:, f].detach().double() for s in range(20)]
    in_plane = lambda v: float((basis[:, :2].T @ v).norm() / v.norm())  # noqa: E731
    assert min(in_plane(v) for v in shaped) > 0.95 and max(in_plane(v) for v in iso) < 0.6
    assert all(float(v.norm()) == pytest.approx(1.0) for v in shaped)
    assert torch.equal(data_shaped_twin(sae, f, cov, seed=4).W_dec, data_shaped_twin(sae, f, cov, seed=4).W_dec)
    with pytest.raises(ReproError):
        data_shaped_twin(sae, f, cov[:10, :10])


def test_strength_grid_is_log_spaced_up_to_the_limit():
    g = strength_grid(40.0, 8, 16.0)
    assert len(g) == 8 and g[-1] == 40.0 and g[0] == 2.5
    ratios = np.diff(np.log(g))
    assert np.allclose(ratios, ratios[0], rtol=1e-3)


def test_detection_power_takes_each_direction_at_its_best_strength():
    rows = []
    for label, det in (("colour=red", [False, True]), ("colour=blue", [False, False]), ("shape=circle", [True, False])):
        for s, d in zip((1.0, 2.0), det):
            rows.append({"block": "up.0.1", "label": label, "family": label.split("=")[0], "kind": "planted",
                         "strength": s, "diff_vs_isotropic": 0.5 if d else 0.1, "p": 0.01 if d else 0.5, "detected": d})
    rows.append({"block": "up.0.1", "label": "colour=red", "family": "colour", "kind": "isotropic random",
                 "strength": 1.0, "diff_vs_isotropic": np.nan, "p": np.nan, "detected": False})
    power = detection_power(pd.DataFrame(rows)).set_index("family")
    assert (power.loc["colour", "detected"], power.loc["colour", "n"]) == (1, 2)
    assert power.loc["shape", "power"] == 1.0 and power.loc["colour", "lo"] < 0.5 < power.loc["colour", "hi"]
