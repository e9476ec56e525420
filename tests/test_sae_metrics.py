"""One EV and one firing rule for training, statistics and evaluation (issue 15, defects 1 and 8)."""

import pytest
import torch

from repro.evaluate.reconstruction import evaluate_reconstruction
from repro.features.analysis import analyse_features
from repro.sae.config import SAEConfig
from repro.sae.losses import reference_loss
from repro.sae.metrics import Moments, explained_variance, nmse
from repro.sae.model import TopKSAE
from repro.sae.stats import feature_stats


def _sae(d=8, n=32, k=4, seed=0):
    return TopKSAE(SAEConfig(d_model=d, n_features=n, k=k, k_aux=0), seed=seed)


def test_a_constant_residual_is_explained_but_costs_nmse():
    """x_hat = x + c: the paper's EV is 1 (Var(x - x_hat) = 0), NMSE is |c|^2 / Var(x)."""
    torch.manual_seed(0)
    x = torch.randn(500, 8)
    c = torch.full((8,), 0.5)
    assert float(explained_variance(x, x + c)) == pytest.approx(1.0, abs=1e-6)
    var = float(((x - x.mean(0)) ** 2).sum(1).mean())
    assert float(nmse(x, x + c)) == pytest.approx(8 * 0.25 / var, rel=1e-4)


def _shifted_identity(d=8, shift=0.5):
    """An SAE whose k = d latents copy any vector (+/- basis), with b_pre shifted by `shift`:
    x_hat = x + shift everywhere (the residual is a constant)."""
    sae = TopKSAE(SAEConfig(d_model=d, n_features=2 * d, k=d, k_aux=0), seed=0)
    with torch.no_grad():
        sae.W_enc.zero_(); sae.W_dec.zero_()
        sae.W_enc[:d] = torch.eye(d); sae.W_enc[d:] = -torch.eye(d)
        sae.W_dec[:, :d] = torch.eye(d); sae.W_dec[:, d:] = -torch.eye(d)
        sae.b_lat.fill_(-shift)
        sae.b_lat[d:] = shift
        sae.b_pre.fill_(shift)
    return sae


def test_evaluation_and_training_report_the_same_ev_on_a_shifted_residual():
    torch.manual_seed(1)
    x = torch.randn(6, 4, 4, 8) * 2
    sae = _shifted_identity()
    flat = x.reshape(-1, 8)
    x_hat = sae(flat).detach()
    resid = (flat - x_hat).mean(0)
    assert resid.abs().min() > 0.1  # the residual's mean is far from 0: the two formulas differ
    rec = evaluate_reconstruction(sae, x, batch_size=32)
    train_ev = float(reference_loss(sae, flat).ev)
    assert rec.ev == pytest.approx(float(explained_variance(flat, x_hat)), abs=1e-5)
    assert rec.ev == pytest.approx(train_ev, abs=1e-5)
    assert rec.nmse == pytest.approx(float(nmse(flat, x_hat)), rel=1e-4)
    assert rec.nmse > 1 - rec.ev + 0.05


def test_moments_stream_equals_the_whole():
    torch.manual_seed(2)
    v = torch.randn(10, 3, 3, 5, dtype=torch.float64) + 1.0
    m = Moments()
    for part in v.split(3):
        m.add(part)
    flat = v.reshape(-1, 5)
    assert m.total_squared_deviation() == pytest.approx(float(((flat - flat.mean(0)) ** 2).sum()), rel=1e-9)
    per_pos = ((v - v.mean(0)) ** 2).sum((0, 3))
    assert torch.allclose(m.squared_deviation().float(), per_pos.float(), rtol=1e-5)


def _weak_feature_sae():
    """Feature 0 sits on every token at 5e-4 (below the 1e-3 firing threshold), feature 1 at 1.0."""
    sae = _sae(d=4, n=8, k=2)
    with torch.no_grad():
        sae.W_enc.zero_(); sae.b_pre.zero_()
        sae.b_lat.fill_(-1.0)
        sae.b_lat[0] = 5e-4
        sae.b_lat[1] = 1.0
    return sae


def test_one_firing_rule_for_loss_stats_analysis_and_evaluation():
    sae = _weak_feature_sae()
    x = torch.randn(2, 4, 4, 4)
    flat = x.reshape(-1, 4)
    fired_in_training = reference_loss(sae, flat).fired
    assert fired_in_training.tolist()[:2] == [False, True]
    stats = feature_stats(sae, iter([{"b": flat}]), 1, block="b")
    assert stats.count[0] == 0 and stats.count[1] == 32 and float(stats.mean[1]) == pytest.approx(1.0)
    analysis = analyse_features(sae, [(torch.arange(2), x)], m=2)
    assert analysis.stats.count[0] == 0 and analysis.stats.count[1] == 32
    rec = evaluate_reconstruction(sae, x)
    assert rec.l0 == pytest.approx(1.0)  # only feature 1 fires
    assert rec.dead_fraction == pytest.approx(7 / 8)
    assert float(reference_loss(sae, flat).l0) == pytest.approx(rec.l0)


def test_ev_interval_resamples_images_and_holds_the_ev():
    torch.manual_seed(3)
    x = torch.randn(40, 4, 4, 8)
    sae = _sae(k=3)
    rec = evaluate_reconstruction(sae, x, n_boot=300)
    lo, hi = rec.ev_interval
    assert lo < rec.ev < hi and hi - lo < 0.5
    assert evaluate_reconstruction(sae, x, n_boot=0).ev_interval != rec.ev_interval  # nan without resamples
