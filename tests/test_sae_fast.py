"""The sparse fast path gives the dense reference's numbers: outputs, loss, gradients, trained weights."""

import pytest
import torch

from repro.sae import SAEConfig, fast_loss, reference_loss
from sae_twins import PARAMS, assert_bfloat16_close, assert_trains_like_reference
from sae_twins import pair as _pair


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("dead_frac", [0.0, 0.3, 1.0])
def test_forward_loss_and_gradients_match(dead_frac):
    ref, fast = _pair()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(48, 16, generator=gen) * 2
    dead = torch.rand(64, generator=gen) < dead_frac
    r = reference_loss(ref, x, force_dead=dead)
    f = fast_loss(fast, x, force_dead=dead)
    if dead_frac:
        assert r.auxk > 0
    for name in ("loss", "nmse", "auxk", "ev", "l0", "x_hat", "vals", "idx", "fired", "dead"):
        torch.testing.assert_close(getattr(f, name), getattr(r, name), msg=name)
    r.loss.backward()
    f.loss.backward()
    for name in PARAMS:
        torch.testing.assert_close(getattr(fast, name).grad, getattr(ref, name).grad, msg=name)
        assert getattr(ref, name).grad.abs().sum() > 0


def test_natural_dead_latents_match():
    cfg = SAEConfig(d_model=16, n_features=64, k=2, k_aux=16, dead_tokens_threshold=0)  # dead unless fired now
    ref, fast = _pair(cfg)
    x = torch.randn(8, 16)
    r, f = reference_loss(ref, x), fast_loss(fast, x)
    assert r.dead.sum() > 32 and r.auxk > 0
    torch.testing.assert_close(f.loss, r.loss)
    torch.testing.assert_close(f.dead, r.dead)


def test_weights_match_after_training_steps():
    assert_trains_like_reference("fast")


def test_bfloat16_compute_is_close():
    ref, fast = _pair()
    x = torch.randn(48, 16) * 2
    dead = torch.rand(64) < 0.3
    assert_bfloat16_close(fast_loss, ref, fast, x, dead)