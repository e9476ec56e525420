"""SAE trainer: learning, AuxK, NaN handling, input checks, logs, checkpoints and bitwise resume."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from repro.errors import ReproError
from repro.sae import SAEConfig, TensorSource, TopKSAE, TrainConfig, feature_stats, load_sae, train_saes
from sparse_data import sparse_dictionary_data

PARAMS = ("W_enc", "b_lat", "W_dec", "b_pre")


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(**kw):
    base = dict(steps=40, lr=3e-3, log_every=5, checkpoint_every=0, progress=False, device="cpu")
    base["geometric_median_samples"] = 1024  # 4 batches of 256
    return TrainConfig(**{**base, **kw})


def _saes(n=64, k=4, seed=0, **kw):
    return {
        "a": TopKSAE(SAEConfig(d_model=16, n_features=n, k=k, k_aux=16, dead_tokens_threshold=640, **kw), seed=seed),
        "b": TopKSAE(SAEConfig(d_model=16, n_features=n, k=k, k_aux=16, dead_tokens_threshold=640, **kw), seed=seed + 1),
    }


def _data(rows=4096):
    x, _ = sparse_dictionary_data(rows, 16, n_atoms=32, k_active=3, seed=0)
    return {"a": x, "b": x.flip(1) * 0.5}


class FailingSource(TensorSource):
    """A TensorSource that raises once its `fail_at`-th batch is asked for (a simulated crash)."""

    def __init__(self, *args, fail_at, **kw):
        super().__init__(*args, **kw)
        self.fail_at, self.served = fail_at, 0

    def __iter__(self):
        for batch in super().__iter__():
            self.served += 1
            if self.served == self.fail_at:
                raise RuntimeError("simulated crash")
            yield batch


def test_learns_sparse_structure_to_high_ev(tmp_path):
    x, _ = sparse_dictionary_data(8192, 16, n_atoms=32, k_active=3, seed=0)
    sae = TopKSAE(SAEConfig(d_model=16, n_features=64, k=4, k_aux=16, dead_tokens_threshold=256 * 20))
    res = train_saes({"blk": sae}, TensorSource({"blk": x}, 256), _cfg(steps=1000, log_every=100), out_dir=tmp_path)
    assert res.last_metrics["blk"]["ev"] > 0.9
    assert res.last_metrics["blk"]["l0"] <= 4
    torch.testing.assert_close(sae.W_dec.norm(dim=0), torch.ones(64))
    # b_pre started at the geometric median of the data, so it is near the data's centre.
    assert (sae.b_pre - x.median(0).values).norm() < x.std(0).norm()


def test_auxk_revives_dead_latents():
    # Uncentred data in a narrow cone: many latents start dead; AuxK brings them back.
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(32, generator=gen)
    atoms = mu / mu.norm() + 0.5 * torch.randn(64, 32, generator=gen) / 32**0.5
    atoms /= atoms.norm(dim=1, keepdim=True)
    active = torch.rand(8192, 64, generator=gen).argsort(1)[:, :2]
    x = ((0.5 + 1.5 * torch.rand(8192, 2, 1, generator=gen)) * atoms[active]).sum(1)
    dead = {}
    for coef in (0.0, 1 / 32):
        sae = TopKSAE(SAEConfig(d_model=32, n_features=64, k=2, k_aux=16, auxk_coef=coef, dead_tokens_threshold=256 * 5))
        res = train_saes({"x": sae}, TensorSource({"x": x}, 256), _cfg(steps=500, log_every=500, init_b_pre=False))
        dead[coef] = res.last_metrics["x"]["dead_frac"]
    assert dead[0.0] > 0.3
    assert dead[1 / 32] < dead[0.0] - 0.15


def _with_nan(data, row=300):
    data = {k: v.clone() for k, v in data.items()}
    data["b"][row, 3] = float("nan")
    return data


def test_nonfinite_batch_stop_is_a_clear_error():
    src = TensorSource(_with_nan(_data()), 256, shuffle=False)
    with pytest.raises(ReproError, match="block 'b' holds NaN"):
        train_saes(_saes(), src, _cfg(init_b_pre=False))


def test_nonfinite_batch_skip_counts_and_logs(tmp_path):
    src = TensorSource(_with_nan(_data()), 256, shuffle=False, epochs=1)  # the NaN is in batch 1 only
    saes = _saes()
    res = train_saes(saes, src, _cfg(on_nonfinite="skip"), out_dir=tmp_path)
    assert res.skipped_nonfinite == {"a": 0, "b": 1}
    assert res.steps == 16  # the source ran out (1 epoch of 16 batches)
    assert all(torch.isfinite(p).all() for sae in saes.values() for p in sae.parameters())
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {r["block"] for r in rows} == {"a", "b"}
    assert rows[-1]["skipped_nonfinite"] == 1 and rows[-1]["block"] == "b"
    want = {"step", "tokens", "loss", "nmse", "auxk", "ev", "l0", "dead_frac", "lr", "skipped_nonfinite"}
    assert want <= set(rows[0])
    assert json.loads((tmp_path / "b" / "cfg.json").read_text())["training"]["skipped_nonfinite"] == 1


def test_input_checks():
    with pytest.raises(ReproError, match="d_model=16.*shape \\(256, 12\\)"):
        train_saes({"a": _saes()["a"]}, TensorSource({"a": torch.randn(1024, 12)}, 256), _cfg())
    with pytest.raises(ReproError, match="no block 'b'.*one of: a"):
        train_saes(_saes(), TensorSource({"a": torch.randn(1024, 16)}, 256), _cfg())


def test_final_folders_and_feature_stats(tmp_path):
    saes = _saes()
    src = TensorSource(_data(), 256)
    train_saes(saes, src, _cfg(stats_batches=4), out_dir=tmp_path, metadata={"model": "toy"})
    back = load_sae(tmp_path / "a")
    assert back.metadata["block"] == "a" and back.metadata["model"] == "toy"
    assert back.metadata["training"]["steps"] == 40 and back.metadata["data"]["source"] == "TensorSource"
    assert back.feature_stats.n_tokens == 4 * 256
    # feature_stats against a brute-force pass over the same batches.
    state = src.state_dict()
    st = feature_stats(saes["a"], src, 3, block="a")
    src.load_state_dict(state)
    z = torch.cat([saes["a"].encode(next(iter(src))["a"]).detach() for _ in range(3)])
    on = z > 0
    torch.testing.assert_close(st.count, on.sum(0))
    torch.testing.assert_close(st.frequency, on.float().mean(0))
    for f in torch.nonzero(on.sum(0) > 1).flatten()[:10]:
        vals = z[on[:, f], f]
        torch.testing.assert_close(st.mean[f], vals.mean(), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(st.std[f], vals.std(unbiased=False), rtol=1e-3, atol=1e-5)


def _weights(saes):
    return {b: {n: getattr(s, n).detach().clone() for n in PARAMS} | {"since": s.tokens_since_fired.clone()} for b, s in saes.items()}


def _assert_bitwise(w1, w2):
    for block in w1:
        for name in w1[block]:
            assert torch.equal(w1[block][name], w2[block][name]), (block, name)


def test_crash_and_resume_is_bitwise_identical(tmp_path):
    cfg = _cfg(steps=30, checkpoint_every=4, keep_checkpoints=2)
    full = _saes()
    train_saes(full, TensorSource(_data(), 256, seed=3), cfg, out_dir=tmp_path / "full")

    crashed = _saes()
    # 4 batches feed the b_pre median, then training crashes when asking for its 19th batch.
    src = FailingSource(_data(), 256, seed=3, fail_at=4 + 19)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_saes(crashed, src, cfg, out_dir=tmp_path / "run")
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["step_000000012", "step_000000016"]  # only complete ones, the 2 newest
    resumed = _saes(seed=100)  # fresh objects: everything must come from the checkpoint
    res = train_saes(resumed, TensorSource(_data(), 256, seed=3), cfg, out_dir=tmp_path / "run", resume=True)
    assert res.steps == 30
    _assert_bitwise(_weights(full), _weights(resumed))
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and len(steps) == 2 * 6  # no duplicated lines after the resume


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from test_sae_train import SlowSource, _data, _saes, _cfg
    from repro.sae import train_saes
    train_saes(_saes(), SlowSource(_data(), 256, seed=3), _cfg(steps=400, checkpoint_every=5), out_dir={out!r})
    """
)


