"""Training throughput of the TopK SAE (tokens/s) per dictionary size, on any device.

Times the real training step (`repro.sae.step.train_step`: loss, backward, decoder-gradient
projection, Adam, renormalisation, dead counters) on random batches kept on the device.
`--dead-frac` forces that fraction of latents to count as dead so the AuxK path runs.

    python benchmarks/sae_speed.py --n-features 5120 20480 --steps 100 --out sae_speed.json
    python benchmarks/sae_speed.py --device cpu --d-model 64 --n-features 256 --batch-size 256 --steps 5

Compare with /work/shared/tools/sae_dense_ref.py (dense bf16 step: 1.17M / 0.55M tokens/s
on an H100 at 5120 / 20480 features).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from repro.devices import pick_device
from repro.io import provenance, write_json_atomic
from repro.sae.config import SAEConfig
from repro.sae.model import TopKSAE
from repro.sae.step import make_optimizer, resolve_compute_dtype, train_step


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
    p.add_argument("--impl", default="fast", choices=["fast", "reference"])
    p.add_argument("--dead-frac", type=float, default=0.1, help="fraction of latents forced dead (AuxK active)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write results as JSON here")
    return p.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_one(args: argparse.Namespace, n: int, device: torch.device, cdt: torch.dtype) -> dict:
    """Time `args.steps` steps at `n` features; returns tokens/s and the last loss."""
    cfg = SAEConfig(d_model=args.d_model, n_features=n, k=args.k, k_aux=args.k_aux)
    sae = TopKSAE(cfg, seed=args.seed, device=device)
    opt = make_optimizer(sae)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    xs = [torch.randn(args.batch_size, args.d_model, generator=gen).to(device) for _ in range(8)]
    dead = (torch.rand(n, generator=gen) < args.dead_frac).to(device)
    for i in range(args.warmup):
        train_step(sae, opt, xs[i % 8], impl=args.impl, compute_dtype=cdt, force_dead=dead)
    _sync(device)
    t0 = time.perf_counter()
    for i in range(args.steps):
        out = train_step(sae, opt, xs[i % 8], impl=args.impl, compute_dtype=cdt, force_dead=dead)
    _sync(device)
    seconds = time.perf_counter() - t0
    return {
        "n_features": n,
        "tokens_per_s": args.steps * args.batch_size / seconds,
        "ms_per_step": 1e3 * seconds / args.steps,
        "last_loss": out.loss.item(),
        "dead_latents": int(dead.sum()),
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = pick_device(args.device)
    cdt = resolve_compute_dtype(args.dtype, device)
    results = []
    for n in args.n_features:
        row = bench_one(args, n, device, cdt)
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
