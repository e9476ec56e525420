"""Toy SAE sweep: expansion {4, 8, 16} x k {10, 16}, trained as chapter 03 trains, against its
convergence criterion (issue #27, item 5).

The data are the toy's block updates collected the way chapter 02 collects them
(`repro.collect.collect` into a store, the profile's model, prompts and sampling) for
`--blocks` (default up.0.1), and held-out updates captured the way chapter 04 captures them
(`repro.evaluate.capture.capture_eval_updates`: the profile's eval prompts, seeds from
100,000). Every (expansion, k) SAE is built and trained exactly as 03 builds and trains its
SAEs: `build_block_saes` (AuxK 256 capped at n_features, the profile's dead_tokens),
`store_source` at the profile's `sae_batch`, `TrainConfig(lr=profile.sae_lr)` (the toy's 0:
2e-4 / sqrt(n_features / 2^14)), the geometric-median b_pre, 50 stats batches after training.

Reported per (block, expansion, k):
  held-out EV, L0 and never-fired share (`repro.evaluate.reconstruction.evaluate_reconstruction`,
    no bootstrap), and the held-out EV of the same SAE at init (the control: training must beat it);
  03's criterion (`repro.sae.stability.convergence`): training EV of the last logging interval,
    at half the steps, the gain over that last doubling (< 0.01), the median decoder cosine to
    init (<= 0.15), converged or not; the dead fraction by the trainer's counters;
  where the cosine lives (`cosine_by_subspace`): inside the held-out updates' principal subspace
    (99 % of their variance) or outside it, where the data never push a column;
  why the cosine is what it is: the per-column cosines to init (`init_cosines`), at the end
    and at half the steps (the checkpoint written there), split by how often each latent
    fired on the stats batches (`FeatureStats.count`, the training tokens after training):
    latents that never fired, then the quartiles of the ones that did, rarest first.
A column that had moved to an unrelated direction would sit near cosine 0 (|cos| ~ 1/sqrt(d):
0.09 at the toy's d 128), so a median of 0.2 means most columns kept part of their start.

    python benchmarks/toy_sae_sweep.py --device cpu --steps 3000 --out benchmarks/results/toy_sae_sweep_cpu.json
        # one thread: 856 s wall on a busy 2-core machine (~590 s of CPU time), 116 s of it collecting
        # 2,000 + 256 prompts; per SAE 95-155 s of wall, x16 the slowest per step
    python benchmarks/toy_sae_sweep.py --prompts 32 --heldout 8 --steps 40 --expansions 2 --ks 4   # seconds
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from repro.collect import CollectConfig, collect
from repro.devices import pick_device
from repro.errors import ReproError
from repro.evaluate.capture import capture_eval_updates
from repro.evaluate.reconstruction import evaluate_reconstruction
from repro.io import provenance, write_json_atomic
from repro.models.loading import load_pipeline
from repro.profiles import get_profile
from repro.prompts import open_prompts
from repro.sae import TrainConfig, build_block_saes, train_saes
from repro.sae.checkpoint import checkpoint_name
from repro.sae.io import load_sae
from repro.sae.stability import convergence, init_cosines, init_decoder
from repro.sae.train import CHECKPOINTS, METRICS_FILE, training_lr
from repro.store import store_source

HELDOUT_SEED = 100_000  # chapter 04's: training prompts use seeds 0..
STATS_BATCHES = 50  # chapter 03's
LOG_EVERY = 50  # chapter 03's


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="toy", help="a toy profile (toy, toy-full): its models, prompts, batch, lr")
    p.add_argument("--blocks", default="up.0.1", help="comma list of blocks")
    p.add_argument("--expansions", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--ks", type=int, nargs="+", default=[10, 16])
    p.add_argument("--steps", type=int, default=0, help="training steps of every SAE (0: the profile's sae_steps)")
    p.add_argument("--prompts", type=int, default=0, help="training prompts collected (0: the profile's collect_prompts)")
    p.add_argument("--heldout", type=int, default=256, help="held-out prompts (the profile's eval prompts)")
    p.add_argument("--seed", type=int, default=0, help="init seed of the SAEs and the data order's seed")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (a shared machine: 1)")
    p.add_argument("--work", default="", help="folder for the store and the runs (empty: a temporary one, removed)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if min(args.expansions) < 1 or min(args.ks) < 1 or args.steps < 0 or args.prompts < 0 or args.heldout < 1:
        raise ReproError("expansions, ks and --heldout must be >= 1, --steps and --prompts >= 0")
    return args


# ---------------------------------------------------------------------------------------- data
def collect_updates(prof, blocks: list[str], n_prompts: int, n_heldout: int, device, folder: Path):
    """(store of the training updates, {block: held-out updates [N, H, W, C]}), as 02 and 04 get them."""
    pipe = load_pipeline(prof.turbo_model, device=str(device), dtype=prof.dtype)
    cfg = CollectConfig(out=folder / "store", model=prof.turbo_model, prompts=prof.prompts, n_prompts=n_prompts,
                        blocks=tuple(blocks), steps=prof.turbo.steps, guidance=prof.turbo.guidance,
                        resolution=prof.turbo.resolution, batch_size=32, shard_size=500, dtype="bf16",
                        device=str(device), model_dtype=prof.dtype)
    store = collect(cfg, pipe=pipe, progress=False)
    prompts = open_prompts(prof.eval_prompts).get(0, n_heldout)
    seeds = [HELDOUT_SEED + i for i in range(n_heldout)]
    held = capture_eval_updates(pipe, prompts, seeds, prof.turbo, store.blocks, batch_size=16)
    return store, {b: held[b]["all"][0] for b in store.blocks}  # step 0 of the 1-step model


# ---------------------------------------------------------------------------------------- analysis
def _median(t: torch.Tensor) -> float | None:
    return float(t.median()) if len(t) else None


def cosine_by_firing(cos: torch.Tensor, cos_half: torch.Tensor, count: torch.Tensor, n_tokens: int) -> list[dict]:
    """Median cosine to init (at the end and at half the steps) of the latents that never fired, then of
    the quartiles of those that did, rarest first. cos, cos_half [n] float; count [n] int64 fires over
    n_tokens tokens."""
    never = count == 0
    groups = [("never fired", never.nonzero().flatten())]
    fired = (~never).nonzero().flatten()
    order = fired[count[fired].argsort(stable=True)]  # rarest first
    groups += [(f"Q{i + 1} of fired", part) for i, part in enumerate(order.chunk(4)) if len(part)]
    rows = []
    for name, idx in groups:
        freq = count[idx].double() / n_tokens
        rows.append({"group": name, "n": len(idx), "freq_min": float(freq.min()) if len(idx) else None,
                     "freq_max": float(freq.max()) if len(idx) else None, "median_cos": _median(cos[idx]),
                     "median_cos_half": _median(cos_half[idx]), "share_above_0.15": float((cos[idx] > 0.15).float().mean())
                     if len(idx) else None})
    return rows


def cosine_by_subspace(sae, updates: torch.Tensor, share: float = 0.99) -> dict:
    """Where the cosine to init lives: the cosine of each decoder column with its start, split into
    the part inside the updates' principal subspace (the fewest directions holding `share` of their
    variance) and the part outside it, cos = cos_in + cos_out; medians over columns. A start kept
    only outside the subspace would be a part the data never push on; kept inside, the latents
    settled near where they began. updates [..., d] (held-out)."""
    x = updates.reshape(-1, updates.shape[-1]).float().cpu()
    x = x - x.mean(0)
    eigval, eigvec = torch.linalg.eigh(x.T @ x / len(x))
    eigval, eigvec = eigval.flip(0), eigvec.flip(1)
    rank = int((eigval.cumsum(0) / eigval.sum() < share).sum()) + 1
    basis = eigvec[:, :rank]  # [d, rank]
    now = sae.W_dec.detach().float().cpu()  # [d, n]
    start = init_decoder(sae)
    inside = lambda w: basis @ (basis.T @ w)  # noqa: E731
    norms = now.norm(dim=0) * start.norm(dim=0)
    cos_in = (inside(now) * inside(start)).sum(0) / norms
    cos_out = ((now - inside(now)) * (start - inside(start))).sum(0) / norms
    return {"variance_share": share, "rank": rank, "d": int(x.shape[1]), "median_cos_inside": float(cos_in.median()),
            "median_cos_outside": float(cos_out.median()),
            "median_start_norm_outside": float(((start - inside(start)).norm(dim=0) / start.norm(dim=0)).median()),
            "median_norm_outside": float(((now - inside(now)).norm(dim=0) / now.norm(dim=0)).median())}


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Rank correlation of a and b [n] (ties broken by order: enough for a sign and a size)."""
    ra, rb = (v.double().argsort().argsort().double() for v in (a, b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp_min(1e-12))


# ---------------------------------------------------------------------------------------- training
def train_config(store, heldout: torch.Tensor, block: str, expansion: int, k: int, prof, steps: int, seed: int,
                 device, folder: Path) -> dict:
    """Train one SAE of `block` as 03 does and measure it; the row of the table."""
    build = dict(k=k, expansion=expansion, dead_tokens=prof.dead_tokens, seed=seed, blocks=[block])
    sae = build_block_saes(store, **build)[block]
    at_init = evaluate_reconstruction(build_block_saes(store, **build)[block].to(device), heldout, n_boot=0)
    source = store_source(store, prof.sae_batch, seed=seed, blocks=[block], device=device)
    half = max(steps // 2, 1)
    cfg = TrainConfig(steps=steps, lr=prof.sae_lr, device=str(device), log_every=min(LOG_EVERY, half),
                      checkpoint_every=half, keep_checkpoints=3, stats_batches=STATS_BATCHES, progress=False,
                      geometric_median_samples=min(32_768, store.n_images * 64))
    t = time.perf_counter()
    train_saes({block: sae}, source, cfg, out_dir=folder, metadata={"sae_set": f"x{expansion}-k{k}"})
    train_s = time.perf_counter() - t
    log = pd.read_json(folder / METRICS_FILE, lines=True)
    conv = convergence(log, {block: sae}).loc[block]
    held = evaluate_reconstruction(sae, heldout, n_boot=0)
    sae_half = load_sae(folder / CHECKPOINTS / checkpoint_name(half) / block)
    sae_half.metadata["init_seed"] = sae.metadata["init_seed"]
    cos, cos_half = init_cosines(sae), init_cosines(sae_half)
    stats = sae.feature_stats
    count = stats.count.cpu()
    half_ev = next(v for key, v in conv.items() if key.startswith("EV at step"))
    return {"block": block, "expansion": expansion, "k": k, "n_features": sae.cfg.n_features,
            "lr": training_lr(cfg, sae), "steps": steps, "train_s": train_s,
            "heldout_ev": held.ev, "heldout_ev_at_init": at_init.ev, "heldout_l0": held.l0,
            "heldout_never_fired_frac": held.dead_fraction, "dead_frac": float(sae.dead_mask().float().mean()),
            "train_ev": float(conv["EV"]), "train_ev_half": float(half_ev), "half_step": half,
            "ev_gain_last_doubling": float(conv["EV gain over the last doubling"]),
            "median_cos_to_init": float(cos.median()), "median_cos_to_init_half": float(cos_half.median()),
            "converged": bool(conv["converged"]), "ev_criterion_met": bool(conv["EV gain over the last doubling"] < 0.01),
            "cos_vs_firing_spearman": spearman(cos, count), "stats_tokens": stats.n_tokens,
            "cos_by_firing": cosine_by_firing(cos, cos_half, count, stats.n_tokens),
            "cos_by_subspace": cosine_by_subspace(sae, heldout)}


def print_row(row: dict) -> None:
    groups = " ".join(f"{g['median_cos']:.2f}" if g["median_cos"] is not None else "-" for g in row["cos_by_firing"])
    print(f"{row['block']:>8} x{row['expansion']:<2} k{row['k']:<2} | held-out EV {row['heldout_ev']:.3f} "
          f"(init {row['heldout_ev_at_init']:.3f}) | gain {row['ev_gain_last_doubling']:+.4f} | cos to init "
          f"{row['median_cos_to_init']:.3f} (half {row['median_cos_to_init_half']:.3f}) | never/Q1..Q4 {groups} | "
          f"dead {row['dead_frac']:.3f} | {row['train_s']:.0f} s", flush=True)


def sweep(store, heldout: dict, prof, expansions, ks, steps: int, seed: int, device, folder: Path) -> list[dict]:
    """One row per (block, expansion, k), each trained into its own subfolder of `folder`."""
    rows = []
    for block in store.blocks:
        for expansion in expansions:
            for k in ks:
                rows.append(train_config(store, heldout[block], block, expansion, k, prof, steps, seed, device,
                                         folder / f"{block}-x{expansion}-k{k}"))
                print_row(rows[-1])
    return rows


# ---------------------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    args = parse_args(argv)
    device = pick_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    prof = get_profile(args.profile)
    steps, n_prompts = args.steps or prof.sae_steps, args.prompts or prof.collect_prompts
    blocks = [b.strip() for b in args.blocks.split(",") if b.strip()]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.work or tmp)
        store, heldout = collect_updates(prof, blocks, n_prompts, args.heldout, device, folder)
        collect_s = time.perf_counter() - t0
        print(f"{store.n_images} training images ({store.n_images * store.tokens_per_image(store.blocks[0]):,} tokens "
              f"a block), {args.heldout} held-out, in {collect_s:.0f} s; {steps} steps of {prof.sae_batch}", flush=True)
        rows = sweep(store, heldout, prof, args.expansions, args.ks, steps, args.seed, device, folder)
    result = {"torch_device": str(device), "threads": torch.get_num_threads(),  # argv, device: provenance()
              "settings": {"profile": prof.name, "blocks": store.blocks, "expansions": args.expansions, "ks": args.ks,
                           "steps": steps, "batch": prof.sae_batch, "train_prompts": store.n_images,
                           "heldout_prompts": args.heldout, "dead_tokens": prof.dead_tokens, "seed": args.seed,
                           "stats_batches": STATS_BATCHES, "criterion": {"max_ev_gain": 0.01, "max_median_cos": 0.15}},
              "collect_s": collect_s, "wall_s": time.perf_counter() - t0, "rows": rows, **provenance()}
    if args.out:
        write_json_atomic(args.out, result)
    return result


if __name__ == "__main__":
    try:
        main()
    except ReproError as exc:
        sys.exit(f"toy_sae_sweep: error: {exc}")
