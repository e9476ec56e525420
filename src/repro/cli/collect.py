"""`repro collect`, `repro store info`, `repro store verify`: build and check activation stores."""

from __future__ import annotations

import argparse
from pathlib import Path

from repro.cli.common import DEFAULT_MODEL, MODEL_HELP, at_least, finite


def register(sub) -> None:
    p = sub.add_parser("collect", help="generate images and store the updates of chosen blocks (resumes automatically)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"{MODEL_HELP} (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N, mps")
    p.add_argument("--model-dtype", default="auto",
                   help="compute dtype: auto (fp16 on GPU, fp32 on CPU), float32, float16, bfloat16")
    p.add_argument("--prompts", default="shapes",
                   help="a .txt (one prompt a line), .jsonl or .parquet file, hf:DATASET[:SPLIT], or a generator (shapes)")
    p.add_argument("--prompt-column", default="prompt", help="column holding the prompts in .jsonl/.parquet/hf sources")
    p.add_argument("--n-prompts", type=at_least(1), required=True, help="prompts to collect (indices 0..N-1 of the source)")
    p.add_argument("--blocks", default=None,
                   help="comma-separated block names, 'paper' (the paper's four, the default) or 'all' (every block)")
    p.add_argument("--steps", type=at_least(1), default=1)
    p.add_argument("--guidance", type=finite(), default=0.0, help="above 1 stores the cond and uncond halves apart")
    p.add_argument("--resolution", type=at_least(8), default=None, help="image side in pixels, a multiple of 8")
    p.add_argument("--batch-size", type=at_least(1), default=8, help="images per UNet call")
    p.add_argument("--shard-size", type=at_least(1), default=1024, help="images per shard file (unit of resumption)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16",
                   help="dtype of the stored updates (the model's is --model-dtype)")
    p.add_argument("--seed", type=int, default=0, help="seed of prompt 0; prompt i gets seed+i")
    p.add_argument("--store-images", action="store_true", help="also store decoded uint8 images (small toy models)")
    p.add_argument("--engine", choices=("direct", "pipeline"), default="direct",
                   help="UNet called directly (default) or through the diffusers pipeline: the same bits")
    p.add_argument("--writers", type=at_least(1), default=4, help="shards written at once by background threads")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", type=Path, required=True, help="store folder (an existing store is resumed)")
    p.set_defaults(run=run_collect)

    store = sub.add_parser("store", help="look at or check an activation store")
    ssub = store.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    p = ssub.add_parser("info", help="settings, size and progress of a store")
    p.add_argument("store", type=Path)
    p.set_defaults(run=run_info)
    p = ssub.add_parser("verify", help="check the sha256 of every shard against the manifest, several at once "
                                       "(then `repro train --no-verify` can skip the check)")
    p.add_argument("store", type=Path)
    p.add_argument("--threads", type=at_least(1), default=None,
                   help="shards hashed at once (default: the usable cores, at most 8)")
    p.add_argument("--repair", action="store_true",
                   help="forget and delete damaged shards, so that the same `repro collect` command rewrites them")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run_verify)


def run_collect(args: argparse.Namespace) -> int:
    from repro.collect import CollectConfig, collect
    from repro.dist import env

    from repro.io import writable_folder

    writable_folder(args.out)  # before the model loads
    env.init_from_env()  # under torchrun: one rank of a sharded collection
    cfg = CollectConfig(
        out=args.out, model=args.model, prompts=args.prompts, n_prompts=args.n_prompts, blocks=args.blocks,
        steps=args.steps, guidance=args.guidance, resolution=args.resolution, batch_size=args.batch_size,
        shard_size=args.shard_size, engine=args.engine, writers=args.writers, dtype=args.dtype, seed=args.seed, prompt_column=args.prompt_column,
        store_images=args.store_images, device=args.device, model_dtype=args.model_dtype,
    )
    try:
        store = collect(cfg, progress=not args.no_progress)
        if env.rank() == 0:
            print(store.summary())
    finally:
        env.shutdown()
    return 0


def run_info(args: argparse.Namespace) -> int:
    from repro.store import ActivationStore

    print(ActivationStore(args.store).summary())
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from repro.errors import ReproError
    from repro.store import ActivationStore, StoreWriter

    store = ActivationStore(args.store)
    bad = store.verify_all(progress=not args.no_progress, threads=args.threads)
    if bad and args.repair:
        n_prompts = int(store.manifest.get("n_prompts") or store.n_images)
        with StoreWriter(args.store, store.settings, store.info, n_prompts) as writer:  # the lock: no collection runs
            writer.drop_shards(bad)
        print(f"removed {len(bad)} damaged shards of {args.store} ({', '.join(bad)}): run the same `repro collect` "
              "command again to rewrite them")
        return 0
    if bad:
        raise ReproError(f"{len(bad)} of {len(store.shards)} shards of {args.store} are missing or corrupt: "
                         f"{', '.join(bad)}; run `repro store verify --repair {args.store}`, then the same "
                         "`repro collect` command to rewrite them")
    print(f"{len(store.shards)} shards of {args.store} verified")
    return 0
