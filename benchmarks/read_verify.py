"""How fast a store is read, and how much of it is the sha256 check: a synthetic store read
with and without it, beside the disk's and the hash's own rates.

    python benchmarks/read_verify.py --out OUT.json [--shards 4 --images 64 --workdir /tmp/read_verify]

Writes a store with the library's own writer (4 blocks of 16x16x1280 bf16, like the SDXL
blocks at 512 px, 1 step, no guidance; random bytes), then times on the CPU, after the files
were just written (page cache, as in `ceiling.py read`) unless "cold" is said:
  sha256_memory   hashlib.sha256 over each shard's bytes already in memory, 1 thread
  sha256_file     `repro.store.layout.sha256_file` (read + hash), 1 thread
  read_all        `_read_all` alone (the reader of before: a new zero-filled bytearray per file)
  read_*          `StoreSource` over the store, epochs=1, batches of `--token-batch`,
                  one shard per group (as `ceiling.py read` on the device), before settings
                  (prefetch 0, 1 read thread) and after (the defaults), with the shard hashes
                  checked (a fresh `ActivationStore`, `verify=True`: every shard is hashed on
                  its first read) and without (`verify=False`)
  suite           `suite()`, also run by `ceiling.py read` on the GPU host: the disk's
                  sequential read rate with the files evicted from the page cache (fsync, then
                  posix_fadvise DONTNEED per shard; no root needed) and warm, 1 and N threads;
                  sha256 over memory, 1 and N threads; the reader verified and not, default
                  groups and one shard per group, CPU batches and (with CUDA) GPU batches, and
                  verified with the cache dropped
File GB/s is the shards' bytes over the time; tokens/s is per block.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

BLOCKS = ["down.2.1", "mid.0", "up.0.0", "up.0.1"]


def _read_all(path: Path) -> bytearray:
    """The reader of before: the file's bytes in a new, zero-filled bytearray (one read per file)."""
    buf = bytearray(path.stat().st_size)
    with open(path, "rb", buffering=0) as fh:
        view, got = memoryview(buf), 0
        while got < len(buf):
            n = fh.readinto(view[got:])
            if not n:
                raise OSError(f"{path} ended early")
            got += n
    return buf


def make_store(folder: Path, shards: int, images: int, side: int, channels: int, distinct: bool = True) -> None:
    """A store of `shards` x `images` random images (bf16 blocks of side x side x channels).
    `distinct=False` writes the same random tensors into every shard (faster to make; the
    read and hash rates do not depend on the bytes)."""
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
    blocks = None
    with StoreWriter(folder, settings, info, shards * images) as w:
        for i in range(shards):
            lo, hi = i * images, (i + 1) * images
            if blocks is None or distinct:
                blocks = {b: torch.randint(-2**15, 2**15, (images, 1, 1, side * side, channels), generator=gen,
                                           dtype=torch.int16).view(torch.bfloat16) for b in BLOCKS}
            w.write_shard(i, lo, hi, [f"p{j}" for j in range(lo, hi)], list(range(lo, hi)), blocks,
                          torch.zeros(images, 4, 64, 64), nonfinite={b: 0 for b in BLOCKS})
        w.finish(shards)


def shard_paths(folder: Path) -> list[Path]:
    from repro.store import ActivationStore

    return [folder / r["file"] for r in ActivationStore(folder, verify=False).shards]


def drop_cache(paths: list[Path]) -> None:
    """Evict the files from the page cache: fsync (dirty pages are not dropped), then
    posix_fadvise(DONTNEED). No root needed; a VM's host may still cache the disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def file_rate(paths: list[Path], threads: int, *, digest: bool, cold: bool) -> dict:
    """Every file read (`repro.store.shards.read_file`: readinto one reused buffer per
    thread), `threads` files at a time, hashed while read when `digest`."""
    from repro.store.shards import read_file

    size = max(p.stat().st_size for p in paths)
    free: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(threads):  # one buffer per thread, faulted in before the clock starts
        free.put(torch.zeros(size, dtype=torch.uint8))

    def one(path: Path) -> None:
        buf = free.get()
        read_file(path, lambda n: buf, digest=digest)
        free.put(buf)

    if cold:
        drop_cache(paths)
    nbytes = sum(p.stat().st_size for p in paths)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(one, paths))
    s = time.perf_counter() - t0
    return {"threads": threads, "bytes": nbytes, "seconds": s, "GBps": nbytes / s / 1e9,
            "page_cache": "dropped" if cold else "warm"}


def sha256_rate(data: torch.Tensor, threads: int, repeats: int = 2) -> dict:
    """sha256 of the bytes `data` (uint8 [n], in memory) by `threads` threads at once, each
    hashing all of it `repeats` times: the hash's rate alone, per thread and in total."""
    view = memoryview(data.numpy())

    def one(_):
        for _ in range(repeats):
            hashlib.sha256(view).hexdigest()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(one, range(threads)))
    s = time.perf_counter() - t0
    total = data.numel() * repeats * threads
    return {"threads": threads, "bytes": total, "seconds": s, "GBps": total / s / 1e9}


