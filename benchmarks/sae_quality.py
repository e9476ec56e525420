"""Quality beside speed: `train_saes` against EleutherAI sparsify 1.3.3 on a planted dictionary (issue #28, item 3).

The data: `n_atoms` random unit atoms in R^d, drawn with power-law (Zipf) frequencies:
each row holds exactly `k_active` distinct atoms, picked without replacement with weights
rank^-exponent (Gumbel top-k), with coefficients uniform in [0.5, 2], plus N(0, noise^2) per
channel and one common offset. The default dictionary has 0.8 x n_features atoms (4,096 for
5,120 latents): with spare latents every atom can have its own, so "atoms recovered" measures
learning, not whether the last few latents were revived. Under sampling without replacement
the commonest atoms' per-row rates saturate (rank 1 fires in most rows at k 10), so the JSON
gives the realised frequencies and their fitted log-log slope over ranks 10 .. n_atoms/2.

The rows: a pool of `--pool-rows` rows (2^22 by default: 21 GB fp32 at d 1280) generated on
the device in chunks from a seeded generator, then iterated in epochs by one `TensorSource`
order (seeded permutation per epoch) for both trainers: the same batches, the same order, the
same steps. Held-out rows come from another seed of the same dictionary. A pool, not fresh
rows per batch, so that neither trainer's time includes generating data.

The trainers, both at the same constant Adam lr (`--lr`; 0: sparsify's rule 2e-4/sqrt(n/2^14),
our `TrainConfig(lr=0)`), the same k and the same dead threshold (tokens without firing):
  ours      `train_saes` over the `TensorSource` (impl auto, CUDA graph, no checkpoints): fused
            loss on CUDA, b_pre from the geometric median, AuxK with `--k-aux` latents at 1/32,
            Adam eps 6.25e-10;
  sparsify  its `SparseCoder` in a plain loop that does what its `Trainer` does on the fvu
            path (sparsify/trainer.py, which needs a transformers model and a datasets
            dataset, so it cannot be driven on tensors): b_dec = the first batch's mean,
            decoder renormalised before each forward, loss fvu + auxk/32 (its AuxK takes
            d/2 dead latents, fixed), gradient parallel to decoder rows removed, torch Adam
            (eps 1e-8), fired = among the top-k indices, tokens-since-fired counters updated
            after each step, float32 matmul precision "high" and its bf16 autocast on CUDA.
            The loop leaves out the Trainer's per-step `float()` logging reads (a host sync
            each step), so it is if anything faster than sparsify's own Trainer. Its default
            schedule (1,000 warm-up steps, linear decay to 0) is `--sparsify-schedule trainer`.
Before the timed runs each trainer runs 8 untimed steps at the same shapes with every latent
dead (CUDA context, cuBLAS handles, Triton's JIT: per-process costs, not per-run); the timed
wall clock (synchronised) runs from building the SAE to its last step, our b_pre median and
graph capture included.

Reported per trainer: wall seconds, tokens/s end to end, FVU on the held-out rows (1 - EV,
`repro.sae.metrics.explained_variance`, one function for both: sparsify's weights are exported
into our TopKSAE, same maths: relu then top-k equals top-k then relu), atoms recovered (share
of atoms whose best decoder-column cosine is >= 0.9, also per frequency quartile), the dead
fraction by each trainer's own counters and the share of latents that never fire on held-out
rows, and the held-out L0. Then ours / sparsify tokens/s and the FVU difference.

    python benchmarks/sae_quality.py --sparsify-site SITE --out sae_quality.json        # GPU: 49M tokens a trainer
                                      # (~1.5-2.5 min on an H100: a 2,000-step run, no latent dead yet,
                                      # took 29 s in all, ours 2.2M and sparsify 1.1M tokens/s)
    python benchmarks/sae_quality.py --cpu-dry-run --sparsify-site /tmp/spsite --out /tmp/q.json  # here, < 1 min
SITE: the folder holding the installed `sparsify/` package (`pip install --no-deps --target SITE`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path

import torch

from repro.devices import pick_device
from repro.errors import ReproError
from repro.io import provenance, write_json_atomic
from repro.sae import SAEConfig, TensorSource, TopKSAE, TrainConfig, train_saes
from repro.sae.config import scaled_lr
from repro.sae.metrics import explained_variance, fires

BLOCK = "planted"
RECOVERED_COS = 0.9
AUXK_COEF = 1 / 32
DRY_RUN = dict(d_model=64, n_features=256, k=4, k_aux=32, batch_size=256, steps=600, pool_rows=1 << 14,
               heldout_rows=4096, dead_tokens=20_000, device="cpu")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--steps", type=int, default=12_000, help="training steps of each trainer (same batches)")
    p.add_argument("--n-features", type=int, default=5120)
    p.add_argument("--d-model", type=int, default=1280)
    p.add_argument("--n-atoms", type=int, default=0, help="planted atoms (0: 0.8 x n_features)")
    p.add_argument("--k", type=int, default=10, help="TopK of both SAEs")
    p.add_argument("--k-active", type=int, default=0, help="atoms per row (0: --k)")
    p.add_argument("--k-aux", type=int, default=256, help="our AuxK latents (sparsify's is fixed at d/2)")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--lr", type=float, default=0.0, help="Adam lr of both (0: 2e-4/sqrt(n/2^14), sparsify's rule)")
    p.add_argument("--sparsify-schedule", default="constant", choices=["constant", "trainer"],
                   help="constant lr, or its Trainer's default (1,000 warm-up steps, then linear decay to 0)")
    p.add_argument("--dead-tokens", type=int, default=10_000_000, help="dead after this many tokens without firing")
    p.add_argument("--exponent", type=float, default=1.0, help="Zipf exponent of the atoms' frequencies")
    p.add_argument("--noise", type=float, default=0.01, help="N(0, noise^2) per channel")
    p.add_argument("--offset", type=float, default=2.0, help="norm of the common offset")
    p.add_argument("--pool-rows", type=int, default=1 << 22, help="training rows kept on the device (cycled)")
    p.add_argument("--heldout-rows", type=int, default=1 << 16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed 8-step runs before the timed ones")
    p.add_argument("--sparsify-site", default=None, help="the folder holding the installed `sparsify/` package")
    p.add_argument("--cpu-dry-run", action="store_true", help="tiny sizes on the CPU: " +
                   " ".join(f"{k}={v}" for k, v in DRY_RUN.items()))
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.cpu_dry_run:
        for key, value in DRY_RUN.items():
            setattr(args, key, value)
        torch.set_num_threads(1)  # tiny matmuls: on a shared CPU, threads only wait for each other
    args.n_atoms = args.n_atoms or int(0.8 * args.n_features)
    args.k_active = args.k_active or args.k
    if not 1 <= args.k_active <= args.n_atoms or args.steps < 1 or args.pool_rows < args.batch_size:
        raise ReproError(f"need 1 <= k_active ({args.k_active}) <= n_atoms ({args.n_atoms}), steps >= 1 and "
                         f"pool_rows ({args.pool_rows}) >= batch_size ({args.batch_size}): change those flags")
    if not args.sparsify_site or not (Path(args.sparsify_site) / "sparsify" / "sparse_coder.py").is_file():
        raise ReproError(f"--sparsify-site {args.sparsify_site!r} holds no sparsify/ package: install it with "
                         "`pip install --no-deps --target SITE eai-sparsify==1.3.3` and pass SITE")
    return args


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------- the data
@dataclass
class Planted:
    """The dictionary: atoms [A, d] unit rows (row i has frequency rank i), offset [d], log-weights [A]."""

    atoms: torch.Tensor
    offset: torch.Tensor
    log_weights: torch.Tensor


def planted_dictionary(n_atoms: int, d: int, exponent: float, offset: float, seed: int, device) -> Planted:
    """Atoms and offset from a CPU generator (the same on every device); weights rank^-exponent."""
    gen = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d, generator=gen)
    atoms /= atoms.norm(dim=1, keepdim=True)
    off = offset * torch.randn(d, generator=gen) / d**0.5
    log_w = -exponent * torch.arange(1, n_atoms + 1, dtype=torch.float32).log()
    return Planted(atoms.to(device), off.to(device), log_w.to(device))


@torch.no_grad()
def planted_rows(dic: Planted, n_rows: int, k_active: int, noise: float, seed: int,
                 chunk: int = 1 << 14) -> tuple[torch.Tensor, torch.Tensor]:
    """(x [n_rows, d] float32, counts [A] int64: rows holding each atom), generated on the dictionary's
    device in chunks of `chunk` rows from one seeded generator."""
    device = dic.atoms.device
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.empty(n_rows, dic.atoms.shape[1], device=device)
    counts = torch.zeros(dic.atoms.shape[0], dtype=torch.int64, device=device)
    for lo in range(0, n_rows, chunk):
        m = min(chunk, n_rows - lo)
        u = torch.rand(m, dic.atoms.shape[0], generator=gen, device=device).clamp_(1e-20, 1 - 1e-7)
        # Gumbel top-k: k distinct atoms, drawn without replacement with probability ~ weight
        idx = (dic.log_weights - (-u.log_()).log_()).topk(k_active, dim=1).indices  # [m, k]
        coef = 0.5 + 1.5 * torch.rand(m, k_active, generator=gen, device=device)
        rows = torch.nn.functional.embedding_bag(idx, dic.atoms, per_sample_weights=coef, mode="sum")  # [m, d]
        rows += dic.offset + noise * torch.randn(rows.shape, generator=gen, device=device)
        x[lo:lo + m] = rows
        counts += torch.bincount(idx.flatten(), minlength=dic.atoms.shape[0])
    return x, counts


def frequency_summary(counts: torch.Tensor, n_rows: int) -> dict:
    """Realised per-row frequencies of the atoms by rank, and the log-log slope over ranks 10 .. A/2."""
    freq = counts.double().cpu() / n_rows
    lo, hi = min(10, len(freq) // 4), max(len(freq) // 2, min(10, len(freq) // 4) + 2)
    r = torch.arange(lo + 1, hi + 1, dtype=torch.float64).log()
    f = freq[lo:hi].clamp_min(1e-12).log()
    slope = float(((r - r.mean()) * (f - f.mean())).sum() / (r - r.mean()).pow(2).sum())
    return {"freq_rank1": float(freq[0]), "freq_median": float(freq.median()), "freq_min": float(freq.min()),
            "loglog_slope": slope, "slope_ranks": [lo + 1, hi], "mean_atoms_per_row": float(freq.sum())}


# ---------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def quality(sae: TopKSAE, x: torch.Tensor, atoms: torch.Tensor, chunk: int = 8192) -> dict:
    """Held-out FVU, L0 and never-fired share of `sae` on x [N, d]; recovered share of atoms [A, d]."""
    sae.eval()
    recon, fired, l0 = [], torch.zeros(sae.cfg.n_features, dtype=torch.bool, device=x.device), 0
    for lo in range(0, x.shape[0], chunk):
        vals, idx = sae.encode_topk(x[lo:lo + chunk].float())
        recon.append(sae.decode_sparse(vals, idx).float())
        on = fires(sae.cfg, vals)
        fired[idx[on]] = True
        l0 += int(on.sum())
    fvu = 1 - float(explained_variance(x, torch.cat(recon)))
    cols = sae.W_dec.float() / sae.W_dec.float().norm(dim=0, keepdim=True).clamp_min(1e-12)  # [d, n]
    best = torch.cat([(atoms[lo:lo + 1024] @ cols).max(1).values for lo in range(0, atoms.shape[0], 1024)])  # [A]
    hit = (best >= RECOVERED_COS).float().cpu()
    return {"heldout_fvu": fvu, "heldout_l0": l0 / x.shape[0], "heldout_never_fired_frac": float((~fired).float().mean()),
            "atoms_recovered": float(hit.mean()), "best_cos_median": float(best.median()),
            "recovered_by_frequency_quartile": [float(q.mean()) for q in hit.chunk(4)]}


def topk_from_sparsify(coder) -> TopKSAE:
    """sparsify's SparseCoder as our TopKSAE (repro.sae.foreign's mapping): W_enc = encoder.weight,
    b_lat = encoder.bias, W_dec = W_dec'^T, b_pre = b_dec."""
    sae = TopKSAE(SAEConfig(d_model=coder.d_in, n_features=coder.num_latents, k=coder.cfg.k,
                            k_aux=min(256, coder.num_latents)), device=coder.device)
    with torch.no_grad():
        for mine, theirs in ((sae.W_enc, coder.encoder.weight), (sae.b_lat, coder.encoder.bias),
                             (sae.W_dec, coder.W_dec.T), (sae.b_pre, coder.b_dec)):
            mine.copy_(theirs.float())
    return sae


