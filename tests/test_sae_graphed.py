"""`GraphedStep`: a CUDA-graph replay of the SAE step gives the eager step's numbers.

The graph itself needs a GPU (the CUDA test runs on the device machine: `pytest
tests/test_sae_graphed.py`); on the CPU the wrapper must be the plain eager step.
"""

import pytest
import torch

from repro.errors import ReproError
from repro.sae.config import SAEConfig
from repro.sae.fused import fused_loss, slot_capacity
from repro.sae.graphed import DeadBound, GraphedStep, graph_capturable
from repro.sae.model import TopKSAE
from repro.sae.step import apply_update, make_optimizer, train_step

CFG = SAEConfig(d_model=32, n_features=128, k=4, k_aux=16)


def _batches(n: int, device, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(64, CFG.d_model, generator=gen).to(device) for _ in range(n)]


def _train(device, graphed: bool, impl: str = "reference", steps: int = 8, dead_every: int = 3):
    sae = TopKSAE(CFG, seed=1, device=device)
    opt = make_optimizer(sae, 1e-3, capturable=graphed)
    dead = (torch.arange(CFG.n_features, device=device) % dead_every == 0)  # AuxK on
    cdt = torch.float32
    step = (GraphedStep(sae, opt, impl=impl, compute_dtype=cdt, force_dead=dead, warmup=2) if graphed else
            (lambda x: train_step(sae, opt, x, impl=impl, compute_dtype=cdt, force_dead=dead)))
    losses = [step(x).loss.detach().clone() for x in _batches(steps, device)]
    return sae, torch.stack(losses), step


def test_on_the_cpu_it_is_the_eager_step():
    assert not graph_capturable("reference", torch.device("cpu"))
    sae_g, loss_g, step = _train("cpu", graphed=True)
    sae_e, loss_e, _ = _train("cpu", graphed=False)
    assert step.graph is None
    assert torch.equal(loss_g, loss_e)
    for a, b in zip(sae_g.state_dict().values(), sae_e.state_dict().values()):
        assert torch.equal(a, b)


def test_the_sparse_loss_is_never_captured():
    assert not graph_capturable("fast", torch.device("cuda"))
    assert graph_capturable("reference", torch.device("cuda"))


def test_a_non_capturable_adam_is_refused_on_cuda(monkeypatch):
    sae = TopKSAE(CFG, seed=1)
    monkeypatch.setattr("repro.sae.graphed.graph_capturable", lambda impl, device: True)
    with pytest.raises(ValueError, match="capturable=True"):
        GraphedStep(sae, make_optimizer(sae), impl="reference", compute_dtype=torch.float32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_replayed_steps_match_the_eager_steps_on_cuda():
    sae_g, loss_g, step = _train("cuda", graphed=True, steps=12)
    sae_e, loss_e, _ = _train("cuda", graphed=False, steps=12)
    assert step.graph is not None  # steps 3..12 were replays
    torch.testing.assert_close(loss_g, loss_e, rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(sae_g.state_dict().items(), sae_e.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_a_batch_of_another_shape_runs_eagerly_after_the_graph_on_cuda():
    sae, _, step = _train("cuda", graphed=True, steps=5)
    before = sae.W_dec.detach().clone()
    out = step(torch.randn(10, CFG.d_model, device="cuda"))
    assert out.x_hat.shape == (10, CFG.d_model) and not torch.equal(before, sae.W_dec)
    again = step(torch.randn(64, CFG.d_model, device="cuda"))  # back on the graph
    assert again is step.out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_fused_replays_with_dead_counters_match_the_eager_steps_as_the_slots_grow_on_cuda():
    cfg = SAEConfig(d_model=32, n_features=512, k=2, k_aux=16, dead_tokens_threshold=3 * 64)

    def train(graphed: bool):
        sae = TopKSAE(cfg, seed=1, device="cuda")
        opt = make_optimizer(sae, 1e-3, capturable=graphed)
        kw = dict(impl="fused", compute_dtype=torch.float32)
        step = GraphedStep(sae, opt, warmup=2, **kw) if graphed else (lambda x: train_step(sae, opt, x, **kw))
        losses, dead = [], None
        for x in _batches(30, "cuda"):  # a replay's outputs are rewritten by the next one: copy them now
            out = step(x)
            losses.append(out.loss.detach().clone())
            dead = out.dead.sum().clone()
        return sae, torch.stack(losses), dead, step

    sae_g, loss_g, dead_g, step = train(True)
    sae_e, loss_e, dead_e, _ = train(False)
    assert step.captures >= 2 and dead_g == dead_e > 64  # the slots grew with the dead latents: recaptured
    torch.testing.assert_close(loss_g, loss_e, rtol=1e-4, atol=1e-5)
    for (name, a), b in zip(sae_g.state_dict().items(), sae_e.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5, msg=name)


def test_auto_takes_the_fused_step_on_cuda_and_the_sparse_one_elsewhere():
    from repro.sae.step import auto_impl

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert auto_impl(cuda, 5120) == auto_impl(cuda, 81920) == "fused"
    assert auto_impl(cpu, 5120) == "fast"


def _train_with_counters(steps: int = 24, batch: int = 32):
    """Eager fused steps whose AuxK slots come from `DeadBound`, as `GraphedStep` takes them on a GPU.

    Yields (bound used, this step's LossOutput, whether the bound was LAG steps old)."""
    cfg = SAEConfig(d_model=16, n_features=256, k=2, k_aux=16, dead_tokens_threshold=3 * batch)
    sae = TopKSAE(cfg, seed=0)
    opt = make_optimizer(sae, 1e-3)
    bound = DeadBound(sae, batch)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        lagged = any(step == bound.steps - DeadBound.LAG for step, _, _ in bound.pending)
        n_dead = bound.next_bound()
        out = fused_loss(sae, torch.randn(batch, 16, generator=gen), aux_capacity=slot_capacity(n_dead, 256, 16))
        out.loss.backward()
        apply_update(sae, opt, out.fired, batch)
        bound.record(out.overflow)
        bound.sent()
        yield n_dead, out, lagged


def test_the_lagged_dead_bound_holds_at_every_step_of_training():
    rows = list(_train_with_counters())
    assert sum(lagged for _, _, lagged in rows) == len(rows) - 2  # all but the first two read a bound 2 steps old
    for n_dead, out, _ in rows:
        assert not out.overflow and int(out.dead.sum()) <= n_dead
    # the dead latents grew during the run: the bound was tested, not trivially 0
    assert int(rows[0][1].dead.sum()) == 0 and int(rows[-1][1].dead.sum()) > 50


def test_the_bound_needs_lag_times_b(monkeypatch):
    one_step = DeadBound.candidates
    monkeypatch.setattr(DeadBound, "candidates", lambda self, steps_ahead: one_step(self, 1))
    with pytest.raises(ReproError, match="more dead latents than AuxK's slots"):
        list(_train_with_counters())  # counting one step ahead, two steps late: too few slots, caught


def test_an_overflow_is_reported_two_steps_later():
    sae = TopKSAE(CFG, seed=1)
    bound = DeadBound(sae, 64)
    for flag in (True, False):
        bound.next_bound()
        bound.record(torch.tensor(flag))
        bound.sent()
    with pytest.raises(ReproError, match="step 0"):
        bound.next_bound()
