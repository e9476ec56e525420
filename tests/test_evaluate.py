import numpy as np
import pytest
import torch

from repro.errors import ReproError
from repro.evaluate.capture import capture_eval_updates, capture_token_sample
from repro.evaluate.in_loop import in_loop_comparison, intervention_timing, manhattan, standard_variants
from repro.evaluate.reconstruction import code_overlap, evaluate_reconstruction
from repro.generate import Sampling
from repro.hooks import Scale
from repro.sae.config import SAEConfig
from repro.sae.model import TopKSAE
from repro.evaluate.transfer import curves_from_sums, step_sums, train_controls

def control_curves(likes, tokens, budgets, updates, batch_size, seed=0, device="auto", lr=1e-4, n_boot=1000):
    """The control curves of several blocks with every held-out update at hand ({block: updates
    [steps, N, H, W, C]}): the reference the streamed path of 04 (StepStream) must equal."""
    snapshots = train_controls(likes, tokens, budgets, batch_size, seed=seed, device=device, lr=lr)
    return {b: curves_from_sums(step_sums(likes[b], updates[b]), [step_sums(c, updates[b]) for c in snapshots[b]],
                                budgets, batch_size, n_boot=n_boot, seed=seed)
            for b in likes}


def control_curve(like, tokens, budgets, updates, batch_size, **kwargs):
    """`control_curves` of one block: tokens [N, C], updates [steps, N, H, W, C]."""
    return control_curves({"x": like}, {"x": tokens}, budgets, {"x": updates}, batch_size, **kwargs)["x"]

PROMPTS = ["a red circle", "a cat", "a blue square", "a green tree"]
SEEDS = [0, 1, 2, 3]


def _reference_ev(sae, x):
    """The paper's EV written out: 1 - Var(x - x_hat) / Var(x)."""
    flat = x.reshape(-1, x.shape[-1])
    e = flat - sae(flat).detach()
    return 1 - ((e - e.mean(0)) ** 2).sum() / ((flat - flat.mean(0)) ** 2).sum()


def test_ev_equals_reference_and_identity_sae_is_perfect():
    torch.manual_seed(0)
    x = torch.randn(10, 4, 4, 16)
    sae = TopKSAE(SAEConfig(d_model=16, n_features=64, k=4, k_aux=8), seed=1)
    rec = evaluate_reconstruction(sae, x, batch_size=32)
    assert rec.ev == pytest.approx(float(_reference_ev(sae, x)), abs=1e-5)
    assert rec.fvu == pytest.approx(1 - rec.ev)
    assert rec.l0 <= 4 and rec.n_tokens == 160 and np.array(rec.position_ev).shape == (4, 4)
    # an SAE whose decoder can copy any 16-dim vector with k = 16 reconstructs exactly
    eye = TopKSAE(SAEConfig(d_model=16, n_features=32, k=16, k_aux=0), seed=0)
    with torch.no_grad():
        eye.W_enc.zero_(); eye.W_dec.zero_()
        eye.W_enc[:16] = torch.eye(16); eye.W_enc[16:] = -torch.eye(16)
        eye.W_dec[:, :16] = torch.eye(16); eye.W_dec[:, 16:] = -torch.eye(16)
    assert evaluate_reconstruction(eye, x).ev == pytest.approx(1.0, abs=1e-6)


def test_width_mismatch_is_a_clear_error():
    sae = TopKSAE(SAEConfig(d_model=16, n_features=64, k=4, k_aux=8))
    with pytest.raises(ReproError, match="width 16"):
        evaluate_reconstruction(sae, torch.randn(2, 4, 4, 32))


def test_code_overlap_bounds():
    sae = TopKSAE(SAEConfig(d_model=16, n_features=64, k=4, k_aux=8), seed=0)
    x = torch.randn(50, 16)
    assert code_overlap(sae, x, x) == pytest.approx(1.0, abs=1e-6)
    assert code_overlap(sae, x, torch.randn(50, 16)) < 0.5


