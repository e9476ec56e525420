"""How fast the feature analysis reads a store: per block (the old path) against all blocks in
one read (`repro.features.data.analyse_store`), in analysed tokens/s (all blocks together).

    python benchmarks/analysis_speed.py --out OUT.json [--shards 8 --shard-size 128] [--reads-in-flight 8]
    python benchmarks/analysis_speed.py --out OUT.json --cpu-dry-run   # tiny, on the CPU

Writes a synthetic store with the library's writer (as `read_verify.make_store`: 4 blocks
of 16x16x1280 bf16, 1 step, no guidance; here standard-normal values, not random bits,
whose NaNs would make every code NaN), puts four random 1280x5120 TopK SAEs (k 10) on the
GPU, and times the analysis of the chapter (m=16, a 32-image sample per feature) as the chapter
runs it, each on a fresh `ActivationStore` (verify on: every shard is hashed on its first read):
  per_block      `analyse_features(sae, store_chunks(store, b))` block after block: each shard
                 read 4 times (verified the first), converted to float32 on the CPU
  one_read       `analyse_store(saes, store)`: each shard read once, ahead (--read-threads
                 shards at once, each in ranges with --reads-in-flight reads at once) into
                 pinned buffers; bf16 to the GPU, float32 there
  one_read_noverify   the same, `verify=False` (a store already checked)
  gpu_only       the accumulators alone on one shard's blocks already on the GPU, as many
                 times as there are shards: the arithmetic's ceiling
with the page cache warm (the files were just written) and, unless --no-cold, dropped
(`read_verify.drop_cache`: fsync + posix_fadvise DONTNEED; a VM's host may still cache).
Both paths' results are compared (`same_results`: bitwise). Pinned host buffers are
allocated once before the clocks (a process pays that once).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import read_verify  # noqa: E402  (a sibling script: its store layout and cache helpers)

M, SAMPLE_PER_FEATURE = 16, 32  # as notebooks/05_features.md (top_m, sample_per_feature)


def make_store(folder: Path, shards: int, images: int, side: int, channels: int) -> None:
    """`read_verify.make_store`'s store, with N(0, 1) bf16 values (the same in every shard)."""
    from repro.store import StoreWriter
    from repro.store.layout import FORMAT_VERSION

    shutil.rmtree(folder, ignore_errors=True)
    blocks = read_verify.BLOCKS
    settings = {"format_version": FORMAT_VERSION, "model": "synthetic", "blocks": blocks, "steps": 1, "guidance": 0.0,
                "resolution": 512, "dtype": "bf16", "compute_dtype": "fp16", "shard_size": images, "batch_size": images,
                "seed": 0, "prompt_kind": "synthetic", "store_images": False}
    info = {"prompts": {"kind": "synthetic"}, "halves": ["all"], "vae_factor": 8, "latent_shape": [4, 64, 64],
            "block_shapes": {b: {"height": side, "width": side, "channels": channels, "module": "synthetic"}
                             for b in blocks}}
    gen = torch.Generator().manual_seed(0)
    data = {b: torch.randn(images, 1, 1, side * side, channels, generator=gen).bfloat16() for b in blocks}
    with StoreWriter(folder, settings, info, shards * images) as w:
        for i in range(shards):
            lo, hi = i * images, (i + 1) * images
            w.write_shard(i, lo, hi, [f"p{j}" for j in range(lo, hi)], list(range(lo, hi)), data,
                          torch.zeros(images, 4, 64, 64), nonfinite={b: 0 for b in blocks})
        w.finish(shards)