def reader_rate(folder: Path, token_batch: int, *, verify: bool, device: str | None = None, cold: bool = False,
                **kw) -> dict:
    """`StoreSource` over the whole store, epochs=1, a fresh `ActivationStore` (nothing
    verified yet), timed from the first read to the last batch (synchronised on a GPU)."""
    from repro.store import ActivationStore, StoreSource

    store = ActivationStore(folder, verify=verify)
    src = StoreSource(store, token_batch, seed=0, epochs=1, device=device, verify=verify, **kw)
    paths = [folder / r["file"] for r in store.shards]
    if cold:
        drop_cache(paths)
    n = 0
    _sync()
    t0 = time.perf_counter()
    for b in src:
        n += next(iter(b.values())).shape[0]
    _sync()
    s = time.perf_counter() - t0
    nbytes = sum(p.stat().st_size for p in paths)
    return {"verify": verify, "batches_on": device or "cpu", "page_cache": "dropped" if cold else "warm",
            "groups": src.n_groups, "shards_per_group": src.shards_per_chunk, "read_threads": src.read_threads,
            "read_ahead": src.read_ahead, "prefetch": src.prefetch, "tokens_per_block": n, "seconds": s,
            "tokens_per_s_per_block": n / s, "file_GBps": nbytes / s / 1e9}


def suite(folder: Path, token_batch: int, *, threads: int | None = None, devices=(None,), log=print) -> dict:
    """Disk, hash and reader rates over the store in `folder` (see the module docstring).
    Nothing holds the whole store: reads go through reused buffers, the hash rate uses at
    most 256 MiB of one shard."""
    from repro.store.shards import default_read_threads, read_file

    threads = threads or default_read_threads()
    paths = shard_paths(folder)
    out: dict = {"shards": len(paths), "file_bytes": sum(p.stat().st_size for p in paths), "threads_N": threads}

    def put(key, value):
        out[key] = value
        log(key, json.dumps(value))

    for n in sorted({1, threads}):
        put(f"disk_read_cold_cache_{n}_threads", file_rate(paths, n, digest=False, cold=True))
        put(f"page_cache_read_warm_{n}_threads", file_rate(paths, n, digest=False, cold=False))
        put(f"read_and_sha256_warm_{n}_threads", file_rate(paths, n, digest=True, cold=False))
    data, _ = read_file(paths[0])
    data = data[: 256 << 20]
    for n in sorted({1, threads}):
        put(f"sha256_in_memory_{n}_threads", sha256_rate(data, n))
    del data
    one = {"shards_per_chunk": 1}
    for device in devices:
        where = "gpu" if device else "cpu"
        if device:  # the pinned host allocator's first blocks, outside the clock (training pays it once)
            from repro.store import ActivationStore

            cap = max(r["bytes"] for r in ActivationStore(folder, verify=False).shards)
            bufs = [torch.empty(cap, dtype=torch.uint8, pin_memory=True) for _ in range(threads + 3)]
            del bufs
        for verify in (True, False):
            tag = "verified" if verify else "unverified"
            put(f"reader_{tag}_default_groups_{where}_batches",
                reader_rate(folder, token_batch, verify=verify, device=device, read_threads=threads))
            put(f"reader_{tag}_one_shard_groups_{where}_batches",
                reader_rate(folder, token_batch, verify=verify, device=device, read_threads=threads, **one))
        put(f"reader_verified_default_groups_{where}_batches_cold_cache",
            reader_rate(folder, token_batch, verify=True, device=device, cold=True, read_threads=threads))
    return out


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
    p.add_argument("--threads", type=int, default=None,
                   help="N of the suite's N-thread rows and its reader's read_threads (default: the reader's default)")
    p.add_argument("--no-suite", action="store_true", help="only the rows of before (no disk/hash/reader suite)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    from repro.io import provenance
    from repro.store import ActivationStore, StoreSource
    from repro.store.layout import sha256_file
    from repro.store.shards import read_file

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
    reused = torch.empty(max(p.stat().st_size for p in paths), dtype=torch.uint8)
    read_file(paths[0], lambda size: reused)  # faulted in before the clock
    s = best(lambda: [read_file(p, lambda size: reused) for p in paths])
    res["read_file_reused_buffer"] = {"seconds": s, "GBps": nbytes / s / 1e9}
    s = best(lambda: [read_file(p, lambda size: reused, digest=True) for p in paths])
    res["read_file_reused_buffer_sha256"] = {"seconds": s, "GBps": nbytes / s / 1e9}
    del reused
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
            src = StoreSource(folder, args.token_batch, buffer_tokens=per_shard, **kw)  # what ran: its settings
            res[key] = {**kw, "read_threads": src.read_threads, "read_ahead": getattr(src, "read_ahead", None),
                        "verify": verify, "seconds": s, "tokens_per_s_per_block": tokens / s,
                        "file_GBps": nbytes / s / 1e9}
            print(key, json.dumps(res[key]), flush=True)
    if not args.no_suite:
        devices = (None, "cuda") if torch.cuda.is_available() else (None,)
        res["suite"] = suite(folder, args.token_batch, threads=args.threads, devices=devices,
                             log=lambda *a: print(*a, flush=True))
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k not in ("settings", "provenance")}, indent=1))
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