# ---------------------------------------------------------------------------------------- trainers
def run_ours(args, pool: torch.Tensor, device, steps: int, dead_tokens: int) -> tuple[TopKSAE, dict]:
    """`train_saes` over the pool's `TensorSource` for `steps` steps; (SAE, wall seconds and rates)."""
    cfg = TrainConfig(steps=steps, lr=args.lr, impl="auto", device=str(device), cuda_graph=True, progress=False,
                      checkpoint_every=0, log_every=max(steps // 10, 1),
                      geometric_median_samples=min(32_768, pool.shape[0]))
    source = TensorSource({BLOCK: pool}, args.batch_size, seed=args.seed)
    _sync(device)
    t = time.perf_counter()
    sae = TopKSAE(SAEConfig(d_model=args.d_model, n_features=args.n_features, k=args.k,
                            k_aux=min(args.k_aux, args.n_features), dead_tokens_threshold=dead_tokens),
                  seed=args.seed, device=device)
    res = train_saes({BLOCK: sae}, source, cfg)
    _sync(device)
    wall = time.perf_counter() - t
    return sae, {"wall_s": wall, "tokens": res.tokens, "tokens_per_s": res.tokens / wall, "lr": cfg.lr or
                 scaled_lr(args.n_features), "dead_frac": float(sae.dead_mask().float().mean()),
                 "train_fvu_last_tenth": 1 - res.last_metrics[BLOCK]["ev"]}


def load_sparsify(site: str) -> types.SimpleNamespace:
    """sparsify's sparse_coder and config modules without its package __init__ (which imports its
    Trainer and with it datasets, schedulefree and transformers' schedules)."""
    pkg = types.ModuleType("sparsify")
    pkg.__path__ = [str(Path(site) / "sparsify")]
    sys.modules["sparsify"] = pkg
    return types.SimpleNamespace(coder=importlib.import_module("sparsify.sparse_coder"),
                                 config=importlib.import_module("sparsify.config"))


@contextlib.contextmanager
def _matmul_precision(value: str):
    """sparsify's Trainer.fit sets "high" (TF32 for float32 matmuls); put the caller's back after."""
    was = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(value)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(was)


def run_sparsify(sp, args, pool: torch.Tensor, device, steps: int, dead_tokens: int) -> tuple[object, dict]:
    """sparsify's SparseCoder trained as its Trainer does (fvu loss path) on the same batches as ours."""
    source = TensorSource({BLOCK: pool}, args.batch_size, seed=args.seed)
    lr = args.lr or scaled_lr(args.n_features)
    with _matmul_precision("high"):
        _sync(device)
        t = time.perf_counter()
        torch.manual_seed(args.seed)  # its Trainer seeds before building each coder
        coder = sp.coder.SparseCoder(args.d_model, sp.config.SparseCoderConfig(num_latents=args.n_features, k=args.k),
                                     device=device, dtype=torch.float32)
        opt = torch.optim.Adam(coder.parameters(), lr=lr)
        warm = min(1000, max(steps - 1, 1))  # transformers' get_linear_schedule_with_warmup(1000, steps)
        sched = (torch.optim.lr_scheduler.LambdaLR(opt, lambda s: s / warm if s < warm else
                                                   max(0.0, (steps - s) / max(1, steps - warm)))
                 if args.sparsify_schedule == "trainer" else None)
        since = torch.zeros(args.n_features, dtype=torch.long, device=device)  # its num_tokens_since_fired
        did_fire = torch.zeros(args.n_features, dtype=torch.bool, device=device)
        tokens = 0
        for step, batch in zip(range(steps), source):
            x = batch[BLOCK]
            if step == 0:
                coder.b_dec.data = x.mean(0).to(coder.dtype)
            coder.set_decoder_norm_to_unit_norm()
            out = coder(x, dead_mask=since > dead_tokens)
            did_fire[out.latent_indices.flatten()] = True
            (out.fvu + AUXK_COEF * out.auxk_loss).backward()
            coder.remove_gradient_parallel_to_decoder_directions()
            opt.step()
            opt.zero_grad()
            if sched is not None:
                sched.step()
            with torch.no_grad():
                since += x.shape[0]
                since[did_fire] = 0
                did_fire.zero_()
            tokens += x.shape[0]
        _sync(device)
        wall = time.perf_counter() - t
    return coder, {"wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall, "lr": lr,
                   "schedule": args.sparsify_schedule, "dead_frac": float((since > dead_tokens).float().mean())}


# ---------------------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    args = parse_args(argv)
    device = pick_device(args.device)
    sp = load_sparsify(args.sparsify_site)
    t0 = time.perf_counter()
    dic = planted_dictionary(args.n_atoms, args.d_model, args.exponent, args.offset, args.seed, device)
    pool, counts = planted_rows(dic, args.pool_rows, args.k_active, args.noise, args.seed + 1)
    heldout, _ = planted_rows(dic, args.heldout_rows, args.k_active, args.noise, args.seed + 2)
    _sync(device)
    data = {"n_atoms": args.n_atoms, "exponent": args.exponent, "k_active": args.k_active, "noise": args.noise,
            "offset": args.offset, "pool_rows": args.pool_rows, "heldout_rows": args.heldout_rows,
            "epochs": args.steps * args.batch_size / args.pool_rows, "generate_s": time.perf_counter() - t0,
            **frequency_summary(counts, args.pool_rows)}
    print(f"data: {args.pool_rows:,} rows x {args.d_model}, {args.n_atoms} atoms, rank-1 freq "
          f"{data['freq_rank1']:.3f}, min {data['freq_min']:.2e}, log-log slope {data['loglog_slope']:.2f}", flush=True)
    if not args.no_warmup:  # every latent dead at once: the AuxK paths are warmed up too
        run_ours(args, pool, device, 8, 0)
        run_sparsify(sp, args, pool, device, 8, 0)
    rows = {}

    def report(name: str, row: dict) -> None:  # as soon as each trainer is done: a run stopped later keeps it
        print(f"{name:>8}: {row['tokens_per_s']:>12,.0f} tok/s end to end ({row['wall_s']:.1f} s) | held-out FVU "
              f"{row['heldout_fvu']:.4f} | atoms recovered {row['atoms_recovered']:.3f} "
              f"{[round(q, 3) for q in row['recovered_by_frequency_quartile']]} | dead {row['dead_frac']:.3f}", flush=True)

    sae, rows["ours"] = run_ours(args, pool, device, args.steps, args.dead_tokens)
    rows["ours"].update(quality(sae, heldout, dic.atoms))
    report("ours", rows["ours"])
    del sae
    coder, rows["sparsify"] = run_sparsify(sp, args, pool, device, args.steps, args.dead_tokens)
    rows["sparsify"].update(quality(topk_from_sparsify(coder), heldout, dic.atoms))
    report("sparsify", rows["sparsify"])
    ours, theirs = rows["ours"], rows["sparsify"]
    compare = {"speed_ratio": ours["tokens_per_s"] / theirs["tokens_per_s"],
               "fvu_diff": ours["heldout_fvu"] - theirs["heldout_fvu"],
               "recovered_diff": ours["atoms_recovered"] - theirs["atoms_recovered"]}
    compare["target_met"] = bool(compare["speed_ratio"] >= 3 and compare["fvu_diff"] <= 0)
    print(f"ours / sparsify: {compare['speed_ratio']:.2f}x tokens/s, FVU {compare['fvu_diff']:+.4f}, "
          f"recovered {compare['recovered_diff']:+.3f} (target >= 3x, FVU no worse: "
          f"{'met' if compare['target_met'] else 'missed'})", flush=True)
    result = {"argv": sys.argv, "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "settings": {k: v for k, v in vars(args).items() if k != "out"}, "data": data, "rows": rows,
              "compare": compare, **provenance()}
    if args.out:
        write_json_atomic(args.out, result)
    return result


if __name__ == "__main__":
    try:
        main()
    except ReproError as exc:
        sys.exit(f"sae_quality: error: {exc}")