def _same(a, b) -> bool:
    """Two analyses (nested dataclasses of tensors) bitwise equal."""
    if dataclasses.is_dataclass(a):
        return all(_same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    return a == b


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(name: str, fn, tokens: int, folder: Path, cold: bool, log) -> tuple[dict, object]:
    """Run fn() once (after dropping the page cache when `cold`): its row and its result."""
    if cold:
        read_verify.drop_cache(read_verify.shard_paths(folder))
    _sync()
    t0 = time.perf_counter()
    out = fn()
    _sync()
    s = time.perf_counter() - t0
    row = {"page_cache": "dropped" if cold else "warm", "seconds": s, "tokens": tokens, "tokens_per_s": tokens / s}
    log(name, json.dumps(row))
    return row, out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--shards", type=int, default=None, help="default 8 (2 with --cpu-dry-run)")
    p.add_argument("--shard-size", type=int, default=None, help="images per shard: default 128 (4 with --cpu-dry-run)")
    p.add_argument("--side", type=int, default=None, help="map side: default 16 (8 with --cpu-dry-run)")
    p.add_argument("--channels", type=int, default=None, help="default 1280 (64 with --cpu-dry-run)")
    p.add_argument("--features", type=int, default=None, help="SAE width: default 5120 (256 with --cpu-dry-run)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--read-threads", type=int, default=None,
                   help="analyse_store's shards read (and hashed) at once (default: the reader's, SHARDS_AT_ONCE)")
    p.add_argument("--reads-in-flight", type=int, default=None,
                   help="analyse_store's byte-range reads at once (default: the reader's, READS_IN_FLIGHT)")
    p.add_argument("--no-cold", action="store_true", help="skip the rows with the page cache dropped")
    p.add_argument("--cpu-dry-run", action="store_true", help="tiny sizes, SAEs on the CPU (checks the script)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/analysis_speed"))
    p.add_argument("--keep", action="store_true", help="keep the synthetic store")
    args = p.parse_args(argv)
    dry = args.cpu_dry_run
    for name, full, tiny in (("shards", 8, 2), ("shard_size", 128, 4), ("side", 16, 8), ("channels", 1280, 64),
                             ("features", 5120, 256)):
        if getattr(args, name) is None:
            setattr(args, name, tiny if dry else full)
    if not dry and not torch.cuda.is_available():
        p.error("no GPU here: run with --cpu-dry-run")

    from repro.features.analysis import FeatureAccumulator, analyse_features
    from repro.features.data import analyse_store, store_chunks
    from repro.io import provenance
    from repro.sae.config import SAEConfig
    from repro.sae.model import TopKSAE
    from repro.store import ActivationStore
    from repro.store.shards import READS_IN_FLIGHT, SHARDS_AT_ONCE

    log = lambda *a: print(*a, flush=True)  # noqa: E731
    device = torch.device("cpu" if dry else "cuda")
    folder = args.workdir / "store"
    t0 = time.perf_counter()
    make_store(folder, args.shards, args.shard_size, args.side, args.channels)
    blocks = read_verify.BLOCKS
    paths = read_verify.shard_paths(folder)
    tokens = args.shards * args.shard_size * args.side ** 2 * len(blocks)  # all blocks
    res: dict = {"settings": {k: str(v) for k, v in vars(args).items()}, "provenance": provenance(),
                 "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                 "torch_threads": torch.get_num_threads(), "file_bytes": sum(q.stat().st_size for q in paths),
                 "tokens_all_blocks": tokens, "store_seconds": time.perf_counter() - t0}
    log("store", json.dumps({k: res[k] for k in ("file_bytes", "tokens_all_blocks", "store_seconds")}))
    cfg = SAEConfig(d_model=args.channels, n_features=args.features, k=args.k, k_aux=min(256, args.features))
    saes = {b: TopKSAE(cfg, seed=i, device=device) for i, b in enumerate(blocks)}
    kw = dict(m=M, sample_per_feature=SAMPLE_PER_FEATURE, sample_seed=0)
    threads = args.read_threads or SHARDS_AT_ONCE
    in_flight = args.reads_in_flight or READS_IN_FLIGHT
    read_kw = dict(read_threads=threads, reads_in_flight=in_flight)
    if device.type == "cuda":  # the pinned host allocator's blocks, outside the clocks (cached once freed)
        bufs = [torch.empty(max(q.stat().st_size for q in paths), dtype=torch.uint8, pin_memory=True)
                for _ in range(threads + 2)]  # read_shards holds at most threads + 2 (default depth)
        del bufs
    # warm-up: CUDA kernels, cuBLAS, the allocator (one shard, both paths)
    analyse_store(saes, ActivationStore(folder, verify=False), max_images=args.shard_size, **read_kw, **kw)
    analyse_features(saes[blocks[0]], store_chunks(ActivationStore(folder, verify=False), blocks[0],
                                                   max_images=args.shard_size), **kw)

    def per_block():
        store = ActivationStore(folder)  # fresh: every shard verified on its first read
        return {b: analyse_features(saes[b], store_chunks(store, b), **kw) for b in blocks}

    def one_read(verify=True):
        return analyse_store(saes, ActivationStore(folder, verify=verify), **read_kw, **kw)

    def gpu_only():
        store = ActivationStore(folder, verify=False)
        from repro.store.shards import tensor_views

        views = tensor_views(store.read_shard(store.shards[0]), blocks)
        n, s = args.shard_size, args.side
        xs = {b: views[b][:, 0, 0].to(device).reshape(n, s, s, args.channels) for b in blocks}
        ids = torch.arange(n, device=device)
        _sync()
        t = time.perf_counter()
        accs = {b: FeatureAccumulator(saes[b], **kw) for b in blocks}
        for _ in range(args.shards):
            for b in blocks:
                accs[b].add(ids, xs[b])
        out = {b: a.result() for b, a in accs.items()}
        return out, time.perf_counter() - t

    for cold in (False,) if args.no_cold else (False, True):
        tag = "cold" if cold else "warm"
        res[f"per_block_{tag}"], want = timed(f"per_block_{tag}", per_block, tokens, folder, cold, log)
        res[f"one_read_{tag}"], got = timed(f"one_read_{tag}", one_read, tokens, folder, cold, log)
        res[f"one_read_{tag}"].update(read_kw)
        res[f"one_read_{tag}"]["file_GBps"] = res["file_bytes"] / res[f"one_read_{tag}"]["seconds"] / 1e9
        res[f"one_read_{tag}"]["speedup"] = res[f"per_block_{tag}"]["seconds"] / res[f"one_read_{tag}"]["seconds"]
        res[f"same_results_{tag}"] = {b: _same(got[b], want[b]) for b in blocks}
        log(f"same_results_{tag}", json.dumps(res[f"same_results_{tag}"]))
        del want, got
    res["one_read_noverify_warm"], _ = timed("one_read_noverify_warm", lambda: one_read(False), tokens, folder,
                                             False, log)
    _, s = gpu_only()
    res["gpu_only"] = {"seconds": s, "tokens": tokens, "tokens_per_s": tokens / s, "shard_images": args.shard_size}
    log("gpu_only", json.dumps(res["gpu_only"]))
    if device.type == "cuda":
        res["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    log(json.dumps({k: v for k, v in res.items() if k not in ("settings", "provenance")}, indent=1))
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