def test_capture_and_in_loop_on_tiny_pipe(tiny_pipe):
    sampling = Sampling(steps=2, guidance=3.0)
    ups = capture_eval_updates(tiny_pipe, PROMPTS, SEEDS, sampling, ["mid.0"], batch_size=3)
    assert set(ups["mid.0"]) == {"cond", "uncond"}
    assert ups["mid.0"]["cond"].shape == (2, 4, 4, 4, 64)
    sae = TopKSAE(SAEConfig(d_model=64, n_features=128, k=8, k_aux=8), seed=0)
    mean = ups["mid.0"]["cond"].mean(1).permute(0, 3, 1, 2)  # [steps, C, H, W]
    images, table = in_loop_comparison(tiny_pipe, PROMPTS, SEEDS, Sampling(steps=1),
                                       standard_variants({"mid.0": sae}, {"mid.0": mean}), batch_size=2)
    assert set(table) == {"mid.0: SAE", "mid.0: ablated", "mid.0: mean"}
    assert images["original"].shape == (4, 64, 64, 3)
    assert all(v["manhattan"] > 0 for v in table.values())
    assert manhattan(images["original"], images["original"]).max() == 0


def test_intervention_timing_windows(tiny_pipe):
    timing = intervention_timing(tiny_pipe, PROMPTS[:2], SEEDS[:2], Sampling(steps=4), "up.0.1",
                                 lambda steps: Scale(factor=3.0, steps=steps), [[0, 1], [2, 3]])
    assert set(timing) == {"0-1", "2-3"}
    assert all(v.shape == (2,) and (v > 0).all() for v in timing.values())  # one change per image


def test_token_sample_keeps_fixed_positions_per_image_and_everything_when_the_budget_allows(tiny_pipe):
    sampling = Sampling(steps=2, guidance=3.0)
    full = capture_eval_updates(tiny_pipe, PROMPTS, SEEDS, sampling, ["mid.0", "up.0.0"], batch_size=3)
    flat = {b: {h: u.flatten(2, 3) for h, u in hs.items()} for b, hs in full.items()}  # [steps, N, H*W, C]

    everything = capture_token_sample(tiny_pipe, PROMPTS, SEEDS, sampling, ["mid.0", "up.0.0"],
                                      max_tokens=10**9, batch_size=3)
    for b in flat:
        for h in ("cond", "uncond"):
            assert torch.equal(everything[b][h], flat[b][h])  # same rows, same order

    # up.0.0 has 8x8 = 64 positions; 4 images x 2 steps x P >= 40 rows -> P = 5 per image and step.
    some = capture_token_sample(tiny_pipe, PROMPTS, SEEDS, sampling, ["up.0.0"], max_tokens=40, batch_size=3, seed=7)
    got, ref = some["up.0.0"]["cond"], flat["up.0.0"]["cond"]
    assert got.shape == (2, 4, 5, ref.shape[-1])
    for i in range(4):
        # each kept row is the full capture's row at one position, the same positions at both steps
        pos = [int((ref[0, i] - row).abs().sum(-1).argmin()) for row in got[0, i]]
        assert len(set(pos)) == 5 and pos == sorted(pos)
        assert torch.equal(got[:, i], ref[:, i, pos])
        assert torch.equal(some["up.0.0"]["uncond"][:, i], flat["up.0.0"]["uncond"][:, i, pos])
    again = capture_token_sample(tiny_pipe, PROMPTS, SEEDS, sampling, ["up.0.0"], max_tokens=40, batch_size=2, seed=7)
    # positions depend on (seed, image), not on batching (values only up to batch-size rounding)
    assert torch.allclose(again["up.0.0"]["cond"], got, atol=1e-4)


