"""The SAE trainer on the path users run: `train_saes` end to end against its graphed step alone.

For each dictionary size, in one process on one device (issue #28, rows 1-2):
  step      the graphed training step alone (`GraphedStep`, the step `train_saes` replays),
            on batches already on the device: the ceiling of the loop;
  tensor    `train_saes` over a `TensorSource` on a device tensor, as a user trains from memory;
  store     `train_saes` over a `StoreSource` reading a page-cached store (`--store-tokens`).
Each trainer row gives its end-to-end rate (fixed costs included: b_pre's geometric median, the
three eager warm-up steps, the capture) and its steady rate (the trainer's own logged rate over
the last half of the run, `tokens_per_s`), and both as a share of the step alone.

    python benchmarks/train_speed.py --out train_speed.json                       # GPU: 5120 20480 81920
    python benchmarks/train_speed.py --device cpu --d-model 32 --n-features 64 --batch-size 64 \
        --steps 8 --store-tokens 2048 --out /tmp/t.json                            # the CPU dry run
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from repro.devices import pick_device
from repro.io import provenance, write_json_atomic
from repro.sae import SAEConfig, TensorSource, TopKSAE, TrainConfig, train_saes
from repro.sae.graphed import GraphedStep
from repro.sae.step import auto_impl, make_optimizer, resolve_compute_dtype

BLOCK = "down.2.1"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-features", type=int, nargs="+", default=[5120, 20480, 81920])
    p.add_argument("--d-model", type=int, default=1280)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--steps", type=int, default=400, help="steps of each run (the steady rate is the last half's)")
    p.add_argument("--rows", type=int, default=1 << 18, help="rows of the in-memory source (on the device)")
    p.add_argument("--store-tokens", type=int, default=1 << 18, help="tokens of the store source (0: no store row)")
    p.add_argument("--device", default="auto")
    p.add_argument("--workdir", default=None, help="where the store is written (default: a temporary folder)")
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sae(args, n: int, device) -> TopKSAE:
    cfg = SAEConfig(d_model=args.d_model, n_features=n, k=args.k, k_aux=min(256, n // 2))
    return TopKSAE(cfg, seed=0, device=device)


def step_alone(args, n: int, device, xs: torch.Tensor, impl: str) -> dict:
    """Tokens/s of the graphed step on device batches (rows of `xs` in turn), after a warm-up."""
    sae = _sae(args, n, device)
    step = GraphedStep(sae, make_optimizer(sae, 1e-4, capturable=device.type == "cuda"), impl=impl,
                       compute_dtype=resolve_compute_dtype("auto", device))
    batches = xs[: (xs.shape[0] // args.batch_size) * args.batch_size].view(-1, args.batch_size, args.d_model)
    warm = min(20, args.steps)
    for i in range(warm):
        step(batches[i % len(batches)])
    _sync(device)
    t = time.perf_counter()
    for i in range(args.steps):
        step(batches[i % len(batches)])
    _sync(device)
    return {"tokens_per_s": args.steps * args.batch_size / (time.perf_counter() - t), "graphed": step.graph is not None}


def trainer_run(args, n: int, device, source, impl: str) -> dict:
    """`train_saes` for `args.steps` steps: end-to-end and steady (last half) rates."""
    cfg = TrainConfig(steps=args.steps, lr=1e-4, impl=impl, device=str(device), log_every=max(args.steps // 2, 1),
                      checkpoint_every=0, progress=False, geometric_median_samples=32_768)
    _sync(device)
    t = time.perf_counter()
    res = train_saes({BLOCK: _sae(args, n, device)}, source, cfg)
    _sync(device)
    wall = time.perf_counter() - t
    return {"end_to_end_tokens_per_s": res.tokens / wall, "seconds": wall, "tokens": res.tokens,
            "steady_tokens_per_s": res.last_metrics[BLOCK]["tokens_per_s"], "ev_last": res.last_metrics[BLOCK]["ev"]}


def make_store(folder: Path, tokens: int, d: int, seed: int = 0) -> None:
    """A one-block store of N(0, 1) bf16 updates, 16x16 positions an image, 64 images a shard."""
    from repro.store import StoreWriter
    from repro.store.layout import FORMAT_VERSION

    side, per_shard = 16, 64
    shards = max(1, tokens // (side * side * per_shard))
    settings = {"format_version": FORMAT_VERSION, "model": "synthetic", "blocks": [BLOCK], "steps": 1,
                "guidance": 0.0, "resolution": 512, "dtype": "bf16", "compute_dtype": "fp16",
                "shard_size": per_shard, "batch_size": per_shard, "seed": seed, "prompt_kind": "synthetic",
                "store_images": False}
    info = {"prompts": {"kind": "synthetic"}, "halves": ["all"], "vae_factor": 8, "latent_shape": [4, 64, 64],
            "block_shapes": {BLOCK: {"height": side, "width": side, "channels": d, "module": "synthetic"}}}
    gen = torch.Generator().manual_seed(seed)
    with StoreWriter(folder, settings, info, shards * per_shard) as w:
        for i in range(shards):
            lo, hi = i * per_shard, (i + 1) * per_shard
            data = {BLOCK: torch.randn(per_shard, 1, 1, side * side, d, generator=gen).bfloat16()}
            w.write_shard(i, lo, hi, [f"p{j}" for j in range(lo, hi)], list(range(lo, hi)), data,
                          torch.zeros(per_shard, 4, 64, 64), nonfinite={BLOCK: 0})
        w.finish(shards)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = pick_device(args.device)
    gen = torch.Generator().manual_seed(0)
    xs = torch.randn(args.rows, args.d_model, generator=gen).to(device)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="train_speed-"))
    store = None
    if args.store_tokens:
        from repro.store import ActivationStore
        make_store(work / "store", args.store_tokens, args.d_model)
        store = ActivationStore(work / "store", verify=False)
        for shard in sorted((work / "store").rglob("*")):  # read once: the runs below read from the page cache
            if shard.is_file():
                shard.read_bytes()
    rows = []
    for n in args.n_features:
        impl = auto_impl(device, n)
        row = {"n_features": n, "impl": impl, "step": step_alone(args, n, device, xs, impl)}
        row["tensor"] = trainer_run(args, n, device, TensorSource({BLOCK: xs}, args.batch_size, seed=0), impl)
        if store is not None:
            from repro.store import StoreSource
            src = StoreSource(store, args.batch_size, blocks=[BLOCK], seed=0, device=device, verify=False)
            row["store"] = trainer_run(args, n, device, src, impl)
        ceiling = row["step"]["tokens_per_s"]
        for key in ("tensor", "store"):
            if key in row:
                row[key]["steady_share_of_step"] = row[key]["steady_tokens_per_s"] / ceiling
                row[key]["end_to_end_share_of_step"] = row[key]["end_to_end_tokens_per_s"] / ceiling
        rows.append(row)
        print(f"n={n:>6} {impl:>9}: step {ceiling:,.0f} tok/s | " + " | ".join(
            f"{key} steady {row[key]['steady_share_of_step']:.3f}x, end to end {row[key]['end_to_end_share_of_step']:.3f}x"
            for key in ("tensor", "store") if key in row), flush=True)
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    result = {"argv": sys.argv, "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "settings": {k: v for k, v in vars(args).items() if k != "out"}, "rows": rows, **provenance()}
    if args.out:
        write_json_atomic(args.out, result)
    return result


if __name__ == "__main__":
    main()