class SlowSource(TensorSource):
    """A TensorSource that sleeps before each batch, so that a SIGKILL lands mid-run."""

    def __iter__(self):
        for batch in super().__iter__():
            time.sleep(0.01)
            yield batch


def test_sigkill_and_resume_is_bitwise_identical(tmp_path):
    out = tmp_path / "run"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (out / "checkpoints" / "step_000000010").exists():
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    from repro.sae.checkpoint import latest_checkpoint

    assert 10 <= int(latest_checkpoint(out / "checkpoints").name.split("_")[1]) < 60
    cfg = _cfg(steps=60, checkpoint_every=5)
    resumed = _saes(seed=7)
    train_saes(resumed, TensorSource(_data(), 256, seed=3), cfg, out_dir=out, resume=True)
    full = _saes()
    train_saes(full, TensorSource(_data(), 256, seed=3), cfg, out_dir=tmp_path / "full")
    _assert_bitwise(_weights(full), _weights(resumed))


def test_lr_zero_scales_to_the_dictionary_and_leaves_the_random_start(tmp_path):
    """The toy SAEs barely left their random init at the paper's 1e-4 (decoders at median cosine
    0.91 to init after 1500 steps): Adam moves each weight ~lr per step, far too little for a
    short run. lr = 0 trains each SAE at sparsify's `scaled_lr(n_features)`, records it, and in
    the same few steps moves the decoder away from its init and explains more."""
    from repro.sae.config import scaled_lr
    from repro.sae.stability import init_cosine
    from repro.sae.train import trained_lr

    assert scaled_lr(2**14) == pytest.approx(2e-4) and scaled_lr(512) == pytest.approx(1.131e-3, rel=1e-3)
    x, _ = sparse_dictionary_data(8192, 16, n_atoms=32, k_active=3, seed=0)
    moved = {}
    for lr in (1e-4, 0.0):
        sae = TopKSAE(SAEConfig(d_model=16, n_features=64, k=4, k_aux=16, dead_tokens_threshold=256 * 20), seed=3)
        sae.metadata["init_seed"] = 3
        res = train_saes({"blk": sae}, TensorSource({"blk": x}, 256), _cfg(steps=150, lr=lr, log_every=50),
                         out_dir=tmp_path / str(lr))
        saved = load_sae(tmp_path / str(lr) / "blk")
        assert trained_lr(saved) == pytest.approx(lr or scaled_lr(64))
        moved[lr] = (init_cosine(sae), res.last_metrics["blk"]["ev"], res.last_metrics["blk"]["lr"])
    assert moved[0.0][2] == pytest.approx(scaled_lr(64)) == pytest.approx(3.2e-3, rel=0.01)
    assert moved[1e-4][0] > 0.99 and moved[0.0][0] < 0.9  # median cosine of the decoder to its init
    assert moved[0.0][1] > moved[1e-4][1] + 0.2  # EV 0.77 against 0.43


