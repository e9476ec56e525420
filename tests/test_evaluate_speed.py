"""Issue 17: 04's transfer cell computes the same numbers as before, faster.

The old code of each changed function is kept here as the reference: per-image sums that
went to the host in float64 before being summed, one encoding of x per SAE, a Python loop of
bootstrap resamples, the codes of every step encoded twice for the overlap."""

import numpy as np
import pytest
import torch

from repro.evaluate.reconstruction import (ImageSums, code_cosines, draw_weights, evaluate_reconstruction, image_sums,
                                           image_sums_of, percentile_interval)
from repro.evaluate.transfer import StepStream, share_of_ceiling
from repro.intervals import bootstrap
from repro.sae.config import SAEConfig
from repro.sae.model import TopKSAE


@torch.no_grad()
def _old_image_sums(sae, updates, batch_size=8192):
    x = updates.reshape(-1, *updates.shape[-3:]).float()
    n, h, w, c = x.shape
    parts = {"x1": [], "x2": [], "e1": [], "e2": []}
    per_batch = max(1, batch_size // (h * w))
    for start in range(0, n, per_batch):
        chunk = x[start : start + per_batch].to(device=sae.device, dtype=sae.dtype)
        x_hat = sae.decode_sparse(*sae.encode_topk(chunk)).float()
        for key, v in (("x", chunk.float()), ("e", chunk.float() - x_hat)):
            v = v.double().cpu()
            parts[key + "1"].append(v.sum((1, 2)))
            parts[key + "2"].append(v.pow(2).sum((1, 2, 3)))
    return ImageSums(**{k: torch.cat(v) for k, v in parts.items()}, positions=h * w)


def _old_share(transfer, control, n_boot, seed=0):
    def mean_ev(sums, idx=None):
        return float(np.mean([s.ev(idx) for s in sums]))

    n = len(transfer[0].x2)
    return bootstrap(np.arange(n), lambda idx: mean_ev(transfer, idx) / mean_ev(control, idx), n_boot=n_boot, seed=seed)


def _saes(d, n=3, seed=0):
    return {f"s{i}": TopKSAE(SAEConfig(d_model=d, n_features=4 * d, k=4, k_aux=8), seed=seed + i) for i in range(n)}


def _updates(steps, n, h, w, c, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(steps, n, h, w, c, generator=g) * 0.5 + torch.randn(c, generator=g)  # a mean, as updates have


def test_image_sums_of_several_saes_equal_the_old_sums_of_each():
    saes = _saes(16)
    u = _updates(1, 7, 3, 5, 16)[0]
    got = image_sums_of(saes, u, batch_size=40)  # chunks of 2 images, the last one short
    for name, sae in saes.items():
        ref = _old_image_sums(sae, u, batch_size=40)
        for key in ("x1", "x2", "e1", "e2"):
            assert torch.equal(getattr(got[name], key), getattr(ref, key))
            assert torch.equal(getattr(image_sums(sae, u, batch_size=40), key), getattr(ref, key))
        assert got[name].positions == ref.positions


def test_draw_weights_count_the_draws_of_the_plain_bootstrap():
    seen = []
    bootstrap(np.arange(9), lambda idx: seen.append(np.bincount(idx, minlength=9)) or 0.0, n_boot=50, seed=3)
    assert torch.equal(draw_weights(9, 50, seed=3), torch.as_tensor(np.stack(seen), dtype=torch.float64))


def test_vectorised_bootstrap_equals_the_loop_of_resamples():
    saes = _saes(16, n=2)
    u = _updates(3, 11, 4, 4, 16, seed=1)
    sums = {name: [image_sums(sae, u[t]) for t in range(3)] for name, sae in saes.items()}
    w = draw_weights(11, 200, seed=5)
    idx = [np.repeat(np.arange(11), w[i].long().numpy()) for i in range(200)]
    for s in sums["s0"]:
        assert s.ev_draws(w) == pytest.approx([s.ev(i) for i in idx], rel=1e-12, abs=1e-12)
    got = share_of_ceiling(sums["s0"], sums["s1"], n_boot=200, seed=5)
    lo, hi = _old_share(sums["s0"], sums["s1"], n_boot=200, seed=5)
    assert (got["lo"], got["hi"]) == pytest.approx((lo, hi), rel=1e-12, abs=1e-12)


def test_reconstruction_interval_equals_the_old_bootstrap():
    sae = _saes(16, n=1)["s0"]
    u = _updates(1, 10, 3, 3, 16, seed=2)[0]
    r = evaluate_reconstruction(sae, u, n_boot=300)
    ref = bootstrap(np.arange(10), _old_image_sums(sae, u).ev, n_boot=300)
    assert r.ev_interval == pytest.approx(ref, rel=1e-12, abs=1e-12)


def test_step_stream_equals_the_old_one_exactly():
    """The old `StepStream.add`: each SAE's `step_sums` alone, every pair of steps encoded anew."""
    saes = _saes(16)
    batches = [_updates(4, 3, 3, 3, 16, seed=s) for s in (3, 4)]
    st = StepStream(saes, overlap_of="s1")
    old_sums, old_cos, rows = {name: [] for name in saes}, [], 0
    for u in batches:
        st.add(u)
        for name, sae in saes.items():
            old_sums[name].append([_old_image_sums(sae, u[t]) for t in range(u.shape[0])])
        cos = [float(code_cosines(saes["s1"], u[t], u[t + 1]).double().sum()) for t in range(u.shape[0] - 1)]
        old_cos = [a + b for a, b in zip(old_cos, cos)] if old_cos else cos
        rows += u[0].numel() // u.shape[-1]
    assert st.overlap() == [c / rows for c in old_cos]
    for name in saes:
        for t, s in enumerate(st.step_sums(name)):
            for key in ("x1", "x2", "e1", "e2"):
                assert torch.equal(getattr(s, key), torch.cat([getattr(b[t], key) for b in old_sums[name]]))
