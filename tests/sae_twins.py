"""Shared checks for the SAE loss twins (`fast`, `fused`) against the dense `reference_loss`."""

from __future__ import annotations

import copy

import torch

from repro.sae import SAEConfig, TopKSAE, make_optimizer, reference_loss, train_step

CFG = SAEConfig(d_model=16, n_features=64, k=4, k_aux=8, dead_tokens_threshold=64)
PARAMS = ("W_enc", "b_lat", "W_dec", "b_pre")


def pair(cfg=CFG, seed=0, dtype=torch.float32, b_lat_mean=0.0):
    """Two identical SAEs with non-trivial biases, so that every term of the loss is exercised."""
    a = TopKSAE(cfg, seed=seed, dtype=dtype)
    with torch.no_grad():
        a.b_pre.normal_(generator=torch.Generator().manual_seed(1))
        a.b_lat.normal_(b_lat_mean, 0.3, generator=torch.Generator().manual_seed(2))
    return a, copy.deepcopy(a)


def assert_trains_like_reference(impl: str, loss_kw: dict | None = None) -> None:
    """25 Adam steps of `impl` (with `loss_kw`) give the reference's losses, weights and dead-latent counters."""
    cfg = SAEConfig(d_model=16, n_features=64, k=4, k_aux=8, dead_tokens_threshold=3 * 32)
    ref, twin = pair(cfg)
    o_ref, o_twin = make_optimizer(ref, lr=1e-3), make_optimizer(twin, lr=1e-3)
    gen = torch.Generator().manual_seed(7)
    aux_steps = 0
    for _ in range(25):
        x = torch.randn(32, 16, generator=gen) + 1
        r = train_step(ref, o_ref, x, impl="reference")
        f = train_step(twin, o_twin, x, impl=impl, loss_kw=loss_kw)
        torch.testing.assert_close(f.loss, r.loss)
        aux_steps += int(r.auxk > 0)
    assert aux_steps > 0  # AuxK was active during some of the steps
    for name in PARAMS:
        torch.testing.assert_close(getattr(twin, name), getattr(ref, name), rtol=1e-4, atol=1e-5, msg=name)
    torch.testing.assert_close(twin.tokens_since_fired, ref.tokens_since_fired)


def assert_bfloat16_close(loss, ref, twin, x, dead, same_idx: bool = False) -> None:
    """Under bf16 compute `loss(twin, ...)` stays close to the reference; losses and gradients float32."""
    r = reference_loss(ref, x, compute_dtype=torch.bfloat16, force_dead=dead)
    f = loss(twin, x, compute_dtype=torch.bfloat16, force_dead=dead)
    assert r.loss.dtype == f.loss.dtype == torch.float32
    if same_idx:
        torch.testing.assert_close(f.idx, r.idx)
    torch.testing.assert_close(f.loss, r.loss, rtol=2e-2, atol=2e-2)
    r.loss.backward()
    f.loss.backward()
    for name in PARAMS:
        assert getattr(twin, name).grad.dtype == torch.float32
        torch.testing.assert_close(getattr(twin, name).grad, getattr(ref, name).grad, rtol=0.1, atol=0.05, msg=name)
