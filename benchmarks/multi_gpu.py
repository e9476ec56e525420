"""Scaling over the GPUs of one machine: collection and SAE training, 1 GPU vs N, in one launch each.

Run under torchrun by `benchmarks/multi_gpu.sh OUTDIR` (which says what each part does):

    torchrun --nproc-per-node N benchmarks/multi_gpu.py collect --work W --json OUT/multi_gpu.json
    torchrun --nproc-per-node N benchmarks/multi_gpu.py train --mode block --store S --work W --json ...
    torchrun --nproc-per-node N benchmarks/multi_gpu.py train --mode data  --store S --work W --json ...

Each launch first measures one GPU (rank 0 alone, the other ranks waiting at a barrier, so
the model is built once per launch), then all N together, with the same prompts / the
same SAEs. Rank 0 merges its section into the JSON file atomically, so a later part that
fails or times out leaves the earlier figures. Warm-up is outside every timing:
collection times start after one generated batch per rank; training rates leave out the
first `--skip-logs` logging intervals of `metrics.jsonl` (first batch read, cuBLAS set-up).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import traceback
from pathlib import Path

import torch


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _merge_json(path: Path, key: str, value) -> None:
    """Put `value` under `key` of the JSON file at `path` (rank 0 only; atomic)."""
    from repro.io import provenance, write_json_atomic

    data = json.loads(path.read_text()) if path.is_file() else {}
    data[key] = value
    data.setdefault("provenance", {})[key] = provenance()  # each part is its own launch and command
    write_json_atomic(path, data)
    print(f"[multi_gpu] {key}: {json.dumps(value, default=str)[:2000]}", flush=True)


def _efficiency(rate_1: float | None, rate_n: float | None, n: int) -> float | None:
    return None if not rate_1 or not rate_n else rate_n / (n * rate_1)


# ---------------------------------------------------------------------------------------
# Collection


def _store_records(folder: Path) -> tuple[dict, list[dict]]:
    manifest = json.loads((folder / "manifest.json").read_text())
    # "device" (cuda:R of the rank that wrote it) is recorded per shard, not in the shard's bytes
    keys = ("index", "file", "start", "stop", "bytes", "sha256", "prompts_sha256", "nonfinite")
    return manifest, [{k: r.get(k) for k in keys} for r in sorted(manifest["shards"], key=lambda r: r["index"])]


def compare_stores(one: Path, many: Path) -> dict:
    """Are the N-GPU store and the 1-GPU store the same? Manifest settings/info, each shard's
    record and sha256; for shards whose bytes differ, the largest difference per block."""
    from safetensors.torch import load_file

    m1, r1 = _store_records(one)
    m2, r2 = _store_records(many)
    same_sha = [a["index"] for a, b in zip(r1, r2) if a == b]
    differ = [a["index"] for a, b in zip(r1, r2) if a != b]
    out = {"settings_equal": m1["settings"] == m2["settings"], "info_equal": m1["info"] == m2["info"],
           "shards": len(r1), "shards_n": len(r2), "shards_bitwise_equal": len(same_sha), "shards_differing": differ,
           "complete": [m1.get("complete"), m2.get("complete")]}
    diffs = {}
    for index in differ:
        a, b = load_file(one / r1[index]["file"]), load_file(many / r2[index]["file"])
        for name in a:
            if name in b and a[name].shape == b[name].shape and a[name].is_floating_point():
                x, y = a[name].float(), b[name].float()
                d = diffs.setdefault(name, {"max_abs": 0.0, "max_rel_norm": 0.0})
                d["max_abs"] = max(d["max_abs"], float((x - y).abs().max()))
                d["max_rel_norm"] = max(d["max_rel_norm"], float((x - y).norm() / x.norm().clamp_min(1e-30)))
            elif name in b and not torch.equal(a[name], b[name]):
                diffs.setdefault(name, {})["equal"] = False
    out["per_tensor_difference_of_differing_shards"] = diffs
    out["equal"] = out["settings_equal"] and out["info_equal"] and not differ and len(r1) == len(r2)
    return out


def run_collect(args) -> None:
    from repro.collect import CollectConfig, collect
    from repro.dist import env
    from repro.generate import Sampling, generate
    from repro.models.loading import load_pipeline
    from repro.prompts import open_prompts, seeds_for

    env.init_from_env()
    rank, world = env.rank(), env.world_size()
    device = str(env.local_device())
    t0 = time.perf_counter()
    pipe = load_pipeline(args.model, device=device, dtype=args.model_dtype)
    _sync()
    build_s = time.perf_counter() - t0
    prompts = open_prompts("shapes").get(0, args.batch_size)
    sampling = Sampling(steps=args.steps, resolution=args.resolution)
    generate(pipe, prompts, seeds_for(0, args.batch_size), sampling, output="latent")  # warm-up
    _sync()
    stores = {1: args.work / "store-1gpu", world: args.work / f"store-{world}gpu"}
    if rank == 0:
        for folder in stores.values():
            shutil.rmtree(folder, ignore_errors=True)

    def cfg(out: Path) -> CollectConfig:
        return CollectConfig(out=out, model=args.model, n_prompts=args.n_prompts, steps=args.steps,
                             resolution=args.resolution, batch_size=args.batch_size, shard_size=args.shard_size,
                             dtype=args.dtype, device=device, model_dtype=args.model_dtype)

    result = {"model": args.model, "n_prompts": args.n_prompts, "batch_size": args.batch_size,
              "shard_size": args.shard_size, "resolution": args.resolution, "steps": args.steps,
              "store_dtype": args.dtype, "model_dtype": str(pipe.unet.dtype), "gpus": world,
              "model_build_s_rank0": build_s}
    env.barrier()
    if rank == 0:  # one GPU: rank 0 alone, the others wait
        try:
            t0 = time.perf_counter()
            collect(cfg(stores[1]), pipe, progress=False, rank=0, world_size=1)
            _sync()
            s = time.perf_counter() - t0
            result["one_gpu"] = {"seconds": s, "images_per_s": args.n_prompts / s}
        except Exception as exc:  # noqa: BLE001 - recorded, and the N-GPU part still runs
            result["one_gpu"] = {"error": repr(exc), "traceback": traceback.format_exc()[-3000:]}
        _merge_json(args.json, "collection", result)
    env.barrier()
    t0 = time.perf_counter()
    collect(cfg(stores[world]), pipe, progress=False)  # every rank: shards i % N == rank, merged at the end
    _sync()
    env.barrier()
    s = time.perf_counter() - t0
    if rank == 0:
        result["n_gpus"] = {"gpus": world, "seconds": s, "images_per_s": args.n_prompts / s}
        result["efficiency"] = _efficiency(result.get("one_gpu", {}).get("images_per_s"),
                                           result["n_gpus"]["images_per_s"], world)
        _merge_json(args.json, "collection", result)
        try:
            result["stores"] = compare_stores(stores[1], stores[world])
        except Exception as exc:  # noqa: BLE001
            result["stores"] = {"error": repr(exc)}
        _merge_json(args.json, "collection", result)
    env.shutdown()


# ---------------------------------------------------------------------------------------
# Training


def steady_rates(metrics: Path, skip: int) -> dict[str, float]:
    """Tokens/s per block over the logging intervals of `metrics.jsonl` after the first `skip`."""
    rows: dict[str, list[dict]] = {}
    for line in metrics.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows.setdefault(row["block"], []).append(row)
    rates = {}
    for block, rs in rows.items():
        rs.sort(key=lambda r: r["step"])
        tokens = seconds = 0.0
        for i in range(max(1, skip), len(rs)):  # row 0's interval holds the start-up
            prev, row = rs[i - 1], rs[i]
            dt = row["tokens"] - prev["tokens"]
            tokens, seconds = tokens + dt, seconds + dt / row["tokens_per_s"]
        rates[block] = tokens / seconds if seconds else float("nan")
    return rates


def synthetic_store(folder: Path, blocks: list[str], n_images: int, shard_size: int, channels: int, side: int) -> Path:
    """A store of random bf16 updates (when no collected store is there: training still gets measured)."""
    from repro.store import StoreWriter
    from repro.store.layout import FORMAT_VERSION

    settings = {"format_version": FORMAT_VERSION, "model": "synthetic", "blocks": blocks, "steps": 1, "guidance": 0.0,
                "resolution": side * 32, "dtype": "bf16", "compute_dtype": "float16", "shard_size": shard_size,
                "batch_size": shard_size, "seed": 0, "prompt_kind": "synthetic", "store_images": False}
    info = {"block_shapes": {b: {"height": side, "width": side, "channels": channels, "module": "synthetic"}
                             for b in blocks},
            "halves": ["all"], "latent_shape": [4, 1, 1], "prompts": {"kind": "synthetic"}, "vae_factor": 8}
    gen = torch.Generator().manual_seed(0)
    n_shards = -(-n_images // shard_size)
    with StoreWriter(folder, settings, info, n_images) as writer:
        for i in range(n_shards):
            lo, hi = i * shard_size, min((i + 1) * shard_size, n_images)
            tensors = {b: torch.randn(hi - lo, 1, 1, side * side, channels, generator=gen).bfloat16() for b in blocks}
            writer.write_shard(i, lo, hi, [""] * (hi - lo), list(range(lo, hi)), tensors, torch.zeros(hi - lo, 4, 1, 1))
        writer.finish(n_shards)
    return folder


def run_train(args) -> None:
    from repro.dist import env
    from repro.dist.train import store_batches, train_distributed
    from repro.sae import TrainConfig, build_block_saes, train_saes
    from repro.store import ActivationStore, store_source

    env.init_from_env()
    rank, world = env.rank(), env.world_size()
    device = env.local_device()
    key = f"train_{args.mode}"
    stores = [s for s in args.store if (s / "manifest.json").is_file()]
    store_note = "collected"
    if not stores:
        store_note = "synthetic (no collected store)"
        if rank == 0:
            shutil.rmtree(args.work / "synthetic", ignore_errors=True)
            synthetic_store(args.work / "synthetic", ["down.2.1", "mid.0", "up.0.0", "up.0.1"], args.synthetic_images,
                            max(1, min(64, args.synthetic_images // 8)), args.synthetic_channels, 16)
        env.barrier()
        stores = [args.work / "synthetic"]
    store = ActivationStore(stores[0])
    blocks = store.blocks if args.mode == "block" else store.blocks[:1]

    def saes():
        return build_block_saes(store, k=args.k, k_aux=args.k_aux, expansion=args.expansion,
                                dead_tokens=args.dead_tokens, seed=0, blocks=blocks)

    def cfg(on: str = "auto") -> TrainConfig:
        return TrainConfig(steps=args.steps, log_every=args.log_every, checkpoint_every=0, device=on, progress=False)

    result = {"mode": args.mode, "store": str(stores[0]), "store_kind": store_note, "blocks": blocks,
              "sae": {"d_model": store.block_shape(blocks[0])[2], "expansion": args.expansion, "k": args.k,
                      "k_aux": args.k_aux}, "batch_size": args.batch_size,
              "steps": args.steps, "log_every": args.log_every, "skipped_logs": args.skip_logs, "gpus": world}
    out = args.work / key
    env.barrier()
    if rank == 0:  # one GPU: what `repro train` does in one process
        try:
            shutil.rmtree(out / "1gpu", ignore_errors=True)
            # all of the store, as one process reads it (store_batches would give rank 0's part)
            source = store_source(store, args.batch_size, blocks=blocks, device=device)
            train_saes(saes(), source, cfg(str(device)), out_dir=out / "1gpu")
            rates = steady_rates(out / "1gpu" / "metrics.jsonl", args.skip_logs)
            result["one_gpu"] = {"tokens_per_s_per_block": rates, "mean": sum(rates.values()) / len(rates)}
        except Exception as exc:  # noqa: BLE001 - recorded, and the N-GPU part still runs
            result["one_gpu"] = {"error": repr(exc), "traceback": traceback.format_exc()[-3000:]}
        _merge_json(args.json, key, result)
    env.barrier()
    runs = [("n_gpus", args.batch_size)] + ([("n_gpus_weak", args.batch_size * world)] if args.also_weak else [])
    for name, batch in runs:  # strong scaling (same global batch), then weak (N x the batch)
        if rank == 0:
            shutil.rmtree(out / name, ignore_errors=True)
        env.barrier()
        source, split = store_batches(store, batch, parallel=args.mode, device=device)
        train_distributed(saes(), source, cfg(), out_dir=out / name, parallel=args.mode, split=split, resume=False)
        if rank == 0:
            rates = steady_rates(out / name / "metrics.jsonl", args.skip_logs)
            result[name] = {"batch_size": batch, "tokens_per_s_per_block": rates,
                            "mean": sum(rates.values()) / len(rates)}
            result["efficiency" + name.removeprefix("n_gpus")] = _efficiency(
                result.get("one_gpu", {}).get("mean"), result[name]["mean"], world)
            _merge_json(args.json, key, result)
    env.shutdown()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="part", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--model", default="standin-sdxl-turbo")
    c.add_argument("--model-dtype", default="float16")
    c.add_argument("--n-prompts", type=int, default=512)
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--shard-size", type=int, default=64)
    c.add_argument("--resolution", type=int, default=512)
    c.add_argument("--steps", type=int, default=1)
    c.add_argument("--dtype", default="bf16")
    t = sub.add_parser("train")
    t.add_argument("--mode", choices=("block", "data"), required=True)
    t.add_argument("--store", type=Path, nargs="+", required=True, help="first one that exists is used")
    t.add_argument("--expansion", type=int, default=4, help="4: 1280 x 5120; 16: 1280 x 20480")
    t.add_argument("--k", type=int, default=10)
    t.add_argument("--k-aux", type=int, default=256)
    t.add_argument("--dead-tokens", type=int, default=10_000_000, help="as `repro train` (the paper's 10M)")
    t.add_argument("--batch-size", type=int, default=4096, help="global batch on one GPU")
    t.add_argument("--also-weak", action="store_true", help="then N GPUs on a global batch of N x --batch-size")
    t.add_argument("--steps", type=int, default=300)
    t.add_argument("--log-every", type=int, default=50)
    t.add_argument("--skip-logs", type=int, default=1)
    t.add_argument("--synthetic-images", type=int, default=512)
    t.add_argument("--synthetic-channels", type=int, default=1280)
    for q in (c, t):
        q.add_argument("--work", type=Path, required=True, help="stores and SAEs (not OUTDIR: they are large)")
        q.add_argument("--json", type=Path, required=True)
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    (run_collect if args.part == "collect" else run_train)(args)


if __name__ == "__main__":
    main(sys.argv[1:])
