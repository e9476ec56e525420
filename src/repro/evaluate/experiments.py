"""04_evaluate's experiments, each one call that returns its numbers and a table.

The chapter calls, shows and glues; the loops, pooling and controls live here, where tests
reach them. Every function takes the SAEs {block: TopKSAE} and held-out prompts/seeds; tables
are pandas DataFrames indexed by block (or by (block, cell)).

    rec = reconstruction(saes, updates)                 # held-out EV, NMSE, L0, dead, random-SAE control
    stab = seed_stability(saes, seed_saes, updates)     # matched features between seeds, random control
    loop = in_loop(pipe, prompts, seeds, sampling, saes, updates, ground_truth=True)
    tr = transfer(settings, saes, ...)                  # EV per step vs control ceilings, overlap
    tm = timing(pipe, saes, prompts, seeds, sampling)   # per-image change per step window
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from repro.evaluate.capture import capture_token_sample, stream_eval_updates
from repro.evaluate.in_loop import generate_with, in_loop_comparison, intervention_timing, standard_variants, step_windows
from repro.evaluate.reconstruction import Reconstruction, evaluate_reconstruction
from repro.evaluate.transfer import StepStream, budget_points, curves_from_sums, train_controls
from repro.features.controls import random_sae_like
from repro.features.interventions import FeatureAdd
from repro.intervals import bootstrap, fmt, rate
from repro.sae.stability import fired_on, init_cosine, match_features
from repro.sae.train import trained_lr


@dataclass(frozen=True)
class EvaluateConfig:
    """04_evaluate's settings besides the profile's (its control and timing counts are profile fields)."""

    saes: str = ""
    """Folder of the 1-step SAEs (empty: artifacts/<profile>/saes, written by 03_train)."""
    seed_saes: str = ""
    """Folder of the second-seed SAEs (empty: artifacts/<profile>/saes-seed1 when the profile trains one)."""
    n_eval: int = 32
    """Held-out prompts for reconstruction and transfer."""
    n_loop: int = 32
    """Held-out prompts for reconstruction in the loop."""
    seed: int = 100_000
    """Seed of the first held-out prompt (prompt i: seed + i; training used 0..)."""
    device: str = "auto"
    """Where to generate: auto, cpu, cuda, cuda:N, mps."""


@dataclass
class ReconstructionResult:
    """Held-out reconstruction per block, beside an untrained TopK SAE of the same shape and k."""

    trained: dict[str, Reconstruction]
    random: dict[str, Reconstruction]

    def table(self) -> pd.DataFrame:
        return pd.DataFrame({b: {"EV": r.ev, "EV 95% lo": r.ev_interval[0], "EV 95% hi": r.ev_interval[1],
                                 "NMSE": r.nmse, "L0": r.l0, "dead fraction": r.dead_fraction,
                                 "EV of a random SAE (control)": self.random[b].ev}
                             for b, r in self.trained.items()}).T


def reconstruction(saes: dict, updates: dict) -> ReconstructionResult:
    """`updates` {block: {"all": [steps, N, H, W, C]}} of the 1-step model (capture_eval_updates)."""
    trained = {b: evaluate_reconstruction(saes[b], updates[b]["all"][0]) for b in saes}
    random = {b: evaluate_reconstruction(random_sae_like(saes[b]), updates[b]["all"][0], n_boot=0) for b in saes}
    return ReconstructionResult(trained, random)


def seed_stability(saes: dict, seed_saes: dict, updates: dict, trained: dict[str, Reconstruction]) -> pd.DataFrame:
    """Per block: the share of live features with a partner (decoder cosine >= 0.9 both ways) in the
    other seed's SAE, the same for two random dictionaries (control), the median cosine of each
    decoder column to its init, and both seeds' held-out EV."""
    rows = {}
    for b in saes:
        u = updates[b]["all"][0]
        st = match_features(saes[b], seed_saes[b], live_a=fired_on(saes[b], u), live_b=fired_on(seed_saes[b], u))
        ctrl = match_features(random_sae_like(saes[b], seed=1), random_sae_like(saes[b], seed=2))
        r2 = evaluate_reconstruction(seed_saes[b], u)
        rows[b] = {"matched share": st.share, "matched a->b": f"{st.matched_a}/{st.n_a}",
                   "matched b->a": f"{st.matched_b}/{st.n_b}", "median best cosine": st.median_best_cosine,
                   "random control share": ctrl.share, "random control median best cosine": ctrl.median_best_cosine,
                   "median cosine to own init": init_cosine(saes[b]), "EV seed 0": trained[b].ev, "EV seed 1": r2.ev,
                   "EV seed 1 95% lo": r2.ev_interval[0], "EV seed 1 95% hi": r2.ev_interval[1]}
    return pd.DataFrame(rows).T