def test_control_curve_is_one_training_measured_at_each_budget():
    """Issue 15, defect 10: the control is trained to the compared SAE's budget; the curve's last
    point is exactly a control trained straight to that budget, and more budget explains more."""
    from repro.evaluate.transfer import budget_points, ev_per_step
    from sparse_data import sparse_dictionary_data

    assert budget_points(1500, 4) == [188, 375, 750, 1500] and budget_points(3, 4) == [1, 2, 3]
    x, _ = sparse_dictionary_data(4096, 16, n_atoms=24, k_active=2, seed=0)
    held, _ = sparse_dictionary_data(256, 16, n_atoms=24, k_active=2, seed=0)
    updates = held.reshape(1, 16, 4, 4, 16)  # [steps, N, H, W, C]
    like = TopKSAE(SAEConfig(d_model=16, n_features=48, k=2, k_aux=8), seed=0)
    curve = control_curve(like, x, [5, 60], updates, batch_size=128, device="cpu", lr=1e-2)
    assert [c["steps"] for c in curve] == [5, 60] and [c["tokens"] for c in curve] == [640, 7680]
    assert curve[1]["ev"] > curve[0]["ev"] + 0.05
    straight = control_curve(like, x, [60], updates, batch_size=128, device="cpu", lr=1e-2)
    assert straight[0]["ev_per_step"] == pytest.approx(curve[1]["ev_per_step"], abs=1e-6)


def test_share_of_the_ceiling_has_a_joint_bootstrap_interval_over_images():
    """The share of the ceiling (transfer EV / control EV, means over steps) gets an interval
    from resampling images, the same images for both SAEs and every step: an SAE against
    itself is exactly 1 in every resample; the point estimate is the ratio of ev_per_step means."""
    from repro.evaluate.transfer import ev_per_step, share_of_ceiling, step_sums
    from sparse_data import sparse_dictionary_data

    held, _ = sparse_dictionary_data(2 * 24 * 16, 16, n_atoms=24, k_active=2, seed=0)
    updates = held.reshape(2, 24, 4, 4, 16)  # [steps, N, H, W, C]
    a = TopKSAE(SAEConfig(d_model=16, n_features=48, k=3, k_aux=8), seed=0)
    b = TopKSAE(SAEConfig(d_model=16, n_features=48, k=6, k_aux=8), seed=1)
    sa, sb = step_sums(a, updates), step_sums(b, updates)
    assert [s.ev() for s in sa] == pytest.approx(
        [evaluate_reconstruction(a, updates[t], n_boot=0).ev for t in range(2)], abs=1e-9)
    same = share_of_ceiling(sa, sa, n_boot=200)
    assert (same["share"], same["lo"], same["hi"]) == pytest.approx((1.0, 1.0, 1.0))
    cross = share_of_ceiling(sa, sb, n_boot=200)
    assert cross["share"] == pytest.approx(np.mean(ev_per_step(a, updates)) / np.mean(ev_per_step(b, updates)))
    assert cross["lo"] < cross["share"] < cross["hi"] and cross["n_images"] == 24


def test_control_curve_reports_the_share_of_the_ceiling_at_each_budget():
    from repro.evaluate.transfer import ev_per_step
    from sparse_data import sparse_dictionary_data

    x, _ = sparse_dictionary_data(2048, 16, n_atoms=24, k_active=2, seed=0)
    held, _ = sparse_dictionary_data(256, 16, n_atoms=24, k_active=2, seed=1)
    updates = held.reshape(1, 16, 4, 4, 16)
    like = TopKSAE(SAEConfig(d_model=16, n_features=48, k=2, k_aux=8), seed=0)
    curve = control_curve(like, x, [5, 40], updates, batch_size=128, device="cpu", lr=1e-2, n_boot=100)
    transfer_ev = float(np.mean(ev_per_step(like, updates)))
    for point in curve:
        share = point["share_of_ceiling"]
        assert share["share"] == pytest.approx(transfer_ev / point["ev"], rel=1e-9)
        assert share["lo"] <= share["share"] <= share["hi"]


