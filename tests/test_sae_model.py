"""TopK SAE model: config checks, init, encode/decode maths, decoder constraints, geometric median."""

import pytest
import torch

from repro.errors import ReproError
from repro.sae import SAEConfig, TopKSAE, geometric_median, make_optimizer, train_step
from repro.sae.geometric_median import objective

CFG = SAEConfig(d_model=16, n_features=64, k=4, k_aux=8, dead_tokens_threshold=64)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_config_defaults_are_the_papers():
    c = SAEConfig()
    assert (c.d_model, c.n_features, c.k, c.k_aux, c.auxk_coef) == (1280, 5120, 10, 256, 1 / 32)
    assert c.dead_tokens_threshold // 4096 == 2441


@pytest.mark.parametrize(
    "kwargs, word",
    [({"k": 64}, "k=64"), ({"k_aux": 65}, "k_aux"), ({"d_model": 0}, "d_model"), ({"auxk_coef": -1}, "auxk_coef")],
)
def test_config_rejects_bad_values(kwargs, word):
    with pytest.raises(ReproError, match=word):
        SAEConfig(**{**CFG.to_dict(), **kwargs})


def test_config_from_dict_ignores_unknown_keys():
    assert SAEConfig.from_dict({**CFG.to_dict(), "future_field": 1}) == CFG


def test_init_tied_unit_norm_zero_bias():
    sae = TopKSAE(CFG, seed=3)
    assert sae.W_enc.shape == (64, 16) and sae.W_dec.shape == (16, 64)
    assert sae.b_lat.shape == (64,) and sae.b_pre.shape == (16,)
    torch.testing.assert_close(sae.W_dec.norm(dim=0), torch.ones(64))
    torch.testing.assert_close(sae.W_enc, sae.W_dec.T)
    assert not sae.b_lat.any()
    assert not torch.equal(TopKSAE(CFG, seed=4).W_dec, sae.W_dec)
    torch.testing.assert_close(TopKSAE(CFG, seed=3).W_dec, sae.W_dec, rtol=0, atol=0)


def test_encode_decode_match_the_formula():
    sae = TopKSAE(CFG, seed=0)
    with torch.no_grad():
        sae.b_pre.normal_()
        sae.b_lat.normal_()
    x = torch.randn(5, 7, 16)  # any leading dims
    z = sae.encode(x)
    assert z.shape == (5, 7, 64)
    pre = (x - sae.b_pre) @ sae.W_enc.T + sae.b_lat
    kth = pre.topk(4, dim=-1).values[..., -1:]
    expected = torch.where(pre >= kth, pre.clamp_min(0), torch.zeros(()))
    torch.testing.assert_close(z, expected)
    assert ((z > 0).sum(-1) <= 4).all()
    x_hat = sae(x)
    torch.testing.assert_close(x_hat, z @ sae.W_dec.T + sae.b_pre)
    torch.testing.assert_close(sae.decode(z), x_hat)
    vals, idx = sae.encode_topk(x)
    torch.testing.assert_close(sae.decode_sparse(vals, idx), x_hat)


def test_width_mismatch_is_a_clear_error():
    with pytest.raises(ReproError, match="d_model=16"):
        TopKSAE(CFG).encode(torch.randn(3, 15))


def test_parallel_gradient_is_removed():
    sae = TopKSAE(CFG, seed=0)
    sae.W_dec.grad = torch.randn_like(sae.W_dec)
    sae.remove_parallel_grad_()
    dots = (sae.W_dec.grad * sae.W_dec).sum(0)
    torch.testing.assert_close(dots, torch.zeros(64), atol=1e-6, rtol=0)


def test_decoder_stays_unit_norm_and_counters_move():
    sae = TopKSAE(CFG, seed=0)
    opt = make_optimizer(sae, lr=1e-2)
    for _ in range(5):
        out = train_step(sae, opt, torch.randn(32, 16) * 3 + 1, impl="fast")
        torch.testing.assert_close(sae.W_dec.norm(dim=0), torch.ones(64))
    assert out.fired.any()
    assert (sae.tokens_since_fired[out.fired] == 0).all()
    assert (sae.tokens_since_fired[~out.fired] >= 32).all()


def test_geometric_median_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    pts = torch.cat([torch.randn(40, 2, generator=gen), torch.randn(10, 2, generator=gen) * 0.1 + 8])  # outliers
    y = geometric_median(pts)
    grid = torch.stack(torch.meshgrid(torch.linspace(-3, 3, 601), torch.linspace(-3, 3, 601), indexing="ij"), -1)
    grid = grid.reshape(-1, 2).double()
    obj = (pts.double()[None] - grid[:, None]).norm(dim=-1).sum(1)
    best = grid[obj.argmin()]
    assert (y.double() - best).norm() < 0.02  # grid step 0.01
    assert objective(pts, y) <= obj.min() + 1e-6
    assert (y - pts.mean(0)).norm() > 0.5  # unlike the mean, not dragged to the outliers
    # A local check in higher dimension: no nearby point does better.
    x = torch.randn(500, 8, generator=gen)
    m = geometric_median(x)
    for _ in range(20):
        assert objective(x, m) <= objective(x, m + 1e-3 * torch.randn(8, generator=gen)) + 1e-9
