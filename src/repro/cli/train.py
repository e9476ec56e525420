"""`repro train`: TopK SAEs on an activation store, one per block (resumes automatically).

One process, or several under torchrun (`--parallel block`: blocks split over ranks;
`--parallel data`: every rank trains every SAE on its part of each batch, reading only
its part of the store's shards).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from repro.cli.common import at_least, finite
from repro.errors import ReproError


def register(sub) -> None:
    p = sub.add_parser("train", help="train TopK SAEs on an activation store (torchrun-aware; resumes automatically)")
    p.add_argument("--store", type=Path, required=True, help="activation store folder (from `repro collect`)")
    p.add_argument("--out", type=Path, required=True, help="output folder: OUT/<block>/, metrics.jsonl, checkpoints")
    p.add_argument("--blocks", default=None,
                   help="comma-separated blocks of the store, 'paper' or 'all' (default: all of the store's)")
    p.add_argument("--steps", type=at_least(1), default=1000, help="optimisation steps (batches)")
    p.add_argument("--k", type=at_least(1), default=10, help="latents kept per input by TopK")
    p.add_argument("--k-aux", type=at_least(0), default=256,
                   help="dead latents used by the AuxK loss (0: off; at most the SAE's features, the paper's 256)")
    p.add_argument("--expansion", type=at_least(1), default=4, help="n_features = expansion x the block's channels")
    p.add_argument("--batch-size", type=at_least(1), default=4096, help="tokens per batch (global, over all ranks)")
    p.add_argument("--dead-tokens", type=at_least(1), default=10_000_000,
                   help="tokens without firing after which a latent counts as dead (paper: 10M)")
    p.add_argument("--lr", type=finite(positive=True), default=1e-4)
    p.add_argument("--seed", type=int, default=0, help="SAE init seed (block i gets seed+i) and shuffle seed")
    p.add_argument("--step", type=int, default=None, help="train on one denoising step only (default: all)")
    p.add_argument("--half", default=None, help="cond or uncond (stores collected with guidance); default: all")
    p.add_argument("--checkpoint-every", type=at_least(0), default=1000, help="steps between checkpoints (0: none)")
    p.add_argument("--log-every", type=at_least(1), default=50)
    p.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK under torchrun), cpu, cuda, cuda:N")
    p.add_argument("--parallel", choices=("block", "data"), default="block",
                   help="under torchrun: block = one block's SAE per rank, data = all ranks share every SAE")
    p.add_argument("--no-verify", action="store_true",
                   help="read shards without checking their sha256 against the manifest (faster); only for a store "
                        "already checked with `repro store verify` (default: every shard is checked on its first read)")
    p.add_argument("--read-threads", type=at_least(1), default=None,
                   help="shards read and checked at once (default: the usable cores, at most 8)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    from repro.blocks import expand_aliases
    from repro.dist import env
    from repro.dist.train import store_batches, train_distributed
    from repro.io import writable_folder
    from repro.sae import TrainConfig, build_block_saes
    from repro.store import ActivationStore

    store = ActivationStore(args.store, verify=not args.no_verify)
    blocks = [store._block(b) for b in expand_aliases(args.blocks or "all", store.blocks)]
    if len(set(blocks)) != len(blocks):
        raise ReproError(f"--blocks {args.blocks} names a block twice: give each block once")
    if not store.shards:
        raise ReproError(f"the store {args.store} holds no shards yet: finish `repro collect` first")
    store.tokens_per_image(blocks[0], args.step, args.half)  # checks --step and --half before --out is made
    saes = build_block_saes(store, k=args.k, k_aux=args.k_aux, expansion=args.expansion,
                            dead_tokens=args.dead_tokens, seed=args.seed, blocks=blocks)
    cfg = TrainConfig(steps=args.steps, lr=args.lr, checkpoint_every=args.checkpoint_every,
                      log_every=args.log_every, device=args.device, progress=not args.no_progress)
    writable_folder(args.out)  # before any batch is read
    env.init_from_env()
    try:
        # Batches are gathered where the SAEs train (see StoreSource): same rows, no per-batch copy.
        # One source per map size (blocks of different sizes train together, see store_source);
        # data-parallel ranks read only their part of the shards (see store_batches).
        data_device = env.local_device() if args.device == "auto" else args.device
        source, split = store_batches(store, args.batch_size, parallel=args.parallel, step=args.step, half=args.half,
                                      seed=args.seed, device=data_device, read_threads=args.read_threads)
        result = train_distributed(saes, source, cfg, out_dir=args.out, parallel=args.parallel, split=split,
                                   resume=True, metadata={"model": store.settings["model"], "store": str(args.store)})
        if env.rank() == 0:
            print(f"trained {', '.join(blocks)} for {result.steps} steps ({result.tokens} tokens per block) "
                  f"into {args.out}")
    finally:
        env.shutdown()
    return 0