def test_the_toy_profile_scales_its_lr_and_the_paper_keeps_1e4():
    from repro.profiles import PROFILES

    assert PROFILES["toy"].sae_lr == 0 and PROFILES["paper"].sae_lr == 1e-4 and PROFILES["standin"].sae_lr == 1e-4
    with pytest.raises(ReproError, match="lr"):
        TrainConfig(lr=-1e-4)


def test_the_next_batch_is_drawn_before_this_step_and_none_past_the_last():
    """The loop reads a batch's non-finite flags only after the next batch and its check are
    queued (on a GPU the wait then never drains the queue); no batch is drawn past `steps`."""
    from repro.sae.train import train_step

    events = []

    class Logged(TensorSource):
        def __iter__(self):
            for i, batch in enumerate(super().__iter__()):
                events.append(f"draw {i}")
                yield batch

    def step_fn(sae, opt, x, **kw):
        if sae is saes["a"]:
            events.append(f"step {sum(e.startswith('step') for e in events)}")
        return train_step(sae, opt, x, **kw)

    saes = _saes()
    train_saes(saes, Logged(_data(), 256, seed=3), _cfg(steps=4, init_b_pre=False), step_fn=step_fn)
    assert events == ["draw 0", "draw 1", "step 0", "draw 2", "step 1", "draw 3", "step 2", "step 3"]


