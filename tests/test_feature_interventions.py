"""SAE-feature edits change the update exactly as their formulas say."""

import pytest
import torch

from repro.features.interventions import (
    FeatureAdd, FeatureIcon, FeatureModulate, FeatureOff, SAEReconstruct, tokens_to_update, update_to_tokens,
)
from repro.generate import Sampling, generate
from repro.hooks import capture_updates, intervene
from repro.sae.config import SAEConfig
from repro.sae.model import TopKSAE
from repro.sae.stats import FeatureStats

BLOCK, PROMPTS, SEEDS = "down.2.1", ["a red circle", "a cat"], [0, 1]


@pytest.fixture(scope="module")
def sae():
    model = TopKSAE(SAEConfig(d_model=64, n_features=128, k=4, k_aux=8), seed=0)
    model.feature_stats = FeatureStats(mean=torch.linspace(0.5, 2.0, 128), std=torch.ones(128))
    return model


def _step0(pipe, edit=None, sampling=Sampling(), cfg=False):
    """The block's update at step 0 ([B, C, H, W]), with `edit` applied if given."""
    edits = {BLOCK: edit} if edit is not None else {}
    with intervene(pipe.unet, edits, cfg=cfg), capture_updates(pipe.unet, [BLOCK], cfg=cfg) as cap:
        generate(pipe, PROMPTS, SEEDS, sampling)
    return cap.updates(BLOCK, "all")[0]


def test_token_layout_round_trip():
    x = torch.randn(2, 64, 4, 4)
    assert update_to_tokens(x).shape == (2, 4, 4, 64)
    torch.testing.assert_close(tokens_to_update(update_to_tokens(x)), x)
    torch.testing.assert_close(update_to_tokens(x)[1, 2, 3], x[1, :, 2, 3])


def test_reconstruct_replaces_by_x_hat(tiny_pipe, sae):
    base = _step0(tiny_pipe)
    got = _step0(tiny_pipe, SAEReconstruct(sae=sae))
    expected = tokens_to_update(sae(update_to_tokens(base)))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(_step0(tiny_pipe, SAEReconstruct(sae=sae, keep_error=True)), base, atol=1e-5, rtol=1e-5)


def test_icon_is_mean_times_k_times_direction(tiny_pipe, sae):
    got = _step0(tiny_pipe, FeatureIcon(sae=sae, features=7, strength=1.5))
    direction = 1.5 * sae.feature_stats.mean[7] * sae.cfg.k * sae.W_dec[:, 7]
    torch.testing.assert_close(got, direction[None, :, None, None].expand_as(got), atol=1e-5, rtol=1e-5)


def test_paint_adds_inside_mask_only(tiny_pipe, sae):
    base = _step0(tiny_pipe)
    mask = torch.zeros(4, 4)
    mask[:2, :2] = 1
    got = _step0(tiny_pipe, FeatureAdd(sae=sae, features=[3, 9], strength=[2.0, -1.0], mask=mask))
    direction = 2.0 * sae.W_dec[:, 3] - sae.W_dec[:, 9]
    expected = base + mask[None, None] * direction[None, :, None, None]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_modulate_and_off_use_the_features_own_activations(tiny_pipe, sae):
    base = _step0(tiny_pipe)
    z = sae.encode(update_to_tokens(base))  # [B, H, W, n]
    f = int(z.ne(0).sum((0, 1, 2)).argmax())  # a feature that fires somewhere
    contribution = tokens_to_update(z[..., [f]] @ sae.W_dec[:, [f]].T)
    assert contribution.abs().max() > 0
    torch.testing.assert_close(_step0(tiny_pipe, FeatureModulate(sae=sae, features=f, factor=5.0)),
                               base + 5.0 * contribution, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(_step0(tiny_pipe, FeatureOff(sae=sae, features=f)), base - contribution,
                               atol=1e-4, rtol=1e-4)


def test_guidance_rule_for_feature_add(tiny_pipe, sae):
    sampling = Sampling(steps=1, guidance=4.0)
    base = _step0(tiny_pipe, sampling=sampling, cfg=True)
    got = _step0(tiny_pipe, FeatureAdd(sae=sae, features=5, strength=3.0), sampling=sampling, cfg=True)
    d = 3.0 * sae.W_dec[:, 5][None, :, None, None]
    uncond, cond = (got - base).chunk(2)
    torch.testing.assert_close(cond, d.expand_as(cond), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(uncond, -d.expand_as(uncond), atol=1e-5, rtol=1e-5)