@dataclass
class InLoopResult:
    """Images per variant ("original", "<block>: SAE", "<block>: ablated", ...) and the distance table."""

    images: dict[str, list]
    table: pd.DataFrame
    oracle_rates: dict[str, dict] = field(default_factory=dict)
    """Variant -> Wilson rate of the oracle reading every attribute right (ground-truth profiles)."""


def in_loop(pipe, prompts: Sequence[str], seeds: Sequence[int], sampling, saes: dict, updates: dict,
            ground_truth: bool = False, batch_size: int = 16) -> InLoopResult:
    """Generate with each block's update replaced by its SAE reconstruction (and all at once), beside
    the block ablated and its mean update; pixel distance to the normal image and, with ground truth,
    the oracle's all-attributes accuracy per variant with Wilson intervals."""
    n = len(prompts)
    means = {b: updates[b]["all"][:, :n].mean(1).permute(0, 3, 1, 2) for b in saes}  # [steps, C, H, W]
    metrics, oracle, scenes = {}, None, None
    if ground_truth:
        from repro.shapes.captions import parse_caption
        from repro.shapes.oracle import compare, load_oracle

        oracle = load_oracle(device=pipe.device)
        scenes = [parse_caption(p) for p in prompts]
        metrics["oracle all-attributes accuracy"] = lambda a, b: np.array(
            [compare(r, s)["all"] for r, s in zip(oracle.read(b), scenes)], dtype=float)
    images, table = in_loop_comparison(pipe, prompts, seeds, sampling, standard_variants(saes, means), metrics, batch_size)
    df = pd.DataFrame(table).T
    rates = {}
    if oracle is not None:
        base_acc = float(np.mean([compare(r, s)["all"] for r, s in zip(oracle.read(images["original"]), scenes)]))
        df["oracle accuracy drop"] = base_acc - df["oracle all-attributes accuracy"]
        rates = {name: rate(round(acc * n), n) for name, acc in df["oracle all-attributes accuracy"].items()}
        rates["original"] = rate(round(base_acc * n), n)
        df["oracle accuracy 95% interval"] = [fmt(rates[name]) for name in df.index]
    return InLoopResult(images, df, rates)


@dataclass
class TransferResult:
    """Per (block, cell): EV per step of the 1-step SAE, of its control, the controls' budget curve,
    the share of the ceiling with its interval, and the code overlap between adjacent steps."""

    transfer: dict[tuple[str, str], list[float]]
    ceiling: dict[tuple[str, str], list[float]]
    curves: dict[tuple[str, str], list[dict]]
    overlap: dict[tuple[str, str], list[float]]
    budgets: list[int]

    @property
    def share(self) -> dict[tuple[str, str], dict]:
        return {k: self.curves[k][-1]["share_of_ceiling"] for k in self.transfer}

    def table(self) -> pd.DataFrame:
        share = self.share
        return pd.DataFrame({k: {"EV mean over steps": float(np.mean(v)),
                                 "control EV (end of its curve)": float(np.mean(self.ceiling[k])),
                                 f"control EV at {self.budgets[0]} steps": self.curves[k][0]["ev"],
                                 "share of ceiling": share[k]["share"], "share 95% lo": share[k]["lo"],
                                 "share 95% hi": share[k]["hi"]} for k, v in self.transfer.items()}).T

    def overlap_table(self) -> pd.DataFrame:
        df = pd.DataFrame({f"{b} | {c}": pd.Series(v) for (b, c), v in self.overlap.items()}).T
        df.columns = [f"{t}->{t + 1}" for t in df.columns]
        return df


