"""Feature transport: joint scores, selection, the edits' exact formulas, and the neuron hooks."""

import numpy as np
import pytest
import torch

from repro.features.interventions import tokens_to_update, update_to_tokens
from repro.generate import Sampling, generate
from repro.hooks import capture_updates, intervene
from repro.riebench.data import RIEEdit
from repro.riebench.methods import reference_pass, steer_plan, transport_plan
from repro.riebench.neurons import NeuronTransport, capture_neurons, edit_neurons, ff_modules, ff_width
from repro.riebench.transport import (
    FeatureTransport, StepAdd, joint_scores, mask_mean, normalise, select, selection_weights,
)
from repro.sae.config import SAEConfig
from repro.sae.model import TopKSAE

BLOCKS = ["down.2.1", "mid.0", "up.0.0", "up.0.1"]
SAMPLING = Sampling(steps=4)


@pytest.fixture(scope="module")
def saes():
    return {b: TopKSAE(SAEConfig(d_model=64, n_features=128, k=8, k_aux=8), seed=i) for i, b in enumerate(BLOCKS)}


@pytest.fixture(scope="module")
def edit():
    src = np.zeros((64, 64), bool)
    src[0:32, 0:32] = True
    tgt = np.zeros((64, 64), bool)
    tgt[16:64, 16:48] = True
    return RIEEdit("e", "change_colour", "a red circle", "a blue circle", source_mask=src, target_mask=tgt, seed=3)


@pytest.fixture(scope="module")
def ref(tiny_pipe, edit):
    reference, _ = reference_pass(tiny_pipe, edit, BLOCKS, SAMPLING, with_neurons=True)
    return reference


def test_normalisation_sums_to_one_and_scores_match_brute_force(ref, saes):
    src_means, tgt_means = {}, {}
    for b in BLOCKS:  # brute force: loop over positions
        out = []
        for i in (0, 1):
            z = saes[b].encode(update_to_tokens(ref.updates[b]["all"][0, i : i + 1]))[0]  # [h, w, n]
            mask = ref.masks[b][i]
            out.append(torch.stack([z[y, x] for y in range(4) for x in range(4) if mask[y, x]]).mean(0))
        src_means[b], tgt_means[b] = out
    scores = joint_scores(src_means, tgt_means)
    assert scores.p_src.shape == (4 * 128,)
    torch.testing.assert_close(scores.p_src.sum(), torch.tensor(1.0))
    torch.testing.assert_close(scores.p_tgt.sum(), torch.tensor(1.0))
    a_src = torch.cat([src_means[b] for b in BLOCKS])
    a_tgt = torch.cat([tgt_means[b] for b in BLOCKS])
    torch.testing.assert_close(scores.scores, a_src / a_src.sum() - a_tgt / a_tgt.sum())
    codes = saes["mid.0"].encode(update_to_tokens(ref.updates["mid.0"]["all"][0, :1]))[0]
    torch.testing.assert_close(mask_mean(codes.flatten(0, 1), ref.masks["mid.0"][0]), src_means["mid.0"])


def test_selection_is_top_and_bottom_k():
    scores = torch.tensor([0.3, -0.1, 0.0, 0.5, -0.4, 0.2, 0.0, -0.2])
    top, bottom = select(scores, 2)
    assert set(top.tolist()) == {3, 0} and set(bottom.tolist()) == {4, 7}
    top, bottom = select(scores, 4, strict_sign=True)
    assert set(top.tolist()) == {3, 0, 5} and set(bottom.tolist()) == {4, 7, 1}
    js = joint_scores({"a": torch.tensor([1.0, 0, 3, 0]), "b": torch.tensor([0.0, 4, 0, 2])},
                      {"a": torch.tensor([0.0, 2, 0, 0]), "b": torch.tensor([5.0, 0, 0, 3])})
    add, sub, counts = selection_weights(js, 2, [1.0, 2.0])
    brute = sorted(range(8), key=lambda i: -float(js.scores[i]))
    expected_top = set(brute[:2])
    got_top = {i for i, w in enumerate(torch.cat([add["a"][0], add["b"][0]]).tolist()) if w}
    assert got_top == expected_top
    assert add["a"].shape == (2, 4) and torch.equal(add["a"][1], 2 * add["a"][0])
    assert sum(c["top"] for c in counts.values()) == 2 and sum(c["bottom"] for c in counts.values()) == 2
    assert torch.isclose(normalise(torch.tensor([1.0, 3.0])).sum(), torch.tensor(1.0))


def _update_at(pipe, edits, block, step, prompt="a red circle", seed=3):
    with intervene(pipe.unet, edits), capture_updates(pipe.unet, [block]) as cap:
        generate(pipe, [prompt], [seed], SAMPLING)
    return cap.updates(block)[step]  # [1, C, h, w]


