"""Issue #17's rows on one GPU, each path before and after, same process, same prompts and seeds.

    python benchmarks/ceiling.py PART --model standin-sdxl-turbo --out OUT.json [options]

PART is one or more of
  disk      the disk's own write bandwidth (fsync'd, 1 and --writers threads) and read-back
  generate  plain generation (`generate`, the pipeline) against the direct UNet loop
            (`repro.direct.DirectSampler`), alone and with the text prepared one batch ahead
            (what collection runs), no hooks, images/s; `prepare` and `run` timed apart; the
            host syncs per batch of each path (torch.profiler)
  collect   collection into a store: pipeline + 1 writer thread ("before") against the direct
            loop + `--writers` threads ("after"); the two stores' shards are compared by sha256
  stream    streaming: generation only, then into one SAE per block (d = block width,
            4x features, k 10), sequential ("before") and overlapped ("after":
            direct loop, prefetching generation thread, SAE side stream, SAE steps replayed
            from CUDA graphs; once more with eager SAE steps)
  read      reading a store as shuffled token batches, tokens/s per block: one reader thread
            without prefetch ("before") against parallel reads + prefetch ("after"), on the
            CPU and gathered on the GPU (--read-store, default: the `collect` part's store);
            then `read_verify.suite` on a synthetic store of --read-synthetic-shards shards
            of --shard-size images (enough shards for every read thread): the disk's
            sequential read rate with the page cache dropped and warm, sha256 over memory
            (1 and N threads), the reader verified and unverified (default groups and one
            shard per group, CPU and GPU batches, and verified with the cache dropped)
  user      the user's path end to end (issue #28 item 4): `repro collect` as a fresh process
            (interpreter, model load, graph capture, every shard written) and the same
            `collect` call with the model loaded; streaming into one SAE per block
            (`train_saes` over `StreamSource` at its defaults: direct loop, prefetch, side
            stream, graphed steps) from fresh SAEs (b_pre's median, capture, last chunk
            included). Images/s over the whole run; gpu_ceiling.sh sets them beside the bare UNet
  all       every part above with one model load (`user` only when named)

Every timing is after one untimed warm-up batch; `--cpu-dry-run` is the same on the CPU
with the tiny model (checks the logic, not the speed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import torch

PARTS = ("disk", "generate", "collect", "stream", "read")


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn) -> float:
    _sync()
    t0 = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t0


def disk(args) -> dict:
    """Sequential write bandwidth with fsync (what a shard write pays), 1 thread and N threads."""
    folder = args.workdir / "disk"
    folder.mkdir(parents=True, exist_ok=True)
    chunk = os.urandom(1 << 20) * 64  # 64 MiB of incompressible bytes
    total = args.disk_bytes
    out = {}
    for threads in sorted({1, args.writers}):
        per = max(len(chunk), total // threads // len(chunk) * len(chunk))

        def write(i):
            with open(folder / f"f{i}", "wb") as fh:
                for _ in range(per // len(chunk)):
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())

        t0 = time.perf_counter()
        ts = [threading.Thread(target=write, args=(i,)) for i in range(threads)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        dt = time.perf_counter() - t0
        t1 = time.perf_counter()
        for i in range(threads):
            h = hashlib.sha256()
            with open(folder / f"f{i}", "rb") as fh:
                while b := fh.read(64 << 20):
                    h.update(b)
        dr = time.perf_counter() - t1
        out[f"threads_{threads}"] = {"bytes": per * threads, "write_GBps": per * threads / dt / 1e9,
                                     "read_sha256_GBps_page_cache": per * threads / dr / 1e9}
        shutil.rmtree(folder)
        folder.mkdir()
    shutil.rmtree(folder, ignore_errors=True)
    return out


def generate_part(args, pipe, prompts) -> dict:
    from repro.direct import DirectSampler
    from repro.generate import Sampling, generate
    from repro.prompts import seeds_for

    n, bs = len(prompts), args.batch_size
    sampler = DirectSampler(pipe, Sampling())
    eager_unet = DirectSampler(pipe, Sampling(), graph=False)
    generate(pipe, prompts[:bs], seeds_for(0, bs), Sampling(), output="latent")  # warm-up
    for _ in range(2):  # the second call captures the UNet's CUDA graph
        sampler.latents(prompts[:bs], seeds_for(0, bs))
    eager_unet.latents(prompts[:bs], seeds_for(0, bs))

    def plain():
        for lo in range(0, n, bs):
            generate(pipe, prompts[lo : lo + bs], seeds_for(lo, min(lo + bs, n)), Sampling(), output="latent")

    def direct(s=sampler):
        for lo in range(0, n, bs):
            s.latents(prompts[lo : lo + bs], seeds_for(lo, min(lo + bs, n)))

    def specs():
        return ((lo, prompts[lo : lo + bs], seeds_for(lo, min(lo + bs, n))) for lo in range(0, n, bs))

    def prefetched(s=sampler):  # what collection runs: text encoded one batch ahead in a background thread
        for _, prep in s.prepared(specs()):
            s.run(prep)

    a, b, c = _timed(plain), _timed(direct), _timed(prefetched)
    d, e = _timed(lambda: direct(eager_unet)), _timed(lambda: prefetched(eager_unet))
    return {"plain_generation": {"images_per_s": n / a}, "direct_generation": {"images_per_s": n / b},
            "direct_prefetched_generation": {"images_per_s": n / c},
            "direct_generation_eager_unet": {"images_per_s": n / d},
            "direct_prefetched_generation_eager_unet": {"images_per_s": n / e},
            "phases": _phases(sampler, prompts, bs), "phases_eager_unet": _phases(eager_unet, prompts, bs),
            "host_syncs": _host_syncs(pipe, sampler, prompts, bs)}


def _phases(sampler, prompts, bs: int, repeats: int = 4) -> dict:
    """Seconds per batch of `prepare` (tokenise, both text towers, initial noise) and `run`
    (the denoising loop), each timed alone with the GPU drained around it."""
    from repro.prompts import seeds_for

    prep_s, run_s = [], []
    for i in range(repeats):
        lo = i * bs
        _sync()
        t0 = time.perf_counter()
        prep = sampler.prepare(prompts[lo : lo + bs], seeds_for(lo, lo + bs))
        _sync()
        t1 = time.perf_counter()
        sampler.run(prep)
        _sync()
        prep_s.append(t1 - t0)
        run_s.append(time.perf_counter() - t1)
    out = {"prepare_ms_per_batch": 1e3 * min(prep_s), "run_ms_per_batch": 1e3 * min(run_s), "batch": bs}
    if torch.cuda.is_available():  # where prepare's time goes: host ops and GPU kernels
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            sampler.prepare(prompts[:bs], seeds_for(0, bs))
            _sync()
        ev = prof.key_averages()
        dev = "device_time_total" if hasattr(ev[0], "device_time_total") else "cuda_time_total"
        kernels = [e for e in ev if getattr(e, dev, 0) > 0 and not e.key.startswith(("aten::", "cuda"))
                   and "evaluate_function" not in e.key]
        out["prepare_profile"] = {
            "kernel_ms": sum(getattr(e, dev) for e in kernels) / 1e3,
            "kernels": sum(e.count for e in kernels),
            "top_host_ops_ms": {e.key[:80]: round(e.self_cpu_time_total / 1e3, 2)
                                for e in sorted(ev, key=lambda e: -e.self_cpu_time_total)[:12]},
            "top_kernels_ms": {e.key[:80]: round(getattr(e, dev) / 1e3, 2)
                               for e in sorted(kernels, key=lambda e: -getattr(e, dev))[:8]},
        }
    return out


def _host_syncs(pipe, sampler, prompts, bs: int) -> dict:
    """CUDA runtime calls that make the host wait (stream/device/event synchronise, blocking
    copies), per batch, for the pipeline and for the direct loop (profiled over 2 batches)."""
    if not torch.cuda.is_available():
        return {}
    from torch.profiler import ProfilerActivity, profile

    from repro.generate import Sampling, generate
    from repro.prompts import seeds_for

    def count(fn) -> dict:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for lo in (0, bs):
                fn(prompts[lo : lo + bs], seeds_for(lo, lo + bs))
            _sync()
        names = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
        return {e.key: e.count / 2 for e in prof.key_averages() if e.key.startswith(names) and e.count}

    return {"pipeline": count(lambda p, s: generate(pipe, p, s, Sampling(), output="latent")),
            "direct": count(sampler.latents)}


def _store_digest(folder: Path) -> list[str]:
    from repro.store import ActivationStore

    return [r["sha256"] for r in ActivationStore(folder).shards]


def collect_part(args, pipe) -> dict:
    from repro.collect import CollectConfig, collect

    out = {}
    variants = (("before", dict(engine="pipeline", writers=1)), ("after", dict(engine="direct", writers=args.writers)),
                ("after_eager_unet", dict(engine="direct", writers=args.writers, unet_graph=False)))
    for name, kw in variants:
        folder = args.workdir / f"store-{name}"
        shutil.rmtree(folder, ignore_errors=True)
        cfg = CollectConfig(out=folder, model=args.model, n_prompts=args.n_prompts, batch_size=args.batch_size,
                            shard_size=args.shard_size, dtype="bf16", **kw)
        seconds = _timed(lambda: collect(cfg, pipe=pipe, progress=False))
        nbytes = sum(f.stat().st_size for f in folder.rglob("*.safetensors"))
        out[name] = {**kw, "images_per_s": args.n_prompts / seconds, "seconds": seconds, "bytes": nbytes,
                     "written_GBps": nbytes / seconds / 1e9}
    digests = {name: _store_digest(args.workdir / f"store-{name}") for name, _ in variants}
    out["same_shards"] = digests["before"] == digests["after"]
    out["same_shards_eager_unet"] = digests["after_eager_unet"] == digests["after"]
    for name in ("before", "after_eager_unet"):
        shutil.rmtree(args.workdir / f"store-{name}", ignore_errors=True)
    # steady state: the last shard's write is never overlapped, a fixed cost of each run; the
    # marginal rate of twice the prompts, n / (T(2n) - T(n)), leaves such costs out
    folder = args.workdir / "store-after-2n"
    shutil.rmtree(folder, ignore_errors=True)
    cfg = CollectConfig(out=folder, model=args.model, n_prompts=2 * args.n_prompts, batch_size=args.batch_size,
                        shard_size=args.shard_size, dtype="bf16", engine="direct", writers=args.writers)
    seconds = _timed(lambda: collect(cfg, pipe=pipe, progress=False))
    shutil.rmtree(folder, ignore_errors=True)
    out["after_marginal"] = {"images_per_s": args.n_prompts / (seconds - out["after"]["seconds"]),
                             "seconds_2n": seconds, "n": args.n_prompts}
    return out


def _stream_source(args, pipe, n: int, **kw):
    from repro.blocks import PAPER_BLOCKS
    from repro.stream import StreamSource

    dtype = torch.bfloat16 if pipe.device.type == "cuda" else torch.float32
    return StreamSource(pipe, "shapes", args.token_batch, blocks=list(PAPER_BLOCKS), n_prompts=n,
                        gen_batch_size=args.batch_size, buffer_images=args.buffer_images, dtype=dtype, **kw)


def _stream_train(args, pipe, side: bool, graph: bool = True, n: int | None = None, **kw):
    """Fresh SAEs (4x features, k 10) on every paper block, trained on n streamed prompts.

    graph: the SAE steps' CUDA graphs; side: the steps on a side stream."""
    from repro.blocks import PAPER_BLOCKS, get_block
    from repro.sae.config import SAEConfig, TrainConfig
    from repro.sae.model import TopKSAE
    from repro.sae.train import train_saes

    widths = {b: get_block(pipe.unet, b).config.in_channels for b in PAPER_BLOCKS}
    saes = {b: TopKSAE(SAEConfig(d_model=w, n_features=4 * w, k=min(10, w // 4), k_aux=min(256, 2 * w)), seed=0)
            for b, w in widths.items()}
    cfg = TrainConfig(steps=10**9, device=str(pipe.device), checkpoint_every=0, progress=False, log_every=10**6,
                      geometric_median_samples=min(4096, args.token_batch), side_stream=side, cuda_graph=graph)
    return train_saes(saes, _stream_source(args, pipe, n or args.n_prompts, **kw), cfg)


def stream_part(args, pipe) -> dict:
    n = args.n_prompts

    def only(**kw):
        for _ in _stream_source(args, pipe, n, **kw):
            pass

    def train(side: bool, graph: bool = True, **kw):
        return _stream_train(args, pipe, side, graph, n, **kw)

    out = {}
    for name, kw in (("before", dict()), ("after", dict(engine="direct", prefetch=1))):
        out[f"stream_only_{name}"] = {"images_per_s": n / _timed(lambda: only(**kw)), **kw}
    for name, side, kw in (("before", False, dict()), ("after", True, dict(engine="direct", prefetch=1))):
        out[f"stream_training_{name}"] = {"images_per_s": n / _timed(lambda: train(side, **kw)), "side_stream": side, **kw}
    # steady state: per-run costs (b_pre's geometric median regenerates the first chunk, graph
    # capture, the last chunk's steps) left out by the marginal rate n / (T(2n) - T(n))
    n_run = n
    n = 2 * n_run
    t2n = _timed(lambda: train(True, engine="direct", prefetch=1))
    n = n_run
    out["stream_training_after_marginal"] = {
        "images_per_s": n / (t2n - n / out["stream_training_after"]["images_per_s"]), "seconds_2n": t2n, "n": n}
    # the same "after" with the SAE steps launched eagerly: what the CUDA graphs bring
    out["stream_training_after_eager_steps"] = {
        "images_per_s": n / _timed(lambda: train(True, graph=False, engine="direct", prefetch=1)),
        "side_stream": True, "cuda_graph": False}
    # and with the UNet's calls launched eagerly: what the UNet's CUDA graph brings
    out["stream_training_after_eager_unet"] = {
        "images_per_s": n / _timed(lambda: train(True, engine="direct", prefetch=1, unet_graph=False)),
        "side_stream": True, "unet_graph": False}
    return out


def user_part(args, pipe) -> dict:
    """The user's entry points end to end at --n-prompts, images/s over the whole run."""
    import subprocess

    from repro.collect import CollectConfig, collect

    n, out = args.n_prompts, {}
    folder = args.workdir / "store-user-cli"
    shutil.rmtree(folder, ignore_errors=True)
    cmd = [sys.executable, "-m", "repro.cli", "collect", "--model", args.model, "--n-prompts", str(n), "--batch-size",
           str(args.batch_size), "--shard-size", str(args.shard_size), "--out", str(folder)]
    if args.cpu_dry_run:
        cmd += ["--device", "cpu"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    out["collect_cli"] = {"command": " ".join(cmd[1:]), "rc": done.returncode, "seconds": seconds,
                          "images_per_s": n / seconds if done.returncode == 0 else None, "stderr_tail": done.stderr[-400:]}
    shutil.rmtree(folder, ignore_errors=True)
    folder = args.workdir / "store-user-loaded"
    shutil.rmtree(folder, ignore_errors=True)
    cfg = CollectConfig(out=folder, model=args.model, n_prompts=n, batch_size=args.batch_size, shard_size=args.shard_size)
    seconds = _timed(lambda: collect(cfg, pipe=pipe, progress=False))
    out["collect_model_loaded"] = {"seconds": seconds, "images_per_s": n / seconds}
    shutil.rmtree(folder, ignore_errors=True)
    seconds = _timed(lambda: _stream_train(args, pipe, side=True, engine="direct", prefetch=1))
    out["stream_four_saes"] = {"seconds": seconds, "images_per_s": n / seconds}
    return out


def read_part(args, folder: Path) -> dict:
    """Before (1 thread, no prefetch) and after, in groups of `--read-buffer-tokens`; then the
    library's default groups, with and without the sha256 check of every shard - which
    separates the hash from the read; then the full suite on a synthetic store with more shards
    (`read_verify.suite`: disk, hash and reader rates, one key per measure)."""
    from repro.store import ActivationStore, StoreSource

    sys.path.insert(0, str(Path(__file__).parent))
    import read_verify

    out = {}
    devices = [None] + (["cuda"] if torch.cuda.is_available() else [])
    variants = (("before", dict(prefetch=0, read_threads=1), args.read_buffer_tokens, True),
                ("after", dict(prefetch=1), args.read_buffer_tokens, True),
                ("after_default_groups", dict(prefetch=1), None, True),
                ("after_default_groups_unverified", dict(prefetch=1), None, False))
    if not (folder / "manifest.json").exists():  # `ceiling.py read` alone: only the synthetic suite
        out["collected_store"] = f"{folder} is not a store: rows on it skipped"
        variants = ()
    for device in devices:
        for name, kw, buffer_tokens, verify in variants:
            sized = {"buffer_tokens": buffer_tokens} if buffer_tokens else {}
            src = StoreSource(ActivationStore(folder, verify=verify), args.token_batch, seed=0, epochs=1,
                              device=device, **sized, **kw)
            n = 0

            def run():
                nonlocal n
                for b in src:
                    n += next(iter(b.values())).shape[0]

            seconds = _timed(run)
            out[f"{name}_{device or 'cpu'}"] = {**kw, "read_threads": src.read_threads, "read_ahead": src.read_ahead,
                                                "tokens_per_s_per_block": n / seconds, "tokens": n,
                                                "groups": src.n_groups, "verify": verify}
    if args.read_synthetic_shards:
        synthetic = args.workdir / "store-synthetic"
        t0 = time.perf_counter()
        read_verify.make_store(synthetic, args.read_synthetic_shards, args.shard_size, 16, 1280, distinct=False)
        out["synthetic_store"] = {"shards": args.read_synthetic_shards, "images_per_shard": args.shard_size,
                                  "blocks": "4 x 16x16x1280 bf16, 1 step", "write_s": time.perf_counter() - t0}
        try:
            out["suite"] = read_verify.suite(synthetic, args.token_batch, threads=args.read_threads or None,
                                             devices=devices, log=lambda *a: print(" ", *a, flush=True))
        finally:
            shutil.rmtree(synthetic, ignore_errors=True)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", nargs="+", choices=(*PARTS, "user", "all"))
    p.add_argument("--model", default="standin-sdxl-turbo")
    p.add_argument("--n-prompts", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--writers", type=int, default=4)
    p.add_argument("--token-batch", type=int, default=4096)
    p.add_argument("--buffer-images", type=int, default=256, help="images per streamed chunk")
    p.add_argument("--read-buffer-tokens", type=int, default=1 << 16, help="tokens per block per read group (several groups: the streaming path)")
    p.add_argument("--read-store", type=Path, default=None)
    p.add_argument("--read-synthetic-shards", type=int, default=20,
                   help="shards of the read suite's synthetic store (0: no suite); 20 x 256 images = 13.7 GB, "
                        "1.3M tokens per block: two default groups")
    p.add_argument("--read-threads", type=int, default=0, help="N of the read suite's N-thread rows and its reader's read_threads (0: the reader's default, "
                        "min(8, cores))")
    p.add_argument("--disk-bytes", type=int, default=4 << 30)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/ceiling"))
    p.add_argument("--cpu-dry-run", action="store_true", help="tiny model on the CPU, small counts: checks the logic")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.cpu_dry_run:
        args.model, args.n_prompts, args.batch_size, args.shard_size = "tiny-random", 16, 4, 8
        args.token_batch, args.buffer_images, args.disk_bytes, args.read_buffer_tokens = 256, 8, 64 << 20, 512
        args.read_synthetic_shards = min(args.read_synthetic_shards, 4)
        torch.set_num_threads(1)
    args.workdir.mkdir(parents=True, exist_ok=True)
    from repro.io import provenance

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None  # starts CUDA: provenance then names the GPU
    res: dict = {"part": args.part, "settings": {k: str(v) for k, v in vars(args).items()}, "provenance": provenance(),
                 "gpu": gpu}
    parts = PARTS if "all" in args.part else tuple(args.part)
    pipe = prompts = None
    if any(x in parts for x in ("generate", "collect", "stream", "user")):
        from repro.models.loading import load_pipeline
        from repro.prompts import open_prompts

        t0 = time.perf_counter()
        pipe = load_pipeline(args.model, device="cpu" if args.cpu_dry_run else "auto")
        res["model_load_s"] = time.perf_counter() - t0
        prompts = open_prompts("shapes").get(0, args.n_prompts)
    for part in parts:  # one failing part does not stop the others
        t0 = time.perf_counter()
        try:
            if part == "disk":
                res[part] = disk(args)
            elif part == "generate":
                res[part] = generate_part(args, pipe, prompts)
            elif part == "collect":
                res[part] = collect_part(args, pipe)
            elif part == "stream":
                res[part] = stream_part(args, pipe)
            elif part == "user":
                res[part] = user_part(args, pipe)
            elif part == "read":
                res[part] = read_part(args, args.read_store or args.workdir / "store-after")
        except Exception as exc:  # noqa: BLE001 - recorded, the next part still runs
            res[part] = {"error": f"{type(exc).__name__}: {exc}"}
        res.setdefault("part_seconds", {})[part] = time.perf_counter() - t0
        print(part, json.dumps(res[part]), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")  # after every part: a timeout keeps what was done
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
