"""How much of store reading is the sha256 check: a synthetic store read with and without it.

    python benchmarks/read_verify.py --out OUT.json [--shards 4 --images 64 --workdir /tmp/read_verify]

Writes a store with the library's own writer (4 blocks of 16x16x1280 bf16, like the SDXL
blocks at 512 px, 1 step, no guidance; random bytes), then times on the CPU, each after
the files were just written (page cache, as in `ceiling.py read`):
  sha256_memory   hashlib.sha256 over each shard's bytes already in memory, 1 thread
  sha256_file     `repro.store.layout.sha256_file` (read + hash), 1 thread
  read_all        `_read_all` alone (the reader's one copy of a file into memory)
  read_*          `StoreSource` over the store, epochs=1, batches of `--token-batch`,
                  one shard per group (as `ceiling.py read` on the device), before settings
                  (prefetch 0, 1 read thread) and after (prefetch 1), with the shard hashes
                  checked (a fresh `ActivationStore`, `verify=True`: every shard is hashed on
                  its first read) and without (`verify=False`)
File GB/s is the shards' bytes over the time; tokens/s is per block.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import torch

BLOCKS = ["down.2.1", "mid.0", "up.0.0", "up.0.1"]


def make_store(folder: Path, shards: int, images: int, side: int, channels: int) -> None:
    from repro.store import StoreWriter
    from repro.store.layout import FORMAT_VERSION

    shutil.rmtree(folder, ignore_errors=True)
    settings = {"format_version": FORMAT_VERSION, "model": "synthetic", "blocks": BLOCKS, "steps": 1, "guidance": 0.0,
                "resolution": 512, "dtype": "bf16", "compute_dtype": "fp16", "shard_size": images, "batch_size": images,
                "seed": 0, "prompt_kind": "synthetic", "store_images": False}
    info = {"prompts": {"kind": "synthetic"}, "halves": ["all"], "vae_factor": 8,
            "block_shapes": {b: {"height": side, "width": side, "channels": channels, "module": "synthetic"} for b in BLOCKS},
            "latent_shape": [4, 64, 64]}
    gen = torch.Generator().manual_seed(0)
    with StoreWriter(folder, settings, info, shards * images) as w:
        for i in range(shards):
            lo, hi = i * images, (i + 1) * images
            blocks = {b: torch.randint(-2**15, 2**15, (images, 1, 1, side * side, channels), generator=gen,
                                       dtype=torch.int16).view(torch.bfloat16) for b in BLOCKS}
            w.write_shard(i, lo, hi, [f"p{j}" for j in range(lo, hi)], list(range(lo, hi)), blocks,
                          torch.zeros(images, 4, 64, 64), nonfinite={b: 0 for b in BLOCKS})
        w.finish(shards)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--images", type=int, default=64, help="images per shard")
    p.add_argument("--side", type=int, default=16)
    p.add_argument("--channels", type=int, default=1280)
    p.add_argument("--token-batch", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=2, help="best of this many runs per row")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/read_verify"))
    p.add_argument("--keep", action="store_true", help="keep the synthetic store")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    from repro.io import provenance
    from repro.store import ActivationStore, StoreSource
    from repro.store.layout import sha256_file
    from repro.store.reader import _read_all

    folder = args.workdir / "store"
    make_store(folder, args.shards, args.images, args.side, args.channels)
    paths = [folder / r["file"] for r in ActivationStore(folder).shards]
    nbytes = sum(p.stat().st_size for p in paths)
    tokens = args.shards * args.images * args.side * args.side
    res: dict = {"settings": {k: str(v) for k, v in vars(args).items()}, "provenance": provenance(),
                 "torch_threads": torch.get_num_threads(), "file_bytes": nbytes, "tokens_per_block": tokens,
                 "block_bytes_per_token": len(BLOCKS) * args.channels * 2}

    def best(fn) -> float:
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    datas = [_read_all(p) for p in paths]
    s = best(lambda: [hashlib.sha256(d).hexdigest() for d in datas])
    del datas
    res["sha256_memory"] = {"seconds": s, "GBps": nbytes / s / 1e9}
    s = best(lambda: [sha256_file(p) for p in paths])
    res["sha256_file"] = {"seconds": s, "GBps": nbytes / s / 1e9}
    s = best(lambda: [_read_all(p) for p in paths])
    res["read_all"] = {"seconds": s, "GBps": nbytes / s / 1e9}
    per_shard = args.images * args.side * args.side
    for verify in (True, False):
        for name, kw in (("before", dict(prefetch=0, read_threads=1)), ("after", dict(prefetch=1))):
            def run():
                store = ActivationStore(folder, verify=verify)  # fresh: nothing verified yet
                n = 0
                for b in StoreSource(store, args.token_batch, seed=0, epochs=1, buffer_tokens=per_shard, **kw):
                    n += next(iter(b.values())).shape[0]
                assert n == tokens - tokens % args.token_batch, n

            s = best(run)
            key = f"read_{name}_{'verify' if verify else 'noverify'}"
            res[key] = {**kw, "verify": verify, "seconds": s, "tokens_per_s_per_block": tokens / s,
                        "file_GBps": nbytes / s / 1e9}
            print(key, json.dumps(res[key]), flush=True)
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k not in ("settings", "provenance")}, indent=1))
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