def transfer(settings: dict, saes: dict, control_prompts, control_seeds, eval_prompts, eval_seeds, *,
             control_steps: int, control_budgets: int, sae_batch: int, batch_size: int = 16,
             device="auto", sample_device=None) -> TransferResult:
    """Apply each 1-step SAE unchanged to every step of each setting {name: (pipe, sampling)}; a control
    SAE of the same shape, trained at the lr its 1-step SAE trained at on the setting's own updates of
    `control_prompts` for `control_steps` steps (recorded at `control_budgets` halving budgets), gives
    each cell's ceiling. Held-out updates are streamed: only per-image sums are kept."""
    blocks = list(saes)
    budgets = budget_points(control_steps, control_budgets)
    transfer_ev, ceiling, curves, overlap = {}, {}, {}, {}
    for name, (pipe, sampling) in settings.items():
        # the controls' sample stays on the device that trains them (SDXL base's is ~50 GB in 16-bit)
        ctrl_ups = capture_token_sample(pipe, control_prompts, control_seeds, sampling, blocks,
                                        max_tokens=budgets[-1] * sae_batch, batch_size=batch_size, device=sample_device)
        halves = list(ctrl_ups[blocks[0]])
        controls = {half: train_controls(saes, {b: ctrl_ups[b][half] for b in blocks}, budgets, batch_size=sae_batch,
                                         device=device, lr={b: trained_lr(saes[b]) for b in blocks}) for half in halves}
        del ctrl_ups
        streams = {(b, half): StepStream({"transferred": saes[b], **{f"control {i}": c for i, c in enumerate(controls[half][b])}},
                                         overlap_of="transferred") for b in blocks for half in halves}
        for b, half, u in stream_eval_updates(pipe, eval_prompts, eval_seeds, sampling, blocks, batch_size):
            streams[(b, half)].add(u)
        for half in halves:
            cell = f"{name} ({half})" if half != "all" else name
            for b in blocks:
                st = streams[(b, half)]
                sums = st.step_sums("transferred")
                transfer_ev[(b, cell)] = [s.ev() for s in sums]
                overlap[(b, cell)] = st.overlap()
                curves[(b, cell)] = curves_from_sums(sums, [st.step_sums(f"control {i}") for i in range(len(budgets))],
                                                     budgets, sae_batch)
                ceiling[(b, cell)] = curves[(b, cell)][-1]["ev_per_step"]
        del controls, streams
    return TransferResult(transfer_ev, ceiling, curves, overlap, budgets)


@dataclass
class TimingResult:
    """Image change per step window when each block's feature is switched on in that window only."""

    changes: dict[str, dict[str, np.ndarray]]
    """{block: {window "first-last" step: per-image mean |pixel change| [N]}}, windows in step order."""

    @property
    def means(self) -> pd.DataFrame:
        """Mean change: rows blocks, columns windows."""
        return pd.DataFrame({b: {w: float(v.mean()) for w, v in ws.items()} for b, ws in self.changes.items()}).T

    def first_minus_last(self, seed: int = 0) -> dict[str, dict]:
        """{block: {"diff", "lo", "hi", "n"}}: the first window's change minus the last's on the same images,
        with its 95% bootstrap interval over images (NaN from fewer than two images)."""
        out = {}
        for b, ws in self.changes.items():
            windows = list(ws.values())
            diff = windows[0] - windows[-1]
            lo, hi = bootstrap(diff, seed=seed) if len(diff) > 1 else (float("nan"), float("nan"))  # one image: no interval
            out[b] = {"diff": float(diff.mean()), "lo": lo, "hi": hi, "n": len(diff)}
        return out


def timing(pipe, saes: dict, prompts: Sequence[str], seeds: Sequence[int], sampling, batch_size: int = 16,
           n_windows: int = 4) -> TimingResult:
    """Per-image |pixel change| when each block's most frequent feature is switched on (strength mean_f * k,
    everywhere) within one window of the sampling steps only."""
    windows = step_windows(sampling.steps, n_windows)
    plain = generate_with(pipe, prompts, seeds, sampling, None, batch_size)
    changes = {}
    for b, sae in saes.items():
        stats = sae.feature_stats
        f = int(torch.argmax(stats.frequency)) if stats is not None and stats.frequency is not None else 0
        strength = float(stats.mean[f]) * sae.cfg.k if stats is not None else 1.0
        changes[b] = intervention_timing(pipe, prompts, seeds, sampling, b,
                                         lambda steps, sae=sae, f=f, s=strength: FeatureAdd(sae=sae, features=f, strength=s, steps=steps),
                                         windows, batch_size, plain=plain)
    return TimingResult(changes)


