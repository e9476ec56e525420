"""Images/s of generation, collection to a store, and streaming into SAE training.

    python benchmarks/collect_speed.py --model tiny-random --n-prompts 64 --out collect_speed.json
    python benchmarks/collect_speed.py --model sdxl-turbo --n-prompts 512 --batch-size 32 \
        --shard-size 256 --out collect_speed_h100.json        # the paper's setting on a GPU

Measures, with the same prompts (ShapesWorld captions), seeds and batches:
  (a) bare generation: `generate(..., output="latent")`, no hooks (the floor);
  (b) collection into a fresh activation store (hooks, layout, cast, hashing, fsync);
  (c) streaming: `StreamSource` consumed alone, and feeding `train_saes` (one SAE per
      block, trained from the same pass) when the SAE trainer is available;
  (d) reading the store back as shuffled token batches (tokens/s).
Each timing is the best of `--repeats` ((a) and (b) interleaved). The target on CPU with the toy: (b) within 1.3x of (a).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--device", default="auto")
    p.add_argument("--model-dtype", default="auto")
    p.add_argument("--prompts", default="shapes")
    p.add_argument("--n-prompts", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--shard-size", type=int, default=32)
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    p.add_argument("--token-batch", type=int, default=256, help="SAE batch (tokens) for (c) and (d)")
    p.add_argument("--train-steps", type=int, default=None, help="cap on SAE steps in (c); default: the whole stream")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=None, help="where the store is written (default: a temp folder)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from repro.collect import CollectConfig, collect
    from repro.generate import Sampling, generate
    from repro.io import provenance
    from repro.models.loading import load_pipeline
    from repro.prompts import open_prompts, seeds_for
    from repro.store import StoreSource
    from repro.stream import StreamSource

    pipe = load_pipeline(args.model, device=args.device, dtype=args.model_dtype)
    source = open_prompts(args.prompts)
    n, bs = args.n_prompts, args.batch_size
    prompts = source.get(0, n)
    sampling = Sampling()
    generate(pipe, prompts[:bs], seeds_for(0, min(bs, n)), sampling, output="latent")  # warm-up

    def bare():
        for lo in range(0, n, bs):
            generate(pipe, prompts[lo : lo + bs], seeds_for(lo, min(lo + bs, n)), sampling, output="latent")

    work = Path(args.workdir or tempfile.mkdtemp(prefix="collect-speed-"))
    store_dir = work / "store"

    def to_store():
        shutil.rmtree(store_dir, ignore_errors=True)
        collect(CollectConfig(out=store_dir, model=args.model, prompts=args.prompts, n_prompts=n, batch_size=bs,
                              shard_size=args.shard_size, dtype=args.dtype), pipe=pipe, progress=False)

    results: dict = {"settings": vars(args) | {"out": str(args.out), "workdir": str(work)},
                     "device": str(pipe.device), "threads": torch.get_num_threads(),
                     "provenance": provenance()}
    # Interleaved, best of each: on a shared machine the load drifts between runs.
    pairs = [(_best(bare, 1), _best(to_store, 1)) for _ in range(args.repeats)]
    t_bare, t_store = min(p[0] for p in pairs), min(p[1] for p in pairs)
    store_bytes = sum(f.stat().st_size for f in store_dir.rglob("*.safetensors"))
    results["bare_generation"] = {"seconds": t_bare, "images_per_s": n / t_bare}
    results["store_collection"] = {"seconds": t_store, "images_per_s": n / t_store, "bytes": store_bytes,
                                   "ratio_to_bare": t_store / t_bare}

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]

    def stream_only():
        for _ in StreamSource(pipe, source, args.token_batch, n_prompts=n, gen_batch_size=bs,
                              buffer_images=args.shard_size, dtype=dtype):
            pass

    t_stream = _best(stream_only, args.repeats)
    results["stream_only"] = {"seconds": t_stream, "images_per_s": n / t_stream, "ratio_to_bare": t_stream / t_bare}

    try:
        from repro.sae.config import SAEConfig, TrainConfig
        from repro.sae.model import TopKSAE
        from repro.sae.train import train_saes
    except ImportError as exc:  # the trainer is not there yet
        results["stream_training"] = {"skipped": f"SAE trainer not importable: {exc}"}
    else:
        from repro.blocks import PAPER_BLOCKS, get_block

        widths = {b: get_block(pipe.unet, b).config.in_channels for b in PAPER_BLOCKS}

        def stream_train():
            s = StreamSource(pipe, source, args.token_batch, n_prompts=n, gen_batch_size=bs,
                             buffer_images=args.shard_size, dtype=dtype)
            saes = {b: TopKSAE(SAEConfig(d_model=w, n_features=4 * w, k=min(10, w // 4), k_aux=min(256, 2 * w)), seed=0)
                    for b, w in widths.items()}
            cfg = TrainConfig(steps=args.train_steps or 10**9, device=str(pipe.device), checkpoint_every=0,
                              progress=False, geometric_median_samples=min(4096, args.token_batch * 4),
                              log_every=10**6)
            return train_saes(saes, s, cfg)

        t_train = _best(stream_train, args.repeats)
        results["stream_training"] = {"seconds": t_train, "images_per_s": n / t_train,
                                      "ratio_to_bare": t_train / t_bare}

    reader = StoreSource(store_dir, args.token_batch, seed=0, epochs=1)
    t0 = time.perf_counter()
    n_tok = sum(next(iter(b.values())).shape[0] for b in reader)
    t_read = time.perf_counter() - t0
    results["store_reading"] = {"seconds": t_read, "tokens": n_tok, "tokens_per_s_per_block": n_tok / t_read}
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)

    text = json.dumps(results, indent=2, default=str)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