@pytest.mark.parametrize("cuda_graph", [True, False])
def test_the_trainer_replays_a_graphed_step_wherever_the_impl_is_capturable(monkeypatch, cuda_graph):
    """`TrainConfig.cuda_graph` reaches the trainer: with a capturable impl on the device every SAE
    steps through a `GraphedStep` (the CPU stands in for the capture: the wrapper runs eagerly
    there), and its numbers are those of the plain step. Until 2026-12 the default `step_fn` was
    filled in before the check, so no user run ever replayed a graph."""
    import repro.sae.train as trainer

    built, calls = [], []

    class SpyStep(trainer.GraphedStep):
        def __init__(self, sae, opt, **kw):
            super().__init__(sae, opt, **kw)
            built.append(kw["impl"])

        def __call__(self, x):
            calls.append(x.shape[0])
            return super().__call__(x)

    monkeypatch.setattr(trainer, "graph_capturable", lambda impl, device: impl in ("reference", "fused"))
    monkeypatch.setattr(trainer, "GraphedStep", SpyStep)
    cfg = _cfg(steps=6, impl="reference", cuda_graph=cuda_graph)
    saes = _saes()
    train_saes(saes, TensorSource(_data(), 256, seed=0), cfg)
    if cuda_graph:
        assert built == ["reference", "reference"] and calls == [256] * 12
    else:
        assert built == [] and calls == []
    plain = _saes()
    monkeypatch.setattr(trainer, "graph_capturable", lambda impl, device: False)
    train_saes(plain, TensorSource(_data(), 256, seed=0), cfg)
    for block in saes:
        for name in PARAMS:
            assert torch.equal(getattr(saes[block], name), getattr(plain[block], name))
    # a caller's own step function (repro.dist) is never replaced by the graph
    built.clear()
    monkeypatch.setattr(trainer, "graph_capturable", lambda impl, device: True)
    train_saes(_saes(), TensorSource(_data(), 256, seed=0), cfg, step_fn=trainer.train_step)
    assert built == []



@pytest.mark.skipif(not torch.cuda.is_available(), reason="a GPU tensor source needs a GPU")
def test_a_gpu_tensor_source_gives_the_cpu_sources_batches():
    """`TensorSource` over a GPU tensor gathers with a device index: the same rows as on the CPU."""
    data = _data(1024)
    on_cpu = [b["a"] for _, b in zip(range(6), TensorSource(data, 256, seed=3))]
    on_gpu = [b["a"] for _, b in zip(range(6), TensorSource({k: v.cuda() for k, v in data.items()}, 256, seed=3))]
    assert all(g.is_cuda and torch.equal(c, g.cpu()) for c, g in zip(on_cpu, on_gpu))


def test_the_logged_metrics_keep_no_autograd_graph_across_steps(monkeypatch):
    """The trainer sums each step's loss into its log accumulator without the loss's graph: an
    accumulator that required grad would chain every step's autograd nodes (and their parameters'
    AccumulateGrad nodes) for the whole logging interval."""
    import repro.sae.train as trainer

    seen = []
    real_log = trainer._log

    def spy(saes, opts, acc, *args, **kw):
        seen.extend(a.requires_grad for a in acc.values())
        return real_log(saes, opts, acc, *args, **kw)

    monkeypatch.setattr(trainer, "_log", spy)
    train_saes(_saes(), TensorSource(_data(), 256, seed=0), _cfg(steps=10, log_every=5))
    assert seen and not any(seen)


def test_a_checkpoint_of_the_same_step_is_swapped_in_and_stale_temporaries_go(tmp_path):
    from repro.sae.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint

    def model(seed):
        sae = TopKSAE(SAEConfig(d_model=8, n_features=16, k=2, k_aux=8), seed=seed)
        return {"b": sae}, {"b": torch.optim.Adam(sae.parameters(), lr=1e-3)}

    root = tmp_path / "checkpoints"
    stale = [root / ".tmp-step_000000001-99", root / ".step_000000005.tmp-x", root / ".step_000000005.old-7"]
    for folder in stale:
        folder.mkdir(parents=True)
    saes, opts = model(0)
    save_checkpoint(root, 5, saes, opts, {"tokens": 1})
    assert not any(f.exists() for f in stale)  # a killed writer's leftovers are removed
    second, opts2 = model(1)
    save_checkpoint(root, 5, second, opts2, {"tokens": 2})  # the same step again: replaced, not duplicated
    assert [p.name for p in list_checkpoints(root)] == ["step_000000005"]
    latest = latest_checkpoint(root)
    state = torch.load(latest / "trainer.pt", weights_only=True)
    assert state["tokens"] == 2 and torch.equal(load_sae(latest / "b").W_dec, second["b"].W_dec)
    for step in (6, 7):
        save_checkpoint(root, step, saes, opts, {"tokens": step}, keep=2)
    assert [p.name for p in list_checkpoints(root)] == ["step_000000006", "step_000000007"]
    assert sorted(p.name for p in root.iterdir()) == ["step_000000006", "step_000000007"]  # nothing else left
