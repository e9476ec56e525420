"""Training throughput of the TopK SAE (tokens/s) per dictionary size, on any device.

Times the real training step (`repro.sae.step.train_step`: loss, backward, decoder-gradient
projection, Adam, renormalisation, dead counters) on random batches kept on the device.
`--dead-frac` forces that fraction of latents to count as dead so the AuxK path runs.

    python benchmarks/sae_speed.py --n-features 5120 20480 --steps 100 --out sae_speed.json
    python benchmarks/sae_speed.py --n-features 5120 20480 81920 --impl fused --graph --out fused.json
    python benchmarks/sae_speed.py --device cpu --d-model 64 --n-features 256 --batch-size 256 --steps 5

Compare with /work/shared/tools/sae_dense_ref.py (dense bf16 step: 1.17M / 0.55M tokens/s
on an H100 at 5120 / 20480 features).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from repro.devices import pick_device
from repro.io import provenance, write_json_atomic
from repro.sae.config import SAEConfig
from repro.sae.graphed import GraphedStep
from repro.sae.model import TopKSAE
from repro.sae.step import LOSS_IMPLS, make_optimizer, resolve_compute_dtype, train_step


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-features", type=int, nargs="+", default=[5120, 20480], help="dictionary sizes to time")
    p.add_argument("--d-model", type=int, default=1280)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--k-aux", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--steps", type=int, default=100, help="timed steps per config")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="compute dtype")
    p.add_argument("--impl", default="fast", choices=sorted(LOSS_IMPLS))
    p.add_argument("--graph", action="store_true", help="replay the step from a CUDA graph (repro.sae.graphed)")
    p.add_argument("--profile", action="store_true", help="also record 10 steps with torch.profiler: GPU busy time "
                   "per step and the kernels that take it")
    p.add_argument("--profile-top", type=int, default=12, help="kernels listed by --profile")
    p.add_argument("--dead-frac", type=float, default=0.1, help="fraction of latents forced dead (AuxK active)")
    p.add_argument("--dead-from", default="mask", choices=["mask", "counters"],
                   help="mask: a fixed dead mask (force_dead, as the peer's benchmark); counters: those latents' "
                   "dead-token counters start past the threshold, and the step finds them as in training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write results as JSON here")
    return p.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_one(args: argparse.Namespace, n: int, device: torch.device, cdt: torch.dtype,
              loss_kw: dict | None = None) -> dict:
    """Time `args.steps` steps at `n` features (the loss given `loss_kw`); returns tokens/s and the last loss."""
    cfg = SAEConfig(d_model=args.d_model, n_features=n, k=args.k, k_aux=args.k_aux)
    sae = TopKSAE(cfg, seed=args.seed, device=device)
    opt = make_optimizer(sae, capturable=args.graph)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    xs = [torch.randn(args.batch_size, args.d_model, generator=gen).to(device) for _ in range(8)]
    dead = (torch.rand(n, generator=gen) < args.dead_frac).to(device)
    force_dead = dead
    if args.dead_from == "counters":
        sae.tokens_since_fired.masked_fill_(dead, 2 ** 40)  # dead until they fire
        force_dead = None
    if args.graph:
        step = GraphedStep(sae, opt, impl=args.impl, compute_dtype=cdt, force_dead=force_dead, loss_kw=loss_kw)
    else:
        step = lambda x: train_step(sae, opt, x, impl=args.impl, compute_dtype=cdt, force_dead=force_dead,  # noqa: E731
                                    loss_kw=loss_kw)
    losses = []
    for i in range(args.warmup):
        losses.append(step(xs[i % 8]).loss.detach().clone())
    _sync(device)
    t0 = time.perf_counter()
    for i in range(args.steps):
        out = step(xs[i % 8])
    _sync(device)
    seconds = time.perf_counter() - t0
    row = {
        "n_features": n,
        "tokens_per_s": args.steps * args.batch_size / seconds,
        "ms_per_step": 1e3 * seconds / args.steps,
        "last_loss": out.loss.item(),
        "warmup_losses": [float(v) for v in losses],
        "dead_latents": int(dead.sum()) if force_dead is not None else int(out.dead.sum()),
        "dead_from": args.dead_from,
        "graph": bool(args.graph and getattr(step, "graph", None) is not None),
    }
    if args.profile:
        row["profile"] = profile_steps(step, xs, device, top=args.profile_top)
    return row


def profile_steps(step, xs, device: torch.device, n: int = 10, top: int = 12) -> dict:
    """`n` steps under torch.profiler: wall ms per step, summed kernel ms per step, the top kernels."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _sync(device)
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        for i in range(n):
            step(xs[i % len(xs)])
        _sync(device)
    wall = (time.perf_counter() - t0) / n
    events = prof.key_averages()
    attr = "device_time_total" if hasattr(events[0], "device_time_total") else "cuda_time_total"
    kernels = [e for e in events if getattr(e, attr, 0) > 0 and e.key and not e.key.startswith(("aten::", "cuda", "Memcpy"))]
    kernels.sort(key=lambda e: getattr(e, attr), reverse=True)
    gpu_us = sum(getattr(e, attr) for e in kernels)
    return {
        "steps": n,
        "wall_ms_per_step": round(1e3 * wall, 3),
        "kernel_ms_per_step": round(gpu_us / 1e3 / n, 3),
        "kernel_launches_per_step": round(sum(e.count for e in kernels) / n, 1),
        "top_kernels": [{"name": e.key[:300], "ms_per_step": round(getattr(e, attr) / 1e3 / n, 4),
                         "calls_per_step": e.count / n} for e in kernels[:top]],
    }


def main(argv=None, loss_kw: dict | None = None) -> dict:
    """Run the benchmark of `argv`; `loss_kw`: further arguments of the loss (`fused_check.py` forces choices)."""
    args = parse_args(argv)
    device = pick_device(args.device)
    cdt = resolve_compute_dtype(args.dtype, device)
    results = []
    for n in args.n_features:
        row = bench_one(args, n, device, cdt, loss_kw)
        results.append(row)
        print(
            f"{args.impl:9s} n={n:6d} d={args.d_model} k={args.k} k_aux={args.k_aux} B={args.batch_size} "
            f"{str(cdt).removeprefix('torch.')} on {device}: {row['tokens_per_s']:,.0f} tokens/s "
            f"({row['ms_per_step']:.2f} ms/step)",
            flush=True,
        )
    report = {
        "config": {key: value for key, value in vars(args).items() if key != "out"},
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "compute_dtype": str(cdt).removeprefix("torch."),
        "results": results,
        "provenance": provenance(),
    }
    if args.out:
        write_json_atomic(args.out, report)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