def claims(recon: ReconstructionResult, loop: InLoopResult, tr: TransferResult, tm: TimingResult,
           share_needed: float = 0.8) -> list:
    """04's measurements of the paper's reconstruction, in-loop and transfer claims (`repro.claims`).

    Transfer "works" where the share of the control ceiling has its 95% lower bound >= `share_needed`;
    a ceiling whose share interval lies wholly above 1 is too low to judge by (the control is worse
    than the transferred SAE): that cell counts as the test missing its positive control."""
    from repro.claims import Claim

    blocks = list(recon.trained)
    ev = "; ".join(f"{b} {r.ev:.3f} [{r.ev_interval[0]:.3f}, {r.ev_interval[1]:.3f}]" for b, r in recon.trained.items())
    out = [Claim(
        claim="SAEs reconstruct each block's update", chapter="04_evaluate",
        measure="held-out EV, 95% bootstrap lower bound above an untrained TopK SAE's EV in every block",
        result=ev, control="random SAE EV: " + "; ".join(f"{b} {r.ev:.3f}" for b, r in recon.random.items()),
        beats_control=all(recon.trained[b].ev_interval[0] > recon.random[b].ev for b in blocks),
        n=f"{recon.trained[blocks[0]].n_tokens} tokens a block")]
    if loop.oracle_rates:
        r = loop.oracle_rates
        orig = r["original"]
        dropped = {b: r[f"{b}: ablated"]["hi"] < orig["lo"] for b in blocks}  # ablation detected as a loss
        sae_kept = {b: r[f"{b}: SAE"]["hi"] >= orig["lo"] for b in blocks}
        tested = [b for b in blocks if dropped[b]]
        out.append(Claim(
            claim="Reconstruction in the loop keeps the image", chapter="04_evaluate",
            measure="oracle all-attributes accuracy with the SAE in the loop not below the original's interval, "
                    "in every block whose ablation the same test sees as a loss",
            result="; ".join(f"{b} {fmt(r[f'{b}: SAE'])}" for b in blocks) + f"; original {fmt(orig)}",
            control="block ablated: " + "; ".join(f"{b} {fmt(r[f'{b}: ablated'])}" for b in blocks),
            beats_control=bool(tested) and all(sae_kept[b] for b in tested),
            positive_control=f"ablation seen as a loss in {len(tested)} of {len(blocks)} blocks",
            power=len(tested) / len(blocks), n=f"{orig['n']} held-out prompts"))
    for cell in sorted({c for _, c in tr.transfer}):
        shares = {b: tr.share[(b, cell)] for b in blocks}
        usable = [b for b in blocks if not shares[b]["lo"] > 1.0]
        out.append(Claim(
            claim=f"1-step SAEs transfer to {cell}", chapter="04_evaluate",
            measure=f"share of the control ceiling, 95% lower bound >= {share_needed} in every block",
            result="; ".join(f"{b} {s['share']:.2f} [{s['lo']:.2f}, {s['hi']:.2f}]" for b, s in shares.items()),
            control=f"control SAEs trained on the setting's own updates ({tr.budgets[-1]} steps)",
            beats_control=len(usable) == len(blocks) and all(shares[b]["lo"] >= share_needed for b in blocks),
            positive_control=f"a ceiling at or above the transferred SAE in {len(usable)} of {len(blocks)} blocks",
            power=len(usable) / len(blocks), n="held-out prompts of 04 (n_eval)"))
    out.append(timing_claim(tm))
    return out


def timing_claim(tm: TimingResult):
    """The paper's "early interventions change the image more than late ones" as a `repro.claims.Claim`.

    Each block is early (first window's per-image change minus the last's, 95% interval above 0), late
    (below 0) or unclear; the claim holds in >= 3 of 4 blocks early, fails when even the unclear ones
    could not make up the count, and is inconclusive otherwise."""
    from repro.claims import Claim

    # each block: early (first window's change above the last's, 95% interval above 0), late (below) or unclear
    fml = tm.first_minus_last()
    side = {b: "early" if d["lo"] > 0 else "late" if d["hi"] < 0 else "unclear" for b, d in fml.items()}
    need = max(1, round(0.75 * len(side)))
    early = sum(s == "early" for s in side.values())
    unclear = sum(s == "unclear" for s in side.values())
    return Claim(
        claim="Early interventions change the image more than late ones", chapter="04_evaluate",
        measure=f"per-image change, first step window minus last, 95% bootstrap interval above 0 in at least {need} of "
                f"{len(side)} blocks",
        result="; ".join(f"{b} {d['diff']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]" for b, d in fml.items())
               + f" ({early} of {len(side)} blocks early)",
        control="the last window of the same edit on the same images", beats_control=early >= need,
        n=f"{next(iter(fml.values()))['n']} prompts a block" if fml else "",
        inconclusive=(f"{unclear} of {len(side)} blocks' intervals include no difference: they could still decide it"
                      if early < need <= early + unclear else ""))


__all__ = ["EvaluateConfig", "InLoopResult", "ReconstructionResult", "TimingResult", "TransferResult", "claims", "in_loop", "reconstruction", "seed_stability",
           "timing", "timing_claim", "transfer"]