def test_controls_of_several_blocks_train_together_as_they_would_alone():
    """One run for the controls of blocks with as many tokens (a CPU budget lever): each control's
    curve equals the one it gets trained alone; a block with other token counts trains on its own."""
    from sparse_data import sparse_dictionary_data

    cfg = SAEConfig(d_model=16, n_features=48, k=2, k_aux=8)
    tokens = {b: sparse_dictionary_data(n, 16, n_atoms=24, k_active=2, seed=i)[0]
              for i, (b, n) in enumerate((("a", 1024), ("b", 1024), ("c", 768)))}
    updates = {b: sparse_dictionary_data(128, 16, n_atoms=24, k_active=2, seed=10 + i)[0].reshape(1, 8, 4, 4, 16)
               for i, b in enumerate(tokens)}
    likes = {b: TopKSAE(cfg, seed=i) for i, b in enumerate(tokens)}
    together = control_curves(likes, tokens, [3, 12], updates, batch_size=128, device="cpu", lr=1e-2, n_boot=20)
    assert list(together) == ["a", "b", "c"]
    for b in tokens:
        alone = control_curve(likes[b], tokens[b], [3, 12], updates[b], batch_size=128, device="cpu", lr=1e-2, n_boot=20)
        assert [c["ev_per_step"] for c in together[b]] == [pytest.approx(c["ev_per_step"], abs=1e-5) for c in alone]


def test_streamed_transfer_equals_the_held_one(tiny_pipe):
    """Issue 17: 04 sees the held-out updates one batch of prompts at a time (StepStream),
    with the controls trained first (train_controls); every number is the one of the holding
    path (capture_eval_updates + ev_per_step / overlap_per_step / control_curves)."""
    from repro.evaluate.capture import stream_eval_updates
    from repro.evaluate.transfer import StepStream, ev_per_step, overlap_per_step

    sampling = Sampling(steps=2, guidance=3.0)
    blocks = ["mid.0", "up.0.0"]
    held = capture_eval_updates(tiny_pipe, PROMPTS, SEEDS, sampling, blocks, batch_size=3)
    widths = {b: held[b]["cond"].shape[-1] for b in blocks}
    saes = {b: TopKSAE(SAEConfig(d_model=widths[b], n_features=3 * widths[b], k=6, k_aux=8), seed=i)
            for i, b in enumerate(blocks)}
    tokens = capture_token_sample(tiny_pipe, PROMPTS, SEEDS, sampling, blocks, max_tokens=10**9, batch_size=3)
    budgets, lr = [2, 5], {"mid.0": 1e-2, "up.0.0": 3e-3}
    for half in ("cond", "uncond"):
        got = {b: tokens[b][half] for b in blocks}
        ref = control_curves(saes, got, budgets, {b: held[b][half] for b in blocks}, batch_size=64, device="cpu",
                             lr=lr, n_boot=50)
        controls = train_controls(saes, got, budgets, batch_size=64, device="cpu", lr=lr)
        streams = {b: StepStream({"t": saes[b], **{i: c for i, c in enumerate(controls[b])}}, overlap_of="t") for b in blocks}
        for b, h, u in stream_eval_updates(tiny_pipe, PROMPTS, SEEDS, sampling, blocks, batch_size=3):
            if h == half:
                assert u.shape[1] in (3, 1)  # one batch of prompts at a time
                streams[b].add(u)
        for b in blocks:
            sums = streams[b].step_sums("t")
            assert [s.ev() for s in sums] == pytest.approx(ev_per_step(saes[b], held[b][half]), abs=1e-6)
            assert streams[b].overlap() == pytest.approx(overlap_per_step(saes[b], held[b][half]), abs=1e-6)
            curve = curves_from_sums(sums, [streams[b].step_sums(i) for i in range(len(budgets))], budgets, 64, n_boot=50)
            assert [c["steps"] for c in curve] == [c["steps"] for c in ref[b]]
            for c, r in zip(curve, ref[b]):
                assert c["ev_per_step"] == pytest.approx(r["ev_per_step"], abs=1e-6)
                for key in ("share", "lo", "hi", "transfer_ev", "control_ev"):
                    assert c["share_of_ceiling"][key] == pytest.approx(r["share_of_ceiling"][key], abs=1e-6)


