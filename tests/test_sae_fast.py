"""The sparse fast path gives the dense reference's numbers: outputs, loss, gradients, trained weights."""

import copy

import pytest
import torch

from repro.sae import SAEConfig, TopKSAE, fast_loss, make_optimizer, reference_loss, train_step

CFG = SAEConfig(d_model=16, n_features=64, k=4, k_aux=8, dead_tokens_threshold=64)
PARAMS = ("W_enc", "b_lat", "W_dec", "b_pre")


pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(cfg=CFG, seed=0):
    a = TopKSAE(cfg, seed=seed)
    with torch.no_grad():  # non-trivial biases so that every term is exercised
        a.b_pre.normal_(generator=torch.Generator().manual_seed(1))
        a.b_lat.normal_(0, 0.3, generator=torch.Generator().manual_seed(2))
    return a, copy.deepcopy(a)


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
    cfg = SAEConfig(d_model=16, n_features=64, k=4, k_aux=8, dead_tokens_threshold=3 * 32)
    ref, fast = _pair(cfg)
    o_ref, o_fast = make_optimizer(ref, lr=1e-3), make_optimizer(fast, lr=1e-3)
    gen = torch.Generator().manual_seed(7)
    aux_steps = 0
    for _ in range(25):
        x = torch.randn(32, 16, generator=gen) + 1
        r = train_step(ref, o_ref, x, impl="reference")
        f = train_step(fast, o_fast, x, impl="fast")
        torch.testing.assert_close(f.loss, r.loss)
        aux_steps += int(r.auxk > 0)
    assert aux_steps > 0  # AuxK was active during some of the steps
    for name in PARAMS:
        torch.testing.assert_close(getattr(fast, name), getattr(ref, name), rtol=1e-4, atol=1e-5, msg=name)
    torch.testing.assert_close(fast.tokens_since_fired, ref.tokens_since_fired)


def test_bfloat16_compute_is_close():
    ref, fast = _pair()
    x = torch.randn(48, 16) * 2
    dead = torch.rand(64) < 0.3
    r = reference_loss(ref, x, compute_dtype=torch.bfloat16, force_dead=dead)
    f = fast_loss(fast, x, compute_dtype=torch.bfloat16, force_dead=dead)
    assert r.loss.dtype == f.loss.dtype == torch.float32
    torch.testing.assert_close(f.loss, r.loss, rtol=2e-2, atol=2e-2)
    r.loss.backward()
    f.loss.backward()
    for name in PARAMS:
        assert getattr(fast, name).grad.dtype == torch.float32
        torch.testing.assert_close(getattr(fast, name).grad, getattr(ref, name).grad, rtol=0.1, atol=0.05, msg=name)