@pytest.mark.parametrize("step", [0, 2])
def test_transport_edit_adds_exactly_m_z_src_w_dec_inside_the_mask(tiny_pipe, ref, saes, step):
    block, sae, m = "up.0.0", saes["up.0.0"], 2.0
    src_codes = {"all": sae.encode(update_to_tokens(ref.updates[block]["all"][:, 0]))}  # [S, h, w, n]
    weights = torch.zeros(1, 128)
    feats = [3, 17, 40]
    weights[0, feats] = m
    mask = ref.masks[block][0]
    edit = FeatureTransport(codes=src_codes, weights=weights, W_dec=sae.W_dec.detach(), mask=mask, steps=[step])
    base = ref.updates[block]["all"][step, 1:2]  # the target's own update at that step (edit acts only there)
    got = _update_at(tiny_pipe, {block: edit}, block, step)
    z = src_codes["all"][step][..., feats]  # [h, w, 3]
    formula = tokens_to_update((m * z @ sae.W_dec[:, feats].T)[None])  # [1, C, h, w]
    torch.testing.assert_close(got, base + mask[None, None] * formula, atol=1e-4, rtol=1e-4)


def test_steer_and_subtract_formulas(tiny_pipe, ref):
    block, step = "mid.0", 1
    src = {"all": ref.updates[block]["all"][:, 0]}
    tgt = {"all": ref.updates[block]["all"][:, 1]}
    mask_s, mask_t = ref.masks[block]
    edits = [StepAdd(value=src, scale=torch.tensor([0.5]), mask=mask_s, steps=[step]),
             StepAdd(value=tgt, scale=torch.tensor([0.5]), sign=-1.0, mask=mask_t, steps=[step])]
    got = _update_at(tiny_pipe, {block: edits}, block, step)
    base = tgt["all"][step][None]
    expected = base + 0.5 * mask_s * src["all"][step][None] - 0.5 * mask_t * tgt["all"][step][None]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_per_block_runs_select_only_their_block(ref, saes):
    plan = transport_plan(ref, saes, BLOCKS, [4, 8], [1.0, 2.0], per_block=True)
    assert len(plan.settings) == len(BLOCKS) * 4
    for i, s in enumerate(plan.settings):
        assert s.method == "per_block" and len(s.blocks) == 1
        assert set(s.n_top) == {s.blocks[0]} and s.n_top[s.blocks[0]] == s.k == s.n_bottom[s.blocks[0]]
        assert set(plan.block_edits(slice(i, i + 1))) == {s.blocks[0]}
    joint = transport_plan(ref, saes, BLOCKS, [8], [1.0])
    s = joint.settings[0]
    assert s.method == "transport" and sum(s.n_top.values()) == 8 and sum(s.n_bottom.values()) == 8
    assert set(s.n_top) == set(BLOCKS)
    assert len(steer_plan(ref, BLOCKS, [0.5, 1.0]).block_edits(slice(0, 2))) == len(BLOCKS)


def test_neuron_hooks_capture_geglu_outputs_and_clean_up(tiny_pipe, ref):
    widths = [ff_width(mod) for mod in ff_modules(tiny_pipe.unet, BLOCKS).values()]
    assert widths == [256] * (4 * 2)
    key = ("down.2.1", 0)
    acts = ref.neurons[key]["all"]
    assert acts.shape == (4, 2, 16, 256)  # [steps, B, HW, inner]
    modules = ff_modules(tiny_pipe.unet, BLOCKS)
    with pytest.raises(RuntimeError, match="boom"):
        with capture_neurons(tiny_pipe.unet, BLOCKS), edit_neurons(tiny_pipe.unet, {key: NeuronTransport(
                acts={"all": acts[:, 0]}, weights=torch.ones(1, 256))}):
            raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in modules.values())
    assert not tiny_pipe.unet._forward_pre_hooks


def test_neuron_transport_adds_its_formula(tiny_pipe, ref):
    key = ("down.2.1", 0)  # the first neuron layer of the first hooked block: its step-0 input is unedited
    src = {"all": ref.neurons[key]["all"][:, 0]}
    weights = torch.zeros(1, 256)
    weights[0, [1, 5, 200]] = 1.5
    mask = ref.masks["down.2.1"][0]
    with edit_neurons(tiny_pipe.unet, {key: NeuronTransport(acts=src, weights=weights, mask=mask)}), \
            capture_neurons(tiny_pipe.unet, ["down.2.1"], steps=[0]) as cap:
        generate(tiny_pipe, ["a red circle"], [3], SAMPLING)
    got = cap.acts(key)[0]  # [1, HW, inner]
    base = ref.neurons[key]["all"][0, 1:2]
    expected = base + mask.flatten()[None, :, None] * src["all"][0][None] * weights[:, None, :]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
