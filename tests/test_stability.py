import pytest
import torch

from repro.sae import SAEConfig, TopKSAE
from repro.sae.stability import match_features


def _sae(seed, d=32, n=64):
    return TopKSAE(SAEConfig(d_model=d, n_features=n, k=4, k_aux=0), seed=seed)


def test_a_permuted_copy_matches_fully_and_random_dictionaries_do_not():
    a = _sae(0)
    b = _sae(1)
    with torch.no_grad():
        b.W_dec.copy_(a.W_dec[:, torch.randperm(64)])
        b.W_dec[:, :16] = _sae(2).W_dec[:, :16]  # 16 of b's features are new
    st = match_features(a, b)
    assert st.matched_b == 48 and st.n_b == 64
    assert st.matched_a == 48 and st.median_best_cosine == pytest.approx(1.0, abs=1e-6)
    rand = match_features(_sae(3), _sae(4))
    assert rand.matched_a == 0 and rand.matched_b == 0 and rand.share == 0.0


def test_live_masks_restrict_the_counts():
    a = _sae(0)
    live = torch.zeros(64, dtype=torch.bool)
    live[:10] = True
    st = match_features(a, a, live_a=live, live_b=live)
    assert (st.matched_a, st.n_a, st.matched_b, st.n_b) == (10, 10, 10, 10) and st.share == 1.0


def test_fired_on_marks_exactly_the_features_that_fire():
    sae = _sae(0, d=8, n=16)
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.b_lat.fill_(-1.0)
        sae.b_lat[[2, 5]] = 1.0
        sae.b_lat[7] = 5e-4  # selected by TopK but below the firing threshold
    from repro.sae.stability import fired_on

    assert fired_on(sae, torch.randn(3, 4, 8)).nonzero().flatten().tolist() == [2, 5]


def test_init_cosine_is_one_untrained_and_falls_as_the_decoder_moves():
    from repro.sae.sets import build_block_saes
    from repro.sae.stability import init_cosine

    class Store:
        blocks = ["mid.0", "up.0.1"]

        def block_shape(self, block):
            return (2, 2, 64)

        def block_name(self, block):
            return block

    sae = build_block_saes(Store(), k=4, expansion=4, dead_tokens=10, seed=3)["up.0.1"]
    assert sae.metadata["init_seed"] == 4 and init_cosine(sae) == pytest.approx(1.0)
    with torch.no_grad():
        sae.W_dec.copy_(_sae(9, d=64, n=256).W_dec)
    assert init_cosine(sae) < 0.3
    assert init_cosine(_sae(0)) is None  # built without the builder: no recorded start


def test_convergence_needs_a_flat_ev_and_directions_that_left_their_init():
    import pandas as pd
    import torch

    from repro.sae.config import SAEConfig
    from repro.sae.model import TopKSAE
    from repro.sae.stability import convergence

    cfg = SAEConfig(d_model=16, n_features=32, k=4, k_aux=8)
    fresh = TopKSAE(cfg, seed=3); fresh.metadata["init_seed"] = 3
    moved = TopKSAE(cfg, seed=3); moved.metadata["init_seed"] = 3
    with torch.no_grad():
        moved.W_dec.copy_(TopKSAE(cfg, seed=99).W_dec)  # unrelated directions: median cosine ~0
    log = pd.DataFrame([{"block": b, "step": s, "ev": ev} for b in ("a", "b")
                        for s, ev in ((100, 0.5), (200, 0.80), (300, 0.85), (400, 0.805))])
    conv = convergence(log, {"a": fresh, "b": moved})
    assert conv.loc["a", "EV gain over the last doubling"] == pytest.approx(0.005)
    assert conv.loc["a", "median cosine to init"] == pytest.approx(1.0)
    assert not conv.loc["a", "converged"] and conv.loc["b", "converged"]
    rising = log.assign(ev=[0.5, 0.6, 0.7, 0.9] * 2)
    assert not convergence(rising, {"a": fresh, "b": moved}).loc["b", "converged"]  # still improving