@pytest.mark.slow
def test_the_chapter_experiments_give_the_underlying_numbers(tiny_pipe):
    """`repro.evaluate.experiments` (what 04 calls) returns, as tables, the numbers of the functions
    it pools: reconstruction vs `evaluate_reconstruction`, transfer vs the streamed path's EV per
    step with its control, seed stability's matched share of an SAE with itself = 1."""
    from repro.evaluate import experiments as ex
    from repro.evaluate.transfer import ev_per_step

    blocks = ["mid.0", "up.0.0"]
    one = capture_eval_updates(tiny_pipe, PROMPTS, SEEDS, Sampling(steps=1), blocks, batch_size=2)
    saes = {b: TopKSAE(SAEConfig(d_model=one[b]["all"].shape[-1], n_features=3 * one[b]["all"].shape[-1], k=6,
                                 k_aux=8), seed=i) for i, b in enumerate(blocks)}
    rec = ex.reconstruction(saes, one)
    table = rec.table()
    for b in blocks:
        assert table.loc[b, "EV"] == pytest.approx(evaluate_reconstruction(saes[b], one[b]["all"][0]).ev, abs=1e-9)
        assert table.loc[b, "EV 95% lo"] <= table.loc[b, "EV"] <= table.loc[b, "EV 95% hi"]
    stab = ex.seed_stability(saes, saes, one, rec.trained)
    assert list(stab.index) == blocks and all(float(v) == 1.0 for v in stab["matched share"])
    multi = Sampling(steps=2)
    tr = ex.transfer({"two": (tiny_pipe, multi)}, saes, PROMPTS[:1], SEEDS[:1], PROMPTS[2:], SEEDS[2:], control_steps=4,
                     control_budgets=2, sae_batch=32, batch_size=2, device="cpu")
    held = capture_eval_updates(tiny_pipe, PROMPTS[2:], SEEDS[2:], multi, blocks, batch_size=2)
    for b in blocks:
        assert tr.transfer[(b, "two")] == pytest.approx(ev_per_step(saes[b], held[b]["all"]), abs=1e-6)
        assert len(tr.ceiling[(b, "two")]) == 2 and len(tr.overlap[(b, "two")]) == 1
    assert tr.budgets == [2, 4]
    assert set(tr.table().columns) >= {"share of ceiling", "share 95% lo", "share 95% hi"}
    assert tr.overlap_table().shape == (2, 1)
    timing = ex.timing(tiny_pipe, saes, PROMPTS[:1], SEEDS[:1], Sampling(steps=2), batch_size=1, n_windows=2)
    means = timing.means
    assert list(means.index) == blocks and means.shape == (2, 2) and (means.values > 0).all()
    fml = timing.first_minus_last()
    for b in blocks:
        first, last = timing.changes[b].values()
        assert fml[b]["diff"] == pytest.approx(float((first - last).mean())) and fml[b]["n"] == 1


def _timing(diffs: dict[str, np.ndarray]):
    """A TimingResult whose first window minus last is `diffs[block]` per image (last window fixed at 1)."""
    from repro.evaluate.experiments import TimingResult

    return TimingResult({b: {"0-4": 1.0 + d, "5-9": np.full_like(d, 1.0)} for b, d in diffs.items()})


def test_timing_claim_needs_intervals_above_zero_and_is_undecidable_when_they_cannot_decide():
    from repro.claims import verdict
    from repro.evaluate import experiments as ex

    rng = np.random.default_rng(0)
    blocks = ["down.2.1", "mid.0", "up.0.0", "up.0.1"]
    clear = {b: 0.5 + 0.05 * rng.standard_normal(32) for b in blocks}  # early in every block
    assert verdict(ex.timing_claim(_timing(clear)))[0] == "reproduces"
    late = {b: -d for b, d in clear.items()}  # late in every block: decided against
    assert verdict(ex.timing_claim(_timing(late)))[0] == "does not reproduce"
    noisy = {b: rng.standard_normal(4) for b in blocks}  # 4 images of pure noise: intervals span 0
    v, why = verdict(ex.timing_claim(_timing(noisy)))
    assert v == "undecidable" and "cannot decide" in why
    # three early blocks suffice; two early and two late cannot reach three
    assert ex.timing_claim(_timing({**clear, "up.0.1": late["up.0.1"]})).beats_control
    two_late = {**clear, "up.0.0": late["up.0.0"], "up.0.1": late["up.0.1"]}
    assert verdict(ex.timing_claim(_timing(two_late)))[0] == "does not reproduce"
